"""The operations of TinyGPT in their plain form: the text to read.

Each op computes its output with ordinary numpy and attaches one backward closure. The ops come in
the order the model uses them: embedding, linear, layer norm, attention (with softmax and the
causal mask), GELU, dropout, then log-softmax and cross-entropy for the loss.

Notation: ``g`` is the gradient arriving at the output (dL/d out); a backward returns dL/d input
for each input, in the order of the op's parents. Shapes: B batch, T time, C channels (d_model),
H heads, D = C / H head width, V vocabulary, N = B * T rows.

Nothing here is written for speed. ``fast.py`` holds twins of some of these ops that compute the
same numbers with fewer passes over memory; tests prove each twin equal to its plain form, and
``TinyGPT(config, kernels="plain")`` runs the model on this file alone.
"""
import math

import numpy as np

from .autograd import Tensor


# ---------------------------------------------------------------------------- embedding
def embedding(ids, weight):
    """out[b, t] = W[ids[b, t]]: a row lookup.

    Backward: row i of W was copied to every position whose id is i, so
    d W[i] = sum of g over those positions (a scatter-add), and rows never used get 0.
    """
    ids = np.asarray(ids)
    w = weight.data

    def backward(grad):
        grad_w = np.zeros_like(w)  # (V, C)
        np.add.at(grad_w, ids, grad)  # grad_w[ids[b, t]] += grad[b, t], repeated ids add up
        return (grad_w,)

    return Tensor.from_op(w[ids], (weight,), backward, "embedding")  # (B, T) -> (B, T, C)


# ---------------------------------------------------------------------------- linear
def linear(input, weight, bias=None):
    """out = x @ W^T + b, with W of shape (out_features, in_features), as torch.nn.Linear.

    Every position is a row: with x flattened to X (N, in) and the gradient to G (N, out),
    d X = G @ W,  d W = G^T @ X,  d b = sum of G over the rows.
    """
    x, w = input.data, weight.data
    rows = x.reshape(-1, x.shape[-1])  # (..., in) -> (N, in)
    out = rows @ w.T  # (N, in) @ (in, out) -> (N, out)
    if bias is not None:
        out = out + bias.data
    out = out.reshape(*x.shape[:-1], w.shape[0])  # (N, out) -> (..., out)

    def backward(grad):
        rows_grad = grad.reshape(-1, w.shape[0])  # (N, out)
        grads = [(rows_grad @ w).reshape(x.shape), rows_grad.T @ rows]  # d X (..., in), d W (out, in)
        if bias is not None:
            grads.append(rows_grad.sum(axis=0))  # d b (out,)
        return grads

    parents = (input, weight) if bias is None else (input, weight, bias)
    return Tensor.from_op(out, parents, backward, "linear")


# ---------------------------------------------------------------------------- layer norm
def layer_norm(x, weight, bias, eps=1e-5):
    """Layer normalisation over the last axis, as torch.nn.LayerNorm.

    Forward, per row of C numbers:
        mu = mean(x),  var = mean((x - mu)^2)  (biased),  r = 1 / sqrt(var + eps),
        xhat = (x - mu) * r,  out = xhat * w + b.

    Backward: d w = sum over rows of g * xhat, d b = sum over rows of g, and with gh = g * w
    (the gradient at xhat):
        d x = r * (gh - mean(gh) - xhat * mean(gh * xhat))
    term 1, gh: the gradient if mu and r were constants;
    term 2, mean(gh): through mu (shifting a whole row leaves xhat unchanged, so that part goes);
    term 3, xhat * mean(gh * xhat): through r (scaling a whole row leaves xhat unchanged too).
    """
    a = x.data
    mean = a.mean(axis=-1, keepdims=True)  # (..., C) -> (..., 1)
    variance = ((a - mean) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(variance + eps)
    xhat = (a - mean) * rstd
    out = xhat * weight.data + bias.data

    def backward(grad):
        C = a.shape[-1]
        grad_w = (grad * xhat).reshape(-1, C).sum(axis=0)  # (..., C) -> (C,)
        grad_b = grad.reshape(-1, C).sum(axis=0)
        grad_xhat = grad * weight.data  # gh
        term1 = grad_xhat
        term2 = grad_xhat.mean(axis=-1, keepdims=True)
        term3 = xhat * (grad_xhat * xhat).mean(axis=-1, keepdims=True)
        grad_x = rstd * (term1 - term2 - term3)
        return grad_x, grad_w, grad_b

    return Tensor.from_op(out, (x, weight, bias), backward, "layer_norm")


# ---------------------------------------------------------------------------- attention
def softmax_array(a, axis=-1):
    """exp(a_i - max a) / sum_j exp(a_j - max a) along axis: subtracting the row's max changes
    nothing mathematically and keeps exp from overflowing. A row that is all -inf gives zeros."""
    row_max = a.max(axis=axis, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)  # a row masked entirely has max -inf
    e = np.exp(a - row_max)
    total = e.sum(axis=axis, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def softmax(x, axis=-1):
    """out_i = exp(x_i) / sum_j exp(x_j) (``softmax_array``).

    Backward: d out_i / d x_j = out_i (delta_ij - out_j), so
    d x_i = out_i * (g_i - sum_j g_j out_j).
    """
    out = softmax_array(x.data, axis)

    def backward(grad):
        return (out * (grad - (grad * out).sum(axis=axis, keepdims=True)),)

    return Tensor.from_op(out, (x,), backward, "softmax")


def causal_mask(T):
    """(T, T) boolean, True above the diagonal: position t may not look at the positions after t."""
    return np.triu(np.ones((T, T), dtype=bool), k=1)


def masked_fill(x, mask, value):
    """out = value where mask is True, else x. Backward: d x = g where mask is False, else 0."""
    mask = np.asarray(mask, dtype=bool)
    out = np.where(mask, np.asarray(value, dtype=x.dtype), x.data)
    return Tensor.from_op(out, (x,), lambda grad: (np.where(mask, 0.0, grad).astype(grad.dtype),), "masked_fill")


def attention(qkv, n_heads, causal=True, dropout_p=0.0, training=False, rng=None, last=None):
    """Multi-head causal self-attention of the packed projection qkv (B, T, 3C) -> (B, T, C).

    Forward, in steps:
        split:        q, k, v = the three thirds of qkv, each cut into H heads of width D: (B, H, T, D)
        scores:       S = q k^T / sqrt(D)                                  (B, H, T, T)
        causal mask:  S = -inf above the diagonal (t sees 0..t only)
        softmax:      P = softmax(S) along the last axis
        dropout:      Pd = P * M, M the dropout mask (training only; else Pd = P)
        weighted sum: O = Pd v                                             (B, H, T, D)
        merge heads:  out = the heads side by side                         (B, T, C)

    last: only the last ``last`` positions attend (their queries), so out is (B, last, C); every
    position still gives its key and value.

    Backward, from g = dL/dout, the steps in reverse:
        merge heads:  dO = g cut back into heads
        weighted sum: dv = Pd^T dO,  dPd = dO v^T
        dropout:      dP = dPd * M
        softmax:      dS = P * (dP - rowsum(dP * P))
        causal mask:  nothing to do: P = 0 above the diagonal, so dS = 0 there already
        scores:       dq = dS k / sqrt(D),  dk = dS^T q / sqrt(D)  (dq = 0 at positions that did not attend)
        split:        d qkv = dq, dk, dv packed back as qkv was
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    H, D = n_heads, C // n_heads
    q, k, v = qkv.data.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)  # (B, T, 3C) -> 3 x (B, H, T, D)
    first = 0 if last is None else T - last  # the first position that attends
    q = q[:, :, first:]  # (B, H, Tq, D) with Tq = T - first
    Tq = T - first

    scores = q @ k.swapaxes(-1, -2) / math.sqrt(D)  # (B, H, Tq, D) x (B, H, D, T) -> (B, H, Tq, T)
    if causal:
        scores = np.where(causal_mask(T)[first:], -np.inf, scores)  # the rows of the positions that attend
    weights = softmax_array(scores)  # P
    mask = dropout_mask(weights.shape, dropout_p, rng, weights.dtype) if training and dropout_p > 0 else None
    dropped = weights if mask is None else weights * mask  # Pd
    heads = dropped @ v  # (B, H, Tq, T) x (B, H, T, D) -> (B, H, Tq, D)
    out = heads.transpose(0, 2, 1, 3).reshape(B, Tq, C)  # (B, H, Tq, D) -> (B, Tq, H, D) -> (B, Tq, C)

    def backward(grad):
        grad_heads = grad.reshape(B, Tq, H, D).transpose(0, 2, 1, 3)  # (B, Tq, C) -> (B, H, Tq, D)
        grad_v = dropped.swapaxes(-1, -2) @ grad_heads  # (B, H, T, Tq) x (B, H, Tq, D) -> (B, H, T, D)
        grad_dropped = grad_heads @ v.swapaxes(-1, -2)  # (B, H, Tq, D) x (B, H, D, T) -> (B, H, Tq, T)
        grad_weights = grad_dropped if mask is None else grad_dropped * mask
        grad_scores = weights * (grad_weights - (grad_weights * weights).sum(axis=-1, keepdims=True))
        grad_q = np.zeros((B, H, T, D), dtype=grad.dtype)
        grad_q[:, :, first:] = grad_scores @ k / math.sqrt(D)  # (B, H, Tq, T) x (B, H, T, D)
        grad_k = grad_scores.swapaxes(-1, -2) @ q / math.sqrt(D)  # (B, H, T, Tq) x (B, H, Tq, D)
        grad_qkv = np.stack([grad_q, grad_k, grad_v])  # (3, B, H, T, D)
        return (grad_qkv.transpose(1, 3, 0, 2, 4).reshape(B, T, C3),)  # -> (B, T, 3, H, D) -> (B, T, 3C)

    return Tensor.from_op(out, (qkv,), backward, "attention")


# ---------------------------------------------------------------------------- GELU
# terms of the series enough for |x| < 2 to each float type's rounding (parity_tests/test_ops.py checks)
_ERF_SERIES_TERMS = {np.dtype(np.float64): 32, np.dtype(np.float32): 20}
_ERFC_FRACTION_DEPTH = 40  # enough for |x| >= 2
# the series' coefficients a_n = 2^n / (1*3*5*...*(2n+1)), n = 0, 1, ...
_ERF_SERIES = [2.0 ** n / math.prod(range(1, 2 * n + 2, 2)) for n in range(max(_ERF_SERIES_TERMS.values()))]


def float_array(x):
    """x as an array of its own float type when that is float32 or float64, else as float64."""
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def erf(x):
    """The error function erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt, in x's float type
    (float32 or float64; anything else is taken as float64).

    numpy has no erf, so we evaluate two classical expansions, each where it converges fast:

    * |x| < 2, a series of positive terms (no cancellation):
      erf(x) = 2/sqrt(pi) * exp(-x^2) * x * sum_n a_n (x^2)^n,  a_n = 2^n / (1*3*5*...*(2n+1)),
      the polynomial in x^2 evaluated by Horner's rule: (...(a_31 x^2 + a_30) x^2 + ...) x^2 + a_0,
      one multiply and one add per term; 32 terms reach float64's rounding, 20 float32's;
    * |x| >= 2, the continued fraction of the complementary function:
      erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
      and erf(x) = 1 - erfc(x). It is evaluated from a fixed depth upwards.

    erf is odd, so both are computed for |x| and the sign put back. Accuracy (parity_tests/test_ops.py):
    within 2e-15 of torch.erf in float64, within 5e-7 in float32 (a few float32 steps near 1).
    """
    x = float_array(x)
    terms = _ERF_SERIES_TERMS[x.dtype]
    ax = np.abs(x)
    result = np.empty_like(ax)

    near = ax < 2.0
    xs = ax[near]
    x2 = xs * xs
    total = np.full_like(xs, _ERF_SERIES[terms - 1])
    for a in reversed(_ERF_SERIES[:terms - 1]):  # Horner's rule
        total *= x2
        total += a
    result[near] = (2.0 / math.sqrt(math.pi)) * np.exp(-x2) * xs * total

    far = ~near  # includes inf (erf = 1) and nan (stays nan)
    xf = ax[far]
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = xf.copy()
        for n in range(_ERFC_FRACTION_DEPTH, 0, -1):
            fraction = xf + (n / 2.0) / fraction
        result[far] = 1.0 - np.exp(-xf * xf) / (math.sqrt(math.pi) * fraction)
    return np.sign(x) * result


def normal_cdf(x):
    """The standard normal CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2, in x's float type (as ``erf``)."""
    return 0.5 * (1.0 + erf(float_array(x) / math.sqrt(2.0)))


def gelu(x):
    """Exact GELU: out = x * Phi(x), with Phi the standard normal CDF (``normal_cdf``).

    Backward: d out / d x = Phi(x) + x * phi(x), with phi(x) = exp(-x^2 / 2) / sqrt(2 pi) the
    normal density (the derivative of Phi), so d x = g * (Phi(x) + x * phi(x)).
    """
    a = x.data
    cdf = normal_cdf(a)  # Phi(x), in x's float type
    out = a * cdf

    def backward(grad):
        density = np.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)  # phi(x)
        return (grad * (cdf + a * density),)

    return Tensor.from_op(out, (x,), backward, "gelu")


# ---------------------------------------------------------------------------- dropout
def dropout_mask(shape, p, rng, dtype):
    """The scaled keep-mask of inverted dropout: 1/(1-p) where a uniform u >= p (probability 1-p), else 0."""
    keep = rng.random(shape) >= p
    return (keep / (1.0 - p)).astype(dtype)


def dropout(x, p, training, rng=None, mask=None):
    """Inverted dropout: in training out = x * m with m = keep / (1 - p), keep ~ Bernoulli(1 - p).

    The expected value of out equals x, so evaluation is the identity (no rescaling then).
    Backward: d x = g * m. ``mask`` may be given (tests use a fixed one); otherwise it is drawn
    from ``rng``.
    """
    if not training or p == 0.0:
        return x
    if mask is None:
        if rng is None:
            raise ValueError("dropout in training mode needs a random generator (rng) or a mask")
        mask = dropout_mask(x.shape, p, rng, x.dtype)
    return Tensor.from_op(x.data * mask, (x,), lambda grad: (grad * mask,), "dropout")


# ---------------------------------------------------------------------------- the loss
def log_softmax_array(a, axis=-1):
    """a_i - log sum_j exp(a_j) along axis, with the max subtracted first (log-sum-exp) against overflow."""
    shifted = a - a.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def log_softmax(x, axis=-1):
    """out_i = x_i - log sum_j exp(x_j) (``log_softmax_array``).

    Backward: d out_i / d x_j = delta_ij - softmax(x)_j, so d x_i = g_i - softmax(x)_i * sum_j g_j.
    """
    out = log_softmax_array(x.data, axis)

    def backward(grad):
        return (grad - np.exp(out) * grad.sum(axis=axis, keepdims=True),)

    return Tensor.from_op(out, (x,), backward, "log_softmax")


def log_sigmoid(x):
    """out = log sigmoid(x) = -log(1 + exp(-x)), computed as min(x, 0) - log(1 + exp(-|x|)): no exp
    of a large number, and no log of 0 for a very negative x.

    Backward: d out / d x = 1 - sigmoid(x) = sigmoid(-x), and log sigmoid(-x) = out - x, so
    d x = g * exp(out - x) (out - x <= 0: no overflow, and no cancellation where sigmoid(x) is near 1).
    """
    a = x.data
    out = np.minimum(a, 0.0) - np.log1p(np.exp(-np.abs(a)))

    def backward(grad):
        return (grad * np.exp(out - a),)

    return Tensor.from_op(out, (x,), backward, "log_sigmoid")


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    """Cross-entropy of softmax(logits) against integer targets, as torch.nn.functional.cross_entropy.

    logits (..., V) with the classes on the LAST axis (write ``logits.reshape(-1, V)`` in torch),
    targets (...) integers. Per position: loss = -log softmax(logits)[target]; positions whose
    target is ``ignore_index`` contribute 0 and are not counted. reduction: "none" (per position),
    "sum", or "mean" (sum / number of counted positions; NaN if none is counted, as in torch).

    Backward per counted position, with w the weight the reduction gives it (1 for "sum",
    1/count for "mean", g itself for "none"): d logits = g * w * (softmax(logits) - onehot(target)),
    and 0 at ignored positions.
    """
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    targets = np.asarray(targets)
    a = logits.data
    V = a.shape[-1]
    if targets.shape != a.shape[:-1]:
        raise ValueError(f"targets shape {targets.shape} does not match logits shape {a.shape} without its last axis")
    counted = targets != ignore_index
    bad = counted & ((targets < 0) | (targets >= V))
    if bad.any():
        raise ValueError(f"target {targets[bad].flat[0]} is outside the {V} classes")

    rows = np.arange(targets.size)
    flat_targets = np.where(counted, targets, 0).reshape(-1)  # an ignored position reads class 0, then counts 0
    log_probs = log_softmax_array(a).reshape(-1, V)  # (..., V) -> (N, V)
    losses = np.where(counted, -log_probs[rows, flat_targets].reshape(targets.shape), 0.0).astype(a.dtype)
    n_counted = int(counted.sum())
    if reduction == "none":
        out = losses
    elif reduction == "sum":
        out = losses.sum()
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            out = losses.sum() / np.asarray(n_counted, dtype=a.dtype)

    def backward(grad):
        if reduction == "none":
            weight = grad
        elif reduction == "sum":
            weight = np.broadcast_to(grad, losses.shape)
        else:
            weight = np.broadcast_to(grad / n_counted if n_counted else grad * 0.0, losses.shape)
        weight = np.where(counted, weight, 0.0).astype(a.dtype).reshape(-1, 1)  # (N, 1)
        grad_logits = np.exp(log_probs)  # softmax (N, V)
        counted_rows = counted.reshape(-1)
        grad_logits[rows[counted_rows], flat_targets[counted_rows]] -= 1.0  # minus the one-hot of the target
        return ((grad_logits * weight).reshape(a.shape),)

    return Tensor.from_op(np.asarray(out, dtype=a.dtype), (logits,), backward, "cross_entropy")


__all__ = [
    "embedding", "linear", "layer_norm", "softmax_array", "softmax", "causal_mask", "masked_fill", "attention",
    "erf", "normal_cdf", "gelu", "dropout_mask", "dropout", "log_softmax_array", "log_softmax", "log_sigmoid",
    "cross_entropy",
]

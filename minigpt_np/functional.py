"""The neural-network operations of TinyGPT, each with its backward written out.

Notation in the docstrings: ``g`` is the gradient arriving at the output (dL/d out), and the
backward returns dL/d input for each input. Shapes: B batch, T time (sequence), C channels
(d_model), H heads, D = C / H head width, V vocabulary.
"""
import math

import numpy as np

from .autograd import Tensor, as_tensor, is_grad_enabled

# ---------------------------------------------------------------------------- erf and GELU
_ERF_SERIES_TERMS = 32  # enough for |x| < 2 to float64 rounding (parity_tests/test_ops.py checks)
_ERFC_FRACTION_DEPTH = 40  # enough for |x| >= 2


def erf_reference(x):
    """The error function erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt, to float64 precision.

    numpy has no erf, so we evaluate two classical expansions, each where it converges fast:

    * |x| < 2, a series of positive terms (no cancellation):
      erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n (2x^2)^n x / (1*3*5*...*(2n+1))
    * |x| >= 2, the continued fraction of the complementary function:
      erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
      and erf(x) = 1 - erfc(x). It is evaluated from a fixed depth upwards.

    erf is odd, so both are computed for |x| and the sign put back. This is the plain, slow form:
    GELU's ``normal_cdf`` below gets Phi(x) = (1 + erf(x / sqrt 2)) / 2 fast from a table built with it.
    """
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    result = np.empty_like(ax)

    near = ax < 2.0
    xs = ax[near]
    term, total = xs.copy(), xs.copy()
    for n in range(1, _ERF_SERIES_TERMS):
        term *= 2.0 * xs * xs / (2 * n + 1)
        total += term
    result[near] = (2.0 / math.sqrt(math.pi)) * np.exp(-xs * xs) * total

    far = ~near  # includes inf (erf = 1) and nan (stays nan)
    xf = ax[far]
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = xf.copy()
        for n in range(_ERFC_FRACTION_DEPTH, 0, -1):
            fraction = xf + (n / 2.0) / fraction
        result[far] = 1.0 - np.exp(-xf * xf) / (math.sqrt(math.pi) * fraction)
    return np.sign(x) * result


_CDF_GRID_END = 8.5  # beyond +-8.5, Phi(x) is 0 or 1 to float64 precision (|x| / sqrt 2 > 6)
# Per float type: the Taylor degree n and the grid step h of the table. The remainder is at most
# (h/2)^(n+1) / (n+1)! * max|Phi^(n+1)|: below 1e-18 for float64 (degree 7, h = 1/64) and 8e-9 for
# float32 (degree 1, h = 1/2048: a straight line through the nearest grid point, two table reads a number).
_CDF_TAYLOR = {np.dtype(np.float64): (7, 1.0 / 64), np.dtype(np.float32): (1, 1.0 / 2048)}


def normal_cdf_reference(x):
    """The standard normal CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2, with ``erf_reference``: the plain, slow form."""
    return 0.5 * (1.0 + erf_reference(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)))


def _cdf_taylor_table(degree, step):
    """Taylor coefficients Phi^(n)(x_k) * step^n / n! at the grid points x_k = -8.5 + k * step,
    shape (degree + 1, points): the polynomial of each grid point in d, the distance from it in grid steps.

    The derivatives of Phi are those of the normal density phi(x) = exp(-x^2 / 2) / sqrt(2 pi):
    Phi^(n)(x) = phi^(n-1)(x) = (-1)^(n-1) * He_{n-1}(x) * phi(x) for n >= 1,
    with the Hermite polynomials He_0 = 1, He_1 = x, He_{m+1} = x He_m - m He_{m-1}.
    """
    half_points = round(_CDF_GRID_END / step)
    grid = step * np.arange(-half_points, half_points + 1)
    table = np.empty((degree + 1, len(grid)))
    table[0] = normal_cdf_reference(grid)
    density = np.exp(-0.5 * grid * grid) / math.sqrt(2.0 * math.pi)
    hermite_previous, hermite = np.zeros_like(grid), np.ones_like(grid)  # He_{-1} (unused), He_0
    for n in range(1, degree + 1):
        table[n] = (-1) ** (n - 1) * hermite * density * step**n / math.factorial(n)  # uses He_{n-1}
        hermite_previous, hermite = hermite, grid * hermite - (n - 1) * hermite_previous
    return table


_CDF_TABLES = {dtype: _cdf_taylor_table(degree, step).astype(dtype) for dtype, (degree, step) in _CDF_TAYLOR.items()}


def normal_cdf(x, out=None):
    """Phi(x) to the precision of x's float type, fast: a Taylor polynomial around the nearest grid point.

    x is clamped to [-8.5, 8.5] (Phi is 0 or 1 beyond). In grid steps, v = x / h; the nearest grid
    point is j = rint(v) and d = v - j (|d| <= 1/2; both exact, h being a power of 2);
    Phi(x) = sum_n c[n, j] d^n by Horner's rule, with the table c from ``_cdf_taylor_table`` (itself
    computed with ``erf_reference``; its column 0 is the grid point -8.5). NaN stays NaN. Non-float
    input is computed in float64. out: an array of x's shape to write Phi into. (Each line is one
    pass over the array; most reuse an array.)
    """
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in _CDF_TABLES else np.dtype(np.float64)
    table, step = _CDF_TABLES[dtype], _CDF_TAYLOR[dtype][1]
    v = np.clip(np.atleast_1d(x).astype(dtype, copy=False), -_CDF_GRID_END, _CDF_GRID_END)  # NaN stays NaN
    v *= 1.0 / step
    nearest = np.rint(v)
    with np.errstate(invalid="ignore"):  # NaN has no integer: its column is arbitrary, its d NaN
        column = nearest.astype(np.intp)
    column += round(_CDF_GRID_END / step)  # grid point j sits in column j + 8.5 / h
    v -= nearest  # d
    result = table[-1].take(column, mode="clip", out=None if out is None else out.reshape(column.shape))
    coefficient = np.empty_like(result)
    for n in range(table.shape[0] - 2, -1, -1):
        result *= v
        result += table[n].take(column, out=coefficient, mode="clip")
    return result.reshape(x.shape) if out is None else out


_CHUNK = 1 << 16  # numbers per piece: a piece and its temporaries are about a core's cache (1-2 MB)


def in_pieces(fn, arrays, outputs=1):
    """An element-wise function computed piece by piece: fn(*input pieces, *output pieces) for
    consecutive pieces of about _CHUNK numbers, fn writing its results into the output pieces.

    arrays: the inputs, all of one shape; the outputs are new arrays of that shape and the first
    input's dtype. A function made of many numpy passes (GELU: a dozen) reads and writes its whole
    array once per pass; on pieces every pass after the first finds its data in cache, and the
    results go straight to their place. The numbers are exactly those of one call on the whole
    arrays: every element goes through the same operations either way. Returns the output, or a
    tuple of them. (Pieces on several threads were tried: on this project's 2 cores they were no
    faster, alone or inside a training step.)
    """
    results = [np.empty(arrays[0].shape, dtype=arrays[0].dtype) for _ in range(outputs)]
    inputs = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    flat_results = [r.reshape(-1) for r in results]
    for start in range(0, inputs[0].size, _CHUNK):
        piece = slice(start, start + _CHUNK)
        fn(*(a[piece] for a in inputs), *(r[piece] for r in flat_results))
    return results[0] if outputs == 1 else tuple(results)


def _gelu_forward(a, out, cdf):
    """out = a * Phi(a), keeping Phi(a) in cdf for the backward."""
    normal_cdf(a, out=cdf)
    np.multiply(a, cdf, out=out)


def _gelu_value(a, out):
    """out = a * Phi(a), with no Phi(a) kept (no backward will need it)."""
    normal_cdf(a, out=out)
    out *= a


def _gelu_backward(grad, a, cdf, grad_a):
    """grad_a = g * (Phi(a) + a phi(a)), with phi(a) = exp(-a^2 / 2) / sqrt(2 pi), built in grad_a."""
    np.multiply(a, a, out=grad_a)
    grad_a *= -0.5
    np.exp(grad_a, out=grad_a)
    grad_a *= 1.0 / math.sqrt(2.0 * math.pi)  # phi(a)
    grad_a *= a
    grad_a += cdf
    grad_a *= grad


def gelu(x):
    """Exact GELU: out = x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, the normal CDF (``normal_cdf``).

    Backward: d out / d x = Phi(x) + x * phi(x), with the normal density phi(x) = exp(-x^2/2)/sqrt(2 pi).
    (``_gelu_forward`` and ``_gelu_backward`` hold the formulas; ``in_pieces`` runs them in pieces.)
    """
    a = x.data
    if not (is_grad_enabled() and x.requires_grad):  # sampling and evaluation: no backward will come
        return Tensor(in_pieces(_gelu_value, [a]))
    out, cdf = in_pieces(_gelu_forward, [a], outputs=2)
    return Tensor.from_op(out, (x,), lambda grad: (in_pieces(_gelu_backward, [grad, a, cdf]),))


# ---------------------------------------------------------------------------- softmax family
def sums_over(axis, *arrays):
    """The sum over ``axis`` of the arrays' element-wise product (of one array: its sum), with the axis
    kept at size 1. One einsum pass: several times quicker than np.sum over short rows (the
    attention's rows are T long), and no product array is made."""
    spec = ",".join("...i" for _ in arrays) + "->..."
    if axis in (-1, arrays[0].ndim - 1):
        return np.einsum(spec, *arrays)[..., None]
    return np.expand_dims(np.einsum(spec, *(np.moveaxis(a, axis, -1) for a in arrays)), axis)


def softmax_array(a, axis=-1):
    """Numerically stable softmax of a numpy array; a row that is all -inf gives zeros, not NaN."""
    row_max = np.max(a, axis=axis, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)  # a fully masked row has max -inf
    e = a - row_max
    np.exp(e, out=e)
    total = sums_over(axis, e)
    e /= np.where(total > 0, total, 1.0)
    return e


def _softmax_backward(grad, out, axis=-1):
    """d x = out * (g - sum(g * out)) along axis, from the softmax's output (see ``softmax``)."""
    grad_x = grad - sums_over(axis, grad, out)
    grad_x *= out
    return grad_x


def softmax(x, axis=-1):
    """out_i = exp(x_i) / sum_j exp(x_j), computed as exp(x_i - max x) for stability.

    Backward: d x_i = out_i * (g_i - sum_j g_j out_j). A row masked entirely with -inf gives zeros.
    """
    out = softmax_array(x.data, axis)

    def backward(grad):
        return (_softmax_backward(grad, out, axis),)

    return Tensor.from_op(out, (x,), backward)


def log_softmax_array(a, axis=-1):
    """x_i - log sum_j exp(x_j) of a numpy array, as log-sum-exp with the max subtracted first."""
    shifted = a - np.max(a, axis=axis, keepdims=True)
    shifted -= np.log(sums_over(axis, np.exp(shifted)))
    return shifted


def log_softmax(x, axis=-1):
    """out_i = x_i - log sum_j exp(x_j) (``log_softmax_array``).

    Backward: d x_i = g_i - softmax(x)_i * sum_j g_j.
    """
    out = log_softmax_array(x.data, axis)

    def backward(grad):
        return (grad - np.exp(out) * sums_over(axis, grad),)

    return Tensor.from_op(out, (x,), backward)


def masked_fill(x, mask, value):
    """out = value where mask is True, else x. Backward: d x = g where mask is False, else 0."""
    mask = np.asarray(mask, dtype=bool)
    out = np.where(mask, np.asarray(value, dtype=x.dtype), x.data)
    return Tensor.from_op(out, (x,), lambda grad: (np.where(mask, 0.0, grad).astype(grad.dtype),))


# ---------------------------------------------------------------------------- layers
def linear(input, weight, bias=None):
    """out = x @ W^T + b, with W of shape (out_features, in_features), as in torch.nn.Linear.

    Backward (x flattened to rows X of shape (N, in)):
    d X = G @ W,  d W = G^T @ X,  d b = sum of G over rows.
    """
    a, w = input.data, weight.data
    rows_in = a.reshape(-1, a.shape[-1])  # (N, in): one matrix product, not one per batch row
    out = rows_in @ w.T  # (N, in) -> (N, out)
    if bias is not None:
        out += bias.data
    out = out.reshape(*a.shape[:-1], w.shape[0])

    def backward(grad):
        rows_grad = grad.reshape(-1, grad.shape[-1])  # (N, out)
        grads = [(rows_grad @ w).reshape(a.shape), rows_grad.T @ rows_in]
        if bias is not None:
            grads.append(rows_grad.sum(axis=0))
        return grads

    parents = (input, weight) if bias is None else (input, weight, bias)
    return Tensor.from_op(out, parents, backward)


def embedding(ids, weight):
    """out[..., :] = W[ids[...], :], a row lookup.

    Backward: d W[i] = sum of g over every position whose id is i (a scatter-add; ``np.add.at``
    would do it row by row). Here: sort the positions by id, then sum each run of equal ids at once
    with ``np.add.reduceat`` and write the sums to their rows.
    """
    ids = np.asarray(ids)
    w = weight.data

    def backward(grad):
        flat_ids = ids.reshape(-1)
        order = np.argsort(flat_ids, kind="stable")
        sorted_ids = flat_ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # first row of each id
        grad_w = np.zeros_like(w)
        grad_w[sorted_ids[starts]] = np.add.reduceat(grad.reshape(-1, w.shape[1])[order], starts, axis=0)
        return (grad_w,)

    return Tensor.from_op(w[ids], (weight,), backward)  # (B, T) -> (B, T, C)


def layer_norm(x, weight, bias, eps=1e-5):
    """Layer normalisation over the last axis, as torch.nn.LayerNorm.

    Forward, per row of C numbers: mu = mean(x), var = mean((x - mu)^2) (biased),
    r = 1 / sqrt(var + eps), xhat = (x - mu) * r, out = xhat * w + b.

    Backward: d w = sum over rows of g * xhat, d b = sum over rows of g, and with gh = g * w:
    d x = r * (gh - mean(gh) - xhat * mean(gh * xhat))
    (the two means remove the parts of the gradient that shifting or scaling the row cannot change).
    """
    a = x.data
    C = a.shape[-1]
    xhat = a - a.mean(axis=-1, keepdims=True)  # x - mu, made xhat in place below
    variance = sums_over(-1, xhat, xhat) / C  # mean((x - mu)^2)
    rstd = 1.0 / np.sqrt(variance + eps)
    xhat *= rstd
    out = xhat * weight.data
    out += bias.data

    def backward(grad):
        grad_xhat = grad * weight.data  # gh
        # d x = r * (gh - mean(gh) - xhat * mean(gh * xhat)), gathered in one array
        grad_x = xhat * (sums_over(-1, grad_xhat, xhat) / C)
        grad_x += grad_xhat.mean(axis=-1, keepdims=True)
        np.subtract(grad_xhat, grad_x, out=grad_x)
        grad_x *= rstd
        rows = (-1, C)
        grad_w = np.einsum("ni,ni->i", grad.reshape(rows), xhat.reshape(rows))  # sum over rows of g * xhat
        grad_b = grad.reshape(rows).sum(axis=0)
        return grad_x, grad_w, grad_b

    return Tensor.from_op(out, (x, weight, bias), backward)


_DROPOUT_LEVELS = 1 << 16  # the mask's uniforms are 16-bit integers


def dropout_mask(shape, p, rng, dtype):
    """The scaled keep-mask of inverted dropout: 1/(1-p) with probability 1-p, else 0.

    Each entry draws u uniform on 0..65535 and is kept where u >= round(p * 65536): p is taken in
    steps of 2^-16 (0.1 drops with probability 0.100006). The 16-bit uniforms are the generator's
    raw 64-bit words cut in four: a quarter of the random bits of float32 uniforms, and a fifth of
    their time (the masks are a large share of a training step).
    """
    n = math.prod(shape)
    words = rng.bit_generator.random_raw(-(-n // 4))  # ceil(n / 4) uniform 64-bit words
    uniforms = words.view(np.uint16)[:n].reshape(shape)
    mask = np.multiply(uniforms >= round(p * _DROPOUT_LEVELS), 1.0 / (1.0 - p), dtype=dtype)
    return mask


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
    return Tensor.from_op(x.data * mask, (x,), lambda grad: (grad * mask,))


# ---------------------------------------------------------------------------- attention
def causal_mask(T):
    """(T, T) boolean, True above the diagonal: position t may not look at positions after t."""
    return np.triu(np.ones((T, T), dtype=bool), k=1)


def scaled_dot_product_attention(q, k, v, causal=True, dropout_p=0.0, training=False, rng=None):
    """softmax(q k^T / sqrt(D) + mask) v, over (B, H, T, D) tensors; q may hold only the last
    Tq <= T positions' queries (B, H, Tq, D), for outputs at those positions only.

    Built from ops that each carry their backward: matmul, scale, -inf mask, softmax,
    dropout on the attention weights (training only), matmul.
    """
    Tq, T, D = q.shape[-2], k.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(D))  # (B, H, Tq, D) x (B, H, D, T) -> (B, H, Tq, T)
    if causal:
        scores = masked_fill(scores, causal_mask(T)[T - Tq:], -np.inf)  # the rows of the last Tq positions
    weights = softmax(scores, axis=-1)
    weights = dropout(weights, dropout_p, training, rng)
    return weights @ v  # (B, H, Tq, T) x (B, H, T, D) -> (B, H, Tq, D)


def attention_heads(qkv, n_heads, causal=True, dropout_p=0.0, training=False, rng=None, last=None):
    """The attention of ``scaled_dot_product_attention`` as one op, with its backward written out.

    qkv (B, T, 3C) holds q, k and v side by side (the packed projection); the heads are split
    off inside and merged back, so the output is (B, T, C), or (B, last, C) when only the last
    ``last`` positions attend (every position still serves as a key and value). Per head, with s = 1/sqrt(D):

        S = s q k^T (+ -inf above the diagonal),  P = softmax(S),  Pd = P * M,  O = Pd v

    M is the dropout mask (training only; all ones otherwise). Backward, from g = dL/dO:

        dv = Pd^T g,   dPd = g v^T,   dP = dPd * M,
        dS = P * (dP - rowsum(dP * P))          (the softmax backward)
        dq = s dS k,   dk = s dS^T q             (dq = 0 at positions that did not attend)

    Same numbers as the composed ops (a test checks values and gradients), but one closure
    instead of eight and no zero-filled gradient per q, k, v slice.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    D = C // n_heads
    scale = 1.0 / math.sqrt(D)
    q, k, v = qkv.data.reshape(B, T, 3, n_heads, D).transpose(2, 0, 3, 1, 4)  # each (B, H, T, D)
    first = 0 if last is None else T - last  # the first position that attends
    q = q[:, :, first:]  # (B, H, Tq, D)
    Tq = T - first
    scores = q @ k.transpose(0, 1, 3, 2)  # (B, H, Tq, T)
    scores *= scale
    if causal:
        scores += np.where(causal_mask(T)[first:], -np.inf, 0.0).astype(scores.dtype)  # -inf above the diagonal
    weights = softmax_array(scores)
    mask = dropout_mask(weights.shape, dropout_p, rng, weights.dtype) if training and dropout_p > 0 else None
    dropped = weights if mask is None else weights * mask
    out = np.empty((B, Tq, n_heads, D), dtype=qkv.dtype)
    np.matmul(dropped, v, out=out.transpose(0, 2, 1, 3))  # heads (B, H, Tq, D), written merged (B, Tq, H, D)
    out = out.reshape(B, Tq, C)

    def backward(grad):
        grad_heads = grad.reshape(B, Tq, n_heads, D).transpose(0, 2, 1, 3)  # (B, H, Tq, D)
        grad_qkv = np.empty((B, T, 3, n_heads, D), dtype=grad.dtype)  # packed as qkv
        grad_q, grad_k, grad_v = grad_qkv.transpose(2, 0, 3, 1, 4)  # (B, H, T, D) views into it
        np.matmul(dropped.transpose(0, 1, 3, 2), grad_heads, out=grad_v)  # dv = Pd^T g
        grad_weights = grad_heads @ v.transpose(0, 1, 3, 2)  # (B, H, Tq, T)
        if mask is not None:
            grad_weights *= mask
        grad_scores = _softmax_backward(grad_weights, weights)  # dS
        grad_scores *= scale
        grad_q[:, :, :first] = 0.0
        np.matmul(grad_scores, k, out=grad_q[:, :, first:])  # dq = s dS k (s is already in grad_scores)
        np.matmul(grad_scores.transpose(0, 1, 3, 2), q, out=grad_k)  # dk = s dS^T q
        return (grad_qkv.reshape(B, T, C3),)

    return Tensor.from_op(out, (qkv,), backward)


def multi_head_attention(x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, n_heads,
                         causal=True, dropout_p=0.0, training=False, rng=None, fused=True, last=None):
    """Self-attention as torch.nn.MultiheadAttention computes it, with the packed input projection.

    in_proj_weight (3C, C) stacks W_q, W_k, W_v: one matmul gives q, k and v side by side.
    fused=True runs the attention as the single op ``attention_heads``; fused=False builds it from
    the elementary ops (``scaled_dot_product_attention``): the same numbers, the slow readable way.
    last: the output at the last ``last`` positions only, (B, last, C) (keys and values from all).
    """
    B, T, C = x.shape
    D = C // n_heads
    qkv = linear(x, in_proj_weight, in_proj_bias)  # (B, T, C) -> (B, T, 3C)
    if fused:
        merged = attention_heads(qkv, n_heads, causal, dropout_p, training, rng, last)
    else:
        qkv = qkv.reshape(B, T, 3, n_heads, D).transpose(2, 0, 3, 1, 4)  # -> (3, B, H, T, D)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if last is not None:
            q = q[:, :, T - last:]  # the queries of the last positions: (B, H, last, D)
        heads = scaled_dot_product_attention(q, k, v, causal, dropout_p, training, rng)  # (B, H, Tq, D)
        merged = heads.transpose(0, 2, 1, 3).reshape(B, heads.shape[2], C)  # (B, H, Tq, D) -> (B, Tq, C)
    return linear(merged, out_proj_weight, out_proj_bias)


# ---------------------------------------------------------------------------- losses
def cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    """Cross-entropy of softmax(logits) against integer targets, as torch.nn.functional.cross_entropy.

    logits (..., V) with the classes on the LAST axis (write ``logits.reshape(-1, V)`` in torch),
    targets (...) integers. Per position: loss = logsumexp(logits) - logits[target]; positions whose
    target is ``ignore_index`` contribute 0 and are not counted. reduction: "none" (per position),
    "sum", or "mean" (sum / number of counted positions; NaN if none is counted, as in torch).

    Backward per counted position: d logits = g * (softmax(logits) - onehot(target)).
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
    safe_targets = np.where(counted, targets, 0)

    log_probs = log_softmax_array(a)
    picked = np.take_along_axis(log_probs, safe_targets[..., None], axis=-1)[..., 0]
    losses = np.where(counted, -picked, 0.0).astype(a.dtype)
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
        weight = np.where(counted, weight, 0.0).astype(a.dtype)  # (...)
        grad_logits = np.exp(log_probs)  # softmax
        np.put_along_axis(
            grad_logits, safe_targets[..., None],
            np.take_along_axis(grad_logits, safe_targets[..., None], axis=-1) - 1.0, axis=-1,
        )
        return (grad_logits * weight[..., None],)

    return Tensor.from_op(np.asarray(out, dtype=a.dtype), (logits,), backward)


__all__ = [
    "erf_reference", "normal_cdf", "normal_cdf_reference", "gelu", "sums_over", "softmax", "softmax_array", "log_softmax",
    "log_softmax_array", "masked_fill", "linear", "embedding", "layer_norm",
    "dropout", "dropout_mask", "causal_mask", "scaled_dot_product_attention", "attention_heads",
    "multi_head_attention",
    "cross_entropy", "as_tensor",
]

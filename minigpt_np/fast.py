"""Fast twins of the plain ops in ``functional.py``: the same numbers, fewer passes over memory.

Every op here has the signature of its plain twin and says which it is, what trick it uses and
where its time goes. What each saves on your machine: ``python examples/bench.py --ablate`` times the
fast model against the same model with that one op plain, step by step (figures in ``docs/speed.md``).
``tests/test_kernels.py`` proves each equal to its plain twin in float64 (values and every input
gradient); the parity tests prove both equal to torch.

The model calls six ops (``nn.KERNEL_OPS``); ``linear`` has no twin and is the plain op itself,
imported below: one matrix product per layer is already the whole work. The loss (log-softmax,
cross-entropy) has none either: its arrays are small, and a speed device that saves under about 2%
of a step is not worth its lines.
"""
import math

import numpy as np

from . import functional as plain
from .autograd import Tensor, is_grad_enabled
from .functional import linear  # no fast twin: one BLAS call per layer already


# ---------------------------------------------------------------------------- row sums
def sums_over_last_axis(*arrays):
    """The sum over the last axis of the arrays' element-wise product (of one array: its sum), the
    axis kept at size 1: ``(a * b).sum(-1, keepdims=True)`` as one einsum pass, which is several
    times quicker than np.sum over short rows (the attention's are T long) and makes no product array."""
    return np.einsum(",".join("...i" for _ in arrays) + "->...", *arrays)[..., None]


# ---------------------------------------------------------------------------- embedding
def embedding(ids, weight):
    """Twin of ``functional.embedding``. Trick: the backward's scatter-add ``np.add.at`` (which
    visits the rows one at a time) becomes a sort of the positions by id and one ``np.add.reduceat``
    that sums each run of equal ids at once."""
    ids = np.asarray(ids)
    w = weight.data

    def backward(grad):
        flat_ids = ids.reshape(-1)
        order = np.argsort(flat_ids, kind="stable")
        sorted_ids = flat_ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # first position of each id
        grad_w = np.zeros_like(w)
        grad_w[sorted_ids[starts]] = np.add.reduceat(grad.reshape(-1, w.shape[1])[order], starts, axis=0)
        return (grad_w,)

    return Tensor.from_op(w[ids], (weight,), backward, "fast.embedding")  # (B, T) -> (B, T, C)


# ---------------------------------------------------------------------------- layer norm
def layer_norm(x, weight, bias, eps=1e-5):
    """Twin of ``functional.layer_norm``. Trick: the row sums as einsum passes (``sums_over_last_axis``)
    and xhat and d x built in place, so fewer arrays are made. The backward gathers the plain form's
    r * (term1 - term2 - term3) in one array: grad_x = term3, += term2, = term1 - grad_x, *= r."""
    a = x.data
    C = a.shape[-1]
    xhat = a - a.mean(axis=-1, keepdims=True)  # x - mu, made xhat in place below
    variance = sums_over_last_axis(xhat, xhat) / C  # mean((x - mu)^2)
    rstd = 1.0 / np.sqrt(variance + eps)
    xhat *= rstd
    out = xhat * weight.data
    out += bias.data

    def backward(grad):
        grad_xhat = grad * weight.data  # gh, the plain form's term 1
        grad_x = xhat * (sums_over_last_axis(grad_xhat, xhat) / C)  # term 3
        grad_x += grad_xhat.mean(axis=-1, keepdims=True)  # + term 2
        np.subtract(grad_xhat, grad_x, out=grad_x)  # term 1 - term 2 - term 3
        grad_x *= rstd
        rows = (-1, C)
        grad_w = np.einsum("ni,ni->i", grad.reshape(rows), xhat.reshape(rows))  # sum over rows of g * xhat
        grad_b = grad.reshape(rows).sum(axis=0)
        return grad_x, grad_w, grad_b

    return Tensor.from_op(out, (x, weight, bias), backward, "fast.layer_norm")


# ---------------------------------------------------------------------------- attention
def _softmax_in_place(scores):
    """``functional.softmax_array`` along the last axis, written into ``scores``, with einsum row sums.
    Every row must have a finite entry (the causal mask always leaves the diagonal)."""
    scores -= np.max(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= sums_over_last_axis(scores)
    return scores


def attention(qkv, n_heads, causal=True, dropout_p=0.0, training=False, rng=None, last=None):
    """Twin of ``functional.attention`` (the same steps and formulas; read them there). Tricks:
    the causal mask added as a -inf/0 array and the softmax done in place in the scores; the output
    written by matmul straight into its merged-heads layout (no transpose copy); the backward's
    gradients of q, k and v written straight into their slots of the packed (B, T, 3C) gradient
    (no stack); the softmax backward's row sums as einsum passes."""
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
        scores += np.where(plain.causal_mask(T)[first:], -np.inf, 0.0).astype(scores.dtype)
    weights = _softmax_in_place(scores)  # P
    mask = dropout_mask(weights.shape, dropout_p, rng, weights.dtype) if training and dropout_p > 0 else None
    dropped = weights if mask is None else weights * mask  # Pd
    out = np.empty((B, Tq, n_heads, D), dtype=qkv.dtype)
    np.matmul(dropped, v, out=out.transpose(0, 2, 1, 3))  # heads (B, H, Tq, D), written merged (B, Tq, H, D)
    out = out.reshape(B, Tq, C)

    def backward(grad):
        grad_heads = grad.reshape(B, Tq, n_heads, D).transpose(0, 2, 1, 3)  # (B, H, Tq, D)
        grad_qkv = np.empty((B, T, 3, n_heads, D), dtype=grad.dtype)  # packed as qkv
        grad_q, grad_k, grad_v = grad_qkv.transpose(2, 0, 3, 1, 4)  # (B, H, T, D) views into it
        np.matmul(dropped.transpose(0, 1, 3, 2), grad_heads, out=grad_v)  # dv = Pd^T dO
        grad_weights = grad_heads @ v.transpose(0, 1, 3, 2)  # dPd (B, H, Tq, T)
        if mask is not None:
            grad_weights *= mask  # dP
        grad_scores = grad_weights - sums_over_last_axis(grad_weights, weights)
        grad_scores *= weights  # dS = P * (dP - rowsum(dP * P))
        grad_scores *= scale
        grad_q[:, :, :first] = 0.0
        np.matmul(grad_scores, k, out=grad_q[:, :, first:])  # dq = dS k / sqrt(D) (the scale is in grad_scores)
        np.matmul(grad_scores.transpose(0, 1, 3, 2), q, out=grad_k)  # dk = dS^T q / sqrt(D)
        return (grad_qkv.reshape(B, T, C3),)

    return Tensor.from_op(out, (qkv,), backward, "fast.attention")


# ---------------------------------------------------------------------------- GELU
_CDF_GRID_END = 8.5  # beyond +-8.5, Phi(x) is 0 or 1 to float64 precision (|x| / sqrt 2 > 6)
# Per float type: the Taylor degree n and the grid step h of the table. The remainder is at most
# (h/2)^(n+1) / (n+1)! * max|Phi^(n+1)|: below 1e-18 for float64 (degree 7, h = 1/64) and 8e-9 for
# float32 (degree 1, h = 1/2048: a straight line through the nearest grid point, two table reads a number).
_CDF_TAYLOR = {np.dtype(np.float64): (7, 1.0 / 64), np.dtype(np.float32): (1, 1.0 / 2048)}


def _cdf_taylor_table(degree, step):
    """Taylor coefficients Phi^(n)(x_k) * step^n / n! at the grid points x_k = -8.5 + k * step,
    shape (degree + 1, points): the polynomial of each grid point in d, the distance from it in grid steps.

    Column 0 is the plain ``functional.normal_cdf``; the derivatives of Phi are those of the normal
    density phi(x) = exp(-x^2 / 2) / sqrt(2 pi): Phi^(n)(x) = phi^(n-1)(x) = (-1)^(n-1) He_{n-1}(x) phi(x)
    for n >= 1, with the Hermite polynomials He_0 = 1, He_1 = x, He_{m+1} = x He_m - m He_{m-1}.
    """
    half_points = round(_CDF_GRID_END / step)
    grid = step * np.arange(-half_points, half_points + 1)
    table = np.empty((degree + 1, len(grid)))
    table[0] = plain.normal_cdf(grid)
    density = np.exp(-0.5 * grid * grid) / math.sqrt(2.0 * math.pi)
    hermite_previous, hermite = np.zeros_like(grid), np.ones_like(grid)  # He_{-1} (unused), He_0
    for n in range(1, degree + 1):
        table[n] = (-1) ** (n - 1) * hermite * density * step**n / math.factorial(n)  # uses He_{n-1}
        hermite_previous, hermite = hermite, grid * hermite - (n - 1) * hermite_previous
    return table


_CDF_TABLES = {dtype: _cdf_taylor_table(degree, step).astype(dtype) for dtype, (degree, step) in _CDF_TAYLOR.items()}


def normal_cdf(x, out=None):
    """Twin of ``functional.normal_cdf``, to the precision of x's float type. Trick: no erf; a Taylor
    polynomial around the nearest point of a fixed grid, its coefficients read from a table.

    x is clamped to [-8.5, 8.5] (Phi is 0 or 1 beyond). In grid steps, v = x / h; the nearest grid
    point is j = rint(v) and d = v - j (|d| <= 1/2; both exact, h being a power of 2);
    Phi(x) = sum_n c[n, j] d^n by Horner's rule. NaN stays NaN. Non-float input is computed in
    float64. out: an array of x's shape to write Phi into.
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
    input's dtype. A function made of many numpy passes reads and writes its whole array once per
    pass; on pieces every pass after the first finds its data in cache. The numbers are exactly
    those of one call on the whole arrays. Returns the output, or a tuple of them.
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
    """Twin of ``functional.gelu``. Tricks: Phi from the table of ``normal_cdf`` instead of the plain
    erf; forward and backward as in-place passes over cache-sized pieces (``in_pieces``); without a
    graph (sampling, evaluation) no Phi array is kept. The largest saving of all: the plain erf's
    series runs 20 Horner steps (float64: 32) over every number, and GELU sees 4 x 128 numbers per
    position in each layer."""
    a = x.data
    if not (is_grad_enabled() and x.requires_grad):  # no backward will come
        return Tensor(in_pieces(_gelu_value, [a]))
    out, cdf = in_pieces(_gelu_forward, [a], outputs=2)
    return Tensor.from_op(out, (x,), lambda grad: (in_pieces(_gelu_backward, [grad, a, cdf]),), "fast.gelu")


# ---------------------------------------------------------------------------- dropout
_DROPOUT_LEVELS = 1 << 16  # the mask's uniforms are 16-bit integers


def dropout_mask(shape, p, rng, dtype):
    """Twin of ``functional.dropout_mask`` (it draws other masks from the same generator). Trick:
    16-bit integer uniforms, the generator's raw 64-bit words cut in four, and the keep test and the
    scaling in one pass. Each entry is kept where u >= round(p * 65536): p is taken in steps of 2^-16
    (0.1 drops with probability 0.100006)."""
    n = math.prod(shape)
    words = rng.bit_generator.random_raw(-(-n // 4))  # ceil(n / 4) uniform 64-bit words
    uniforms = words.view(np.uint16)[:n].reshape(shape)
    return np.multiply(uniforms >= round(p * _DROPOUT_LEVELS), 1.0 / (1.0 - p), dtype=dtype)


def dropout(x, p, training, rng=None, mask=None):
    """Twin of ``functional.dropout``: the same op, its mask drawn by the fast ``dropout_mask``."""
    if mask is None and rng is not None and training and p != 0.0:
        mask = dropout_mask(x.shape, p, rng, x.dtype)
    return plain.dropout(x, p, training, rng, mask)


__all__ = [
    "embedding", "linear", "layer_norm", "attention", "gelu", "dropout", "dropout_mask", "normal_cdf",
    "sums_over_last_axis", "in_pieces",
]

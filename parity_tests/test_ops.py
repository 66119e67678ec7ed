"""Every op of minigpt_np against torch (float64 and float32) and against central finite differences,
in both forms: the plain ops of functional.py and their fast twins of fast.py.

Shapes are drawn by hypothesis: batch 1..8, sequence lengths 1..16, heads 1..8.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt_np import fast
from minigpt_np import functional as F
from minigpt_np.autograd import Tensor
from minigpt_np.gradcheck import gradcheck
from parity_tests.helpers import TORCH_DTYPE, Tolerance, check, compare

DTYPES = ["float64", "float32"]
SETTINGS = settings(max_examples=25, deadline=None)
FD_SETTINGS = settings(max_examples=6, deadline=None)

batch = st.integers(1, 8)
time = st.integers(1, 16)
heads = st.integers(1, 8)
head_width = st.integers(1, 4)
seeds = st.integers(0, 2**32 - 1)
FORMS = [pytest.param(F, id="plain"), pytest.param(fast, id="fast")]  # the ops module of each form


def against_torch(np_fn, torch_fn, inputs, dtype, what, seed=0):
    """Run np_fn on minigpt_np Tensors and torch_fn on torch tensors made from the same arrays,
    push the same random output gradient back through both, and compare outputs and input grads."""
    np_inputs = {k: Tensor(v.astype(dtype), requires_grad=True) for k, v in inputs.items()}
    torch_inputs = {k: torch.tensor(v.astype(dtype), requires_grad=True) for k, v in inputs.items()}
    out_np, out_torch = np_fn(**np_inputs), torch_fn(**torch_inputs)
    assert out_np.dtype == np.dtype(dtype), f"{what}: output dtype {out_np.dtype}, expected {dtype}"
    check({"output": out_np}, {"output": out_torch}, dtype, "value", what)

    out_grad = np.random.default_rng(seed).standard_normal(out_np.shape).astype(dtype)
    out_np.backward(out_grad)
    out_torch.backward(torch.from_numpy(out_grad))
    check({k: t.grad for k, t in np_inputs.items()}, {k: t.grad for k, t in torch_inputs.items()},
          dtype, "grad", what)


def normal(rng, *shape):
    return rng.standard_normal(shape)


# ----------------------------------------------------------------------------- elementwise and shapes
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=batch, T=time, C=st.integers(1, 8), broadcast=st.sampled_from(["channel", "time", "scalar-like", "same"]),
       seed=seeds)
def test_add_mul_div_broadcast(dtype, B, T, C, broadcast, seed):
    rng = np.random.default_rng(seed)
    other_shape = {"channel": (C,), "time": (T, 1), "scalar-like": (1, 1, 1), "same": (B, T, C)}[broadcast]
    inputs = {"a": normal(rng, B, T, C), "b": rng.uniform(0.5, 2.0, other_shape)}
    against_torch(lambda a, b: (a + b) * b - a / b, lambda a, b: (a + b) * b - a / b, inputs, dtype,
                  f"add/mul/div broadcast {broadcast}", seed)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=batch, H=heads, T=time, D=head_width, seed=seeds)
def test_batched_matmul(dtype, B, H, T, D, seed):
    rng = np.random.default_rng(seed)
    inputs = {"q": normal(rng, B, H, T, D), "k": normal(rng, B, H, T, D)}
    against_torch(lambda q, k: q @ k.transpose(0, 1, 3, 2), lambda q, k: q @ k.transpose(-1, -2),
                  inputs, dtype, "matmul", seed)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=batch, T=time, H=heads, D=head_width, seed=seeds)
def test_split_heads(dtype, B, T, H, D, seed):
    """reshape, transpose and indexing, as multi-head attention uses them to unpack q, k, v."""
    rng = np.random.default_rng(seed)
    C = H * D

    def np_fn(qkv):
        parts = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)
        return parts[0] * 2.0 + parts[2]

    def torch_fn(qkv):
        parts = qkv.reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        return parts[0] * 2.0 + parts[2]

    against_torch(np_fn, torch_fn, {"qkv": normal(rng, B, T, 3 * C)}, dtype, "split heads", seed)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=batch, T=time, C=st.integers(1, 8), seed=seeds)
def test_reductions_exp_log(dtype, B, T, C, seed):
    rng = np.random.default_rng(seed)
    inputs = {"a": rng.uniform(0.1, 2.0, (B, T, C))}
    against_torch(lambda a: (a.log() * a.exp()).sum(axis=-1) * (1.0 / C) + a.mean(axis=1).mean(),
                  lambda a: (a.log() * a.exp()).sum(dim=-1) * (1.0 / C) + a.mean(dim=1).mean(),
                  inputs, dtype, "sum/mean/exp/log", seed)


# ----------------------------------------------------------------------------- layers
@pytest.mark.parametrize("ops", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=batch, T=time, V=st.integers(1, 12), C=st.integers(1, 8), seed=seeds)
def test_embedding_with_repeated_ids(ops, dtype, B, T, V, C, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (B, T))  # with V small, ids repeat: the scatter-add must sum them
    against_torch(lambda w: ops.embedding(ids, w), lambda w: TF.embedding(torch.as_tensor(ids), w),
                  {"w": normal(rng, V, C)}, dtype, "embedding", seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@SETTINGS
@given(B=batch, T=time, n_in=st.integers(1, 12), n_out=st.integers(1, 12), seed=seeds)
def test_linear(dtype, bias, B, T, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    inputs = {"input": normal(rng, B, T, n_in), "weight": normal(rng, n_out, n_in)}
    if bias:
        inputs["bias"] = normal(rng, n_out)
    against_torch(F.linear, TF.linear, inputs, dtype, f"linear bias={bias}", seed)


@pytest.mark.parametrize("ops", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=batch, T=time, C=st.integers(4, 16), shift=st.floats(-10, 10), seed=seeds)
def test_layer_norm(ops, dtype, B, T, C, shift, seed):
    # In float32 a row near 10 is rounded by ~1e-6 an element, which the normalisation amplifies:
    # there torch's own float32 result is 1.06e-5 from the exact one (B=6, T=10, C=7, shift 9, seed 511),
    # past the contract's 1e-5 for values. float32 rows are shifted by at most 2.5 (float64: 10).
    shift = shift if dtype == "float64" else shift / 4
    rng = np.random.default_rng(seed)
    inputs = {"x": normal(rng, B, T, C) + shift, "w": normal(rng, C), "b": normal(rng, C)}
    against_torch(lambda x, w, b: ops.layer_norm(x, w, b), lambda x, w, b: TF.layer_norm(x, (C,), w, b, 1e-5),
                  inputs, dtype, "layer_norm", seed)


@pytest.mark.parametrize("ops", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(n=st.integers(1, 64), scale=st.sampled_from([0.1, 1.0, 3.0, 10.0]), seed=seeds)
def test_gelu(ops, dtype, n, scale, seed):
    rng = np.random.default_rng(seed)
    against_torch(ops.gelu, TF.gelu, {"x": normal(rng, n) * scale}, dtype, "gelu (exact erf)", seed)


def test_erf_and_normal_cdf_to_float_precision():
    """The plain erf (series/continued fraction) against torch.erf, and the fast normal CDF (the
    Taylor table GELU uses) against Phi(x) = (1 + erf(x / sqrt 2)) / 2 from torch, in both float types."""
    xs = np.concatenate([np.linspace(-10, 10, 40001), [0.0, -0.0, 1e-300, 2.0 - 1e-15, 2.0, 6.0, 6.01, 8.49, 8.5, 8.51,
                                                       -8.5, 30.0, -30.0, np.inf, -np.inf]])
    expected_erf = torch.erf(torch.from_numpy(xs)).numpy()  # references computed now, not typed in
    compare({"erf": F.erf(xs)}, {"erf": expected_erf}, Tolerance(2e-15, 2e-15), "erf")
    assert np.isnan(F.erf(np.array([np.nan]))).all()
    expected_cdf = 0.5 * (1.0 + torch.erf(torch.from_numpy(xs) / math.sqrt(2.0))).numpy()
    for form, implementation in (("fast", fast.normal_cdf), ("plain", F.normal_cdf)):
        compare({"Phi": implementation(xs)}, {"Phi": expected_cdf}, Tolerance(2e-15), f"{form} normal_cdf")
        assert np.isnan(implementation(np.array([np.nan]))).all()
    xs32 = xs.astype(np.float32)
    exact = 0.5 * (1.0 + torch.erf(torch.from_numpy(xs32.astype(np.float64)) / math.sqrt(2.0))).numpy()
    compare({"Phi": fast.normal_cdf(xs32)}, {"Phi": exact}, Tolerance(1.2e-7), "float32 fast normal_cdf vs exact")
    # the plain forms in float32 compute in float32 (20 terms): a few float32 steps from the exact values
    exact_erf = torch.erf(torch.from_numpy(xs32.astype(np.float64))).numpy()
    assert F.erf(xs32).dtype == np.float32 and F.normal_cdf(xs32).dtype == np.float32
    compare({"erf": F.erf(xs32)}, {"erf": exact_erf}, Tolerance(5e-7), "float32 plain erf vs exact")
    compare({"Phi": F.normal_cdf(xs32)}, {"Phi": exact}, Tolerance(3e-7), "float32 plain normal_cdf vs exact")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
@SETTINGS
@given(B=batch, H=heads, T=time, seed=seeds)
def test_softmax_and_log_softmax(dtype, masked, B, H, T, seed):
    rng = np.random.default_rng(seed)
    mask = F.causal_mask(T)

    def np_fn(x):
        if masked:
            return F.softmax(F.masked_fill(x, mask, -np.inf))
        return F.softmax(x) + F.log_softmax(x)

    def torch_fn(x):
        if masked:
            return torch.softmax(x.masked_fill(torch.from_numpy(mask), -torch.inf), dim=-1)
        return torch.softmax(x, dim=-1) + torch.log_softmax(x, dim=-1)

    against_torch(np_fn, torch_fn, {"x": normal(rng, B, H, T, T) * 5}, dtype, f"softmax masked={masked}", seed)


def test_softmax_of_fully_masked_row_is_zero_not_nan():
    x = Tensor(np.zeros((2, 3)), requires_grad=True)
    mask = np.array([[True, True, True], [False, True, False]])
    out = F.softmax(F.masked_fill(x, mask, -np.inf))
    out.backward(np.ones((2, 3)))
    assert np.array_equal(out.data[0], np.zeros(3))
    np.testing.assert_allclose(out.data[1], [0.5, 0.0, 0.5], rtol=0, atol=1e-15)
    assert np.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@SETTINGS
@given(B=batch, T=time, V=st.integers(2, 12), ignore_share=st.floats(0.0, 0.9), seed=seeds)
def test_cross_entropy(dtype, reduction, B, T, V, ignore_share, seed):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, V, (B, T))
    targets[rng.random((B, T)) < ignore_share] = -100
    targets[0, 0] = rng.integers(0, V)  # at least one counted position (torch's mean of none is NaN)

    # A sum over up to 128 positions is far from 1, where a float32 ulp exceeds the contract's
    # absolute 1e-5 meant for mean losses: both sides are divided by the same count.
    scale = 1.0 / targets.size if reduction == "sum" else 1.0

    def torch_fn(logits):
        out = TF.cross_entropy(logits.reshape(-1, V), torch.as_tensor(targets).reshape(-1),
                               ignore_index=-100, reduction=reduction)
        return out.reshape(B, T) if reduction == "none" else out * scale

    against_torch(lambda logits: F.cross_entropy(logits, targets, -100, reduction) * scale, torch_fn,
                  {"logits": normal(rng, B, T, V) * 3}, dtype, f"cross_entropy {reduction}", seed)


def test_cross_entropy_rejects_bad_targets():
    logits = Tensor(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="outside the 4 classes"):
        F.cross_entropy(logits, np.array([1, 4]))
    with pytest.raises(ValueError, match="does not match"):
        F.cross_entropy(logits, np.array([1, 2, 3]))


@pytest.mark.parametrize("ops", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(n=st.integers(1, 40), p=st.sampled_from([0.1, 0.5, 0.9]), seed=seeds)
def test_dropout_with_a_fixed_mask(ops, dtype, n, p, seed):
    rng = np.random.default_rng(seed)
    mask = ops.dropout_mask((n,), p, rng, np.dtype(dtype))
    against_torch(lambda x: ops.dropout(x, p, True, mask=mask), lambda x: x * torch.from_numpy(mask),
                  {"x": normal(rng, n)}, dtype, "dropout (fixed mask)", seed)


# ----------------------------------------------------------------------------- attention
def self_attention(ops, x, w_in, b_in, w_out, b_out, H, last=None):
    """torch.nn.MultiheadAttention's computation from the ops, as nn.MultiheadAttention runs them."""
    return ops.linear(ops.attention(ops.linear(x, w_in, b_in), H, causal=True, last=last), w_out, b_out)


@pytest.mark.parametrize("ops", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=batch, H=heads, T=time, D=head_width, seed=seeds)
def test_attention_against_scaled_dot_product_attention(ops, dtype, B, H, T, D, seed):
    """The attention op on packed q, k, v against torch's causal scaled_dot_product_attention per head."""
    rng = np.random.default_rng(seed)

    def torch_fn(qkv):
        q, k, v = qkv.reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        heads = TF.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        return heads.transpose(1, 2).reshape(B, T, H * D)

    against_torch(lambda qkv: ops.attention(qkv, H), torch_fn, {"qkv": normal(rng, B, T, 3 * H * D)}, dtype,
                  "attention", seed)


@pytest.mark.parametrize("ops", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=batch, H=heads, T=time, D=head_width, seed=seeds, last=st.one_of(st.none(), st.integers(1, 4)))
def test_self_attention_matches_torch_module(ops, dtype, B, H, T, D, seed, last):
    """Our packed-projection attention against torch.nn.MultiheadAttention with a causal mask, at every
    position or (last) with queries at the last positions only."""
    rng = np.random.default_rng(seed)
    last = None if last is None else min(last, T)
    C = H * D
    inputs = {"x": normal(rng, B, T, C), "w_in": normal(rng, 3 * C, C) / math.sqrt(C), "b_in": normal(rng, 3 * C),
              "w_out": normal(rng, C, C) / math.sqrt(C), "b_out": normal(rng, C)}

    def torch_fn(x, w_in, b_in, w_out, b_out):
        attention = torch.nn.MultiheadAttention(C, H, batch_first=True, dtype=TORCH_DTYPE[dtype])
        del attention.in_proj_weight, attention.in_proj_bias, attention.out_proj.weight, attention.out_proj.bias
        attention.in_proj_weight, attention.in_proj_bias = w_in, b_in  # our tensors, so grads reach them
        attention.out_proj.weight, attention.out_proj.bias = w_out, b_out
        mask = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=TORCH_DTYPE[dtype])
        if last is not None:
            return attention(x[:, T - last:], x, x, attn_mask=mask[T - last:], need_weights=False)[0]
        return attention(x, x, x, attn_mask=mask, need_weights=False, is_causal=True)[0]

    def np_fn(x, w_in, b_in, w_out, b_out):
        return self_attention(ops, x, w_in, b_in, w_out, b_out, H, last)

    against_torch(np_fn, torch_fn, inputs, dtype, f"self-attention H={H} last={last}", seed)


# ----------------------------------------------------------------------------- finite differences (float64)
# minigpt_np.gradcheck: |backward - numeric| <= 1e-7 + 1e-6 * max|numeric| per input, central differences eps 1e-6.
@FD_SETTINGS
@given(B=st.integers(1, 3), T=st.integers(1, 5), C=st.integers(2, 5), seed=seeds)
def test_elementwise_and_linear_ops_finite_differences(B, T, C, seed):
    rng = np.random.default_rng(seed)
    gradcheck(lambda a, b: (a + b) * b - a / b + (a * a).exp().log(), normal(rng, B, T, C), rng.uniform(0.5, 2, (C,)),
              names=["a", "b"], seed=seed)
    gradcheck(F.linear, normal(rng, B, T, C), normal(rng, 3, C), normal(rng, 3), names=["x", "w", "b"], seed=seed)
    gradcheck(lambda a: a.reshape(B, C, T).transpose(0, 2, 1)[:, :, 1:].sum(axis=1) + a.mean(),
              normal(rng, B, T, C), seed=seed)


@pytest.mark.parametrize("ops", FORMS)
@FD_SETTINGS
@given(B=st.integers(1, 3), T=st.integers(1, 5), C=st.integers(2, 6), seed=seeds)
def test_normalisation_and_activation_finite_differences(ops, B, T, C, seed):
    rng = np.random.default_rng(seed)
    gradcheck(ops.layer_norm, normal(rng, B, T, C), normal(rng, C), normal(rng, C), names=["x", "w", "b"], seed=seed)
    gradcheck(ops.gelu, normal(rng, B, T, C) * 3, seed=seed)
    gradcheck(lambda x: F.softmax(F.masked_fill(x, F.causal_mask(T), -np.inf)) + F.log_softmax(x),
              normal(rng, B, T, T), seed=seed)


@pytest.mark.parametrize("ops", FORMS)
@FD_SETTINGS
@given(B=st.integers(1, 3), T=st.integers(1, 5), V=st.integers(2, 6), seed=seeds)
def test_embedding_and_cross_entropy_finite_differences(ops, B, T, V, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (B, T))
    targets = np.where(rng.random((B, T)) < 0.3, -100, ids)
    gradcheck(lambda w: ops.embedding(ids, w), normal(rng, V, 3), seed=seed)
    for reduction in ("none", "sum", "mean"):
        if reduction == "mean" and (targets == -100).all():
            continue
        gradcheck(lambda z: F.cross_entropy(z, targets, reduction=reduction), normal(rng, B, T, V), seed=seed)
    mask = ops.dropout_mask((B, T), 0.5, rng, np.float64)
    gradcheck(lambda x: ops.dropout(x, 0.5, True, mask=mask), normal(rng, B, T), seed=seed)


@pytest.mark.parametrize("ops", FORMS)
@FD_SETTINGS
@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 4), D=st.integers(1, 2), seed=seeds)
def test_attention_finite_differences(ops, B, H, T, D, seed):
    rng = np.random.default_rng(seed)
    C = H * D
    arrays = [normal(rng, B, T, C), normal(rng, 3 * C, C), normal(rng, 3 * C), normal(rng, C, C), normal(rng, C)]
    for last in (None, max(1, T - 1)):
        gradcheck(lambda *tensors: self_attention(ops, *tensors, H, last), *arrays,
                  names=["x", "w_in", "b_in", "w_out", "b_out"], seed=seed)


# ----------------------------------------------------------------------------- the float32 gradient bound
def composed_self_attention(x, w_in, b_in, w_out, b_out, H, softmax):
    """Self-attention from the elementary ops, with the softmax given, so that its backward can be a wrong one."""
    B, T, C = x.shape
    D = C // H
    q, k, v = F.linear(x, w_in, b_in).reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
    scores = F.masked_fill(q @ k.transpose(0, 1, 3, 2) * (1.0 / math.sqrt(D)), F.causal_mask(T), -np.inf)
    heads = softmax(scores) @ v  # (B, H, T, D)
    return F.linear(heads.transpose(0, 2, 1, 3).reshape(B, T, C), w_out, b_out)


def softmax_without_the_row_sum_term(x):
    """A usual mistake: d x = out * g, missing - out * sum(g * out). With it, the key bias, whose true
    gradient is zero (softmax ignores a constant added to a row of scores), gets a gradient."""
    out = F.softmax_array(x.data)
    return Tensor.from_op(out, (x,), lambda grad: (out * grad,), "softmax")


@pytest.mark.parametrize("softmax, wrong", [(F.softmax, False), (softmax_without_the_row_sum_term, True)],
                         ids=["right backward", "softmax backward without its row-sum term"])
def test_float32_gradient_bound_lets_cancellation_pass_and_fails_a_wrong_backward(softmax, wrong):
    """The example that failed the former element-wise bound (1e-5 + 1e-3 * |ref|): the key part of the input
    bias is zero by cancellation, so both sides return rounding noise. The bound by the tensor's largest
    entry lets that noise pass, and still fails a wrong backward, there and elsewhere."""
    B, H, T, D, seed = 7, 5, 15, 1, 2281
    C = H * D
    rng = np.random.default_rng(seed)
    inputs = {"x": normal(rng, B, T, C), "w_in": normal(rng, 3 * C, C) / math.sqrt(C), "b_in": normal(rng, 3 * C),
              "w_out": normal(rng, C, C) / math.sqrt(C), "b_out": normal(rng, C)}
    np_fn = lambda x, w_in, b_in, w_out, b_out: composed_self_attention(x, w_in, b_in, w_out, b_out, H, softmax)

    def torch_fn(x, w_in, b_in, w_out, b_out):
        attention = torch.nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float32)
        del attention.in_proj_weight, attention.in_proj_bias, attention.out_proj.weight, attention.out_proj.bias
        attention.in_proj_weight, attention.in_proj_bias = w_in, b_in
        attention.out_proj.weight, attention.out_proj.bias = w_out, b_out
        mask = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float32)
        return attention(x, x, x, attn_mask=mask, need_weights=False, is_causal=True)[0]

    if not wrong:
        against_torch(np_fn, torch_fn, inputs, "float32", "composed self-attention", seed)
        return
    with pytest.raises(AssertionError) as failure:
        against_torch(np_fn, torch_fn, inputs, "float32", "composed self-attention, wrong softmax backward", seed)
    flagged = {line.split()[1] for line in str(failure.value).splitlines() if line.startswith("!!")}
    assert {"b_in", "w_in", "x"} <= flagged, str(failure.value)

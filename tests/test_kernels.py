"""The fast twins (fast.py) against their plain forms (functional.py), without torch.

Every twin: values and every input gradient on hypothesis-drawn shapes, float64, each within
abs 1e-14 + 1e-12 * max|plain| of the plain form (the inputs are of order 1; the abs floor covers
gradients that are tiny sums of order-1 terms, e.g. layer norm over 2 channels). The whole model:
plain vs fast logits, loss and every parameter gradient, and 20 training steps. These tests import
no torch (test_no_torch.py runs this file where torch cannot be imported).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigpt_np
from minigpt_np import fast
from minigpt_np import functional as plain
from minigpt_np.gradcheck import compare_twins
from minigpt_np.nn import KERNEL_OPS, kernels, mixed_kernels
from minigpt_np.optim import AdamW, clip_grad_norm_

TWIN = dict(atol=1e-14, rtol=1e-12)  # |fast - plain| <= 1e-14 + 1e-12 * max|plain|
SETTINGS = settings(max_examples=30, deadline=None)
seeds = st.integers(0, 2**32 - 1)


def normal(rng, *shape):
    return rng.standard_normal(shape)


@SETTINGS
@given(B=st.integers(1, 8), T=st.integers(1, 16), V=st.integers(1, 12), C=st.integers(1, 8), seed=seeds)
def test_embedding(B, T, V, C, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (B, T))  # small V: ids repeat, and the scatter-add must sum them
    compare_twins(lambda w: fast.embedding(ids, w), lambda w: plain.embedding(ids, w), normal(rng, V, C),
                  **TWIN, seed=seed)


@SETTINGS
@given(B=st.integers(1, 8), T=st.integers(1, 16), C=st.integers(2, 32), shift=st.floats(-10, 10), seed=seeds)
def test_layer_norm(B, T, C, shift, seed):
    rng = np.random.default_rng(seed)
    compare_twins(fast.layer_norm, plain.layer_norm, normal(rng, B, T, C) + shift, normal(rng, C), normal(rng, C),
                  **TWIN, seed=seed, names=["x", "weight", "bias"])


@SETTINGS
@given(B=st.integers(1, 6), H=st.integers(1, 8), T=st.integers(1, 16), D=st.integers(1, 4), seed=seeds,
       last=st.one_of(st.none(), st.integers(1, 4)), causal=st.booleans())
def test_attention(B, H, T, D, seed, last, causal):
    rng = np.random.default_rng(seed)
    last = None if last is None else min(last, T)
    compare_twins(lambda qkv: fast.attention(qkv, H, causal=causal, last=last),
                  lambda qkv: plain.attention(qkv, H, causal=causal, last=last),
                  normal(rng, B, T, 3 * H * D), **TWIN, seed=seed, names=["qkv"])


@SETTINGS
@given(B=st.integers(1, 4), H=st.integers(1, 4), T=st.integers(1, 12), D=st.integers(1, 4), seed=seeds,
       p=st.sampled_from([0.1, 0.5]))
def test_attention_with_dropout_on_the_same_masks(B, H, T, D, seed, p):
    """In training the twins differ only in how they draw the mask: given the plain mask, they agree."""
    rng = np.random.default_rng(seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fast, "dropout_mask", plain.dropout_mask)
        compare_twins(lambda qkv: fast.attention(qkv, H, dropout_p=p, training=True,
                                                 rng=np.random.default_rng(seed)),
                      lambda qkv: plain.attention(qkv, H, dropout_p=p, training=True, rng=np.random.default_rng(seed)),
                      normal(rng, B, T, 3 * H * D), **TWIN, seed=seed, names=["qkv"])


@SETTINGS
@given(n=st.integers(1, 3000), scale=st.sampled_from([0.1, 1.0, 3.0, 10.0]), seed=seeds)
def test_gelu(n, scale, seed):
    rng = np.random.default_rng(seed)
    compare_twins(fast.gelu, plain.gelu, normal(rng, n) * scale, **TWIN, seed=seed, names=["x"])


def test_gelu_without_a_graph_gives_the_same_values():
    x = np.random.default_rng(1).standard_normal(10_000) * 4
    with minigpt_np.no_grad():
        np.testing.assert_array_equal(fast.gelu(minigpt_np.Tensor(x, requires_grad=True)).data,
                                      fast.gelu(minigpt_np.Tensor(x, requires_grad=True).detach()).data)
    np.testing.assert_allclose(fast.gelu(minigpt_np.Tensor(x)).data, plain.gelu(minigpt_np.Tensor(x)).data,
                               rtol=0, atol=1e-12 * np.abs(x).max())


@SETTINGS
@given(n=st.integers(1, 200), p=st.sampled_from([0.1, 0.5, 0.9]), seed=seeds)
def test_dropout_on_a_given_mask(n, p, seed):
    rng = np.random.default_rng(seed)
    mask = plain.dropout_mask((n,), p, rng, np.float64)
    compare_twins(lambda x: fast.dropout(x, p, True, mask=mask), lambda x: plain.dropout(x, p, True, mask=mask),
                  normal(rng, n), **TWIN, seed=seed, names=["x"])


def test_normal_cdf_twin_matches_the_plain_erf_in_both_float_types():
    """The fast Phi (a Taylor table) against the plain Phi (the series and continued fraction of erf)."""
    xs = np.concatenate([np.linspace(-10, 10, 40001), [0.0, 2.0, 8.49, 8.5, 8.51, -8.5, 30.0, -30.0, np.inf, -np.inf]])
    exact = plain.normal_cdf(xs)
    np.testing.assert_allclose(fast.normal_cdf(xs), exact, rtol=0, atol=2e-15)
    xs32 = xs.astype(np.float32)
    assert fast.normal_cdf(xs32).dtype == np.float32 and fast.normal_cdf(np.float32(0.5)).dtype == np.float32
    # in float32 each is a few float32 steps from the exact Phi (1.2e-7 and 3e-7, parity_tests/test_ops.py)
    np.testing.assert_allclose(fast.normal_cdf(xs32), plain.normal_cdf(xs32), rtol=0, atol=1.2e-7 + 3e-7)
    for dtype in (np.float64, np.float32):
        assert np.isnan(fast.normal_cdf(np.array([np.nan], dtype=dtype))).all()
    assert np.isnan(plain.normal_cdf(np.array([np.nan]))).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gelu_pieces_are_bit_identical_to_one_call(dtype):
    """in_pieces changes where each number is computed, never how."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3 * fast._CHUNK + 17) // 7 * 7) * 3).astype(dtype).reshape(-1, 7)
    grad = rng.standard_normal(a.shape).astype(dtype)
    out, cdf, grad_a = np.empty_like(a), np.empty_like(a), np.empty_like(a)
    fast._gelu_forward(a, out, cdf)  # one call on everything
    fast._gelu_backward(grad, a, cdf, grad_a)
    pieces_out, pieces_cdf = fast.in_pieces(fast._gelu_forward, [a], outputs=2)
    np.testing.assert_array_equal(pieces_out, out)
    np.testing.assert_array_equal(pieces_cdf, cdf)
    np.testing.assert_array_equal(fast.in_pieces(fast._gelu_backward, [grad, a, cdf]), grad_a)
    np.testing.assert_array_equal(fast.in_pieces(fast._gelu_value, [a]), out)  # the no-grad path
    np.testing.assert_array_equal(cdf, fast.normal_cdf(a))
    with minigpt_np.no_grad():
        np.testing.assert_array_equal(fast.gelu(minigpt_np.Tensor(a, requires_grad=True)).data, out)


@pytest.mark.parametrize("mask_of", [plain.dropout_mask, fast.dropout_mask], ids=["plain", "fast"])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_masks_drop_the_right_share_and_scale_the_rest(mask_of, p):
    n = 400_000
    mask = mask_of((n,), p, np.random.default_rng(3), np.float32)
    assert mask.dtype == np.float32
    assert set(np.unique(mask)) == {np.float32(0.0), np.float32(1.0 / (1.0 - p))}
    dropped = float(np.mean(mask == 0))
    assert abs(dropped - p) < 4 * np.sqrt(p * (1 - p) / n)  # four standard errors


def test_kernels_by_name_and_mixed():
    assert kernels("plain") is plain and kernels("fast") is fast
    for op in KERNEL_OPS:
        assert callable(getattr(plain, op)) and callable(getattr(fast, op)), op
    with pytest.raises(ValueError, match="unknown kernels 'quick'; choose one of plain, fast"):
        kernels("quick")
    mixed = mixed_kernels(fast, layer_norm=plain.layer_norm)
    assert mixed.layer_norm is plain.layer_norm and mixed.attention is fast.attention
    with pytest.raises(ValueError, match="not ops of the model"):
        mixed_kernels(fast, layernorm=plain.layer_norm)


# ---------------------------------------------------------------------------- the whole model
CONFIG = minigpt_np.GPTConfig(vocab_size=13, d_model=32, n_layers=2, n_heads=4, context_length=16, dropout=0.0,
                              dtype="float64")


def model_pair(config=CONFIG, seed=0):
    return (minigpt_np.TinyGPT(config, seed=seed, kernels="plain"), minigpt_np.TinyGPT(config, seed=seed, kernels="fast"))


def within(actual, reference, rtol, what):
    scale = np.max(np.abs(reference), initial=0.0)
    diff = np.max(np.abs(np.asarray(actual) - np.asarray(reference)), initial=0.0)
    assert diff <= rtol * scale, f"{what}: max abs diff {diff:.3e}, max|plain| {scale:.3e}, allowed rel {rtol:g}"
    return diff / scale if scale else 0.0


@pytest.mark.parametrize("last", [None, 3])
def test_model_logits_loss_and_every_gradient_agree(last):
    plain_model, fast_model = model_pair()
    rng = np.random.default_rng(1)
    ids = rng.integers(0, CONFIG.vocab_size, (4, 16))
    targets = rng.integers(0, CONFIG.vocab_size, (4, 16 if last is None else last))
    results = []
    for model in (plain_model, fast_model):
        logits = model(ids, last)
        loss = plain.cross_entropy(logits, targets)
        loss.backward()
        results.append((logits.data, loss.data, {name: p.grad for name, p in model.named_parameters()}))
    (plain_logits, plain_loss, plain_grads), (fast_logits, fast_loss, fast_grads) = results
    within(fast_logits, plain_logits, 1e-12, "logits")
    within(fast_loss, plain_loss, 1e-12, "loss")
    assert list(fast_grads) == list(plain_grads)
    for name in plain_grads:
        within(fast_grads[name], plain_grads[name], 1e-12, name)


def test_twenty_training_steps_give_the_same_losses():
    losses = {}
    for model in model_pair():
        optimizer = AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        rng = np.random.default_rng(2)  # the same batches for both
        losses[model.kernels] = []
        for _ in range(20):
            ids = rng.integers(0, CONFIG.vocab_size, (8, 16))
            loss = plain.cross_entropy(model(ids[:, :-1]), ids[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses[model.kernels].append(float(loss.data))
    assert losses["plain"][-1] < losses["plain"][0]  # it trains
    np.testing.assert_allclose(losses["fast"], losses["plain"], rtol=0, atol=1e-10)


def test_weights_do_not_depend_on_the_form_and_load_across():
    plain_model, fast_model = model_pair(seed=7)
    for (name, a), (_, b) in zip(plain_model.state_dict().items(), fast_model.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    trained = {name: array + 0.5 for name, array in plain_model.state_dict().items()}
    fast_model.load_state_dict(trained)
    for name, array in fast_model.state_dict().items():
        np.testing.assert_array_equal(array, trained[name], err_msg=name)


@pytest.mark.parametrize("form", ["plain", "fast"])
def test_dropout_training_runs_on_both_forms(form):
    config = minigpt_np.GPTConfig(vocab_size=13, d_model=32, n_layers=1, n_heads=4, context_length=16, dropout=0.2)
    model = minigpt_np.TinyGPT(config, seed=0, kernels=form)
    ids = np.random.default_rng(0).integers(0, 13, (2, 16))
    first, second = model(ids).data, model(ids).data  # fresh masks each call
    assert not np.array_equal(first, second)
    model.eval()
    np.testing.assert_array_equal(model(ids).data, model(ids).data)

"""The numpy engine's own rules: accumulation, reuse, repeatability, no_grad, dtypes, clear errors."""
import io

import numpy as np
import pytest

import minigpt_np
from minigpt_np import fast
from minigpt_np import functional as F
from minigpt_np.autograd import Tensor, graph, no_grad, unbroadcast


def test_reused_node_gets_the_sum_of_its_uses():
    x = Tensor(np.array([2.0, -1.0]), requires_grad=True)
    y = x * x + x * 3.0  # x used three times: d/dx = 2x + 3
    y.backward(np.ones(2))
    assert np.array_equal(x.grad, 2 * x.data + 3)


def test_leaf_gradients_accumulate_and_zero_grad_resets():
    x = Tensor(np.array([1.5]), requires_grad=True)
    loss = (x * x).sum()
    loss.backward()
    first = x.grad.copy()
    loss.backward()  # the graph can be walked again; leaves accumulate like torch
    assert np.array_equal(x.grad, 2 * first)
    x.zero_grad()
    loss.backward()
    assert np.array_equal(x.grad, first)


def test_model_backward_is_repeatable_after_zero_grad():
    config = minigpt_np.GPTConfig(vocab_size=9, d_model=16, n_layers=2, n_heads=2, context_length=8,
                                  dropout=0.0, dtype="float64")
    model = minigpt_np.TinyGPT(config, seed=0)
    ids = np.arange(16).reshape(2, 8) % 9
    loss = F.cross_entropy(model(ids), np.roll(ids, -1, axis=1))
    loss.backward()
    first = {name: p.grad.copy() for name, p in model.named_parameters()}
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    loss.backward()
    for name, p in model.named_parameters():
        assert np.array_equal(p.grad, first[name]), name


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = (x * 2.0).sum()
    assert not y.requires_grad and y._parents == ()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_backward_errors_are_clear():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="needs a scalar"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match="does not match"):
        (x * 2.0).backward(np.ones(4))


def test_unbroadcast_sums_stretched_axes():
    grad = np.ones((2, 3, 4))
    assert unbroadcast(grad, (4,)).tolist() == [6.0] * 4
    assert unbroadcast(grad, (3, 1)).tolist() == [[8.0]] * 3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_array_keeps_the_configured_dtype(dtype):
    config = minigpt_np.GPTConfig(vocab_size=9, d_model=16, n_layers=1, n_heads=4, context_length=8,
                                  dropout=0.1, dtype=dtype)
    model = minigpt_np.TinyGPT(config, seed=0)
    logits = model(np.zeros((2, 5), dtype=np.int64))
    loss = F.cross_entropy(logits, np.ones((2, 5), dtype=np.int64))
    loss.backward()
    assert logits.dtype == loss.dtype == np.dtype(dtype)
    for name, p in model.named_parameters():
        assert p.data.dtype == p.grad.dtype == np.dtype(dtype), name


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="divisible"):
        minigpt_np.GPTConfig(vocab_size=10, d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="dtype"):
        minigpt_np.GPTConfig(vocab_size=10, dtype="float16")
    with pytest.raises(ValueError, match="vocab_size"):
        minigpt_np.GPTConfig(vocab_size=0)
    with pytest.raises(ValueError, match="dropout"):
        minigpt_np.GPTConfig(vocab_size=10, dropout=1.0)


def test_model_rejects_bad_ids():
    model = minigpt_np.TinyGPT(minigpt_np.GPTConfig(vocab_size=5, d_model=8, n_heads=2, context_length=4), seed=0)
    with pytest.raises(ValueError, match="outside 1..context_length"):
        model(np.zeros((1, 5), dtype=int))
    with pytest.raises(ValueError, match=r"lie in 0..4"):
        model(np.array([[0, 5]]))
    with pytest.raises(ValueError, match="shape"):
        model(np.array([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        model(np.array([[0.5, 1.0]]))
    for bad_last in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="last must be a positive number"):
            model(np.array([[0, 1]]), last=bad_last)
    assert model(np.array([[0, 1, 2]]), last=2).shape == (1, 2, 5)
    assert model(np.array([[0, 1, 2]]), last=7).shape == (1, 3, 5)  # more than there are: all of them


def test_load_state_dict_errors_name_the_problem():
    model = minigpt_np.TinyGPT(minigpt_np.GPTConfig(vocab_size=5, d_model=8, n_heads=2, context_length=4), seed=0)
    state = model.state_dict()
    state["extra"] = np.zeros(1)
    with pytest.raises(KeyError, match="unexpected keys \\['extra'\\]"):
        model.load_state_dict(state)
    del state["extra"]
    state["lm_head.weight"] = np.zeros((6, 8))
    with pytest.raises(ValueError, match="lm_head.weight has shape"):
        model.load_state_dict(state)


@pytest.mark.parametrize("ops", [F, fast], ids=["plain", "fast"])
def test_embedding_gradient_sums_repeated_ids(ops):
    """The scatter-add (np.add.at; fast: sorted runs) equals a loop over positions, ids used many times or never."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 7, (5, 9))
    ids[0, :] = 3
    weight = Tensor(rng.standard_normal((9, 4)), requires_grad=True)
    upstream = rng.standard_normal((5, 9, 4))
    (ops.embedding(ids, weight) * Tensor(upstream)).sum().backward()
    expected = np.zeros((9, 4))
    for position, token in np.ndenumerate(ids):
        expected[token] += upstream[position]
    np.testing.assert_allclose(weight.grad, expected, rtol=1e-12, atol=1e-12)


def test_every_tensor_records_its_op_and_repr_shows_it():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    y = (x * 2.0).sum(axis=-1)
    assert x.op == "leaf" and y.op == "sum" and (x * 2.0).op == "mul"
    assert repr(y) == "Tensor(op=sum, shape=(2,), dtype=float64, requires_grad=True)"
    model = minigpt_np.TinyGPT(minigpt_np.GPTConfig(vocab_size=5, d_model=8, n_heads=2, context_length=4), seed=0)
    assert repr(model.ln_f.weight) == "Tensor(op=parameter, name='ln_f.weight', shape=(8,), dtype=float32, requires_grad=True)"
    with no_grad():
        assert model(np.zeros((1, 3), dtype=int)).op == "linear"  # recorded without a graph too


@pytest.mark.parametrize("kernels", ["plain", "fast"])
def test_graph_prints_what_backward_walks(kernels):
    config = minigpt_np.GPTConfig(vocab_size=5, d_model=8, n_layers=1, n_heads=2, context_length=4, dropout=0.0)
    model = minigpt_np.TinyGPT(config, seed=0, kernels=kernels)
    loss = F.cross_entropy(model(np.zeros((1, 3), dtype=int)), np.ones((1, 3), dtype=int))
    text = io.StringIO()
    graph(loss, file=text)
    lines = text.getvalue().splitlines()
    ops = [line.split()[1] for line in lines]
    prefix = "" if kernels == "plain" else "fast."
    assert lines[0].startswith("#0") and ops[0] == "cross_entropy" and "<- #1" in lines[0]
    assert ops.count(prefix + "attention") == 1 and ops.count(prefix + "layer_norm") == 3
    assert ops.count(prefix + "gelu") == 1 and ops.count(prefix + "embedding") == 2
    parameters = [line.split()[2] for line in lines if line.split()[1] == "parameter"]
    assert sorted(parameters) == sorted(name for name, _ in model.named_parameters())
    assert len(lines) == len(loss._topological_order())  # one line per node backward visits
    for index, line in enumerate(lines):  # every parent is listed below its child
        for parent in line.split("<-")[1].split(",") if "<-" in line else []:
            assert int(parent.strip().lstrip("#").split()[0]) > index, line


def test_division_by_a_constant_computes_no_gradient_for_it():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    grads = (x / 4.0)._backward_fn(np.ones(2))
    assert grads[1] is None and np.array_equal(grads[0], [0.25, 0.25])
    b = Tensor(np.array([2.0]), requires_grad=True)
    (Tensor(np.array([3.0])) / b).sum().backward()  # a tensor divisor still gets -a / b^2
    assert np.array_equal(b.grad, [-0.75])

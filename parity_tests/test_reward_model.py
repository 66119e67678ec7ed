"""The reward model and its Bradley-Terry loss, numpy against torch: log sigmoid as an op, the rewards read at each
text's end, the loss and every parameter's gradient, and AdamW steps of reward-model training."""
import numpy as np
import pytest
import torch.nn.functional as TF
from hypothesis import given, settings, strategies as st

from minigpt_np import functional as F
from minigpt_np.config import GPTConfig
from minigpt_np.gradcheck import gradcheck
from minigpt_np.train.backend import NumpyBackend
from minigpt_torch.backend import TorchBackend
from parity_tests.helpers import check
from parity_tests.test_ops import against_torch

DTYPES = ["float64", "float32"]
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(n=st.integers(1, 40), scale=st.sampled_from([0.1, 1.0, 10.0, 100.0, 1000.0]), seed=st.integers(0, 2**32 - 1))
def test_log_sigmoid(dtype, n, scale, seed):
    rng = np.random.default_rng(seed)
    against_torch(F.log_sigmoid, TF.logsigmoid, {"x": rng.standard_normal(n) * scale}, dtype, "log_sigmoid", seed)


def test_log_sigmoid_against_finite_differences():
    assert gradcheck(F.log_sigmoid, np.random.default_rng(0).standard_normal((3, 5)) * 4, seed=0).ok


def twin_reward_models(dtype, seed=0, dropout=0.0):
    """The same reward model on both backends, its head given random weights (they start at 0)."""
    config = GPTConfig(vocab_size=13, d_model=24, n_layers=2, n_heads=3, context_length=12, dropout=dropout,
                       dtype=dtype)
    numpy_backend, torch_backend = NumpyBackend(), TorchBackend()
    np_model = numpy_backend.create_reward_model(config, seed)
    state = numpy_backend.state_dict(np_model)
    rng = np.random.default_rng(seed + 100)
    state["reward_head.weight"] = rng.standard_normal(state["reward_head.weight"].shape).astype(dtype) * 0.3
    state["reward_head.bias"] = rng.standard_normal(1).astype(dtype)
    numpy_backend.load_state_dict(np_model, state)
    torch_model = torch_backend.create_reward_model(config, seed)
    torch_backend.load_state_dict(torch_model, state)
    return (numpy_backend, np_model), (torch_backend, torch_model)


def texts(rng, B, T=12, V=13):
    """Right-padded texts of random lengths: ids (B, T) and each one's last position."""
    ends = rng.integers(0, T, B)
    ids = rng.integers(0, V, (B, T))
    ids[np.arange(T)[None, :] > ends[:, None]] = 0  # the padding
    return ids, ends


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_reward_model_reads_the_same_rewards_and_its_start_gives_every_text_zero(dtype):
    (nb, np_model), (tb, torch_model) = twin_reward_models(dtype)
    ids, ends = texts(np.random.default_rng(1), 7)
    check({"rewards": nb.predict_rewards(np_model, ids, ends)}, {"rewards": tb.predict_rewards(torch_model, ids, ends)},
          dtype, "value", "reward model rewards", scope="model")
    fresh = nb.create_reward_model(np_model.config, 3)
    assert np.all(nb.predict_rewards(fresh, ids, ends) == 0.0)
    changed = ids.copy()
    for row, end in enumerate(ends):
        changed[row, end + 1:] = (changed[row, end + 1:] + 1) % 13  # other padding: the same rewards
    np.testing.assert_array_equal(nb.predict_rewards(np_model, changed, ends), nb.predict_rewards(np_model, ids, ends))


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_bradley_terry_loss_and_every_gradient(dtype):
    (nb, np_model), (tb, torch_model) = twin_reward_models(dtype)
    rng = np.random.default_rng(2)
    chosen, rejected = texts(rng, 6), texts(rng, 6)
    losses = {}
    for name, backend, model in (("numpy", nb, np_model), ("torch", tb, torch_model)):
        loss = backend.preference_loss(backend.rewards(model, *chosen), backend.rewards(model, *rejected), 1 / 6)
        losses[name] = loss
        backend.backward(loss)
    check({"loss": losses["numpy"]}, {"loss": losses["torch"]}, dtype, "value", "Bradley-Terry loss", scope="model")
    np_grads = {name: p.grad for name, p in np_model.named_parameters()}
    torch_grads = {name: p.grad for name, p in torch_model.named_parameters()}
    assert sorted(np_grads) == sorted(torch_grads) and "reward_head.weight" in np_grads
    assert "lm_head.weight" not in np_grads
    check(np_grads, {name: torch_grads[name] for name in np_grads}, dtype, "grad", "Bradley-Terry loss",
          scope="model")
    # only differences of rewards enter the loss: the head's bias gets no gradient
    rounding = 1e-6 if dtype == "float32" else 1e-14
    assert abs(float(np_grads["reward_head.bias"][0])) <= rounding


@pytest.mark.parametrize("dtype", DTYPES)
def test_ten_steps_of_reward_model_training(dtype):
    """Each step's loss within the contract's trajectory tolerance; in float64 also every weight after
    10 AdamW steps. (In float32 a gradient that is zero but for rounding, the attention's key bias,
    is rounding noise on both sides, and AdamW turns noise into steps of size lr.)"""
    (nb, np_model), (tb, torch_model) = twin_reward_models(dtype)
    optimizers = {"numpy": nb.create_optimizer(np_model, 1e-3, 0.01),
                  "torch": tb.create_optimizer(torch_model, 1e-3, 0.01)}
    rng = np.random.default_rng(3)
    losses = {"numpy": [], "torch": []}
    for _ in range(10):
        chosen, rejected = texts(rng, 4), texts(rng, 4)
        for name, backend, model in (("numpy", nb, np_model), ("torch", tb, torch_model)):
            loss = backend.preference_loss(backend.rewards(model, *chosen), backend.rewards(model, *rejected), 0.25)
            losses[name].append(float(backend.read([backend.loss_value(loss)])[0]))
            backend.optimizer_step(model, optimizers[name], loss, 1.0)
    check({"loss": np.array(losses["numpy"])}, {"loss": np.array(losses["torch"])}, dtype, "trajectory",
          "reward model, 10 AdamW steps: each step's loss", scope="training")
    if dtype == "float64":
        check(nb.state_dict(np_model), tb.state_dict(torch_model), dtype, "optimizer",
              "reward model, 10 AdamW steps: weights", scope="training")


def test_a_reward_model_refuses_ends_outside_its_texts():
    (nb, np_model), (tb, torch_model) = twin_reward_models("float64")
    ids, _ = texts(np.random.default_rng(4), 3)
    for backend, model in ((nb, np_model), (tb, torch_model)):
        for ends in (np.array([0, 1]), np.array([0, 1, 12]), np.array([0, -1, 2]), np.array([0.0, 1.0, 2.0])):
            with pytest.raises(ValueError, match="ends must be one integer position"):
                backend.predict_rewards(model, ids, ends)

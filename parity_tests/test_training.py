"""Optimizer steps and whole training runs: numpy against torch on the same batches."""
import dataclasses

import numpy as np
import pytest
import torch

import minigpt_np
from minigpt_np import functional as F
from minigpt_np.optim import AdamW, clip_grad_norm_
from parity_tests.helpers import check, to_numpy
from parity_tests.test_model import CONFIGS, torch_loss, twin_models

DTYPES = ["float64", "float32"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_and_clipping_ten_steps(dtype):
    """Same gradients in, same parameters out, for 10 steps of clip + AdamW (clipping active on some)."""
    np_model, torch_model = twin_models(CONFIGS[2], dtype)
    settings = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    np_opt = AdamW(np_model.parameters(), **settings)
    torch_opt = torch.optim.AdamW(torch_model.parameters(), **settings)
    rng = np.random.default_rng(0)
    np_params, torch_params = dict(np_model.named_parameters()), dict(torch_model.named_parameters())
    for step in range(10):
        scale = [0.01, 10.0][step % 2]  # odd steps exceed max_norm, even steps do not
        for name, p in np_params.items():
            grad = (rng.standard_normal(p.shape) * scale).astype(dtype)
            p.grad = grad.copy()
            torch_params[name].grad = torch.from_numpy(grad.copy())
        if step == 7:  # a parameter without a gradient is skipped by both
            np_params["ln_f.bias"].grad = None
            torch_params["ln_f.bias"].grad = None
        norm = clip_grad_norm_(np_model.parameters(), 1.0)
        ref_norm = torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 1.0)
        check({"grad_norm": np.float64(norm)}, {"grad_norm": ref_norm}, dtype, "grad", f"clip step {step}",
              scope="training")
        np_opt.step()
        torch_opt.step()
        check({n: p for n, p in np_params.items()}, {n: p for n, p in torch_params.items()},
              dtype, "optimizer", f"AdamW step {step + 1}", scope="training")


@pytest.mark.parametrize("kernels", ["plain", "fast"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fifty_training_steps_same_losses(dtype, kernels):
    """Pretraining-style steps (forward, loss, backward, clip 1.0, AdamW) on the same batches, with the
    numpy model on either form of its ops."""
    spec = dict(CONFIGS[0], T=32)
    np_model, torch_model = twin_models(spec, dtype, seed=3, kernels=kernels)
    settings = dict(lr=3e-3, weight_decay=0.01)  # a high lr so that the weights move far in 50 steps
    np_opt = AdamW(np_model.parameters(), **settings)
    torch_opt = torch.optim.AdamW(torch_model.parameters(), **settings)
    # A learnable stream: the next token is the current one plus one, with noise.
    rng = np.random.default_rng(4)
    losses, ref_losses = [], []
    for step in range(50):
        start = rng.integers(0, spec["vocab_size"], (8, 1))
        stream = (start + np.arange(spec["T"] + 1)) % spec["vocab_size"]
        noise = rng.random(stream.shape) < 0.1
        stream[noise] = rng.integers(0, spec["vocab_size"], noise.sum())
        ids, targets = stream[:, :-1], stream[:, 1:]

        np_opt.zero_grad()
        loss = F.cross_entropy(np_model(ids), targets)
        loss.backward()
        clip_grad_norm_(np_model.parameters(), 1.0)
        np_opt.step()

        torch_opt.zero_grad()
        _, ref_loss = torch_loss(torch_model, ids, targets)
        ref_loss.backward()
        torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 1.0)
        torch_opt.step()
        losses.append(loss.item())
        ref_losses.append(ref_loss.item())

    check({"loss per step": np.array(losses)}, {"loss per step": np.array(ref_losses)}, dtype, "trajectory",
          f"50 training steps {kernels}", scope="training")
    assert losses[-1] < 0.7 * losses[0], f"training did not learn: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_dropout_modes():
    """Eval mode is the identity; train mode keeps about 1 - p of the entries, scaled by 1 / (1 - p)."""
    rng = np.random.default_rng(0)
    x = minigpt_np.Tensor(np.ones((200, 500)))
    assert F.dropout(x, 0.3, training=False, rng=rng) is x
    out = F.dropout(x, 0.3, training=True, rng=rng).data
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.005  # 100,000 draws: the std of the share is 0.0014
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=0, atol=1e-15)


def test_model_dropout_is_seeded_and_off_in_eval():
    config = minigpt_np.GPTConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, context_length=8,
                                  dropout=0.5, dtype="float64")
    ids = np.arange(16).reshape(2, 8) % 11
    a, b = minigpt_np.TinyGPT(config, seed=1), minigpt_np.TinyGPT(config, seed=1)
    assert np.array_equal(a(ids).data, b(ids).data)  # same seed, same masks
    assert not np.array_equal(a(ids).data, a(ids).data)  # new masks each call
    a.eval()
    without_dropout = minigpt_np.TinyGPT(dataclasses.replace(config, dropout=0.0), seed=2)
    without_dropout.load_state_dict(a.state_dict())
    assert np.array_equal(a(ids).data, without_dropout(ids).data)  # eval mode: dropout is the identity


@pytest.mark.parametrize("dtype", DTYPES)
def test_fifty_backend_steps_with_the_torch_backends_fused_adamw(dtype):
    """The stages' own training step, backend against backend: create_model, create_optimizer (torch's
    fused AdamW on one side), forward, weighted_nll, optimizer_step (clip + AdamW) and read, for 50 steps
    on the same batches. Every step's loss and gradient norm agree, and so do the final weights and the
    optimizer's moments and step counts (what a checkpoint saves)."""
    from minigpt_np.config import GPTConfig
    from minigpt_np.train.backend import NumpyBackend
    from minigpt_torch.backend import TorchBackend

    config = GPTConfig(vocab_size=23, d_model=32, n_layers=2, n_heads=4, context_length=24, dropout=0.0, dtype=dtype)
    rng = np.random.default_rng(5)
    batches = []
    for _ in range(50):  # a learnable stream as above; the weights put the mean over a random mask
        start = rng.integers(0, 23, (6, 1))
        stream = (start + np.arange(25)) % 23
        counted = rng.random((6, 24)) < 0.8
        batches.append((stream[:, :-1], stream[:, 1:], counted / counted.sum()))
    trajectories, finals = {}, {}
    for backend in (NumpyBackend(), TorchBackend()):
        model = backend.create_model(config, seed=2)
        optimizer = backend.create_optimizer(model, lr=3e-3, weight_decay=0.01)
        backend.set_training(model, True)
        handles = []
        for step, (ids, targets, weights) in enumerate(batches):
            backend.seed_dropout(model, step)
            loss = backend.weighted_nll(backend.forward(model, ids), targets, weights)
            handles += [backend.loss_value(loss), backend.optimizer_step(model, optimizer, loss, 0.5)]
        numbers = np.array(backend.read(handles))
        trajectories[backend.name] = {"loss per step": numbers[0::2], "gradient norm per step": numbers[1::2]}
        arrays, steps = backend.optimizer_state(model, optimizer)
        finals[backend.name] = (backend.state_dict(model), arrays, steps)
    assert (trajectories["torch"]["gradient norm per step"] > 0.5).sum() >= 5  # clipping was active on some steps
    assert trajectories["numpy"]["loss per step"][-1] < 0.7 * trajectories["numpy"]["loss per step"][0]
    what = "50 backend steps, fused AdamW"
    check(trajectories["numpy"], trajectories["torch"], dtype, "trajectory", what, scope="training")
    (weights, moments, steps), (ref_weights, ref_moments, ref_steps) = finals["numpy"], finals["torch"]
    # The key projection's bias has no true gradient (it shifts every score of a query by the same amount,
    # which the softmax cancels): its gradient is rounding noise, which AdamW normalises into steps of up
    # to lr, so in float32 the two backends' key biases wander apart. They are held to that bound; the
    # query and value thirds of the bias, like every other tensor, to the contract.
    for tensors in (weights, ref_weights, moments, ref_moments):
        for name in [name for name in tensors if name.endswith("in_proj_bias")]:
            query, key, value = np.split(np.asarray(to_numpy(tensors.pop(name)), dtype=np.float64), 3)
            tensors[name + " (query, value)"] = np.concatenate([query, value])
            tensors[name + " (key)"] = key
    for tensors in (weights, ref_weights):
        for name in [name for name in tensors if name.endswith("(key)")]:
            assert np.abs(tensors.pop(name)).max() <= 50 * 3e-3, name
    for tensors in (moments, ref_moments):
        for name in [name for name in tensors if name.endswith("(key)")]:
            tensors.pop(name)
    check(weights, ref_weights, dtype, "trajectory", what + ": final weights", scope="training")
    check(moments, ref_moments, dtype, "trajectory", what + ": AdamW moments", scope="training")
    assert steps == ref_steps and set(steps.values()) == {50}

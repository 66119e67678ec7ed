"""The Backend implementations against each other: the stages' loss, sampling, and whole runs."""
import json
from functools import partial

import numpy as np
import pytest

from minigpt_np.train.backend import NumpyBackend
from minigpt_np.train.sampling import top_k_mask
from minigpt_np.train.data import IGNORE
from minigpt_np.train.pipeline import run_pipeline
from minigpt_np.train.settings import settings_for
from minigpt_np.train.rl import ADVANTAGES, advantages, policy_windows
from minigpt_np.train.sampling import generate
from minigpt_torch.backend import TorchBackend
from parity_tests.helpers import check
from parity_tests.test_model import twin_models

DTYPES = ["float64", "float32"]
SPEC = dict(vocab_size=13, d_model=24, n_layers=2, n_heads=3, context_length=12, T=12)


def grads(model):
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.6, 5), (1.7, 1)])
def test_weighted_nll_and_its_gradients(dtype, temperature, top_k):
    np_model, torch_model = twin_models(SPEC, dtype)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 13, (4, 12))
    targets = rng.integers(0, 13, (4, 12))
    targets[rng.random((4, 12)) < 0.3] = IGNORE
    weights = np.where(targets != IGNORE, rng.standard_normal((4, 12)), 0.0)
    numpy_backend, torch_backend = NumpyBackend(), TorchBackend()
    if top_k is not None:  # the loss is only defined for targets inside the top-k: use sampled ones
        logits = numpy_backend.predict(np_model, ids)
        allowed = ~top_k_mask(logits / temperature, top_k)
        targets = np.where(targets != IGNORE, np.argmax(allowed * rng.random(allowed.shape), axis=-1), IGNORE)
    loss = numpy_backend.weighted_nll(numpy_backend.forward(np_model, ids), targets, weights, temperature, top_k)
    ref = torch_backend.weighted_nll(torch_backend.forward(torch_model, ids), targets, weights, temperature, top_k)
    loss.backward()
    ref.backward()
    what = f"weighted_nll T={temperature} k={top_k}"
    check({"loss": loss}, {"loss": ref}, dtype, "value", what, scope="model")
    check(grads(np_model), grads(torch_model), dtype, "grad", what, scope="model")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("advantage", ADVANTAGES)
@pytest.mark.parametrize("kl_coef, entropy_coef", [(0.0, 0.0), (0.1, 0.02)])
def test_reinforce_loss_and_gradients_on_the_same_rollouts(dtype, advantage, kl_coef, entropy_coef):
    """The RL loss (policy gradient through policy_windows + weighted_nll, exact KL to a reference
    model and entropy through kl_entropy), numpy vs torch, on one fixed set of rollouts from two
    prompts of different lengths that run past the context window (every kind of window is used)."""
    np_model, torch_model = twin_models(SPEC, dtype, seed=0)
    np_reference, _ = twin_models(SPEC, dtype, seed=1)
    numpy_backend, torch_backend = NumpyBackend(), TorchBackend()
    prompts = [np.array([1, 2, 3, 4, 5, 6, 7, 8]), np.array([9, 10, 11])]
    generated, lengths, _ = generate(partial(numpy_backend.predict, np_model), prompts, 3, 10, 12,
                                     0.8, 6, np.random.default_rng(3), stop_id=0)
    sample_prompts = [prompts[0]] * 3 + [prompts[1]] * 3
    assert max(len(p) + n for p, n in zip(sample_prompts, lengths)) > 13
    rewards = np.array([0.0, 1.5, 2.0, 0.5, 0.5, 1.0])
    per_sample = np.concatenate([advantages(rewards[:3], advantage, 0.7), advantages(rewards[3:], advantage, 0.7)]) / 6
    batches = policy_windows(sample_prompts, generated, lengths, 12)
    assert len(batches) == 2  # the first windows and the later ones
    losses = {}
    for name, backend, model in (("numpy", numpy_backend, np_model), ("torch", torch_backend, torch_model)):
        total = None
        for ids, targets, sample_index in batches:
            counted = targets != IGNORE
            last = targets.shape[1]  # the later windows: their last position only
            part = backend.weighted_nll(backend.forward(model, ids, last), targets,
                                        np.where(counted, per_sample[sample_index][:, None], 0.0), 0.8, 6)
            if kl_coef or entropy_coef:
                logits = backend.forward(model, ids, last)
                part = part + backend.kl_entropy(logits, numpy_backend.predict(np_reference, ids, last),
                                                 counted * kl_coef, counted * entropy_coef)
            total = part if total is None else total + part
        total.backward()
        losses[name] = total
    what = f"REINFORCE {advantage} kl={kl_coef} entropy={entropy_coef}"
    check({"loss": losses["numpy"]}, {"loss": losses["torch"]}, dtype, "value", what, scope="model")
    check(grads(np_model), grads(torch_model), dtype, "grad", what, scope="model")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature, top_k", [(0.7, 5), (1.3, None), (0.0, None)], ids=["T0.7-k5", "T1.3", "greedy"])
def test_sampling_draws_the_same_tokens_on_both_backends(dtype, temperature, top_k):
    """Same weights, same uniforms: the same tokens, lengths and stops, also in float32 (where the
    logits differ in their last bits) and greedy (argmax, no uniforms). The prompts run past the
    context window, so the crop is used."""
    np_model, torch_model = twin_models(SPEC, dtype)
    prompts = [np.array([3, 4, 5]), np.array([6]), np.arange(1, 13)]
    results = []
    for backend, model in ((NumpyBackend(), np_model), (TorchBackend(), torch_model)):
        results.append(generate(partial(backend.predict, model), prompts, 4, 20, 12, temperature, top_k,
                                np.random.default_rng(11), stop_id=0))
    for a, b in zip(*results):
        assert np.array_equal(a, b)
    tokens, lengths, _ = results[0]
    assert lengths.max() > 5  # something was generated
    if temperature:
        assert len({tuple(row) for row in tokens}) > 3  # the draws differ from sample to sample
    else:  # greedy: the samples of one prompt are the same, and are each step's argmax
        assert all(np.array_equal(tokens[4 * p], tokens[4 * p + s]) for p in range(3) for s in range(4))
        sequence = np.concatenate([prompts[2], tokens[8, :lengths[8]]])
        for j in range(len(prompts[2]), len(sequence)):
            window = sequence[max(0, j - 12):j][None]
            assert sequence[j] == NumpyBackend().predict(np_model, window)[0, -1].argmax()


def test_whole_pipeline_runs_agree(tmp_path):
    """All three stages on both backends, float64 and dropout 0: every logged loss and reward agree."""
    common = dict(runs_dir=str(tmp_path), dtype="float64", dropout=0.0, d_model=32, n_heads=4, context_length=48,
                  batch_size=4, pretrain_steps=12, pretrain_eval_every=6, sft_steps=6, sft_eval_every=3,
                  rl_steps=3, rl_eval_every=3, rl_samples=4, max_new_tokens=24, eval_windows=4, progress=False,
                  pretrain_lr=3e-3, sft_lr=3e-3, rl_lr=1e-3, rl_kl_coef=0.1, rl_entropy_coef=0.01)
    records = {}
    for backend in ("numpy", "torch"):
        run_pipeline(settings_for("quick", backend=backend, name=backend, **common), notify=lambda m: None)
        records[backend] = [json.loads(line) for line in (tmp_path / backend / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"], sorted(r)) for r in records["numpy"]] == \
           [(r["stage"], r["step"], sorted(r)) for r in records["torch"]]
    for name in ("train_loss", "policy_loss", "val_loss", "answer_loss", "reward_mean", "format_rate", "kl",
                 "entropy", "degenerate_logprob"):
        ours = [r[name] for r in records["numpy"] if name in r]
        theirs = [r[name] for r in records["torch"] if name in r]
        assert ours, name
        check({name: np.array(ours)}, {name: np.array(theirs)}, "float64", "trajectory", "pipeline", scope="training")


def test_torch_training_steps_read_nothing_back_until_read():
    """On a GPU every number read from a device tensor (``.item()``, ``float(t)``: the op
    aten._local_scalar_dense) makes the host wait for the device. The torch backend's training steps
    read none; ``read`` then copies all their losses and norms to the host in one batch. Checked on the
    CPU by counting the ops torch dispatches; the values are the ones an immediate read gives."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from minigpt_np.config import GPTConfig

    class CountOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    backend = TorchBackend("cpu")
    config = GPTConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=2, context_length=8, dropout=0.1)
    model = backend.create_model(config, 0)
    optimizer = backend.create_optimizer(model, 1e-3, 0.01)
    backend.set_training(model, True)
    ids = np.random.default_rng(0).integers(0, 20, (4, 9))
    handles = []
    with CountOps() as steps:
        for _ in range(3):
            loss = backend.weighted_nll(backend.forward(model, ids[:, :-1]), ids[:, 1:], np.full((4, 8), 1 / 32))
            handles += [backend.loss_value(loss), backend.optimizer_step(model, optimizer, loss, 1.0)]
    assert len(steps.ops) > 100 and torch.ops.aten._local_scalar_dense.default not in steps.ops
    immediate = [float(handle) for handle in handles]
    with CountOps() as reading:
        numbers = backend.read(handles)
    assert reading.ops.count(torch.ops.aten.stack.default) == 1  # one tensor of all the numbers, one copy
    assert numbers == immediate and len(set(numbers)) == 6

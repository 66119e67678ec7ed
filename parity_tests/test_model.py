"""The whole TinyGPT: numpy (both forms of its ops) against the torch reference, weights moved by name."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minigpt_np
import minigpt_torch
from minigpt_np import functional as F
from parity_tests.helpers import check

DTYPES = ["float64", "float32"]
FORMS = ["plain", "fast"]  # the numpy model's kernels

# (vocab, width, layers, heads, context, sequence length used): the default first, then others.
CONFIGS = [
    dict(vocab_size=36, d_model=128, n_layers=2, n_heads=4, context_length=64, T=64),
    dict(vocab_size=36, d_model=128, n_layers=2, n_heads=4, context_length=64, T=17),
    dict(vocab_size=11, d_model=24, n_layers=1, n_heads=3, context_length=16, T=16),
    dict(vocab_size=50, d_model=32, n_layers=3, n_heads=8, context_length=20, T=9),
    dict(vocab_size=7, d_model=16, n_layers=2, n_heads=1, context_length=8, T=1),
    dict(vocab_size=90, d_model=40, n_layers=4, n_heads=5, context_length=32, T=31),
]


def config_id(spec):
    return "V{vocab_size}-d{d_model}-L{n_layers}-H{n_heads}-ctx{context_length}-T{T}".format(**spec)


def twin_models(spec, dtype, seed=0, dropout=0.0, kernels="fast"):
    """A numpy TinyGPT (with the given kernels) and the torch reference holding the same weights
    (copied numpy -> torch)."""
    spec = {k: v for k, v in spec.items() if k != "T"}
    config = minigpt_np.GPTConfig(**spec, dropout=dropout, dtype=dtype)
    np_model = minigpt_np.TinyGPT(config, seed=seed, kernels=kernels)
    torch_model = minigpt_torch.TinyGPT(config)
    minigpt_torch.load_numpy_state_dict(torch_model, np_model.state_dict(), strict=True)
    return np_model, torch_model


def random_batch(spec, B, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, spec["vocab_size"], (B, spec["T"]))
    targets = rng.integers(0, spec["vocab_size"], (B, spec["T"]))
    return ids, targets


def torch_loss(torch_model, ids, targets):
    logits = torch_model(torch.as_tensor(ids))
    loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(targets).reshape(-1))
    return logits, loss


@pytest.mark.parametrize("kernels", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", CONFIGS, ids=config_id)
def test_logits_loss_and_every_gradient(spec, dtype, kernels):
    np_model, torch_model = twin_models(spec, dtype, kernels=kernels)
    ids, targets = random_batch(spec, B=4, seed=1)

    logits = np_model(ids)
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    ref_logits, ref_loss = torch_loss(torch_model, ids, targets)
    ref_loss.backward()

    what = f"{config_id(spec)} {kernels}"
    assert logits.dtype == np.dtype(dtype)
    check({"logits": logits, "loss": loss}, {"logits": ref_logits, "loss": ref_loss}, dtype, "value", what,
          scope="model")
    check({name: p.grad for name, p in np_model.named_parameters()},
          {name: p.grad for name, p in torch_model.named_parameters()}, dtype, "grad", what, scope="model")


@pytest.mark.parametrize("kernels", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_mode_logits_match(dtype, kernels):
    """In eval mode torch may take its fused fast path; the numbers must still agree."""
    spec = CONFIGS[0]
    np_model, torch_model = twin_models(spec, dtype, dropout=0.1, kernels=kernels)
    np_model.eval()
    torch_model.eval()
    ids, _ = random_batch(spec, B=3, seed=2)
    with minigpt_np.no_grad(), torch.no_grad():
        check({"logits": np_model(ids)}, {"logits": torch_model(torch.as_tensor(ids))}, dtype, "value", f"eval mode {kernels}",
              scope="model")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", [CONFIGS[0], CONFIGS[3], CONFIGS[5]], ids=config_id)
@pytest.mark.parametrize("last", [1, 3])
@pytest.mark.parametrize("kernels", FORMS)
def test_logits_of_the_last_positions(spec, dtype, last, kernels):
    """model(ids, last=n): the last n positions' logits, their final layer computed at those positions only.
    Numpy against torch (values and every gradient of a loss on those positions), and each backend's
    short path against the last n positions of its own whole forward."""
    np_model, torch_model = twin_models(spec, dtype, seed=7, kernels=kernels)
    ids, targets = random_batch(spec, B=3, seed=4)
    last = min(last, spec["T"])
    targets = targets[:, -last:]

    logits = np_model(ids, last=last)
    F.cross_entropy(logits, targets).backward()
    ref_logits = torch_model(torch.as_tensor(ids), last=last)
    V = ref_logits.shape[-1]
    TF.cross_entropy(ref_logits.reshape(-1, V), torch.as_tensor(targets).reshape(-1)).backward()
    what = f"{config_id(spec)} {kernels} last={last}"
    assert logits.shape == (3, last, V)
    check({"logits": logits}, {"logits": ref_logits}, dtype, "value", what, scope="model")
    check({name: p.grad for name, p in np_model.named_parameters()},
          {name: p.grad for name, p in torch_model.named_parameters()}, dtype, "grad", what, scope="model")

    short = {"logits": logits.data, **{name: p.grad.copy() for name, p in np_model.named_parameters()}}
    np_model.zero_grad()
    whole = np_model(ids)[:, -last:]  # the whole forward, then the last positions
    F.cross_entropy(whole, targets).backward()
    check(short, {"logits": whole, **{name: p.grad for name, p in np_model.named_parameters()}}, dtype, "grad",
          f"numpy {what} vs the whole forward", scope="model")
    with torch.no_grad():
        torch_model.eval()  # eval mode: torch's fused fast path for the first layers, and dropout is 0 anyway
        check({"logits": torch_model(torch.as_tensor(ids), last=last)},
              {"logits": torch_model(torch.as_tensor(ids))[:, -last:]}, dtype, "value", f"torch {what} vs whole",
              scope="model")


@pytest.mark.parametrize("backend", ["numpy-plain", "numpy-fast", "torch"])
def test_causality(backend):
    """Changing the token at position t changes no logit at positions before t."""
    spec = CONFIGS[3]
    np_model, torch_model = twin_models(spec, "float64", kernels=backend.split("-")[-1] if "-" in backend else "fast")
    ids, _ = random_batch(spec, B=2, seed=3)
    T, V = spec["T"], spec["vocab_size"]

    def logits_of(batch):
        if backend.startswith("numpy"):
            return np_model(batch).data
        with torch.no_grad():
            return torch_model(torch.as_tensor(batch)).numpy()

    base = logits_of(ids)
    for t in range(T):
        changed = ids.copy()
        changed[:, t] = (changed[:, t] + 1) % V
        after = logits_of(changed)
        assert np.array_equal(after[:, :t], base[:, :t]), f"{backend}: changing position {t} changed earlier logits"
        assert not np.array_equal(after[:, t:], base[:, t:]), f"{backend}: changing position {t} changed nothing"


def test_weights_round_trip_bit_exact():
    spec = CONFIGS[2]
    for dtype in DTYPES:
        np_model, torch_model = twin_models(spec, dtype, seed=5)
        original = np_model.state_dict()
        with torch.no_grad():  # change the torch weights, so the way back is not a no-op
            for p in torch_model.parameters():
                p.mul_(1.5).add_(0.25)
        moved = minigpt_torch.numpy_state_dict(torch_model)
        np_model.load_state_dict(moved, strict=True)
        back = np_model.state_dict()
        assert list(back) == list(original)
        for name in original:
            assert back[name].dtype == np.dtype(dtype)
            assert np.array_equal(back[name], moved[name]), name
        assert not any(np.array_equal(back[name], original[name]) for name in original)
        fresh = minigpt_torch.TinyGPT(np_model.config)
        minigpt_torch.load_numpy_state_dict(fresh, back, strict=True)
        for name, value in fresh.state_dict().items():
            assert torch.equal(value, torch_model.state_dict()[name]), name


def test_numpy_state_dict_loads_strictly_into_the_reference():
    config = minigpt_np.GPTConfig(vocab_size=36)
    np_model = minigpt_np.TinyGPT(config, seed=0)
    reference = minigpt_torch.TinyGPT(config)
    assert np_model.num_parameters() == sum(p.numel() for p in reference.parameters())
    state = {name: torch.from_numpy(value) for name, value in np_model.state_dict().items()}
    reference.load_state_dict(state, strict=True)  # raises on any missing, extra or misshapen key
    assert list(np_model.state_dict()) == list(reference.state_dict())


def test_numpy_init_follows_the_reference_distributions():
    """Same initial distributions as torch's defaults, layers identical as TransformerEncoder's clones."""
    config = minigpt_np.GPTConfig(vocab_size=36)
    ours = minigpt_np.TinyGPT(config, seed=0).state_dict()
    theirs = minigpt_torch.numpy_state_dict(minigpt_torch.TinyGPT(config))
    for name in theirs:
        a, b = ours[name], theirs[name]
        assert abs(a.std() - b.std()) <= 0.1 * b.std() + 1e-12, name
        assert abs(a.max() - b.max()) <= 0.1 * np.abs(b).max() + 1e-12 or name.endswith("embed.weight"), name
    for name in ours:
        if ".layers.1." in name:
            assert np.array_equal(ours[name], ours[name.replace(".layers.1.", ".layers.0.")]), name

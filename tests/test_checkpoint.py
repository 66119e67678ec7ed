"""Checkpoints: round trip, the reference reads them, and damage is reported clearly."""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import minigpt_np
import minigpt_torch
from minigpt_np.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minigpt_np.train.tokenizer import CharTokenizer

CONFIG = minigpt_np.GPTConfig(vocab_size=12, d_model=16, n_layers=2, n_heads=2, context_length=8)
TOKENIZER = CharTokenizer(list("abcdefghij\n"))


def saved(tmp_path, model=None):
    model = model or minigpt_np.TinyGPT(CONFIG, seed=0)
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model.state_dict(), CONFIG, TOKENIZER, stage="pretrain", step=7, complete=True,
                    metrics={"val_loss": 1.5})
    return folder, model


def test_round_trip_and_metadata(tmp_path):
    folder, model = saved(tmp_path)
    checkpoint = load_checkpoint(folder, expect_config=CONFIG, expect_tokenizer=TOKENIZER)
    assert checkpoint.step == 7 and checkpoint.stage == "pretrain" and checkpoint.complete
    assert checkpoint.config == CONFIG and checkpoint.tokenizer == TOKENIZER
    assert checkpoint.meta["metrics"] == {"val_loss": 1.5}
    for name, value in model.state_dict().items():
        assert np.array_equal(checkpoint.weights[name], value)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "model.safetensors"]  # no pickle, no temp


def test_the_torch_reference_loads_a_numpy_checkpoint_strictly(tmp_path):
    folder, model = saved(tmp_path)
    reference = minigpt_torch.TinyGPT(CONFIG)
    weights = {k: torch.from_numpy(v) for k, v in load_file(str(folder / "model.safetensors")).items()}
    reference.load_state_dict(weights, strict=True)
    ids = np.arange(16).reshape(2, 8) % 12
    model.eval()
    reference.eval()
    with torch.no_grad():
        assert np.allclose(reference(torch.as_tensor(ids)).numpy(), model(ids).data, atol=1e-5)


def test_truncated_and_corrupted_files_are_reported(tmp_path):
    folder, _ = saved(tmp_path)
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(folder)
    damaged = bytearray(original)
    damaged[-5] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(folder)
    weights.write_bytes(original)
    (folder / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="damaged or not a minigpt checkpoint"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_checkpoint(tmp_path)


def test_config_or_vocabulary_mismatch_is_reported(tmp_path):
    folder, _ = saved(tmp_path)
    import dataclasses
    with pytest.raises(CheckpointError, match=r"d_model=16 \(this run: 32\)"):
        load_checkpoint(folder, expect_config=dataclasses.replace(CONFIG, d_model=32))
    with pytest.raises(CheckpointError, match="different vocabulary"):
        load_checkpoint(folder, expect_tokenizer=CharTokenizer(list("xyz\n")))
    meta = json.loads((folder / "checkpoint.json").read_text())
    assert meta["vocabulary"] == TOKENIZER.to_list()

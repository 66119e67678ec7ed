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
    names = sorted(p.name for p in folder.iterdir())  # no pickle, no temporaries
    assert names == ["checkpoint.json", checkpoint.weights_path.name] and names[1].startswith("model-")


def test_the_torch_reference_loads_a_numpy_checkpoint_strictly(tmp_path):
    folder, model = saved(tmp_path)
    reference = minigpt_torch.TinyGPT(CONFIG)
    weights = {k: torch.from_numpy(v) for k, v in load_file(str(load_checkpoint(folder).weights_path)).items()}
    reference.load_state_dict(weights, strict=True)
    ids = np.arange(16).reshape(2, 8) % 12
    model.eval()
    reference.eval()
    with torch.no_grad():
        np.testing.assert_allclose(reference(torch.as_tensor(ids)).numpy(), model(ids).data, rtol=0, atol=1e-5)


def test_truncated_and_corrupted_files_are_reported(tmp_path):
    folder, _ = saved(tmp_path)
    weights = load_checkpoint(folder).weights_path
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


def test_a_checkpoint_json_with_missing_keys_another_version_or_a_missing_file_is_named(tmp_path):
    folder, model = saved(tmp_path)
    save_checkpoint(folder, model.state_dict(), CONFIG, TOKENIZER, stage="pretrain", step=8, complete=False,
                    optimizer_arrays={"exp_avg.x": np.zeros(2)}, optimizer_steps={"steps.x": 1})
    meta_path = folder / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    for change, message in [
        (lambda m: m.pop("vocabulary"), "it lacks vocabulary"),
        (lambda m: (m.pop("step"), m.pop("files")), "it lacks step, files"),
        (lambda m: m.update(format_version=2), "has format version 2; this minigpt reads version 1"),
        (lambda m: m.update(files=["model.safetensors"]), "'files' is not a table"),
        (lambda m: m.update(config={"vocab_size": 12, "d_model": "wide"}), "damaged or not a minigpt checkpoint"),
    ]:
        damaged = json.loads(json.dumps(meta))
        change(damaged)
        meta_path.write_text(json.dumps(damaged))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(folder)
    meta_path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="holds no JSON object"):
        load_checkpoint(folder)
    meta_path.write_text(json.dumps(meta))
    optimizer = next(folder.glob("optimizer-*.safetensors"))
    optimizer.unlink()
    with pytest.raises(CheckpointError, match=f"{optimizer.name} is missing"):
        load_checkpoint(folder)


def test_saving_again_removes_the_files_no_checkpoint_names(tmp_path):
    folder, model = saved(tmp_path)
    first = load_checkpoint(folder).weights_path.name
    (folder / "model-0123456789abcdef.safetensors.tmp").write_bytes(b"left by a crash")
    changed = {name: value + 1.0 for name, value in model.state_dict().items()}
    save_checkpoint(folder, changed, CONFIG, TOKENIZER, stage="pretrain", step=8, complete=True)
    names = sorted(p.name for p in folder.iterdir())
    assert first not in names and len(names) == 2 and not any(n.endswith(".tmp") for n in names), names


def test_the_metrics_log_drops_a_last_line_cut_short_and_refuses_a_damaged_one(tmp_path):
    from minigpt_np.train.metrics import MetricsLog
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "pretrain", "step": 1, "train_loss": 3.0}\n{"stage": "pretrain", "st')
    notices = []
    log = MetricsLog(path, notify=notices.append)
    assert [r["step"] for r in log.records] == [1]
    assert len(notices) == 1 and "dropped a last line cut short" in notices[0]
    assert path.read_text() == '{"stage": "pretrain", "step": 1, "train_loss": 3.0}\n'
    log.log("pretrain", 2, train_loss=2.5)
    assert [r["step"] for r in MetricsLog(path, notify=notices.append).records] == [1, 2] and len(notices) == 1
    path.write_text('{"stage": "pretrain", "step": 1}\nnot json\n{"stage": "pretrain", "step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON record"):
        MetricsLog(path)

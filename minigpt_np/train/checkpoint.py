"""Checkpoints that either backend reads: safetensors weights and a JSON description, never pickle.

A checkpoint is a folder:

    model.safetensors      the weights under the reference names (torch's load_state_dict reads them)
    optimizer.safetensors  AdamW's moments by parameter name (to resume a stage)
    checkpoint.json        config, vocabulary, stage, step, metrics, the files' SHA-256 digests

Every file is written to a temporary name and then renamed, and checkpoint.json last, so a crash
leaves either the previous checkpoint or the new one, never a mix. Loading checks the digests, so
a truncated or altered file is reported as such.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..config import GPTConfig
from .tokenizer import CharTokenizer

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message says which file and why."""


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _atomic_write_bytes(path, data):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _atomic_save_arrays(arrays, path):
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, path)


def save_checkpoint(folder, weights, config, tokenizer, *, stage, step, complete, metrics=None,
                    optimizer_arrays=None, optimizer_steps=None, extra=None):
    """Write a checkpoint folder atomically (see the module docstring)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_save_arrays(weights, folder / "model.safetensors")
    files = {"model.safetensors": _digest(folder / "model.safetensors")}
    if optimizer_arrays is not None:
        _atomic_save_arrays(optimizer_arrays, folder / "optimizer.safetensors")
        files["optimizer.safetensors"] = _digest(folder / "optimizer.safetensors")
    description = {
        "format_version": FORMAT_VERSION, "stage": stage, "step": step, "complete": complete,
        "config": config.to_dict(), "vocabulary": tokenizer.to_list(), "files": files,
        "optimizer_steps": optimizer_steps, "metrics": metrics or {}, **(extra or {}),
    }
    _atomic_write_bytes(folder / "checkpoint.json", json.dumps(description, indent=1).encode("utf-8"))


class Checkpoint:
    """A loaded checkpoint: .config, .tokenizer, .weights, .meta (the JSON), and the optimizer state."""

    def __init__(self, folder, meta, weights, optimizer_arrays):
        self.folder, self.meta, self.weights, self.optimizer_arrays = folder, meta, weights, optimizer_arrays
        self.config = GPTConfig(**meta["config"])
        self.tokenizer = CharTokenizer(meta["vocabulary"])

    @property
    def stage(self):
        return self.meta["stage"]

    @property
    def step(self):
        return self.meta["step"]

    @property
    def complete(self):
        return self.meta["complete"]


def load_checkpoint(folder, expect_config=None, expect_tokenizer=None):
    """Read and verify a checkpoint folder; raise CheckpointError with a one-line reason if unusable.

    expect_config / expect_tokenizer: when given, the checkpoint must match them exactly.
    """
    folder = Path(folder)
    meta_path = folder / "checkpoint.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: {meta_path.name} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        config = GPTConfig(**meta["config"])
        tokenizer = CharTokenizer(meta["vocabulary"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{meta_path} is damaged or not a minigpt checkpoint ({error})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    for name, digest in meta.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        if _digest(path) != digest:
            raise CheckpointError(f"{path} is truncated or corrupted (its SHA-256 does not match checkpoint.json)")
    try:
        weights = load_file(str(folder / "model.safetensors"))
        optimizer_path = folder / "optimizer.safetensors"
        optimizer_arrays = load_file(str(optimizer_path)) if "optimizer.safetensors" in meta["files"] else None
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{folder}: cannot read the weights ({error})") from None
    if expect_config is not None and config != expect_config:
        raise CheckpointError(f"{folder} was made with a different model configuration: "
                              f"{_difference(config.to_dict(), expect_config.to_dict())}")
    if expect_tokenizer is not None and tokenizer != expect_tokenizer:
        raise CheckpointError(f"{folder} has a different vocabulary ({tokenizer.vocab_size} characters, "
                              f"this run has {expect_tokenizer.vocab_size})")
    return Checkpoint(folder, meta, weights, optimizer_arrays)


def _difference(have, want):
    return ", ".join(f"{k}={have[k]!r} (this run: {want[k]!r})" for k in want if have.get(k) != want[k])

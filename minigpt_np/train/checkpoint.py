"""Checkpoints that either backend reads: safetensors weights and a JSON description, never pickle.

A checkpoint is a folder:

    model-<digest>.safetensors      the weights under the reference names (torch's load_state_dict reads them)
    optimizer-<digest>.safetensors  AdamW's moments by parameter name (to resume a stage)
    checkpoint.json                 config, vocabulary, stage, step, metrics, and the names and SHA-256
                                    digests of the two files above

A save has one commit point, the rename of checkpoint.json. The weight files are named by their
content (the first 16 hex digits of their SHA-256), so writing the new ones never touches the files
the current checkpoint.json names: each is written to a temporary name, flushed to disk (fsync) and
renamed; the folder is fsynced so the names are durable too; then the new checkpoint.json is written
the same way, and its rename commits the save. Only after that are the files no checkpoint.json names
any more removed. A crash at any instant leaves the previous checkpoint or the new one, whole, and
loading checks the digests, so a truncated or altered file is reported as such.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from ..config import GPTConfig
from .tokenizer import CharTokenizer

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("stage", "step", "complete", "config", "vocabulary", "files")
_OWN_FILES = ("model", "optimizer")  # the prefixes of the files a checkpoint names (besides checkpoint.json)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message says which file and why."""


class CheckpointWriteError(RuntimeError):
    """A save failed (a full disk, a folder that cannot be written); the previous checkpoint is intact."""


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fsync_folder(folder):
    """Make the folder's entries (new names, renames) durable: without it a crash can forget a rename."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_durably(path, data):
    """Write bytes to path through a temporary file: written, fsynced, then renamed over path (atomic)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(folder, weights, config, tokenizer, *, stage, step, complete, metrics=None,
                    optimizer_arrays=None, optimizer_steps=None, extra=None):
    """Write a checkpoint folder with one commit point (see the module docstring).
    Raises CheckpointWriteError, naming the file, when the disk refuses a write."""
    folder = Path(folder)
    current = folder / "?"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for role, arrays in (("model", weights), ("optimizer", optimizer_arrays)):
            if arrays is None:
                continue
            data = safetensors_bytes({k: np.ascontiguousarray(v) for k, v in arrays.items()})
            digest = hashlib.sha256(data).hexdigest()
            current = folder / f"{role}-{digest[:16]}.safetensors"
            write_durably(current, data)
            files[current.name] = digest
        description = {
            "format_version": FORMAT_VERSION, "stage": stage, "step": step, "complete": complete,
            "config": config.to_dict(), "vocabulary": tokenizer.to_list(), "files": files,
            "optimizer_steps": optimizer_steps, "metrics": metrics or {}, **(extra or {}),
        }
        fsync_folder(folder)  # the new files' names are on disk before checkpoint.json names them
        current = folder / "checkpoint.json"
        write_durably(current, json.dumps(description, indent=1).encode("utf-8"))  # the commit
        fsync_folder(folder)
    except OSError as error:
        raise CheckpointWriteError(f"cannot save the {stage} checkpoint: {current}: {error.strerror or error}; "
                                   f"the previous checkpoint in {folder} is intact") from None
    for path in folder.iterdir():  # what no checkpoint names any more: older weights, temporaries
        if path.name.startswith(_OWN_FILES) and path.name not in files or path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)


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

    @property
    def weights_path(self):
        """The weights file (model-<digest>.safetensors; model.safetensors in older checkpoints)."""
        return self.folder / _named(self.meta, "model")


def _named(meta, role):
    """The name of the checkpoint's file of this role ("model" or "optimizer"), or None."""
    return next((name for name in meta.get("files", {}) if name.startswith(role)), None)


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
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{meta_path} is damaged or not a minigpt checkpoint ({error})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} is not a minigpt checkpoint (it holds no JSON object)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} has format version {meta.get('format_version')!r}; this minigpt reads "
                              f"version {FORMAT_VERSION}")
    missing = [key for key in _REQUIRED_KEYS if key not in meta]
    if missing:
        raise CheckpointError(f"{meta_path} is damaged or not a minigpt checkpoint: it lacks {', '.join(missing)}")
    if not isinstance(meta["files"], dict):
        raise CheckpointError(f"{meta_path} is damaged: 'files' is not a table of file names and digests")
    try:
        config = GPTConfig(**meta["config"])
        tokenizer = CharTokenizer(meta["vocabulary"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{meta_path} is damaged or not a minigpt checkpoint ({error})") from None
    for name, digest in meta["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        if _digest(path) != digest:
            raise CheckpointError(f"{path} is truncated or corrupted (its SHA-256 does not match checkpoint.json)")
    if _named(meta, "model") is None:
        raise CheckpointError(f"{meta_path} names no weights file")
    try:
        weights = load_file(str(folder / _named(meta, "model")))
        optimizer_name = _named(meta, "optimizer")
        optimizer_arrays = load_file(str(folder / optimizer_name)) if optimizer_name else None
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

"""Corpora, language-model windows and instruction/answer pairs.

Corpora:
* the embedded corpus: eighteen short documents written for this project (sport, training, coffee,
  learning), split into train / validation / test *by document*, so no validation text appears in
  training;
* WikiText-2 raw through ``datasets`` (``wikitext``, ``wikitext-2-raw-v1``, official splits), online;
* WikiText-style split files on disk (``--data-dir`` or one file per split), read through ``datasets``'
  ``text`` loader. When the folder has no train split (as on machines that only have valid.txt and
  test.txt), training uses the validation file and evaluation the test file, and the run says so.
"""
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CORPUS_DIR = Path(__file__).parent / "corpus"
DOCUMENTS_DIR = CORPUS_DIR / "documents"
SFT_FILE = CORPUS_DIR / "sft_pairs.jsonl"
VALIDATION_DOCUMENTS = ("06_the_swimmer.txt", "12_goalkeeper.txt")
TEST_DOCUMENTS = ("17_rowing_crew.txt",)
IGNORE = -100  # target id of positions that carry no loss

# Names a split file may have in a WikiText folder, in order of preference.
SPLIT_FILE_NAMES = {
    "train": ("wiki.train.raw", "train.txt"),
    "validation": ("wiki.valid.raw", "valid.txt", "validation.txt"),
    "test": ("wiki.test.raw", "test.txt"),
}


class DataError(ValueError):
    """Bad input data: the message names the file and says what is wrong."""


@dataclass
class Corpus:
    name: str
    train: str
    validation: str
    test: str
    sources: dict = field(default_factory=dict)  # split -> where its text came from
    notices: list = field(default_factory=list)  # one-line messages for the user and the report


# ---------------------------------------------------------------------------- corpora
def embedded_corpus():
    documents = sorted(DOCUMENTS_DIR.glob("*.txt"))
    held_out = set(VALIDATION_DOCUMENTS) | set(TEST_DOCUMENTS)
    by_split = {
        "train": [d for d in documents if d.name not in held_out],
        "validation": [d for d in documents if d.name in VALIDATION_DOCUMENTS],
        "test": [d for d in documents if d.name in TEST_DOCUMENTS],
    }
    texts = {split: "\n\n".join(d.read_text(encoding="utf-8").strip() for d in docs) + "\n"
             for split, docs in by_split.items()}
    sources = {split: f"embedded: {len(docs)} documents ({', '.join(d.stem for d in docs)})"
               if split != "train" else f"embedded: {len(docs)} documents" for split, docs in by_split.items()}
    return Corpus("embedded", texts["train"], texts["validation"], texts["test"], sources)


def check_text_file(path, what):
    """A readable, non-empty UTF-8 text file, or a DataError that names it and says what is wrong."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"{what} {path}: cannot be read ({error.strerror})") from None
    if not data.strip():
        raise DataError(f"{what} {path} is empty")
    if b"\x00" in data:
        raise DataError(f"{what} {path} is a binary file, not text")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{what} {path} is not UTF-8 text (byte {error.start} cannot be decoded)") from None


def _read_with_datasets(files):
    """split -> text, each file read through datasets' "text" loader (one row per line)."""
    import datasets

    datasets.disable_progress_bars()
    loaded = datasets.load_dataset("text", data_files={split: str(path) for split, path in files.items()})
    return {split: "\n".join(loaded[split]["text"]) + "\n" for split in files}


def wikitext_from_files(train=None, validation=None, test=None):
    """WikiText from explicit split files. With no train file, train on validation and evaluate on test."""
    files = {split: Path(path) for split, path in (("train", train), ("validation", validation), ("test", test))
             if path is not None}
    for split, path in files.items():
        if not path.is_file():
            raise DataError(f"{split} file {path} does not exist")
        check_text_file(path, f"the {split} file")
    notices = []
    if "train" not in files:
        if "validation" not in files or "test" not in files:
            raise DataError("WikiText files: give a train file, or both a validation and a test file")
        notices.append(f"no train split: training on {files['validation']}, evaluating on {files['test']}")
        files = {"train": files["validation"], "validation": files["test"], "test": files["test"]}
    elif "validation" not in files:
        raise DataError("WikiText files: a validation file is needed beside the train file")
    texts = _read_with_datasets(files)
    texts.setdefault("test", texts["validation"])
    sources = {split: str(path) for split, path in files.items()}
    sources.setdefault("test", sources["validation"])
    return Corpus("wikitext-2-raw (local files)", texts["train"], texts["validation"], texts["test"], sources, notices)


def wikitext_from_dir(data_dir):
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist")
    found = {}
    for split, names in SPLIT_FILE_NAMES.items():
        for name in names:
            if (data_dir / name).is_file():
                found[split] = data_dir / name
                break
    if not found:
        raise DataError(f"data folder {data_dir} holds none of {sorted(n for v in SPLIT_FILE_NAMES.values() for n in v)}")
    return wikitext_from_files(**found)


def hub_reachable(host="huggingface.co", timeout=3.0):
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def wikitext_from_hub():
    """WikiText-2 raw, official train/validation/test splits, through datasets (needs the network)."""
    import datasets

    loaded = datasets.load_dataset("wikitext", "wikitext-2-raw-v1")
    texts = {split: "\n".join(loaded[split]["text"]) + "\n" for split in ("train", "validation", "test")}
    sources = {split: f"datasets: wikitext / wikitext-2-raw-v1 / {split}" for split in texts}
    return Corpus("wikitext-2-raw", texts["train"], texts["validation"], texts["test"], sources)


def load_corpus(source="embedded", data_dir=None, train_file=None, validation_file=None, test_file=None):
    """The corpus a run trains on.

    source: "embedded", or "wikitext": local files when a folder or files are given, else the hub;
    when the hub cannot be reached the embedded corpus is used, with a one-line notice.
    """
    if source == "embedded":
        return embedded_corpus()
    if source != "wikitext":
        raise DataError(f"unknown data source {source!r}; choose embedded or wikitext")
    if data_dir is not None:
        return wikitext_from_dir(data_dir)
    if train_file or validation_file or test_file:
        return wikitext_from_files(train_file, validation_file, test_file)
    if hub_reachable():
        try:
            return wikitext_from_hub()
        except Exception as error:  # the hub answered but the download failed: fall back, say why
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
    else:
        reason = "the HuggingFace hub cannot be reached and no --data-dir was given"
    corpus = embedded_corpus()
    corpus.notices.append(f"WikiText unavailable ({reason}); using the embedded corpus instead")
    return corpus


def check_corpus(corpus, context_length):
    """Every split must hold at least one full window (context_length + 1 characters)."""
    for split in ("train", "validation", "test"):
        size = len(getattr(corpus, split))
        if size < context_length + 1:
            raise DataError(f"the {split} text ({corpus.sources.get(split, split)}) has {size} characters, "
                            f"fewer than one context window of {context_length + 1}")


# ---------------------------------------------------------------------------- language-model windows
def random_windows(tokens, batch_size, context_length, rng):
    """A batch of (input, target) windows at random offsets; target is the input shifted by one."""
    starts = rng.integers(0, len(tokens) - context_length, batch_size)
    windows = np.stack([tokens[s:s + context_length + 1] for s in starts])  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def evaluation_windows(tokens, context_length, max_windows):
    """Non-overlapping windows spread evenly over the text (the same ones every time)."""
    n_available = (len(tokens) - 1) // context_length
    count = min(n_available, max_windows)
    starts = np.linspace(0, (n_available - 1) * context_length, count).astype(np.int64)
    windows = np.stack([tokens[s:s + context_length + 1] for s in starts])
    return windows[:, :-1], windows[:, 1:]


# ---------------------------------------------------------------------------- instruction pairs
def format_prompt(instruction):
    return f"Instruction: {instruction}\nAnswer:"


def format_example(instruction, answer):
    """The SFT text: the prompt, a space, the answer and the end-of-answer newline."""
    return f"{format_prompt(instruction)} {answer}\n"


def load_sft_pairs(path=None):
    """(instruction, answer) pairs from a JSONL file, one {"instruction": ..., "answer": ...} per line.
    Without a path, the built-in pairs. Errors name the file and the line."""
    path = Path(path) if path is not None else SFT_FILE
    if not path.is_file():
        raise DataError(f"SFT file {path} does not exist")
    check_text_file(path, "SFT file")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected an object with instruction and answer")
        for key in ("instruction", "answer"):
            value = record.get(key)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}, line {number}: {key!r} must be a non-empty string")
            if "\n" in value:
                raise DataError(f"{path}, line {number}: {key!r} may not contain a newline (it ends the answer)")
        pairs.append((record["instruction"].strip(), record["answer"].strip()))
    if not pairs:
        raise DataError(f"SFT file {path} holds no instruction/answer pairs")
    return pairs


def split_pairs(pairs, held_out_every=6):
    """Every held_out_every-th pair is held out for validation (at least one pair each way)."""
    if len(pairs) < 2:
        raise DataError(f"need at least 2 instruction/answer pairs (one to train on, one held out), got {len(pairs)}")
    held_out = pairs[held_out_every - 1::held_out_every] or pairs[-1:]
    train = [p for p in pairs if p not in held_out]
    return train, held_out


def sft_batch(pairs, tokenizer, context_length):
    """Inputs and targets for a batch of pairs, with the loss on the answer only.

    Each example is prompt + " " + answer + "\\n". Targets are the inputs shifted by one; targets
    inside the prompt are IGNORE (-100), so only the answer (and its closing newline) is trained.
    An example longer than context_length + 1 keeps its last context_length + 1 characters (the
    answer and the end of the instruction). Shorter examples are padded on the right with IGNORE
    targets; padding cannot affect earlier positions because attention is causal.
    """
    encoded = []
    for instruction, answer in pairs:
        prompt = tokenizer.encode(format_prompt(instruction))
        full = tokenizer.encode(format_example(instruction, answer))
        targets = full[1:].copy()
        targets[: len(prompt) - 1] = IGNORE  # predictions made inside the prompt
        inputs = full[:-1]
        encoded.append((inputs[-context_length:], targets[-context_length:]))
    T = max(len(inputs) for inputs, _ in encoded)
    ids = np.zeros((len(encoded), T), dtype=np.int64)
    targets = np.full((len(encoded), T), IGNORE, dtype=np.int64)
    for row, (x, y) in enumerate(encoded):
        ids[row, : len(x)] = x
        targets[row, : len(y)] = y
    return ids, targets

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


def policy_windows(prompts, generated, lengths, context_length, max_rows=None):
    """At most two forward batches that give every sampled token exactly the context it was sampled from
    (each cut into pieces of at most max_rows windows, when given).

    prompts: one id array per sample; generated (N, L), lengths (N,): the sampled tokens.
    The sampler saw the last context_length tokens before each new token (the crop). A token at
    absolute index j <= context_length saw a prefix of its sample's first window
    sequence[:context_length], so one causal forward over the first windows scores all of them;
    shorter first windows are padded on the right, which cannot change an earlier position's
    logits (attention is causal) and whose targets are IGNORE. Each later token saw its own window
    sequence[j - context_length : j]; those form the second batch, in which only the last position
    is a target.

    Returns [(ids, targets, sample_index)]. targets (rows, L) hold the targets of the last L
    positions of ids (L: the whole width for the first windows, 1 for the later ones, whose logits
    are needed at the last position only: ``Backend.forward(..., last=L)``); IGNORE except at sampled tokens.
    """
    first, later = [], []
    for i, (prompt, row, length) in enumerate(zip(prompts, generated, lengths)):
        sequence = np.concatenate([prompt, row[:length]])
        first_T = min(len(sequence) - 1, context_length)
        targets = sequence[1:first_T + 1].copy()
        targets[: len(prompt) - 1] = IGNORE  # predictions of prompt characters are not actions
        if (targets != IGNORE).any():
            first.append((sequence[:first_T], targets, i))
        for j in range(max(context_length + 1, len(prompt)), len(sequence)):
            later.append((sequence[j - context_length:j], sequence[j], i))
    batches = []
    if first:
        width = max(len(ids) for ids, _, _ in first)
        ids = np.zeros((len(first), width), dtype=np.int64)
        targets = np.full((len(first), width), IGNORE, dtype=np.int64)
        for row, (window, window_targets, _) in enumerate(first):
            ids[row, : len(window)], targets[row, : len(window)] = window, window_targets
        batches.append((ids, targets, np.array([i for _, _, i in first])))
    if later:
        ids = np.stack([window for window, _, _ in later])  # (number of later tokens, context_length)
        targets = np.array([[target] for _, target, _ in later], dtype=np.int64)  # the last position's: (rows, 1)
        batches.append((ids, targets, np.array([i for _, _, i in later])))
    if max_rows is None:
        return batches
    return [(ids[start:start + max_rows], targets[start:start + max_rows], index[start:start + max_rows])
            for ids, targets, index in batches for start in range(0, len(ids), max_rows)]


def sft_windows(pairs, tokenizer, context_length, rng=None, answer_chars=None):
    """The windows that sampling shows the model while it writes each answer, with the loss on the answer only.

    An example is prompt + " " + answer + "\\n". Each answer character is trained in the window the sampler
    gives the model when it writes that character, the one RL scores it in (``policy_windows``): the
    characters that fit in the first context_length all in the example's first window, each later one
    in its own window of the context_length characters before it, at the last position. Any other window
    teaches a position a habit that sampling never shows it: the example's last context_length + 1
    characters, say, put the closing newline at the last position of every full window, and a prompt
    longer than the context then gets an empty answer.

    answer_chars: train at most this many of each example's later characters (those in windows of their
    own), drawn by rng without replacement, each weighing (its example's later characters) / (drawn), so
    that the loss's expectation is still the mean over every answer character of the batch. None: all.

    Returns ids (N, W) (first windows right-padded: attention is causal, padding cannot reach an earlier
    position), targets (N, W) with IGNORE where nothing is trained, and weights (N, W) summing to 1.
    """
    prompts = [tokenizer.encode(format_prompt(instruction)) for instruction, _ in pairs]
    answers = [tokenizer.encode(f" {answer}\n") for _, answer in pairs]
    lengths = np.array([len(answer) for answer in answers])
    generated = np.zeros((len(pairs), lengths.max()), dtype=np.int64)
    for row, answer in enumerate(answers):
        generated[row, : len(answer)] = answer
    batches = policy_windows(prompts, generated, lengths, context_length)
    width = max(batch_ids.shape[1] for batch_ids, _, _ in batches)
    ids, targets, weights = [], [], []
    for batch_ids, batch_targets, example in batches:
        W, L = batch_ids.shape[1], batch_targets.shape[1]  # the targets are those of the last L positions
        row_weights = np.ones(len(batch_ids))
        if L == 1 and answer_chars is not None:  # one target a row: draw answer_chars rows of each example
            drawn = []
            for i in np.unique(example):
                rows = np.flatnonzero(example == i)
                chosen = rows if len(rows) <= answer_chars else np.sort(rng.choice(rows, answer_chars, replace=False))
                row_weights[chosen] = len(rows) / len(chosen)
                drawn.extend(chosen)
            batch_ids, batch_targets, row_weights = batch_ids[drawn], batch_targets[drawn], row_weights[drawn]
        padded_ids = np.zeros((len(batch_ids), width), dtype=np.int64)
        padded_targets = np.full((len(batch_ids), width), IGNORE, dtype=np.int64)
        padded_ids[:, :W] = batch_ids
        padded_targets[:, W - L:W] = batch_targets
        ids.append(padded_ids)
        targets.append(padded_targets)
        weights.append((padded_targets != IGNORE) * row_weights[:, None])
    weights = np.concatenate(weights)
    return np.concatenate(ids), np.concatenate(targets), weights / lengths.sum()

"""Vocabulary, corpora, windows and instruction pairs."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from minigpt_np.train import data
from minigpt_np.train.data import DataError
from minigpt_np.train.tokenizer import UNKNOWN, CharTokenizer

WIKITEXT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2-raw"
needs_wikitext = pytest.mark.skipif(not (WIKITEXT_DIR / "valid.txt").exists(),
                                    reason=f"WikiText split files not found at {WIKITEXT_DIR}")


def test_tokenizer_round_trip_and_unknown_characters():
    tokenizer = CharTokenizer.from_texts(["hello world", "coffee!\n"])
    assert tokenizer.chars[-1] == UNKNOWN and tokenizer.chars[:-1] == sorted(set("hello worldcoffee!\n"))
    assert tokenizer.decode(tokenizer.encode("coffee world\n")) == "coffee world\n"
    with pytest.warns(UserWarning, match="outside the vocabulary"):
        ids = tokenizer.encode("hello Zürich")
    assert (ids == tokenizer.unknown_id).sum() == 3  # Z, ü and i never occur in the texts
    assert tokenizer.decode(ids) == "hello " + "".join(c if c in tokenizer.index else UNKNOWN for c in "Zürich")
    assert CharTokenizer(tokenizer.to_list()) == tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer.encode("hello")  # known text: no warning


def test_embedded_corpus_is_large_and_split_by_document():
    corpus = data.embedded_corpus()
    total = len(corpus.train) + len(corpus.validation) + len(corpus.test)
    assert total >= 60_000
    documents = sorted(data.DOCUMENTS_DIR.glob("*.txt"))
    for document in documents:
        first_paragraph = document.read_text(encoding="utf-8").strip().split("\n\n")[1]
        homes = [split for split in ("train", "validation", "test") if first_paragraph in getattr(corpus, split)]
        assert len(homes) == 1, f"{document.name} appears in {homes}"
    # no paragraph is repeated anywhere in the corpus
    paragraphs = [p for d in documents for p in d.read_text(encoding="utf-8").split("\n\n") if len(p) > 80]
    assert len(paragraphs) == len(set(paragraphs))


def test_windows_are_shifted_by_one_and_evaluation_windows_are_fixed():
    tokens = np.arange(1000)
    inputs, targets = data.random_windows(tokens, 4, 16, np.random.default_rng(0))
    assert inputs.shape == targets.shape == (4, 16)
    assert np.array_equal(inputs[:, 1:], targets[:, :-1]) and np.array_equal(targets, inputs + 1)


@pytest.mark.parametrize("length, max_windows, expected_count", [(1000, 10, 10), (1000, 500, 62), (17, 3, 1)])
def test_evaluation_windows_are_contiguous_non_overlapping_and_evenly_spread(length, max_windows, expected_count):
    """The windows' starts are read back from the ids (the tokens are their own positions): the first
    window starts the text, the last ends within its last context_length + 1 characters, no two overlap,
    and the gaps between starts differ by at most one character."""
    tokens = np.arange(length)
    inputs, targets = data.evaluation_windows(tokens, 16, max_windows)
    assert inputs.shape == targets.shape == (expected_count, 16)
    starts = inputs[:, 0]
    assert np.array_equal(inputs, starts[:, None] + np.arange(16)) and np.array_equal(targets, inputs + 1)
    assert starts[0] == 0 and targets[-1, -1] <= length - 1 and targets[-1, -1] > length - 1 - 17
    gaps = np.diff(starts)
    assert (gaps >= 16).all() and (np.ptp(gaps) <= 1 if gaps.size else expected_count == 1)


def test_builtin_sft_pairs():
    pairs = data.load_sft_pairs()
    assert len(pairs) >= 60
    instructions = [i for i, _ in pairs]
    assert "Write a short tagline about coffee before practice." in instructions
    kinds = {i.split()[0] + " " + i.split()[1] for i in instructions}
    assert len(kinds) >= 5
    train, held_out = data.split_pairs(pairs)
    assert held_out and not set(held_out) & set(train) and len(train) + len(held_out) == len(pairs)


def test_sft_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"instruction": "a", "answer": "b"}\n{"instruction": "c"\n')
    with pytest.raises(DataError, match=r"pairs.jsonl, line 2: not valid JSON"):
        data.load_sft_pairs(bad)
    bad.write_text('{"instruction": "a", "answer": ""}\n')
    with pytest.raises(DataError, match=r"line 1: 'answer' must be a non-empty string"):
        data.load_sft_pairs(bad)
    bad.write_text("\n\n")
    with pytest.raises(DataError, match="pairs.jsonl is empty"):  # blank lines only
        data.load_sft_pairs(bad)
    with pytest.raises(DataError, match="does not exist"):
        data.load_sft_pairs(tmp_path / "missing.jsonl")
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"instruction": f"Say {n}.", "answer": f"{n}!"}) + "\n" for n in range(3)))
    assert data.load_sft_pairs(good)[2] == ("Say 2.", "2!")


def test_sft_batch_trains_the_answer_and_its_newline_only():
    pairs = [("Say hi.", "Hi there!"), ("A much longer instruction here.", "Ok.")]
    text = "".join(data.format_example(i, a) for i, a in pairs)
    tokenizer = CharTokenizer.from_texts([text])
    inputs, targets = data.sft_batch(pairs, tokenizer, context_length=64)
    for row, (instruction, answer) in enumerate(pairs):
        trained = tokenizer.decode(targets[row][targets[row] != data.IGNORE])
        assert trained == " " + answer + "\n"
        full = data.format_example(instruction, answer)
        assert tokenizer.decode(inputs[row][: len(full) - 1]) == full[:-1]
    # longer than the context: the last context_length characters are kept, the answer included
    inputs, targets = data.sft_batch(pairs[1:], tokenizer, context_length=20)
    assert inputs.shape == (1, 20)
    assert tokenizer.decode(targets[0][targets[0] != data.IGNORE]) == " Ok.\n"


def test_corpus_shorter_than_a_window_is_a_clear_error():
    corpus = data.Corpus("tiny", "short text", "x" * 100, "y" * 100, {"train": "tiny.txt"})
    with pytest.raises(DataError, match=r"train text \(tiny.txt\) has 10 characters, fewer than one context window of 65"):
        data.check_corpus(corpus, 64)


def test_wikitext_falls_back_to_the_embedded_corpus_offline(monkeypatch):
    monkeypatch.setattr(data, "hub_reachable", lambda *a, **k: False)
    corpus = data.load_corpus("wikitext")
    assert corpus.name == "embedded"
    assert len(corpus.notices) == 1 and "using the embedded corpus" in corpus.notices[0]


@needs_wikitext
def test_wikitext_local_files_through_datasets():
    corpus = data.load_corpus("wikitext", data_dir=WIKITEXT_DIR)
    valid = (WIKITEXT_DIR / "valid.txt").read_text(encoding="utf-8")
    test = (WIKITEXT_DIR / "test.txt").read_text(encoding="utf-8")
    assert corpus.train.splitlines() == valid.splitlines()  # no train split: train on valid
    assert corpus.test.splitlines() == test.splitlines()
    assert "valid.txt" in corpus.sources["train"] and "test.txt" in corpus.sources["test"]
    assert any("no train split" in notice for notice in corpus.notices)
    explicit = data.load_corpus("wikitext", train_file=WIKITEXT_DIR / "test.txt",
                                validation_file=WIKITEXT_DIR / "valid.txt")
    assert explicit.train.splitlines() == test.splitlines() and not explicit.notices


def test_bad_data_locations(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_corpus("wikitext", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match="holds none of"):
        data.load_corpus("wikitext", data_dir=tmp_path)
    with pytest.raises(DataError, match="unknown data source"):
        data.load_corpus("books")

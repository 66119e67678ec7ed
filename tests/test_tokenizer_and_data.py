"""Vocabulary, corpora, windows and instruction pairs."""
import json
import warnings

import numpy as np
import pytest

import minigpt_np
from minigpt_np.train import data
from minigpt_np.train.data import DataError
from minigpt_np.train.tokenizer import UNKNOWN, CharTokenizer

from .conftest import WIKITEXT_DIR

needs_wikitext = pytest.mark.skipif(not (WIKITEXT_DIR / "valid.txt").exists(),
                                    reason=f"WikiText split files not found at {WIKITEXT_DIR} (set MINIGPT_WIKITEXT_DIR)")


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
    assert "Give a creative tagline for coffee before practice." in instructions
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


def sampler_windows(tokenizer, instruction, answer, context_length):
    """What sampling shows the model when it writes each answer character: the last context_length
    characters before it, written out from the definition."""
    full = tokenizer.encode(data.format_example(instruction, answer))
    start = len(tokenizer.encode(data.format_prompt(instruction)))
    return sorted((tuple(full[max(0, j - context_length):j]), int(full[j])) for j in range(start, len(full)))


def trained_windows(ids, targets):
    """(the context up to a trained position, its target) for every trained position."""
    return sorted((tuple(ids[row, : position + 1]), int(targets[row, position]))
                  for row, position in zip(*np.nonzero(targets != data.IGNORE)))


PAIRS = [("Say hi.", "Hi there!"), ("A much longer instruction here, longer than the context.", "Ok, done."),
         ("Tell me about the sea.", "It is wide and deep and full of quiet noise.")]


@pytest.mark.parametrize("context_length", [8, 20, 40, 64, 200])
def test_sft_trains_each_answer_character_once_in_the_window_sampling_shows_it(context_length):
    tokenizer = CharTokenizer.from_texts([data.format_example(i, a) for i, a in PAIRS])
    ids, targets, weights = data.sft_windows(PAIRS, tokenizer, context_length)
    expected = sorted(w for i, a in PAIRS for w in sampler_windows(tokenizer, i, a, context_length))
    assert trained_windows(ids, targets) == expected  # each answer character and its newline, once, nothing else
    answer_characters = sum(len(a) + 2 for _, a in PAIRS)  # " " + answer + "\n"
    np.testing.assert_allclose(weights[targets != data.IGNORE], 1 / answer_characters, rtol=1e-12, atol=0)
    assert (weights[targets == data.IGNORE] == 0).all() and ids.shape[1] <= context_length


def test_sft_draws_answer_characters_with_weights_that_keep_the_mean():
    tokenizer = CharTokenizer.from_texts([data.format_example(i, a) for i, a in PAIRS])
    context_length, drawn = 12, 3
    every = dict(zip(trained_windows(*data.sft_windows(PAIRS, tokenizer, context_length)[:2]), range(10**6)))
    rng = np.random.default_rng(0)
    # an arbitrary per-character "loss"; its weighted sum over the drawn characters estimates the full mean
    value = np.random.default_rng(1).standard_normal(len(every))
    full_mean = value.mean()
    estimates = []
    for _ in range(400):
        ids, targets, weights = data.sft_windows(PAIRS, tokenizer, context_length, rng, drawn)
        trained = [(tuple(ids[r, : p + 1]), int(targets[r, p])) for r, p in zip(*np.nonzero(targets != data.IGNORE))]
        assert set(trained) <= set(every) and len(set(trained)) == len(trained)  # sampler windows, each once
        assert np.isclose(weights.sum(), 1.0, rtol=0, atol=1e-12)
        estimates.append(sum(weights[r, p] * value[every[w]]
                             for (r, p), w in zip(zip(*np.nonzero(targets != data.IGNORE)), trained)))
    spread = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - full_mean) < 4 * spread, (np.mean(estimates), full_mean, spread)


def test_sft_on_prompts_longer_than_the_context_does_not_learn_to_stop_at_once():
    """A tiny model fine-tuned from scratch on prompts both shorter and longer than its context: the
    probability that the answer ends at once (newline right after "Answer:") stays near zero for all,
    as in the data. (Trained on each example's last context_length + 1 characters instead, the last
    position of every full window always predicts the closing newline, and a long prompt, cropped so
    that "Answer:" ends there, answers with nothing.)"""
    from minigpt_np.train.backend import get_backend
    from minigpt_np.train.sampling import next_token_probs

    context_length = 24
    subjects = ["tea", "a long walk by the river in the early morning", "bread", "the old harbour town at dusk"]
    pairs = [(f"Name {s}.", f"{s.split()[-1]} is fine.") for s in subjects]
    tokenizer = CharTokenizer.from_texts([data.format_example(i, a) for i, a in pairs])
    backend = get_backend("numpy")
    config = minigpt_np.GPTConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=1, n_heads=2,
                                  context_length=context_length, dropout=0.0, dtype="float32")
    model = backend.create_model(config, seed=0)
    optimizer = backend.create_optimizer(model, 3e-3, 0.0)
    rng = np.random.default_rng(0)
    backend.set_training(model, True)
    for _ in range(150):
        ids, targets, weights = data.sft_windows(pairs, tokenizer, context_length, rng, 6)
        backend.optimizer_step(model, optimizer, backend.weighted_nll(backend.forward(model, ids), targets, weights),
                               1.0)
    backend.set_training(model, False)
    newline = tokenizer.index["\n"]
    for instruction, _ in pairs:
        prompt = tokenizer.encode(data.format_prompt(instruction))
        p_empty = next_token_probs(backend.predict(model, prompt[None, -context_length:], 1)[:, -1], 1.0, None)[0, newline]
        assert p_empty < 0.005, (instruction, len(prompt), p_empty)  # 1e-4 here; 0.015 to 0.066 on the former windows


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

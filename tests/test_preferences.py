"""Preference pairs for the reward model: each kind of rejected answer is what its name says, the pairs are
reproducible, held-out pairs use held-out answers only, and the texts the reward model reads end where they should."""
import numpy as np
import pytest

from minigpt_np.train.data import embedded_corpus, format_prompt, load_sft_pairs, split_pairs
from minigpt_np.train.preferences import (KINDS, WRITTEN_KINDS, Preference, corpus_words, preference_pairs,
                                          reject, reward_batch, reward_text)
from minigpt_np.train.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def material():
    pairs = load_sft_pairs()
    return pairs, corpus_words(embedded_corpus().train)


def test_corpus_words_are_distinct_lowercase_words_of_the_text():
    words = corpus_words("The cat, the Dog and the cat's toy: a 3rd one.")
    assert words == sorted(set(words)) and "the" in words and "cat" in words and "dog" in words
    assert all(word.isalpha() and word == word.lower() for word in words)


@pytest.mark.parametrize("seed", range(5))
def test_each_kind_of_rejected_answer_is_what_its_name_says(material, seed):
    pairs, words = material
    rng = np.random.default_rng(seed)
    vocabulary = set(words)
    for index, (instruction, answer) in enumerate(pairs):
        original = answer.split()
        shuffled = reject("shuffled", index, pairs, words, rng)
        if len(set(original)) > 1:
            assert sorted(shuffled.split()) == sorted(original) and shuffled != answer
        repeated = reject("repeated", index, pairs, words, rng).split()
        assert len(repeated) == len(original) + 2
        said_thrice = [i for i in range(len(repeated) - 2) if repeated[i] == repeated[i + 1] == repeated[i + 2]]
        assert said_thrice and repeated[:said_thrice[0]] + repeated[said_thrice[0] + 2:] == original
        swapped = reject("random_words", index, pairs, words, rng).split()
        assert len(swapped) == len(original)
        changed = [(a, b) for a, b in zip(original, swapped) if a != b]
        assert len(changed) == min(len(original), max(2, len(original) // 2))
        assert all(b.strip(".,!?;:").lower() in vocabulary for _, b in changed)
        cut = reject("cut_short", index, pairs, words, rng).split()
        assert 1 <= len(cut) < len(original) and cut == original[:len(cut)]
        other = reject("other_answer", index, pairs, words, rng)
        owners = [i for i, (_, a) in enumerate(pairs) if a == other]
        assert owners and all(pairs[i][0] != instruction for i in owners)


def test_pairs_are_reproducible_cover_every_written_kind_and_never_reject_the_chosen_answer(material):
    pairs, words = material
    train, held_out = split_pairs(pairs)
    made = preference_pairs(train, words, np.random.default_rng(7))
    again = preference_pairs(train, words, np.random.default_rng(7))
    assert made == again and all(isinstance(p, Preference) for p in made)
    assert {p.kind for p in made} == set(WRITTEN_KINDS) and set(WRITTEN_KINDS) < set(KINDS)
    assert "sft_sample" in KINDS
    assert all(p.chosen != p.rejected for p in made)
    answers = dict(train)
    assert all(p.chosen == f" {answers[p.instruction]}\n" for p in made)
    held = preference_pairs(held_out, words, np.random.default_rng(7))
    held_answers = {f" {a}\n" for _, a in held_out}
    train_answers = {f" {a}\n" for _, a in train}
    assert all(p.chosen in held_answers for p in held)
    assert not any(p.rejected in train_answers for p in held if p.kind == "other_answer")


def test_the_reward_model_reads_each_text_to_its_last_character_within_the_context():
    tokenizer = CharTokenizer.from_texts(["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ :.,!?\n"])
    texts = [reward_text("Say hi.", " Hi there!\n"), reward_text("Write a long line about many things at once.",
                                                                    " " + "word " * 30 + "end\n")]
    assert texts[0] == format_prompt("Say hi.") + " Hi there!\n"
    ids, ends = reward_batch(tokenizer, texts, context_length=48)
    assert ids.shape == (2, 48)
    short = tokenizer.encode(texts[0])
    assert ends[0] == len(short) - 1 and list(ids[0, :len(short)]) == list(short)
    assert ends[1] == 47 and tokenizer.decode(ids[1]) == texts[1][-48:]

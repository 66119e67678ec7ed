"""Preference pairs for the reward model, from data the project owns.

A preference pair is an instruction with two answers, the chosen one preferred to the rejected one.
The chosen answer is the one written for the instruction (the SFT pairs); the rejected answer is
made from it, or drawn, and its kind names what a good answer is not:

    shuffled       its words in a random order (the same words: only their order tells them apart)
    repeated       one of its words said three times over
    random_words   half of its words (at least two) swapped for words drawn from the pretraining corpus
    cut_short      its first words only (a third to two thirds of them), then the end of the answer
    other_answer   the answer written for another instruction (well written, but not an answer to this one)
    sft_sample     an answer the SFT policy wrote for the instruction (sampled when the stage starts:
                   the written answer is taken to be the better one)

Answers are kept as the sampler writes them after "Answer:": a space, the text, the closing newline.
Every answer the reward model reads is closed by the newline, a sample cut off at its length limit too
(RL's missing-stop penalty is a separate term). The reward model reads ``reward_text``: the prompt and
the answer, the last context_length characters of it.
"""
import re
from dataclasses import dataclass

import numpy as np

from .data import format_prompt

KINDS = ("shuffled", "repeated", "random_words", "cut_short", "other_answer", "sft_sample")
WRITTEN_KINDS = KINDS[:-1]  # made without a model


@dataclass(frozen=True)
class Preference:
    instruction: str
    chosen: str  # " <answer>\n", as the sampler writes it
    rejected: str
    kind: str


def corpus_words(text):
    """The distinct words of a text (letters only, lower case), sorted: what random_words draws from."""
    return sorted(set(re.findall(r"[a-z]+", text.lower())))


def reject(kind, index, pairs, words, rng):
    """The rejected answer of this kind for pairs[index] (its text, without the space and newline)."""
    instruction, answer = pairs[index]
    tokens = answer.split()
    if kind == "shuffled":
        if len(set(tokens)) < 2:
            return None
        while True:
            order = rng.permutation(len(tokens))
            shuffled = [tokens[i] for i in order]
            if shuffled != tokens:
                return " ".join(shuffled)
    if kind == "repeated":
        i = int(rng.integers(len(tokens)))
        return " ".join(tokens[:i + 1] + [tokens[i]] * 2 + tokens[i + 1:])
    if kind == "random_words":
        count = min(len(tokens), max(2, len(tokens) // 2))
        swapped = list(tokens)
        for i in rng.choice(len(tokens), count, replace=False):
            word = tokens[i]
            while (new := str(rng.choice(words))) == word.strip(".,!?;:").lower():
                pass
            stripped = word.rstrip(".,!?;:")
            swapped[i] = new + word[len(stripped):]  # the punctuation after the word stays
        return " ".join(swapped)
    if kind == "cut_short":
        if len(tokens) < 2:
            return None
        keep = int(rng.integers(max(1, len(tokens) // 3), max(2, 2 * len(tokens) // 3 + 1)))
        return " ".join(tokens[:min(keep, len(tokens) - 1)])
    if kind == "other_answer":
        others = [j for j, (other, other_answer) in enumerate(pairs) if other != instruction and other_answer != answer]
        return pairs[int(rng.choice(others))][1] if others else None
    raise ValueError(f"unknown kind of rejected answer {kind!r}; {', '.join(WRITTEN_KINDS)} are made without a model")


def preference_pairs(pairs, words, rng, kinds=WRITTEN_KINDS):
    """One Preference of each kind for every (instruction, answer) pair, in that order; a kind that
    cannot be made from an answer (shuffling one word) is left out."""
    made = []
    for index, (instruction, answer) in enumerate(pairs):
        for kind in kinds:
            rejected = reject(kind, index, pairs, words, rng)
            if rejected is not None and rejected != answer:
                made.append(Preference(instruction, f" {answer}\n", f" {rejected}\n", kind))
    return made


def reward_text(instruction, answer):
    """What the reward model reads: the prompt, then the answer as the sampler writes it."""
    return format_prompt(instruction) + answer


def reward_batch(tokenizer, texts, context_length):
    """ids (B, W) of the texts, each its last context_length characters, padded on the right with 0, and
    ends (B,): each one's last position (the reward is read there; causal attention keeps the padding
    after it from changing it)."""
    encoded = [np.asarray(tokenizer.encode(text))[-context_length:] for text in texts]
    width = max(len(e) for e in encoded)
    ids = np.zeros((len(texts), width), dtype=np.int64)
    for row, e in enumerate(encoded):
        ids[row, :len(e)] = e
    return ids, np.array([len(e) - 1 for e in encoded])

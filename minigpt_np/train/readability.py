"""Does an answer read as language? Figures that the reward does not see, to catch reward hacking.

A word is a run of letters (with an inner apostrophe: "night's"), lower-cased; the punctuation around
it is not part of it. The list of real words is every word of the embedded pretraining corpus (all
of its documents) and of the built-in SFT pairs: the language the model was taught, about 2,000
words. It is fixed, whatever corpus a run trains on, so that the metrics of different runs compare.

    real_word_rate   share of an answer's words that are real words
    repeat_rate      share of an answer's words that repeat an earlier word of the same answer
    readable         real_word_rate >= 0.9 and no word more than twice (and at least one word)

The taught word pairs are every two words side by side in a paragraph of those same texts (about 8,700
pairs): the word order the model was taught. taught_pair_rate is the share of an answer's adjacent word
pairs among them; the fluent reward (rewards.py) pays by it. Real words in an order no text uses score low:
the written SFT answers' words, shuffled, about 0.16 against the corpus alone.

"coffee coffee coffee and head!" has real-word rate 1.0, repeat rate 0.4, and is not readable.
"""
import re
from collections import Counter
from functools import lru_cache

import numpy as np

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
READABLE_REAL_WORD_RATE = 0.9
READABLE_MAX_REPEATS = 2


def words(text):
    """The words of a text, lower-cased, without the punctuation around them."""
    return WORD.findall(text.lower())


@lru_cache(maxsize=1)
def real_words():
    """Every word of the embedded corpus and of the built-in SFT pairs (a frozenset)."""
    from .data import embedded_corpus, load_sft_pairs

    corpus = embedded_corpus()
    texts = [corpus.train, corpus.validation, corpus.test]
    texts += [f"{instruction} {answer}" for instruction, answer in load_sft_pairs()]
    return frozenset(word for text in texts for word in words(text))


@lru_cache(maxsize=1)
def taught_pairs():
    """Every pair of adjacent words within a paragraph of the embedded corpus, and within an instruction or an
    answer of the built-in SFT pairs (a frozenset of tuples)."""
    from .data import embedded_corpus, load_sft_pairs

    corpus = embedded_corpus()
    paragraphs = [p for text in (corpus.train, corpus.validation, corpus.test) for p in text.split("\n")]
    paragraphs += [text for pair in load_sft_pairs() for text in pair]
    return frozenset(pair for paragraph in paragraphs for pair in zip(words(paragraph), words(paragraph)[1:]))


def share_of_pairs_in(text, known):
    """The share of the text's adjacent word pairs found in known, a set of word pairs (0 for fewer than 2
    words)."""
    found = words(text)
    pairs = list(zip(found, found[1:]))
    return sum(pair in known for pair in pairs) / len(pairs) if pairs else 0.0


def taught_pair_rate(text):
    """The share of the text's adjacent word pairs that are taught pairs."""
    return share_of_pairs_in(text, taught_pairs())


def real_word_rate(text):
    found = words(text)
    if not found:
        return 0.0
    known = real_words()
    return sum(word in known for word in found) / len(found)


def repeat_rate(text):
    found = words(text)
    return (len(found) - len(set(found))) / len(found) if found else 0.0


def most_repeats(text):
    """How many times the answer's most frequent word occurs (0 for no words)."""
    return max(Counter(words(text)).values(), default=0)


def readable(text):
    return (real_word_rate(text) >= READABLE_REAL_WORD_RATE and 0 < most_repeats(text) <= READABLE_MAX_REPEATS)


def answer_readability(text):
    """The per-answer metrics: real_word_rate, repeat_rate, readable."""
    return {"real_word_rate": real_word_rate(text), "repeat_rate": repeat_rate(text), "readable": readable(text)}


def readability_metrics(answers):
    """Means over answers: real_word_rate, repeat_rate, readable_frac."""
    per_answer = [answer_readability(a) for a in answers]
    return {"real_word_rate": float(np.mean([f["real_word_rate"] for f in per_answer])),
            "repeat_rate": float(np.mean([f["repeat_rate"] for f in per_answer])),
            "readable_frac": float(np.mean([f["readable"] for f in per_answer]))}

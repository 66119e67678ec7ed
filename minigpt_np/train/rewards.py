"""Rewards for the RL stage: functions of the answer text that return their named components.

The reward of an answer is the sum of its components; reporting them separately shows which part
of the reward the policy has learned to collect.
"""
import math


def original_reward(answer):
    """The original hand-written reward, at most 2.0:

    coffee       +1.0 if the answer mentions "coffee" (any case)
    exclamation  +0.5 if it contains "!"
    length       +0.5 if it has 8 to 20 words
    """
    words = answer.split()
    return {
        "coffee": 1.0 if "coffee" in answer.lower() else 0.0,
        "exclamation": 0.5 if "!" in answer else 0.0,
        "length": 0.5 if 8 <= len(words) <= 20 else 0.0,
    }


def guarded_reward(answer):
    """The original reward's intent, a short tagline about coffee with an exclamation mark, scored so
    that word salad does not pay; at most 2.0, as the original.

    The components are the original's, each multiplied by a readability gate (see readability.py):

        gate = clip((real_word_rate - 0.5) / 0.4, 0, 1) * 0.5 ** extra_repeats

    extra_repeats counts the words used beyond their second time ("coffee coffee coffee": 1). An answer
    that reads as language (real-word rate >= 0.9, no word more than twice) has gate 1 and keeps the
    original's score; each extra repeat halves it; an answer of half non-words or worse gets nothing.
    So "coffee" pays once, and the "!" and the length only in an answer that reads.
    """
    from .readability import real_word_rate, words

    counts = {}
    for word in words(answer):
        counts[word] = counts.get(word, 0) + 1
    extra_repeats = sum(max(0, n - 2) for n in counts.values())
    gate = min(1.0, max(0.0, (real_word_rate(answer) - 0.5) / 0.4)) * 0.5 ** extra_repeats
    return {name: value * gate for name, value in original_reward(answer).items()}


REWARDS = {"original": original_reward, "guarded": guarded_reward}


def score(reward_fn, answers):
    """Totals (list of floats) and components (name -> list) of each answer.
    A reward that raises or gives a non-finite number is an error naming the answer."""
    totals, components = [], {}
    for index, answer in enumerate(answers):
        try:
            parts = reward_fn(answer)
            total = float(sum(parts.values()))
        except Exception as error:
            raise ValueError(f"the reward function failed on sample {index} ({answer!r}): {error}") from error
        if not math.isfinite(total):
            raise ValueError(f"the reward function gave {total} for sample {index} ({answer!r})")
        totals.append(total)
        for name, value in parts.items():
            components.setdefault(name, []).append(float(value))
    return totals, components

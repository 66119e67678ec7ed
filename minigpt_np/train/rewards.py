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

    The components are the original's, each multiplied by a gate in [0, 1]:

        gate = clip((real_word_rate - 0.6) / 0.4, 0, 1)      real words (readability.py)
               * 0.5 ** repeats                               no word more than twice, no phrase twice
               * clip(words / 8, 0, 1)                        tagline length: 8 words or more,
               * clip((30 - words) / 10, 0, 1)                up to 20, fading to nothing at 30

    repeats counts the words used beyond their second time, "coffee" beyond its first (it pays once),
    and the word pairs used beyond their first ("coffee in to coffee in to": 1 + 2). An answer of 8 to
    20 real words with no phrase said twice has gate 1 and keeps the original's score; one word in ten
    misspelt costs a quarter of it, each repeat halves it; an answer of 60% real words or fewer gets
    nothing, and a bare " Coffee!" 1/8 of it: "coffee" and "!" pay in a tagline.
    """
    from .readability import real_word_rate, words

    found = words(answer)
    counts, pairs = {}, {}
    for word in found:
        counts[word] = counts.get(word, 0) + 1
    for pair in zip(found, found[1:]):
        pairs[pair] = pairs.get(pair, 0) + 1
    repeats = (sum(max(0, n - (1 if word == "coffee" else 2)) for word, n in counts.items())
               + sum(n - 1 for n in pairs.values()))
    gate = (min(1.0, max(0.0, (real_word_rate(answer) - 0.6) / 0.4)) * 0.5 ** repeats
            * min(1.0, len(found) / 8) * min(1.0, max(0.0, (30 - len(found)) / 10)))
    return {name: value * gate for name, value in original_reward(answer).items()}


def fluent_reward(answer):
    """The guarded reward, half of it paid for word order: its components times

        (1 + min(taught_pair_rate / 0.6, 1)) / 2

    taught_pair_rate is the share of the answer's adjacent word pairs that stand side by side somewhere in the
    texts the model was taught (readability.py). The guarded reward checks words, and a policy trained on it
    learns words in any order: "Each an every weight form good can work coffee!" is readable, has the
    guarded reward's full 2.0, and none of its 8 pairs taught, so here it gets half, 1.0; " Coffee is for the
    body and to a lead!" (7 of 8 pairs taught: "and to" is not) keeps its 2.0. A written SFT answer has every
    pair taught and scores as on the guarded reward. The half paid for real words alone keeps a signal for a
    policy that writes few words in the taught order (after WikiText pretraining, or the quick preset's): a
    gate of min(rate / 0.6, 1) alone paid such policies next to nothing, and their RL stalled. The pairs are
    those of the embedded corpus whatever a run pretrains on, as the real words are.
    """
    from .readability import taught_pair_rate

    gate = (1.0 + min(1.0, taught_pair_rate(answer) / 0.6)) / 2.0
    return {name: value * gate for name, value in guarded_reward(answer).items()}


REWARDS = {"original": original_reward, "guarded": guarded_reward, "fluent": fluent_reward}


def score(reward_fn, answers, instructions=None):
    """Totals (list of floats) and components (name -> list) of each answer.
    A reward that reads the instruction too (one learnt from preferences: reward_model.LearnedReward) has
    score_answers(instructions, answers) and gets instructions, one per answer.
    A reward that raises or gives a non-finite number is an error naming the answer."""
    if hasattr(reward_fn, "score_answers"):
        if instructions is None or len(instructions) != len(answers):
            raise ValueError("this reward reads each answer's instruction: give one per answer")
        totals, components = reward_fn.score_answers(list(instructions), list(answers))
        bad = [i for i, total in enumerate(totals) if not math.isfinite(total)]
        if bad:
            raise ValueError(f"the reward gave {totals[bad[0]]} for sample {bad[0]} ({answers[bad[0]]!r})")
        return [float(t) for t in totals], {name: [float(v) for v in values] for name, values in components.items()}
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

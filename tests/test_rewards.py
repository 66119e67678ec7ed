import math

import pytest

from minigpt_np.train.readability import (answer_readability, most_repeats, readability_metrics, readable,
                                          real_word_rate, real_words, taught_pair_rate, taught_pairs, words)
from minigpt_np.train.rewards import REWARDS, fluent_reward, guarded_reward, original_reward, score


def test_original_reward_components():
    assert original_reward("Coffee first, then we chase the ball all morning long!") == {
        "coffee": 1.0, "exclamation": 0.5, "length": 0.5}
    assert original_reward("tea") == {"coffee": 0.0, "exclamation": 0.0, "length": 0.0}
    assert original_reward("one two three four five six seven")["length"] == 0.0  # 7 words
    assert original_reward(" ".join(["w"] * 20))["length"] == 0.5
    assert original_reward(" ".join(["w"] * 21))["length"] == 0.0


def test_score_reports_totals_components_and_names_failures():
    totals, components = score(original_reward, ["coffee!", "nothing"])
    assert totals == [1.5, 0.0] and components["exclamation"] == [0.5, 0.0]
    with pytest.raises(ValueError, match=r"sample 1 \('boom'\)"):
        score(lambda text: {"x": 1 / 0} if text == "boom" else {"x": 1.0}, ["fine", "boom"])
    with pytest.raises(ValueError, match="gave nan for sample 0"):
        score(lambda text: {"x": math.nan}, ["a"])


# ---------------------------------------------------------------------------- readability and the guarded reward
HACKED = " Coffee coffee coffee can and coffee coffee and head! and head!"
TAGLINE = " Coffee first, then we chase the ball all morning long!"


def test_words_and_the_real_word_list():
    assert words(" Coffee's warm, the night's long!") == ["coffee's", "warm", "the", "night's", "long"]
    known = real_words()
    assert 1500 < len(known) < 5000 and {"coffee", "practice", "morning", "the"} <= known
    assert "cofee" not in known and "xqzt" not in known


def test_readability_metrics_by_hand():
    assert answer_readability(TAGLINE) == {"real_word_rate": 1.0, "repeat_rate": 0.0, "readable": True}
    hacked = answer_readability(HACKED)  # 11 words: coffee x5, and x3, head x2, can
    assert hacked["real_word_rate"] == 1.0 and not hacked["readable"]
    assert abs(hacked["repeat_rate"] - 7 / 11) <= 1e-15  # 4 + 2 + 1 repeats of an earlier word
    assert most_repeats(HACKED) == 5
    half = " the cofee is warmm"
    assert real_word_rate(half) == 0.5 and not readable(half)
    assert answer_readability("") == {"real_word_rate": 0.0, "repeat_rate": 0.0, "readable": False}
    assert readable(" the the cup") and not readable(" the the the cup")  # twice is allowed, three times not
    figures = readability_metrics([TAGLINE, HACKED])
    assert figures["readable_frac"] == 0.5 and abs(figures["repeat_rate"] - 7 / 22) <= 1e-15


def test_guarded_reward_pays_the_original_for_readable_taglines_only():
    assert guarded_reward(TAGLINE) == original_reward(TAGLINE) and sum(guarded_reward(TAGLINE).values()) == 2.0
    # coffee x5 (4 beyond its first), and x3 (1 beyond the second), pairs (coffee coffee) x3, (and head) x2:
    # 8 repeats, gate 0.5 ** 8; 11 words, a tagline's length
    assert guarded_reward(HACKED) == {name: value / 256 for name, value in original_reward(HACKED).items()}
    looped = " Coffee in to Coffee in to a lead!"  # what a policy found: coffee twice, two pairs twice
    assert readable(looped) and guarded_reward(looped)["coffee"] == 0.5 ** 3
    salad = " xqz vvb coffee plink and the warm cup of tea!"  # 7 of 10 real words: gate (0.7 - 0.6) / 0.4
    assert abs(guarded_reward(salad)["coffee"] - 0.25) <= 1e-15
    assert sum(guarded_reward(" xqz vvb coffee plink!").values()) == 0.0  # a quarter real words: gate 0
    assert guarded_reward(" Coffee!") == {"coffee": 1 / 8, "exclamation": 0.5 / 8, "length": 0.0}  # one word of 8
    long = " coffee " + " ".join(["warm cup"] * 12) + "!"  # 25 words, cup and warm 12 times each
    # no length component; 25 words (gate (30 - 25) / 10); warm, cup 10 extra each; pairs (warm cup) 11 extra,
    # (cup warm) 10 extra: 41 repeats
    assert guarded_reward(long) == {"coffee": 0.5 ** 42, "exclamation": 0.5 ** 43, "length": 0.0}
    long_real = " " + " ".join(sorted(real_words())[500:524]) + " coffee!"  # 25 distinct real words
    assert abs(guarded_reward(long_real)["coffee"] - 0.5) <= 1e-15  # (30 - 25) / 10
    for text in (TAGLINE, HACKED, salad, long, long_real, "", " tea!", " Coffee!"):  # never more than the original
        for name, value in guarded_reward(text).items():
            assert 0.0 <= value <= original_reward(text)[name]
    assert REWARDS["guarded"] is guarded_reward


# ---------------------------------------------------------------------------- the fluent reward: taught word pairs
def test_taught_pairs_come_from_the_corpus_and_the_sft_pairs_within_a_paragraph():
    from minigpt_np.train.data import embedded_corpus, load_sft_pairs

    known = taught_pairs()
    instruction, answer = load_sft_pairs()[0]
    for text in (instruction, answer, embedded_corpus().train.split("\n")[0]):
        found = words(text)
        assert set(zip(found, found[1:])) <= known
    assert 5000 < len(known) < 20000 and ("of", "the") in known and ("the", "of") not in known
    # no pair spans two paragraphs: the last word of a paragraph and the first of the next are not a pair by that
    paragraphs = [p for p in embedded_corpus().train.split("\n") if words(p)]
    joins = {(words(a)[-1], words(b)[0]) for a, b in zip(paragraphs, paragraphs[1:])}
    inside = {pair for p in paragraphs for pair in zip(words(p), words(p)[1:])}
    assert joins - inside and not (joins - inside) & known


def test_taught_pair_rate_by_hand():
    assert taught_pair_rate(" of the") == 1.0 and taught_pair_rate(" the of") == 0.0
    assert taught_pair_rate(" Coffee") == 0.0 and taught_pair_rate("") == 0.0  # no pair at all
    assert taught_pair_rate(" of the of") == 0.5  # (of the) taught, (the of) not


def test_fluent_reward_pays_the_guarded_reward_for_taught_word_order():
    assert fluent_reward(TAGLINE) == guarded_reward(TAGLINE)  # a written SFT answer: every pair taught
    assert taught_pair_rate(TAGLINE) == 1.0
    # the same words in an order nobody writes: real words, readable, the guarded reward's full score; no pair
    # taught: half of it
    salad = " long morning all ball the chase we then first Coffee!"
    assert sum(guarded_reward(salad).values()) == 2.0 and taught_pair_rate(salad) == 0.0
    assert fluent_reward(salad) == {name: value / 2 for name, value in guarded_reward(salad).items()}
    # gate (1 + min(rate / 0.6, 1)) / 2: a rate of 0.3 pays three quarters of the guarded reward, 0.6 or more all
    for text in (TAGLINE, salad, HACKED, " Coffee is for the body and to a lead!", " Each an every weight form good can work coffee!"):
        gate = (1 + min(1.0, taught_pair_rate(text) / 0.6)) / 2
        expected = {name: value * gate for name, value in guarded_reward(text).items()}
        got = fluent_reward(text)
        assert got.keys() == expected.keys()
        assert all(abs(got[name] - expected[name]) <= 1e-15 for name in got)
    # by hand: (of the) is taught, (the xqzt) and (xqzt coffee) are not: rate 1/3, gate (1 + (1/3) / 0.6) / 2 = 7/9;
    # the guarded gate: 3 real words of 4, (0.75 - 0.6) / 0.4 = 0.375, times 4 words of 8: 0.1875
    assert ("of", "the") in taught_pairs() and not {("the", "xqzt"), ("xqzt", "coffee")} & taught_pairs()
    assert abs(fluent_reward(" of the xqzt coffee!")["coffee"] - 0.1875 * 7 / 9) <= 1e-15
    # (of the), (the coffee) taught: 2 of 3, above 0.6, the guarded reward in full
    assert ("the", "coffee") in taught_pairs() and fluent_reward(" of the coffee xqzt!") == guarded_reward(" of the coffee xqzt!")
    assert REWARDS["fluent"] is fluent_reward

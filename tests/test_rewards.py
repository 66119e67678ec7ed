import math

import pytest

from minigpt_np.train.rewards import original_reward, score


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

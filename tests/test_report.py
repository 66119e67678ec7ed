"""The report says when a stage did not do its job, with the figure and what it means."""
from minigpt_np.train.report import stage_problems


def stage(answers, **metrics):
    return {"final_samples": [{"answer": answer} for answer in answers], "metrics": metrics}


def test_a_healthy_run_has_no_problems():
    sft = stage([f" Coffee {i} and a run!" for i in range(64)], format_rate=0.7, reward_mean=0.6)
    rl = stage([f" Coffee first, {i} miles!" for i in range(64)], format_rate=0.7, reward_mean=1.8,
               flat_group_share=0.1)
    assert stage_problems({"pretrain": stage([]), "sft": sft, "rl": rl}) == []


def test_empty_sft_answers_and_an_rl_stage_without_signal_are_named_with_their_figures():
    sft = stage([""] * 63 + [" I"], format_rate=0.36, unfinished_rate=0.0, empty_rate=0.6, reward_mean=0.0)
    rl = stage([""] * 60 + [" I", " II."] * 2, format_rate=0.36, reward_mean=0.0, flat_group_share=0.96)
    problems = stage_problems({"sft": sft, "rl": rl})
    assert problems == [
        "sft: 63 of 64 answers to the RL prompt are empty (the model ends its answer at once): RL has nothing to "
        "learn from",
        "sft: format rate 0.36: most answers to the held-out prompts are not well formed (a space, some text, the "
        "closing newline): 60% were empty",
        "rl: 60 of 64 answers to the RL prompt are empty (the model ends its answer at once)",
        "rl: format rate 0.36: most answers to the held-out prompts are not well formed (a space, some text, the "
        "closing newline)",
        "rl: in 96% of the steps' groups every answer got the same reward: no advantage, so no gradient from the "
        "reward",
        "rl: the reward did not rise (0.000 after SFT, 0.000 after RL, on 64 answers each)",
    ]


def test_one_answer_repeated_is_named():
    sft = stage([" Coffee!"] * 60 + [" Tea!"] * 4, format_rate=0.9, reward_mean=0.5)
    assert stage_problems({"sft": sft}) == [
        "sft: 2 distinct answers of 64 to the RL prompt: one answer repeated, no variety left to learn from"]


def test_a_low_format_rate_says_whether_answers_ran_on_or_were_empty():
    sft = stage([f" Coffee {i}!" for i in range(64)], format_rate=0.11, unfinished_rate=0.72, empty_rate=0.17,
                reward_mean=0.5)
    assert stage_problems({"sft": sft}) == [
        "sft: format rate 0.11: most answers to the held-out prompts are not well formed (a space, some text, the "
        "closing newline): 72% ran to the length limit without the closing newline and 17% were empty"]

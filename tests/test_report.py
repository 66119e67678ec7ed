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


def test_the_over_optimisation_section_reads_out_the_gold_peak_and_what_the_policy_said(tmp_path):
    from minigpt_np.train.metrics import MetricsLog
    from minigpt_np.train.report import GOLD_WINDOW, _over_optimisation_section, write_plots

    (tmp_path / "rl").mkdir()
    metrics = MetricsLog(tmp_path / "metrics.jsonl", notify=lambda message: None)
    samples = MetricsLog(tmp_path / "rl" / "samples.jsonl", notify=lambda message: None)
    gold = [0.1] * 10 + [0.5] * 10 + [0.2] * 10  # its trailing mean of 10 steps peaks at step 20
    for step in range(1, 31):
        metrics.log("rl", step, reward_mean=step / 10, kl_per_answer=2.0 * step, gold_score=gold[step - 1])
        if step in (1, 19, 30):
            samples.log_many("rl", step, [{"answer": f" answer of step {step}"}])
    samples.log_many("rl", 30, [{"answer": " a final answer", "final": True}])
    lines = "\n".join(_over_optimisation_section(tmp_path, {"sft": {"metrics": {"gold_score": 0.1}}}, metrics))
    assert GOLD_WINDOW == 10
    assert "| gold peak | 20 | 31.000 | 1.550 | 0.500 |" in lines       # means of steps 11-20
    assert "| end of RL | 30 | 51.000 | 2.550 | 0.200 |" in lines       # of steps 21-30
    assert "kept rising (1.550 → 2.550) while the gold score fell (0.500 → 0.200)" in lines
    assert "- near the gold peak (step 19): ` answer of step 19`" in lines
    assert "- at the end (step 30): ` answer of step 30`" in lines and "final answer" not in lines
    assert "rl_gold.png" in write_plots(tmp_path, metrics) and (tmp_path / "rl_gold.png").stat().st_size > 0

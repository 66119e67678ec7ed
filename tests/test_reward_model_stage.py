"""The reward model's stage (rm, between SFT and RL, with --rm-steps): its checkpoint, figures, report section
and plots on both backends, its start from the SFT policy, that it learns, and Ctrl-C then --resume."""
import json

import numpy as np
import pytest

from minigpt_np.train.checkpoint import load_checkpoint
from minigpt_np.train.data import load_sft_pairs, split_pairs
from minigpt_np.train.pipeline import _reward_model_run, run_pipeline
from minigpt_np.train.preferences import KINDS
from minigpt_np.train.runner import StageInterrupted
from minigpt_np.train.settings import settings_for

from .conftest import TINY, records
from .test_pipeline import assert_same_run, interrupt_at

RM = {**TINY, "rm_steps": 4, "rm_eval_every": 2}


@pytest.fixture(scope="module", params=["numpy", "torch"])
def rm_run(request, tmp_path_factory):
    """A tiny run with a reward model, RL trained against it: (backend, summaries, folder)."""
    settings = settings_for("quick", backend=request.param, runs_dir=str(tmp_path_factory.mktemp(request.param)),
                            name="run", **{**RM, "reward": "learned", "rl_steps": 3})
    return request.param, *run_pipeline(settings, notify=lambda message: None)


def test_the_reward_model_stage_leaves_its_checkpoint_between_sft_and_rl(rm_run):
    backend, summaries, folder = rm_run
    assert list(summaries) == ["pretrain", "sft", "rm", "rl"]
    checkpoint = load_checkpoint(folder / "rm")
    assert checkpoint.complete and checkpoint.step == 4 and checkpoint.meta["model"] == "reward"
    assert "reward_head.weight" in checkpoint.weights and "lm_head.weight" not in checkpoint.weights
    assert set(checkpoint.weights) == set(load_checkpoint(folder / "sft").weights) - {"lm_head.weight"} | {
        "reward_head.weight", "reward_head.bias"}
    from minigpt_torch.model import RewardModel, load_numpy_state_dict
    load_numpy_state_dict(RewardModel(checkpoint.config), checkpoint.weights, strict=True)  # the reference loads it
    counts = checkpoint.meta["preference_pairs"]
    train, held_out = split_pairs(load_sft_pairs())
    assert set(counts["train"]) == set(KINDS) and counts["train"]["shuffled"] == len(train)
    assert counts["held_out"]["other_answer"] == len(held_out)
    metrics = checkpoint.meta["metrics"]
    assert 0.0 <= metrics["pref_accuracy"] <= 1.0 and metrics["pref_loss"] > 0
    assert all(f"pref_accuracy/{kind}" in metrics and f"pref_margin/{kind}" in metrics for kind in counts["held_out"])


def test_its_figures_are_logged_and_the_report_reads_them_out(rm_run):
    _, summaries, folder = rm_run
    logged = [r for r in records(folder) if r["stage"] == "rm"]
    assert [r["step"] for r in logged if "train_loss" in r] == [1, 4]
    assert [r["step"] for r in logged if "pref_accuracy" in r and not r.get("summary")] == [2, 4]
    summary = [r for r in logged if r.get("summary")]
    assert len(summary) == 1 and summary[0]["pref_accuracy"] == summaries["rm"]["metrics"]["pref_accuracy"]
    report = (folder / "report.md").read_text()
    section = report[report.index("## The reward model"):]
    for kind in summaries["rm"]["preference_pairs"]["held_out"]:
        assert f"| {kind.replace('_', ' ')} | {summaries['rm']['preference_pairs']['held_out'][kind]} |" in section
    assert "| rm |" not in report  # the stage table compares the policy after each stage
    assert (folder / "rm_loss.png").stat().st_size > 0 and (folder / "rm_accuracy.png").stat().st_size > 0


def test_the_reward_model_starts_from_the_sft_policy_with_a_head_at_zero(tmp_path):
    settings = settings_for("quick", backend="numpy", runs_dir=str(tmp_path), name="run", **{**RM, "rm_steps": 0})
    run_pipeline(settings, notify=lambda message: None)
    from minigpt_np.train.backend import NumpyBackend
    from minigpt_np.train.runner import Run
    sft = load_checkpoint(tmp_path / "run" / "sft")
    backend = NumpyBackend()
    policy = backend.create_model(sft.config, 0)
    backend.load_state_dict(policy, sft.weights)
    run = Run(backend, policy, sft.config, sft.tokenizer, tmp_path / "run", None, 0, None)
    reward_model = _reward_model_run(run).model
    state = backend.state_dict(reward_model)
    for name, value in sft.weights.items():
        if name != "lm_head.weight":
            assert np.array_equal(state[name], value), name
    assert not state["reward_head.weight"].any() and not state["reward_head.bias"].any()
    assert not (tmp_path / "run" / "rm").exists()  # rm_steps 0: no reward model


def test_the_reward_model_learns_to_rank_the_written_answers_first(tmp_path):
    settings = settings_for("quick", backend="torch", runs_dir=str(tmp_path), name="run",
                            **{**RM, "d_model": 32, "pretrain_steps": 60, "pretrain_lr": 1e-2, "sft_steps": 20,
                               "sft_lr": 3e-3, "rm_steps": 80, "rm_eval_every": 80, "rm_lr": 3e-3, "rl_steps": 1})
    summaries, folder = run_pipeline(settings, notify=lambda message: None)
    train_losses = [r["train_loss"] for r in records(folder) if r["stage"] == "rm" and "train_loss" in r]
    assert train_losses[0] == pytest.approx(np.log(2), abs=1e-6)  # the head starts at 0: every reward is 0
    assert np.mean(train_losses[-3:]) < 0.5
    assert summaries["rm"]["metrics"]["pref_accuracy"] > 0.6  # chance: 0.5


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=pytest.mark.slow)])
def test_ctrl_c_in_the_reward_model_stage_then_resume_gives_the_unbroken_run_bit_for_bit(tmp_path, monkeypatch,
                                                                                         backend):
    common = dict(backend=backend, runs_dir=str(tmp_path), **RM)
    run_pipeline(settings_for("quick", name="unbroken", **common), notify=lambda m: None)
    interrupt_at(monkeypatch, TINY["pretrain_steps"] + TINY["sft_steps"] + 2, backend)  # during rm step 2
    with pytest.raises(StageInterrupted, match="rm: stopped at step 2 of 4"):
        run_pipeline(settings_for("quick", name="broken", **common), notify=lambda m: None)
    monkeypatch.undo()
    stopped = load_checkpoint(tmp_path / "broken" / "rm")
    assert stopped.step == 2 and not stopped.complete and stopped.optimizer_arrays
    messages = []
    run_pipeline(settings_for("quick", name="broken", resume=True, **common), notify=messages.append)
    assert "rm: resuming at step 2 of 4" in messages
    assert_same_run(tmp_path / "broken", tmp_path / "unbroken")
    for name, value in load_checkpoint(tmp_path / "unbroken" / "rm").weights.items():
        assert np.array_equal(load_checkpoint(tmp_path / "broken" / "rm").weights[name], value), name
    again = []
    run_pipeline(settings_for("quick", name="broken", resume=True, **common), notify=again.append)
    assert "rm: already complete in" in " ".join(again)
    assert json.loads((tmp_path / "broken" / "settings.json").read_text())["rm_steps"] == 4


def rm_from_checkpoint(folder, backend_name):
    """The run's trained reward model, read back from its checkpoint, as a Run for LearnedReward."""
    from minigpt_np.train.runner import Run
    from minigpt_np.train.settings import backend_for
    checkpoint = load_checkpoint(folder / "rm")
    backend = backend_for(settings_for("quick", backend=backend_name))
    model = backend.create_reward_model(checkpoint.config, 0)
    backend.load_state_dict(model, checkpoint.weights)
    return Run(backend, model, checkpoint.config, checkpoint.tokenizer, folder, None, 0, None)


def test_rl_against_the_learned_reward_is_paid_what_the_reward_model_says(rm_run):
    from minigpt_np.train.pipeline import RL_INSTRUCTION
    from minigpt_np.train.reward_model import LearnedReward
    backend, summaries, folder = rm_run
    judge = LearnedReward(rm_from_checkpoint(folder, backend))
    tolerance = 1e-5  # float32 rewards: the same model on the same texts, in batches of other sizes
    samples = records(folder / "rl", "samples.jsonl")
    assert samples and all(set(record["components"]) == {"learned"} for record in samples)
    for record in samples:
        [again], _ = judge.score_answers([record["prompt"]], [record["answer"]])
        assert record["reward"] == pytest.approx(again, abs=tolerance)
    steps = [r for r in records(folder) if r["stage"] == "rl" and "reward_mean" in r and not r.get("summary")]
    assert steps and all("reward/learned" in r and "original_reward_mean" in r for r in steps)
    for stage in ("pretrain", "sft", "rl"):  # the table's reward column: the learned reward of each stage's answers
        answers = [record["answer"] for record in summaries[stage]["final_samples"]]
        totals, _ = judge.score_answers([RL_INSTRUCTION] * len(answers), answers)
        assert summaries[stage]["metrics"]["reward_mean"] == pytest.approx(np.mean(totals), abs=tolerance), stage
    assert "reward/learned" in summaries["sft"]["metrics"]


def test_rl_from_checkpoint_against_the_combined_reward_pays_the_original_gated_by_the_reward_model(rm_run, tmp_path):
    """combined: each component of the original reward times sigmoid(r(answer) - the mean r of the written
    answers to the training instructions), recomputed here from the saved reward model."""
    from minigpt_np.train.pipeline import rl_from_checkpoint
    from minigpt_np.train.reward_model import LearnedReward
    from minigpt_np.train.rewards import original_reward
    backend, _, folder = rm_run
    settings = settings_for("quick", backend=backend, runs_dir=str(tmp_path), name="combined",
                            **{**RM, "reward": "combined", "rl_steps": 2})
    run, _, final = rl_from_checkpoint(folder / "sft", settings, notify=lambda m: None, reward_model=folder / "rm")
    judge = LearnedReward(rm_from_checkpoint(folder, backend))
    train, _ = split_pairs(load_sft_pairs())
    r_written = np.mean(judge.rewards([i for i, _ in train], [f" {a}" for _, a in train]))
    samples = records(tmp_path / "combined" / "rl", "samples.jsonl")
    assert len(samples) > 64 and all(set(r["components"]) == {"coffee", "exclamation", "length"} for r in samples)
    for record in samples:
        [r] = judge.rewards([record["prompt"]], [record["answer"]])
        gate = 1 / (1 + np.exp(-(r - r_written)))
        for name, value in original_reward(record["answer"]).items():
            assert record["components"][name] == pytest.approx(value * gate, rel=1e-5, abs=1e-6), name
        assert record["reward"] == pytest.approx(sum(record["components"].values()), rel=0, abs=1e-9)
    from minigpt_np.train.reward_model import CombinedReward
    tagline, salad = " Coffee first, then we chase the ball all morning long!", " coffee coffee coffee coffee!"
    totals, components = CombinedReward(judge, train).score_answers(["Write a tagline."] * 2, [tagline, salad])
    r = judge.rewards(["Write a tagline."] * 2, [tagline, salad])
    gates = 1 / (1 + np.exp(-(r - r_written)))
    assert totals == pytest.approx([2.0 * gates[0], 1.5 * gates[1]], rel=1e-6, abs=0)
    assert components["length"] == pytest.approx([0.5 * gates[0], 0.0], rel=1e-6, abs=0)
    assert "reward/coffee" in final and "gold_score" in final
    with pytest.raises(ValueError, match="holds a policy, not a reward model"):
        rl_from_checkpoint(folder / "sft", settings_for("quick", backend=backend, runs_dir=str(tmp_path), name="p",
                                                        **{**RM, "reward": "combined"}), reward_model=folder / "sft")
    with pytest.raises(ValueError, match="--reward learned: RL from a checkpoint needs a trained reward model"):
        rl_from_checkpoint(folder / "sft", settings_for("quick", backend=backend, runs_dir=str(tmp_path), name="n",
                                                        **{**RM, "reward": "learned"}))


@pytest.mark.parametrize("reward", ["learned", "combined"])
def test_a_learned_reward_without_a_reward_model_is_refused_in_one_line(tmp_path, capsys, reward):
    from .conftest import load_cli
    code = load_cli().main(["--reward", reward, "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: --reward {reward}:") and "--rm-steps" in err[0]
    assert not (tmp_path / "runs").exists()


def test_a_reward_that_reads_instructions_needs_one_per_answer():
    from minigpt_np.train.rewards import score

    class Reads:
        def score_answers(self, instructions, answers):
            return [float(len(i) - len(a)) for i, a in zip(instructions, answers)], {"difference": [0.0] * len(answers)}

    assert score(Reads(), ["ab", "c"], ["xyz", "xyz"])[0] == [1.0, 2.0]
    for instructions in (None, ["xyz"]):
        with pytest.raises(ValueError, match="one per answer"):
            score(Reads(), ["ab", "c"], instructions)

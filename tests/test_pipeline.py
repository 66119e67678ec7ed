"""The pipeline end to end (cut down to seconds), resume, Ctrl-C, NaN, and one-line errors."""
import contextlib
import json
import math
import os
import signal

import numpy as np
import pytest
from safetensors.numpy import load_file

from minigpt_np.train import backend as backend_module
from minigpt_np.train.checkpoint import load_checkpoint
from minigpt_np.train.judge import gold_score, pair_share
from minigpt_np.train.pipeline import run_pipeline
from minigpt_np.train.settings import RunFolderError, settings_for
from minigpt_np.train.readability import answer_readability
from minigpt_np.train.rewards import fluent_reward, original_reward
from minigpt_np.train.runner import StageInterrupted, TrainingDiverged

from .conftest import TINY, WIKITEXT_DIR, flags, load_cli, records

def losses(folder):
    return [(r["stage"], r["step"], r["train_loss"]) for r in records(folder) if "train_loss" in r]


@pytest.fixture(scope="module", params=["numpy", "torch"])
def quick_run(request, tmp_path_factory):
    """The quick preset, cut down, run once per backend for the end-to-end tests: (summaries, folder)."""
    settings = settings_for("quick", backend=request.param, runs_dir=str(tmp_path_factory.mktemp(request.param)),
                            name="run", **{**TINY, "pretrain_steps": 30, "pretrain_lr": 1e-2, "sft_steps": 10})
    return run_pipeline(settings, notify=lambda message: None)


def test_every_stage_leaves_a_complete_checkpoint_with_its_figures(quick_run):
    summaries, folder = quick_run
    assert list(summaries) == ["pretrain", "sft", "rl"]
    for stage in summaries:
        assert load_checkpoint(folder / stage).weights_path.stat().st_size > 0
        meta = json.loads((folder / stage / "checkpoint.json").read_text())
        assert meta["complete"] and meta["stage"] == stage and meta["vocabulary"]
        assert {"val_loss", "val_bpc", "answer_loss", "format_rate", "reward_mean"} <= set(meta["metrics"])


def test_the_report_and_its_plots_are_written(quick_run):
    _, folder = quick_run
    for plot in ("pretrain_loss.png", "sft_loss.png", "rl_reward.png"):
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (folder / "report.md").read_text()
    assert "| pretrain | 30 |" in report and "| rl | 2 |" in report and "![" in report
    assert "after sft" in report and "embedded" in report
    assert "the 10 best and the 10 worst" in report and "| readable |" in report


def test_the_report_looks_inside_the_final_policy(quick_run):
    _, folder = quick_run
    report = (folder / "report.md").read_text()
    assert "## Inside the final policy" in report and "| position | character | its probability |" in report
    moved = report.split("## How the RL policy moved")[1].split("\n## ")[0]
    assert [line.split(" | ")[0] for line in moved.splitlines() if line.startswith("| ") and "`" in line] == ["| 1", "| 2"]
    for picture in ("inspect_rl_prompt_attention.png", "inspect_rl_prompt_probabilities.png",
                    "inspect_held_out_attention.png", "inspect_held_out_probabilities.png", "inspect_rl_change.png"):
        assert f"]({picture})" in report
        assert (folder / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pretraining_learns(quick_run):
    _, folder = quick_run
    pretrain = [loss for stage, _, loss in losses(folder) if stage == "pretrain"]
    assert pretrain[-1] < pretrain[0] - 0.5, pretrain


def test_rl_keeps_every_answer_of_the_last_steps_and_the_final_policys_with_their_scores(quick_run):
    _, folder = quick_run
    kept = records(folder / "rl", "samples.jsonl")
    assert [(r["step"], r.get("final", False)) for r in kept] == [(1, False)] * 2 + [(2, False)] * 2 + [(2, True)] * 64
    for record in kept:
        assert record["reward"] == sum(fluent_reward(record["answer"]).values())  # the default reward
        assert record["components"] == fluent_reward(record["answer"])
        assert {k: record[k] for k in ("real_word_rate", "repeat_rate", "readable")} == answer_readability(record["answer"])
        assert record["prompt"] == "Give a creative tagline for coffee before practice." and record["stage"] == "rl"
    assert len({r["answer"] for r in kept}) > 1


def test_the_rl_summary_is_computed_from_the_final_answers(quick_run):
    summaries, folder = quick_run
    final = [r for r in records(folder / "rl", "samples.jsonl") if r.get("final")]
    rl_summary = summaries["rl"]["metrics"]
    assert rl_summary["readable_frac"] == np.mean([r["readable"] for r in final])
    assert rl_summary["fluent_reward_mean"] == np.mean([r["reward"] for r in final]) == rl_summary["reward_mean"]
    assert rl_summary["original_reward_mean"] == np.mean([sum(original_reward(r["answer"]).values()) for r in final])
    assert rl_summary["unique_frac"] == len({r["answer"] for r in final}) / 64


def test_every_logged_record_names_its_stage_and_step_and_rl_steps_log_readability(quick_run):
    _, folder = quick_run
    step_records = [r for r in records(folder) if r["stage"] == "rl" and not r.get("summary") and "reward_mean" in r]
    assert step_records
    assert all({"real_word_rate", "repeat_rate", "readable_frac", "guarded_reward_mean", "fluent_reward_mean"} <= set(r)
               for r in step_records)
    assert all(r["stage"] in ("pretrain", "sft", "rl") and isinstance(r["step"], int) for r in records(folder))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_sample_script_reads_checkpoints_of_either_backend(tmp_path, capsys, backend):
    other = {"numpy": "torch", "torch": "numpy"}[backend]
    settings = settings_for("quick", backend=other, runs_dir=str(tmp_path), name="run",
                            **{**TINY, "sft_steps": 1, "rl_steps": 1})
    run_pipeline(settings, notify=lambda message: None)
    sample = load_cli("sample")
    assert sample.main([str(tmp_path / "run" / "sft"), "--backend", backend, "--instruction", "Say hi.",
                        "--samples", "2", "--max-new-tokens", "10"]) == 0
    output = capsys.readouterr().out
    assert output.startswith(f"sft checkpoint, step 1, {backend} backend") and output.count("Instruction: Say hi.") == 2
    assert sample.main([str(tmp_path / "nowhere")]) == 2
    assert "is not a checkpoint" in capsys.readouterr().err


def backend_class(backend):
    """The class of the backend called ``backend``, to patch its methods."""
    if backend == "numpy":
        return backend_module.NumpyBackend
    from minigpt_torch.backend import TorchBackend
    return TorchBackend


def interrupt_at(monkeypatch, call_number, backend="numpy"):
    """Send a real SIGINT (as Ctrl-C does) during the given optimizer step."""
    original = backend_class(backend).optimizer_step
    calls = {"n": 0}

    def optimizer_step(self, *args):
        calls["n"] += 1
        if calls["n"] == call_number:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(backend_class(backend), "optimizer_step", optimizer_step)


@contextlib.contextmanager
def final_optimizer_states(backend):
    """Yields a list that, when the block ends, holds the AdamW state (moments and step counts, as a
    checkpoint saves them) of every stage optimizer created within the block, read at the end."""
    cls, created, states = backend_class(backend), [], []
    original = cls.create_optimizer

    def create_optimizer(self, model, lr, weight_decay):
        optimizer = original(self, model, lr, weight_decay)
        created.append((self, model, optimizer))
        return optimizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cls, "create_optimizer", create_optimizer)
        yield states
    states.extend(instance.optimizer_state(model, optimizer) for instance, model, optimizer in created)


def assert_same_optimizers(resumed, unbroken):
    """The resumed run's stage optimizers (the stopped stage's and the later ones') end as the unbroken run's last ones."""
    assert resumed and len(resumed) <= len(unbroken)
    for (arrays, steps), (ref_arrays, ref_steps) in zip(resumed, unbroken[-len(resumed):]):
        assert steps == ref_steps and list(arrays) == list(ref_arrays) and min(steps.values()) > 0
        for name, value in ref_arrays.items():
            assert np.array_equal(arrays[name], value), name


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ctrl_c_saves_and_resume_matches_an_unbroken_run(tmp_path, monkeypatch, backend):
    """Both backends, a real SIGINT in pretraining: after --resume every stage's weights, the final AdamW
    moments and steps of every stage run after the stop, and metrics.jsonl less timing are the unbroken run's."""
    common = dict(backend=backend, runs_dir=str(tmp_path), **TINY)
    with final_optimizer_states(backend) as unbroken_optimizers:
        run_pipeline(settings_for("quick", name="unbroken", **common), notify=lambda m: None)

    interrupt_at(monkeypatch, 5, backend)  # during pretraining step 5: the step finishes, is saved, the run stops
    with pytest.raises(StageInterrupted, match="stopped at step 5 of 8.*--resume"):
        run_pipeline(settings_for("quick", name="broken", **common), notify=lambda m: None)
    saved = json.loads((tmp_path / "broken" / "pretrain" / "checkpoint.json").read_text())
    assert saved["step"] == 5 and not saved["complete"]
    assert load_checkpoint(tmp_path / "broken" / "pretrain").optimizer_arrays
    monkeypatch.undo()

    with pytest.raises(RunFolderError, match="already holds a run"):
        run_pipeline(settings_for("quick", name="broken", **common), notify=lambda m: None)
    messages = []
    with final_optimizer_states(backend) as resumed_optimizers:
        run_pipeline(settings_for("quick", name="broken", resume=True, **common), notify=messages.append)
    assert "pretrain: resuming at step 5 of 8" in messages
    assert_same_run(tmp_path / "broken", tmp_path / "unbroken")
    assert len(resumed_optimizers) == 3
    assert_same_optimizers(resumed_optimizers, unbroken_optimizers)


def test_nan_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A NaN loss at step 6 (read in a batch at step 8, the end) stops the stage; the step-4 checkpoint stays."""
    original = backend_module.NumpyBackend.weighted_nll
    calls = {"n": 0}

    def weighted_nll(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(backend_module.NumpyBackend, "weighted_nll", weighted_nll)
    settings = settings_for("quick", backend="numpy", runs_dir=str(tmp_path), name="nan",
                            **{**TINY, "checkpoint_every": 4})
    with pytest.raises(TrainingDiverged, match="loss became nan at step 6.*checkpoint \\(step 4\\) is kept"):
        run_pipeline(settings, notify=lambda m: None)
    kept = json.loads((tmp_path / "nan" / "pretrain" / "checkpoint.json").read_text())
    assert kept["step"] == 4
    weights = load_file(str(load_checkpoint(tmp_path / "nan" / "pretrain").weights_path))
    assert all(np.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_losses_are_read_in_batches_at_the_logged_steps(tmp_path, monkeypatch, backend):
    """The loop reads the loss and gradient norm of all steps, but only at steps that log, evaluate or save:
    here 1, 4 (checkpoint) and 8 (the end) of 8 pretraining steps."""
    original, reads = backend_class(backend).read, []

    def read(self, values):
        numbers = original(self, values)
        reads.append(numbers)
        return numbers

    monkeypatch.setattr(backend_class(backend), "read", read)
    settings = settings_for("quick", backend=backend, runs_dir=str(tmp_path), name="run",
                            **{**TINY, "checkpoint_every": 4, "sft_steps": 1, "rl_steps": 1})
    run_pipeline(settings, notify=lambda m: None)
    pretrain_reads = reads[:3]
    assert [len(numbers) for numbers in pretrain_reads] == [2, 2 * 3, 2 * 4]  # (loss, norm) per step
    logged = [r for r in records(tmp_path / "run") if r["stage"] == "pretrain" and "train_loss" in r]
    assert [r["step"] for r in logged] == [1, 8]
    assert [r["train_loss"] for r in logged] == [pretrain_reads[0][0], pretrain_reads[2][-2]]
    assert [r["grad_norm"] for r in logged] == [pretrain_reads[0][1], pretrain_reads[2][-1]]
    assert all(math.isfinite(n) and n > 0 for numbers in pretrain_reads for n in numbers)


def cli_error(capsys, *argv):
    code = load_cli().main(list(argv))
    message = capsys.readouterr().err.strip()
    return code, message


def test_cli_errors_are_one_line(tmp_path, capsys):
    base = ["--preset", "quick", "--runs-dir", str(tmp_path), "--no-progress", "--pretrain-steps", "2",
            "--sft-steps", "1", "--rl-steps", "1", "--d-model", "16", "--n-heads", "2", "--rl-samples", "2",
            "--max-new-tokens", "4", "--eval-windows", "2", "--batch-size", "2", "--context-length", "32"]
    with pytest.raises(SystemExit) as exit_info:
        load_cli().main(["--backend", "jax"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --backend: invalid choice: 'jax'")

    import torch
    cases = [
        (["--backend", "numpy", "--device", "cuda"], "numpy backend runs on the CPU only"),
        (["--backend", "torch", "--device", "tpu"], "unknown device 'tpu'"),
    ]
    if not torch.cuda.is_available():  # on a GPU machine --device cuda is a valid setting
        cases.append((["--backend", "torch", "--device", "cuda"], "PyTorch sees no CUDA GPU"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases.append((["--backend", "numpy", "--sft-file", str(empty)], f"SFT file {empty} is empty"))
    short = tmp_path / "short.txt"
    short.write_text("too short for a window\n")
    cases.append((["--backend", "numpy", "--data", "wikitext", "--train-file", str(short), "--validation-file",
                   str(short)], "fewer than one context window"))
    cases.append((["--backend", "numpy", "--reward", "nowhere:nothing"], "--reward: cannot load 'nowhere:nothing'"))
    cases.append((["--backend", "numpy", "--rl-samples", "1"], "rloo advantage compares the samples of a prompt"))
    for extra, expected in cases:
        code, message = cli_error(capsys, *base, *extra)
        assert code == 2 and message.startswith("error: ") and expected in message, (extra, message)
        assert "\n" not in message and "Traceback" not in message


def test_resume_refuses_damaged_or_mismatched_checkpoints(tmp_path, capsys):
    argv = ["--backend", "numpy", "--preset", "quick", "--runs-dir", str(tmp_path), "--name", "r", "--no-progress",
            "--pretrain-steps", "4", "--sft-steps", "2", "--rl-steps", "1", "--d-model", "16", "--n-heads", "2",
            "--rl-samples", "2", "--max-new-tokens", "4", "--eval-windows", "2", "--batch-size", "2",
            "--context-length", "32"]
    assert load_cli().main(argv) == 0
    capsys.readouterr()
    code, message = cli_error(capsys, *argv, "--resume", "--pretrain-steps", "5")
    assert code == 2 and "other settings than the stopped run: pretrain_steps=5 (run: 4)" in message

    weights = load_checkpoint(tmp_path / "r" / "sft").weights_path
    weights.write_bytes(weights.read_bytes()[:100])
    code, message = cli_error(capsys, *argv, "--resume")
    assert code == 2 and "truncated or corrupted" in message

    meta_path = tmp_path / "r" / "pretrain" / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["vocabulary"] = meta["vocabulary"][:-2] + meta["vocabulary"][-1:]
    meta_path.write_text(json.dumps(meta))
    code, message = cli_error(capsys, *argv, "--resume")
    assert code == 2 and "different vocabulary" in message


def test_compare_rl_writes_the_table_the_plots_and_every_figure(tmp_path, capsys):
    """Both rewards x two advantages x two betas x two seeds, and best-of-N by both rewards: every
    method has its row; the best-of-N figures are those of the pool answers it chose (checked from the
    runs' own samples files and results.json)."""
    settings = settings_for("quick", backend="numpy", runs_dir=str(tmp_path), name="base",
                            **{**TINY, "rl_steps": 1})
    run_pipeline(settings, notify=lambda message: None)
    compare = load_cli("compare_rl")
    out = tmp_path / "compare"
    assert compare.main([str(tmp_path / "base" / "sft"), "--backend", "numpy", "--steps", "2", "--samples", "2",
                         "--seeds", "0", "1", "--advantages", "rloo", "none", "--kl-coefs", "0", "0.1",
                         "--rewards", "original", "guarded", "--best-of", "1", "4", "--pool", "8", "--last", "2",
                         "--out", str(out)]) == 0
    table = (out / "comparison.md").read_text()
    for reward in ("original", "guarded"):
        for method in ("rloo, beta=0", "rloo, beta=0.1", "none, beta=0", "none, beta=0.1"):
            assert f"| RL {reward}, {method} |" in table
        assert f"| best-of-1 by {reward} |" in table and f"| best-of-4 by {reward} |" in table
    for plot in ("frontier.png", "curves.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    run = results["rl"]["RL guarded, rloo, beta=0.1"][1]
    final = [r for r in records(out / "guarded-rloo-beta0.1-seed1" / "rl", "samples.jsonl") if r.get("final")]
    assert len(final) == 64 and run["readable_frac"] == np.mean([r["readable"] for r in final])
    assert run["original_reward_mean"] == np.mean([sum(original_reward(r["answer"]).values()) for r in final])
    assert run["guarded_reward_mean"] == np.mean([r["reward"] for r in final])  # trained on, and scored by, guarded
    assert run["fluent_reward_mean"] == np.mean([sum(fluent_reward(r["answer"]).values()) for r in final])
    best_of_one = results["best_of_n"]["best-of-1 by original"][0]
    assert best_of_one["kl_per_answer"] == 0.0 and best_of_one["kl_bound"] == 0.0 and best_of_one["answers"] == 8
    best_of_four = results["best_of_n"]["best-of-4 by original"][0]
    assert best_of_four["answers"] == 2 and best_of_four["original_reward_mean"] >= best_of_one["original_reward_mean"]
    assert "(bound 0.636)" in table
    assert run["gold_score"] == np.mean([gold_score(r["answer"]) for r in final])  # the gold judge's figures
    assert run["pair_share"] == np.mean([pair_share(r["answer"]) for r in final])
    gold = [r["gold_score"] for r in records(out / "guarded-rloo-beta0.1-seed1")
            if r["stage"] == "rl" and "gold_score" in r and not r.get("summary")]
    assert len(gold) == 2 and run["gold_peak"] == max(gold[0], (gold[0] + gold[1]) / 2)  # means of up to 10 steps
    assert (out / "overoptimisation.png").read_bytes()[:4] == b"\x89PNG" and "English pair share" in table


def test_compare_rl_against_the_learned_and_the_combined_reward_of_a_saved_reward_model(tmp_path, capsys):
    """--reward-model: RL and best-of-N by the learned and the combined reward; without it, one error line."""
    settings = settings_for("quick", backend="numpy", runs_dir=str(tmp_path), name="base",
                            **{**TINY, "rl_steps": 1, "rm_steps": 2, "rm_eval_every": 2})
    run_pipeline(settings, notify=lambda message: None)
    compare = load_cli("compare_rl")
    base, out = tmp_path / "base", tmp_path / "compare"
    common = [str(base / "sft"), "--backend", "numpy", "--steps", "2", "--samples", "2", "--seeds", "0",
              "--advantages", "rloo", "--kl-coefs", "0.1", "--best-of", "1", "2", "--pool", "4", "--out", str(out)]
    assert compare.main(common + ["--rewards", "combined"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --rewards combined: needs --reward-model, the rm folder of a "
                                               "run with --rm-steps")
    assert compare.main(common + ["--rewards", "learned", "--reward-model", str(base / "sft")]) == 2
    assert "holds no reward model" in capsys.readouterr().err
    assert compare.main(common + ["--rewards", "learned", "combined", "--reward-model", str(base / "rm")]) == 0
    table = (out / "comparison.md").read_text()
    for reward in ("learned", "combined"):
        assert f"| RL {reward}, rloo, beta=0.1 |" in table and f"| best-of-2 by {reward} |" in table
        samples = records(out / f"{reward}-rloo-beta0.1-seed0" / "rl", "samples.jsonl")
        names = {"learned"} if reward == "learned" else {"coffee", "exclamation", "length"}
        assert samples and all(set(r["components"]) == names for r in samples)
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["sft_pool"]["shuffled_pair_share"] <= 1 and results["sft_pool"]["answers"] == 4


@pytest.mark.slow
def test_bench_prints_the_table_and_writes_the_json(tmp_path, capsys):
    """bench.py with one step of each kind: every figure the JSON promises is there and positive."""
    bench = load_cli("bench")
    out = tmp_path / "bench.json"
    bench.main(["--steps", "1", "--warmup", "1", "--rl-steps", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "numpy float32 / torch step time" in printed and "numpy / torch RL step time" in printed
    result = json.loads(out.read_text())
    assert set(result["train_step_ms"]) == {"numpy_float32", "numpy_float64", "torch"}
    assert set(result["rl_step_ms"]) == {"numpy", "torch"}
    figures = [*result["train_step_ms"].values(), *result["rl_step_ms"].values(), result["matmul_peak_gflops"],
               result["step_gflop"], *result["peak_rss_mb"].values()]
    assert all(value > 0 for value in figures), figures
    assert result["device"] == "cpu"
    assert all(v["answer_chars"] > 0 for v in result["details"]["rl"].values())
    bench.main(["--markdown", str(out)])  # docs/speed.md's tables, from the JSON alone
    tables = capsys.readouterr().out
    assert all(f"| {name} | {ms:.1f} |" in tables for name, ms in result["train_step_ms"].items()), tables
    assert all(f"| {name} | {ms:.0f} |" in tables for name, ms in result["rl_step_ms"].items()), tables


def test_bench_markdown_refuses_a_file_that_is_not_its_json(tmp_path, capsys):
    bad = tmp_path / "other.json"
    bad.write_text('{"figures": 1}')
    assert load_cli("bench").main(["--markdown", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --markdown: {bad} is not bench.py's JSON")


def test_bench_refuses_a_missing_gpu_before_measuring(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(SystemExit) as stopped:
        load_cli("bench").main(["--device", "cuda"])
    assert stopped.value.code == 2 and "sees no CUDA GPU" in capsys.readouterr().err


def test_plain_kernels_run_the_pipeline_and_their_checkpoint_samples_with_the_fast_ones(tmp_path, capsys):
    """--kernels plain: the whole pipeline on functional.py's ops; with dropout 0 it logs the losses of
    the fast form (float64), and its checkpoint loads into the fast model (the form is not saved)."""
    tiny = {**TINY, "pretrain_steps": 4, "sft_steps": 2, "rl_steps": 1, "dropout": 0.0, "dtype": "float64"}
    runs = {}
    for kernels in ("plain", "fast"):
        assert load_cli().main(["--backend", "numpy", "--preset", "quick", "--kernels", kernels, "--runs-dir",
                                str(tmp_path), "--name", kernels, *flags(tiny)]) == 0
        runs[kernels] = losses(tmp_path / kernels)
        printed = capsys.readouterr().out.replace(str(tmp_path), "RUNS").splitlines()  # a path is as long as it is
        assert max(len(line) for line in printed) <= 100, printed  # fits a terminal of 100 columns
        assert any(line.split()[:2] == ["rl", "1"] for line in printed) and printed[-1].startswith("full report: ")
    assert [r[:2] for r in runs["plain"]] == [r[:2] for r in runs["fast"]]
    np.testing.assert_allclose([r[2] for r in runs["plain"]], [r[2] for r in runs["fast"]], rtol=0, atol=1e-10)
    capsys.readouterr()
    sample = load_cli("sample")
    for kernels in ("fast", "plain"):
        assert sample.main([str(tmp_path / "plain" / "sft"), "--kernels", kernels, "--prompt", "The",
                            "--samples", "1", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.count("sft checkpoint") == 2


@pytest.mark.parametrize("script, args", [
    ("run_all", ["--backend", "torch", "--kernels", "plain"]),
    ("sample", ["runs/none", "--backend", "torch", "--kernels", "plain"]),
])
def test_kernels_are_refused_for_the_torch_backend(tmp_path, capsys, script, args):
    args = [a if a != "runs/none" else str(tmp_path) for a in args]
    if script == "sample":  # a checkpoint to point at, so the refusal is about the kernels
        run_pipeline(settings_for("quick", backend="numpy", runs_dir=str(tmp_path), name="run",
                                  **{**TINY, "pretrain_steps": 1, "sft_steps": 1, "rl_steps": 1}),
                     notify=lambda message: None)
        args[0] = str(tmp_path / "run" / "sft")
    else:
        args += ["--runs-dir", str(tmp_path)]
    capsys.readouterr()
    assert load_cli(script).main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --kernels: plain is for the numpy backend; the torch backend has one form of its ops", err
    assert not (tmp_path / "seed-torch").exists()  # refused before any folder is written


@pytest.mark.parametrize("kind", ["loss", "gradient norm"])
@pytest.mark.parametrize("stage", ["pretrain", "sft", "rl"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_nan_guard_stops_every_stage_on_both_backends(tmp_path, monkeypatch, backend, stage, kind):
    """A real NaN, injected at the stage's step 2: into the loss (the loss times NaN, so its gradients are
    NaN too) or into one parameter's gradient just before clipping. The stage stops with one message, its
    step-1 checkpoint and the earlier stages' checkpoints stay, finite."""
    first_step = {"pretrain": 1, "sft": 1 + TINY["pretrain_steps"],
                  "rl": 1 + TINY["pretrain_steps"] + TINY["sft_steps"]}[stage]
    target = first_step + 1  # the stage's step 2, counted over the run's steps
    step = {"now": 0}
    cls = backend_class(backend)
    original_seed, original_nll = cls.seed_dropout, cls.weighted_nll

    def seed_dropout(self, model, seed):  # the training loop calls it once at the start of every step
        step["now"] += 1
        return original_seed(self, model, seed)

    def weighted_nll(self, *args, **kwargs):
        loss = original_nll(self, *args, **kwargs)
        return loss * float("nan") if kind == "loss" and step["now"] == target else loss

    monkeypatch.setattr(cls, "seed_dropout", seed_dropout)
    monkeypatch.setattr(cls, "weighted_nll", weighted_nll)
    if kind == "gradient norm":
        if backend == "numpy":
            original_clip = backend_module.clip_grad_norm_

            def clip(params, max_norm):
                params = list(params)
                if step["now"] == target:
                    params[0].grad.flat[0] = np.nan
                return original_clip(params, max_norm)

            monkeypatch.setattr(backend_module, "clip_grad_norm_", clip)
        else:
            import torch
            original_clip = torch.nn.utils.clip_grad_norm_

            def clip(params, max_norm):
                params = list(params)
                if step["now"] == target:
                    with torch.no_grad():
                        params[0].grad.view(-1)[0] = float("nan")
                return original_clip(params, max_norm)

            monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    settings = settings_for("quick", backend=backend, runs_dir=str(tmp_path), name="nan",
                            **{**TINY, "checkpoint_every": 1})
    with pytest.raises(TrainingDiverged, match=f"{stage}: the {kind} became nan at step 2; stopped, "
                                               r"the last good checkpoint \(step 1\) is kept"):
        run_pipeline(settings, notify=lambda m: None)
    for done in ("pretrain", "sft", "rl")[: ("pretrain", "sft", "rl").index(stage)]:
        assert load_checkpoint(tmp_path / "nan" / done).complete
    kept = load_checkpoint(tmp_path / "nan" / stage)
    assert kept.step == 1 and not kept.complete
    assert all(np.isfinite(value).all() for value in kept.weights.values())


def comparable(folder):
    """metrics.jsonl less the wall-clock time of steps."""
    return [{k: v for k, v in r.items() if k != "step_seconds"} for r in records(folder)]


def assert_same_run(folder, reference):
    assert comparable(folder) == comparable(reference)
    assert records(folder / "rl", "samples.jsonl") == records(reference / "rl", "samples.jsonl")
    for stage in ("pretrain", "sft", "rl"):
        ours, theirs = load_checkpoint(folder / stage), load_checkpoint(reference / stage)
        assert list(ours.weights) == list(theirs.weights)
        for name, value in theirs.weights.items():
            assert np.array_equal(ours.weights[name], value), f"{stage}: {name}"


@pytest.mark.parametrize("stage", ["sft", "rl"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ctrl_c_in_sft_or_rl_then_resume_gives_the_unbroken_run_bit_for_bit(tmp_path, monkeypatch, backend, stage):
    """A real SIGINT at the stage's step 2 (RL with the moving-average baseline, whose state is saved with
    the stage): after --resume every stage's weights are bit-identical to an unbroken run's, and so are
    the final AdamW state of the stages run after the stop and metrics.jsonl less timing; the interrupted
    checkpoint holds AdamW's state and steps."""
    common = dict(backend=backend, runs_dir=str(tmp_path), **{**TINY, "rl_steps": 3, "rl_advantage": "moving_average"})
    with final_optimizer_states(backend) as unbroken_optimizers:
        run_pipeline(settings_for("quick", name="unbroken", **common), notify=lambda m: None)
    first_step = {"sft": 1 + TINY["pretrain_steps"], "rl": 1 + TINY["pretrain_steps"] + TINY["sft_steps"]}[stage]
    interrupt_at(monkeypatch, first_step + 1, backend)
    with pytest.raises(StageInterrupted, match=f"{stage}: stopped at step 2 of"):
        run_pipeline(settings_for("quick", name="broken", **common), notify=lambda m: None)
    monkeypatch.undo()
    stopped = load_checkpoint(tmp_path / "broken" / stage)
    assert stopped.step == 2 and not stopped.complete and stopped.optimizer_arrays
    assert set(stopped.meta["optimizer_steps"].values()) == {2}
    if stage == "rl":
        assert stopped.meta["stage_state"]["baseline_steps"] == 2
        # as a crash after step 3 logged its answers, before any save, would leave them: the resumed
        # stage must drop them and write its own
        stale = [{**r, "answer": "stale"} for r in records(tmp_path / "unbroken" / "rl", "samples.jsonl") if r["step"] == 3]
        with open(tmp_path / "broken" / "rl" / "samples.jsonl", "a") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in stale))
    messages = []
    with final_optimizer_states(backend) as resumed_optimizers:
        run_pipeline(settings_for("quick", name="broken", resume=True, **common), notify=messages.append)
    assert f"{stage}: resuming at step 2 of {common[stage + '_steps']}" in messages
    assert_same_run(tmp_path / "broken", tmp_path / "unbroken")
    assert len(resumed_optimizers) == {"sft": 2, "rl": 1}[stage]
    assert_same_optimizers(resumed_optimizers, unbroken_optimizers)


def test_a_second_ctrl_c_during_the_save_leaves_a_checkpoint_that_resumes(tmp_path, monkeypatch):
    """The first Ctrl-C asks the loop to save and stop; a second one, arriving in the middle of that save
    (between its file writes), interrupts at once: the checkpoint on disk is the previous one or the new
    one, whole, and --resume finishes the run as an unbroken run would."""
    from minigpt_np.train import checkpoint as checkpoint_module
    common = dict(backend="numpy", runs_dir=str(tmp_path), **{**TINY, "checkpoint_every": 2})
    run_pipeline(settings_for("quick", name="unbroken", **common), notify=lambda m: None)
    interrupt_at(monkeypatch, 5)  # the first Ctrl-C, during pretraining step 5
    original_write, writes = checkpoint_module.write_durably, []

    def write_durably(path, data):
        writes.append(path)
        if len(writes) == 7:  # the save of the Ctrl-C (writes 1-6: the checkpoints of steps 2 and 4)
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, after the weights, before the commit
        return original_write(path, data)

    monkeypatch.setattr(checkpoint_module, "write_durably", write_durably)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(settings_for("quick", name="broken", **common), notify=lambda m: None)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "broken" / "pretrain").step == 4  # the save of step 5 never committed
    run_pipeline(settings_for("quick", name="broken", resume=True, **common), notify=lambda m: None)
    assert_same_run(tmp_path / "broken", tmp_path / "unbroken")


def test_resuming_a_run_saved_before_a_setting_existed_compares_with_what_that_run_did(tmp_path):
    """A run saved before --rl-split-duplicates existed did not split; resuming it with today's default
    (split) would change what it computes, so it is refused, naming the setting."""
    import dataclasses

    from minigpt_np.train.settings import RunFolderError, _prepare_folder

    folder = tmp_path / "old"
    folder.mkdir()
    saved = dataclasses.asdict(settings_for("quick"))
    del saved["rl_split_duplicates"]
    (folder / "settings.json").write_text(json.dumps(saved))
    with pytest.raises(RunFolderError, match=r"rl_split_duplicates=True \(run: False\)"):
        _prepare_folder(folder, settings_for("quick", resume=True))
    _prepare_folder(folder, settings_for("quick", resume=True, rl_split_duplicates=False))  # what it did: resumes


@pytest.mark.slow
@pytest.mark.skipif(not (WIKITEXT_DIR / "valid.txt").exists(), reason=f"WikiText split files not found at {WIKITEXT_DIR} (set MINIGPT_WIKITEXT_DIR)")
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_seed_preset_on_wikitext_local_files_runs_every_stage_and_names_its_data(tmp_path, backend):
    """--data wikitext through the local split files (no train split: trains on valid.txt, evaluates on
    test.txt), cut down to seconds, with the seed's context of 64, which the RL prompt (72) overflows."""
    settings = settings_for("seed", backend=backend, runs_dir=str(tmp_path), name="run", data="wikitext",
                            data_dir=str(WIKITEXT_DIR), **{**TINY, "context_length": 64})
    notices = []
    summaries, folder = run_pipeline(settings, notify=notices.append)
    assert list(summaries) == ["pretrain", "sft", "rl"]
    assert any("training on" in n and "valid.txt" in n and "test.txt" in n for n in notices), notices
    report = (folder / "report.md").read_text()
    assert "Pretraining corpus: **wikitext-2-raw (local files)**" in report
    assert f"- train: {WIKITEXT_DIR / 'valid.txt'}" in report and f"- validation: {WIKITEXT_DIR / 'test.txt'}" in report
    assert f"validation loss on {WIKITEXT_DIR / 'test.txt'}" in report  # the table says where its figures come from
    assert "RL prompt (72 characters, context 64): the model sees only the last 64" in report
    assert json.loads((folder / "rl" / "checkpoint.json").read_text())["complete"]


def test_rl_keeps_the_answers_of_its_first_step_and_of_every_evaluation_step(tmp_path, monkeypatch):
    from minigpt_np.train import rl
    monkeypatch.setattr(rl, "KEPT_STEPS", 1)
    settings = settings_for("quick", backend="numpy", runs_dir=str(tmp_path), name="run",
                            **{**TINY, "pretrain_steps": 2, "sft_steps": 1, "rl_steps": 5, "rl_eval_every": 2})
    run_pipeline(settings, notify=lambda message: None)
    kept = records(tmp_path / "run" / "rl", "samples.jsonl")
    assert sorted({r["step"] for r in kept if not r.get("final")}) == [1, 2, 4, 5]
    moved = (tmp_path / "run" / "report.md").read_text().split("## How the RL policy moved")[1].split("\n## ")[0]
    rows = [line.split(" | ")[0] for line in moved.splitlines() if line.startswith("| ") and "`" in line]
    assert rows == ["| 1", "| 2", "| 4", "| 5"]


"""The torch backend data-parallel under torchrun (2 ranks, gloo, on the CPU) computes what one process does.

* float64, dropout 0, 300 pretraining steps: every logged figure of all three stages (losses, gradient norms, rewards, KL,
  entropy, evaluations) within abs 1e-10 of one process at the same global batch, the same answers
  in rl/samples.jsonl, and every stage's final weights within abs 1e-10; float32 within abs 1e-4
  (the key projection's bias, whose true gradient is zero, held to a bound instead: see key_bias_bound).
  (Plain differences, no relative tolerance.) The sums over ranks add the same numbers in another
  order, so the two agree to rounding, not to the bit.
* dropout on: each rank's masks come from (seed, rank, step), so two 2-rank runs agree to the bit.
* Ctrl-C under torchrun stops both ranks at one step with a checkpoint; --resume under 2 ranks ends
  like the unbroken 2-rank run, to the bit; a one-process checkpoint resumes under 2 ranks.
* A rank SIGKILLed mid-stage stops the run; every checkpoint left loads and resumes.
* The numpy backend, and a batch that does not split over the ranks, are refused with one line.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

from minigpt_np.train.checkpoint import load_checkpoint  # noqa: E402

from .conftest import ROOT, TINY, flags, records  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this PyTorch build has no gloo backend for torch.distributed")

STAGES = ("pretrain", "sft", "rl")
TINY_FLAGS = ["--backend", "torch", "--preset", "quick",
              *flags({**TINY, "pretrain_steps": 6, "pretrain_eval_every": 3, "rl_steps": 3, "rl_samples": 4,
                      "eval_windows": 6, "dropout": 0.0})]
TIMING = {"step_seconds", "wall_time"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torchrun gives each rank: the one process gets it too


def command(runs_dir, name, *extra, ranks=1):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
                if ranks > 1 else [sys.executable])
    return [*launcher, str(ROOT / "examples" / "run_all.py"), *TINY_FLAGS, "--runs-dir", str(runs_dir), "--name", name,
            *extra]


def run(runs_dir, name, *extra, ranks=1):
    done = subprocess.run(command(runs_dir, name, *extra, ranks=ranks), capture_output=True, text=True, timeout=600,
                          env=ENV, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(runs_dir) / name


def largest_differences(folder, reference, name="metrics.jsonl"):
    """{figure: largest abs difference}; the records must match one to one, and their texts exactly."""
    ours, theirs = records(folder, name, TIMING), records(reference, name, TIMING)
    assert len(ours) == len(theirs)
    largest = {}
    for mine, other in zip(ours, theirs):
        assert mine.keys() == other.keys()
        for key, value in mine.items():
            if isinstance(value, float):
                largest[key] = max(largest.get(key, 0.0), abs(value - other[key]))
            else:
                assert value == other[key], (key, value, other[key])
    return largest


# The key projection's bias has no true gradient (the softmax cancels it): its gradient is rounding
# noise, which AdamW normalises into steps of up to lr, so where the ranks' sums round differently the
# key biases wander apart (in float32, visibly). They are held to that bound instead, from their start
# at zero: the sum over the run's stages of steps x lr (``key_bias_bound``).
# The float64 runs pretrain longer: the comparison covers 300 steps, and a Ctrl-C lands in pretraining.
FLOAT64 = ["--dtype", "float64", "--pretrain-steps", "300", "--pretrain-eval-every", "100"]


def key_bias_bound(folder):
    settings = json.loads((folder / "settings.json").read_text())
    return sum(settings[f"{stage}_steps"] * settings[f"{stage}_lr"] for stage in STAGES)


def without_key_bias(weights, bound):
    weights = {k: v.astype(np.float64) for k, v in weights.items()}
    for name in [name for name in weights if name.endswith("in_proj_bias")]:
        query, key, value = np.split(weights.pop(name), 3)
        weights[name + " (query, value)"] = np.concatenate([query, value])
        assert np.abs(key).max() <= bound, (name, np.abs(key).max(), bound)
    return weights


def weight_differences(folder, reference):
    """{stage: largest abs difference of its final weights}, the key biases held to their bound instead."""
    out = {}
    for stage in STAGES:
        ours = without_key_bias(load_checkpoint(folder / stage).weights, key_bias_bound(folder))
        theirs = without_key_bias(load_checkpoint(reference / stage).weights, key_bias_bound(reference))
        assert ours.keys() == theirs.keys()
        out[stage] = max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours)
    return out


def same_weights(folder, reference):
    """Every stage's final weights equal to the bit."""
    return all(np.array_equal(value, load_checkpoint(reference / stage).weights[name])
               for stage in STAGES for name, value in load_checkpoint(folder / stage).weights.items())


@pytest.fixture(scope="module")
def float64_runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("float64")
    return run(runs, "one", *FLOAT64), run(runs, "two", *FLOAT64, ranks=2)


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), pytest.param("float32", 1e-4, marks=pytest.mark.slow)])
def test_two_ranks_log_and_learn_what_one_process_does(tmp_path, float64_runs, dtype, tolerance):
    if dtype == "float64":
        one, two = float64_runs
    else:
        one, two = run(tmp_path, "one", "--dtype", dtype), run(tmp_path, "two", "--dtype", dtype, ranks=2)
    figures = largest_differences(two, one)
    for needed in ("train_loss", "grad_norm", "val_loss", "answer_loss", "reward_mean", "kl", "kl_per_answer",
                   "entropy", "policy_loss", "heldout_reward_mean", "original_reward_mean"):
        assert needed in figures, needed
    samples = largest_differences(two, one, "rl/samples.jsonl")  # the same answers, the same scores
    weights = weight_differences(two, one)
    print(f"\n{dtype}: largest differences, 2 ranks vs 1 process: "
          + ", ".join(f"{k} {v:.1e}" for k, v in sorted(figures.items(), key=lambda kv: -kv[1])[:6])
          + "; final weights " + ", ".join(f"{s} {v:.1e}" for s, v in weights.items()))
    assert max(figures.values()) <= tolerance, figures
    assert max(samples.values(), default=0.0) <= tolerance, samples
    assert max(weights.values()) <= tolerance, weights


@pytest.mark.slow
def test_dropout_masks_per_rank_make_a_two_rank_run_reproducible(tmp_path):
    first = run(tmp_path, "first", "--dropout", "0.1", ranks=2)
    again = run(tmp_path, "again", "--dropout", "0.1", ranks=2)
    assert records(first, without=TIMING) == records(again, without=TIMING)
    assert same_weights(first, again)


def interrupted(runs_dir, name, *extra, ranks=2, when="pretrain/checkpoint.json"):
    """Start a run that checkpoints every step; Ctrl-C (SIGINT) to the launcher once `when` exists."""
    process = subprocess.Popen(command(runs_dir, name, "--checkpoint-every", "1", *extra, ranks=ranks),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (Path(runs_dir) / name / when).exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def stopped_stage(folder):
    """The stage whose checkpoint is a stopped one (there must be one)."""
    stopped = [stage for stage in STAGES if (folder / stage / "checkpoint.json").exists()
               and not load_checkpoint(folder / stage).complete]
    assert len(stopped) == 1, stopped
    return f"{stopped[0]}: stopped at step {load_checkpoint(folder / stopped[0]).step} "


def test_ctrl_c_under_torchrun_saves_and_two_ranks_resume_to_the_unbroken_result(tmp_path, float64_runs):
    _, unbroken = float64_runs
    code, stderr = interrupted(tmp_path, "two", *FLOAT64)
    assert code != 0 and ": stopped at step " in stderr, stderr[-2000:]
    assert stopped_stage(tmp_path / "two") in stderr  # one stage stopped, with its checkpoint, on both ranks
    resumed = run(tmp_path, "two", *FLOAT64, "--checkpoint-every", "1", "--resume", ranks=2)
    assert records(resumed, without=TIMING) == records(unbroken, without=TIMING)  # the same run, to the bit
    assert same_weights(resumed, unbroken)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_under_two_ranks(tmp_path, float64_runs):
    one, _ = float64_runs
    code, stderr = interrupted(tmp_path, "run", *FLOAT64, ranks=1)
    assert code != 0 and stopped_stage(tmp_path / "run") in stderr, stderr[-2000:]
    resumed = run(tmp_path, "run", *FLOAT64, "--checkpoint-every", "1", "--resume", ranks=2)
    assert max(largest_differences(resumed, one).values()) <= 1e-10
    assert max(weight_differences(resumed, one).values()) <= 1e-10


def test_a_rank_killed_mid_stage_stops_the_run_and_leaves_checkpoints_that_resume(tmp_path):
    steps = ["--checkpoint-every", "1", "--pretrain-steps", "400"]
    process = subprocess.Popen(command(tmp_path, "run", *steps, ranks=2), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "pretrain" / "checkpoint.json").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    started = time.monotonic()
    os.kill(int(workers[-1]), signal.SIGKILL)  # the rank started last
    _, stderr = process.communicate(timeout=120)
    print(f"\nthe launcher stopped {time.monotonic() - started:.1f} s after a rank was killed")
    assert process.returncode != 0
    checkpoint = load_checkpoint(tmp_path / "run" / "pretrain")
    assert 1 <= checkpoint.step < 400 and not checkpoint.complete
    resumed = run(tmp_path, "run", *steps, "--resume", ranks=2)
    assert all(load_checkpoint(resumed / stage).complete for stage in STAGES)


@pytest.mark.parametrize("extra, line", [
    (["--backend", "numpy"], "error: the numpy backend runs in one process, not as one of the 2 ranks of torchrun"),
    (["--batch-size", "3"], "error: --batch-size: 3 sequences do not split evenly over 2 ranks"),
])
def test_what_cannot_run_on_two_ranks_is_refused_with_one_line(tmp_path, extra, line):
    done = subprocess.run(command(tmp_path, "run", *extra, ranks=2), capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=300)
    assert done.returncode != 0
    ours = [text for text in done.stderr.splitlines() if text.startswith("error:")]
    assert len(ours) == 1 and ours[0].startswith(line), done.stderr[-2000:]
    assert not (tmp_path / "run" / "pretrain").exists()


def test_the_world_size_check_names_the_setting_that_does_not_split():
    from minigpt_np.train.pipeline import check_world_size
    from minigpt_np.train.settings import settings_for

    class FourRanks:
        world_size = 4

    check_world_size(settings_for("quick", batch_size=8, rl_samples=4), FourRanks())
    with pytest.raises(ValueError, match="--batch-size: 6 sequences do not split evenly over 4 ranks"):
        check_world_size(settings_for("quick", batch_size=6), FourRanks())
    with pytest.raises(ValueError, match="--rl-samples: 3 x 2 prompts per step = 6 samples do not split evenly"):
        check_world_size(settings_for("quick", batch_size=8, rl_samples=3, rl_prompts_per_step=2), FourRanks())


def c_compiler():
    import shutil
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.slow
@pytest.mark.skipif(not c_compiler(), reason="torch.compile on the CPU needs a C++ compiler, and none is on PATH")
def test_compile_runs_the_training_steps_through_torch_compile_and_learns_what_eager_does(tmp_path):
    """--compile: the pretraining and SFT steps' forward and backward run as compiled graphs (fused
    kernels: the same math in another order), so the run logs the eager run's figures to rounding."""
    eager = run(tmp_path, "eager", "--dtype", "float64")
    compiled = run(tmp_path, "compiled", "--dtype", "float64", "--compile")
    figures = largest_differences(compiled, eager)
    print("\n--compile vs eager, float64: " + ", ".join(f"{k} {v:.1e}" for k, v in sorted(
        figures.items(), key=lambda kv: -kv[1])[:4]))
    assert max(figures.values()) <= 1e-10, figures
    assert max(weight_differences(compiled, eager).values()) <= 1e-10


def test_the_compiled_forward_is_the_one_the_training_step_takes():
    from minigpt_np.config import GPTConfig
    from minigpt_torch.model import TinyGPT

    model = TinyGPT(GPTConfig(vocab_size=7, d_model=8, n_heads=2, context_length=6, dropout=0.0))
    calls = []
    model.compiled_logits = lambda ids, last: calls.append(last) or model.logits(ids, last)  # stands in for torch.compile
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    model(ids)  # a training forward: compiled
    model(ids, last=1)  # the RL update's: eager (new shapes at every step)
    with torch.no_grad():
        model(ids)  # sampling and evaluation: eager
    assert calls == [None]

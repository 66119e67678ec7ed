"""Nothing lost: checkpoints and metrics survive a SIGKILL at any instant and a full disk.

* A process is killed (SIGKILL) at each of the durable operations of a save (every fsync and rename),
  just before it and just after it: the checkpoint then loads, and it is the previous one until the
  rename of checkpoint.json, the new one from then on.
* A tiny pipeline that checkpoints every step is SIGKILLed at random instants and resumed each time:
  every checkpoint left behind loads, and the finished run has the metrics (timing aside) and the
  final weights of an unbroken run, to the bit. A few kills per backend in the default suite, 30 per
  backend in the slow one.
* A full disk (ENOSPC, injected at an fsync) during a save: one line naming the file, the previous
  checkpoint intact, and --resume continues.
"""
import collections
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minigpt_np.train.checkpoint import CheckpointWriteError, load_checkpoint

from .conftest import ROOT, TINY, flags


SAVE_TWICE = r"""
import os, signal, sys
import numpy as np
import minigpt_np
from minigpt_np.train.checkpoint import save_checkpoint
from minigpt_np.train.tokenizer import CharTokenizer

folder, kill_at, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = minigpt_np.GPTConfig(vocab_size=5, d_model=8, n_heads=2, context_length=4)
tokenizer = CharTokenizer(list("abcd\n"))

def save(step):
    weights = {name: np.full_like(value, step) for name, value in minigpt_np.TinyGPT(config, seed=0).state_dict().items()}
    save_checkpoint(folder, weights, config, tokenizer, stage="pretrain", step=step, complete=False,
                    optimizer_arrays={"exp_avg.x": np.full(3, float(step))}, optimizer_steps={"steps.x": step})

save(1)
calls = 0
def counted(real, name):
    def operation(*args):
        global calls
        calls += 1
        print(calls, name, flush=True)
        if calls == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args)
        if calls == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return operation
os.fsync, os.replace = counted(os.fsync, "fsync"), counted(os.replace, "replace")
save(2)
print("saved", flush=True)
"""


def test_a_kill_at_every_durable_operation_of_a_save_leaves_a_whole_checkpoint(tmp_path):
    listing = subprocess.run([sys.executable, "-c", SAVE_TWICE, str(tmp_path / "listing"), "0", "never"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert listing.returncode == 0 and listing.stdout.strip().endswith("saved"), listing.stderr
    operations = [line.split()[1] for line in listing.stdout.splitlines()[:-1]]
    commit = [i for i, op in enumerate(operations, 1) if op == "replace"][-1]  # the rename of checkpoint.json
    assert operations.count("replace") == 3 and operations.count("fsync") >= 5, operations
    for kill_at in range(1, len(operations) + 1):
        for when in ("before", "after"):
            folder = tmp_path / f"{kill_at}-{when}"
            killed = subprocess.run([sys.executable, "-c", SAVE_TWICE, str(folder), str(kill_at), when],
                                    capture_output=True, text=True, cwd=ROOT, timeout=120)
            assert killed.returncode == -signal.SIGKILL, (kill_at, when, killed.stderr)
            checkpoint = load_checkpoint(folder)  # raises if the checkpoint is torn
            committed = kill_at > commit or (kill_at == commit and when == "after")
            expected = 2 if committed else 1
            assert checkpoint.step == expected, (kill_at, when, operations[kill_at - 1])
            assert all((value == expected).all() for value in checkpoint.weights.values())
            assert (checkpoint.optimizer_arrays["exp_avg.x"] == expected).all()


def test_a_full_disk_during_a_save_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import minigpt_np
    from minigpt_np.train.checkpoint import save_checkpoint
    from minigpt_np.train.tokenizer import CharTokenizer
    config = minigpt_np.GPTConfig(vocab_size=5, d_model=8, n_heads=2, context_length=4)
    tokenizer = CharTokenizer(list("abcd\n"))
    weights = minigpt_np.TinyGPT(config, seed=0).state_dict()
    save_checkpoint(tmp_path, weights, config, tokenizer, stage="sft", step=1, complete=False)
    before = sorted(p.name for p in tmp_path.iterdir())

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    changed = {name: value + 1 for name, value in weights.items()}
    with pytest.raises(CheckpointWriteError) as failure:
        save_checkpoint(tmp_path, changed, config, tokenizer, stage="sft", step=2, complete=False)
    monkeypatch.undo()
    message = str(failure.value)
    assert "\n" not in message and "No space left on device" in message and "model-" in message, message
    assert "the previous checkpoint" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary left behind
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.step == 1
    for name, value in weights.items():
        np.testing.assert_array_equal(checkpoint.weights[name], value)


# ---------------------------------------------------------------------------- the pipeline, killed
TINY_FLAGS = ["--preset", "quick", *flags({**TINY, "rl_steps": 3, "checkpoint_every": 1})]
TIMING = {"step_seconds"}


def run_all(backend, runs_dir, name, *extra):
    return [sys.executable, str(ROOT / "examples" / "run_all.py"), "--backend", backend, *TINY_FLAGS,
            "--runs-dir", str(runs_dir), "--name", name, *extra]


def comparable_metrics(folder):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def kept_samples(folder):
    return (folder / "rl" / "samples.jsonl").read_text().splitlines()


def final_weights(folder):
    return load_checkpoint(folder / "rl").weights


def every_checkpoint_loads(folder):
    for stage in ("pretrain", "sft", "rl"):
        if (folder / stage / "checkpoint.json").exists():
            load_checkpoint(folder / stage)  # raises on a torn or mixed checkpoint


def kill_and_resume(tmp_path, backend, kills, seed):
    """Run the tiny pipeline again and again, each attempt SIGKILLed after a random delay (or left to
    finish once enough kills are done), resuming the run folder each time. Returns the kill count."""
    started = time.perf_counter()
    unbroken = subprocess.run(run_all(backend, tmp_path, "unbroken"), capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    assert unbroken.returncode == 0, unbroken.stderr
    reference = comparable_metrics(tmp_path / "unbroken"), final_weights(tmp_path / "unbroken")

    rng = random.Random(seed)
    done, finished_runs, attempt, landed = 0, 0, 0, collections.Counter()
    while done < kills:
        name = f"killed-{finished_runs}"
        folder = tmp_path / name
        resume = ["--resume"] if (folder / "settings.json").exists() else []
        process = subprocess.Popen(run_all(backend, tmp_path, name, *resume), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        attempt += 1
        try:
            _, stderr = process.communicate(timeout=rng.uniform(0.1, wall))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            done += 1
            every_checkpoint_loads(folder)
            saved = [stage for stage in ("pretrain", "sft", "rl") if (folder / stage / "checkpoint.json").exists()]
            landed[saved[-1] if saved else "none yet"] += 1
            continue
        assert process.returncode == 0, f"attempt {attempt} ({name} {resume}): {stderr}"
        assert comparable_metrics(folder) == reference[0], f"{name}: metrics differ from the unbroken run's"
        assert kept_samples(folder) == kept_samples(tmp_path / "unbroken"), f"{name}: rl/samples.jsonl differs"
        for key, value in reference[1].items():
            assert np.array_equal(final_weights(folder)[key], value), f"{name}: {key} differs"
        finished_runs += 1
    name = f"killed-{finished_runs}"  # the last run: finish it (resume it if it was begun)
    resume = ["--resume"] if (tmp_path / name / "settings.json").exists() else []
    last = subprocess.run(run_all(backend, tmp_path, name, *resume), capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stderr
    assert comparable_metrics(tmp_path / name) == reference[0]
    assert kept_samples(tmp_path / name) == kept_samples(tmp_path / "unbroken")
    for key, value in reference[1].items():
        assert np.array_equal(final_weights(tmp_path / name)[key], value), key
    print(f"\n{backend}: {done} SIGKILLs in {attempt + 1} attempts; {finished_runs + 1} killed runs resumed to the end, "
          f"each equal to the unbroken run (weights bit for bit, metrics less timing, rl/samples.jsonl); lost: 0; "
          f"kills by the newest checkpoint at the instant: {dict(landed)}")
    return done


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_sigkill_at_random_instants_loses_nothing(tmp_path, backend):
    assert kill_and_resume(tmp_path, backend, kills=4, seed=1) == 4


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_thirty_sigkills_at_random_instants_lose_nothing(tmp_path, backend):
    assert kill_and_resume(tmp_path, backend, kills=30, seed=2) == 30


def test_a_full_disk_during_a_pipeline_save_stops_with_one_line_and_resume_continues(tmp_path):
    """ENOSPC at the third save of pretraining: exit 1, one error line naming the file, the step-2
    checkpoint intact; --resume with the disk back finishes with the unbroken run's metrics."""
    script = (
        "import errno, os, runpy, sys\n"
        "from minigpt_np.train import checkpoint\n"
        "real, saves = checkpoint.save_checkpoint, []\n"
        "def failing_fsync(fd):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "def save(*args, **kwargs):\n"
        "    saves.append(1)\n"
        "    if len(saves) == 3:\n"
        "        os.fsync = failing_fsync\n"
        "    return real(*args, **kwargs)\n"
        "checkpoint.save_checkpoint = save\n"
        "from minigpt_np.train import runner\n"
        "runner.save_checkpoint = save\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    full = subprocess.run([sys.executable, "-c", script, *run_all("numpy", tmp_path, "full")[1:]],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert full.returncode == 1, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot save the pretrain checkpoint: "), full.stderr
    assert "No space left on device" in lines[0] and "model-" in lines[0]
    assert load_checkpoint(tmp_path / "full" / "pretrain").step == 2
    resumed = subprocess.run(run_all("numpy", tmp_path, "full", "--resume"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    unbroken = subprocess.run(run_all("numpy", tmp_path, "unbroken"), capture_output=True, text=True, timeout=600)
    assert unbroken.returncode == 0
    assert comparable_metrics(tmp_path / "full") == comparable_metrics(tmp_path / "unbroken")

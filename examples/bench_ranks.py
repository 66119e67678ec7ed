"""Data-parallel scaling of the torch backend: the training step and the RL step at 1, 2, ... ranks.

    python examples/bench_ranks.py                         # CPU: 1 and 2 ranks, one thread each; batch 32 and 256
    python examples/bench_ranks.py --ranks 1 2 4 --device cuda --batches 32 512 --compile

Each figure is measured by a fresh set of processes (``torchrun --standalone --nproc-per-node=N``
for N > 1, gloo on the CPU, NCCL on GPUs), on the default TinyGPT with the embedded vocabulary:

* train: one pretraining step as the stage runs it (global batch B split over the ranks, forward,
  weighted cross-entropy, backward with DDP's all-reduce of the gradients, clipping, AdamW), the
  median of --steps steps after --warmup; tokens/s = B x context / step time.
* rl: one RL step of the seed preset (1 prompt x 16 samples split over the ranks, rollout, rewards
  gathered, update), the mean of --rl-steps after a first one, from an untrained model.

On the CPU every rank gets --threads threads (default 1: on 2 cores, 2 ranks fill the machine as one
process with 2 threads does; that row is added for comparison). The measurements take turns in
--rounds rounds, so a slow spell of a shared machine falls on all of them; each figure is its median
round, and the speed-up over 1 rank is printed round by round.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def train_worker(device, batch, steps, warmup, compile):
    from bench import train_worker as one_step_time

    return one_step_time("torch", "float32", device, batch, steps, warmup, compile=compile)


def rl_worker(device, steps):
    from minigpt_np.model import TinyGPT
    from minigpt_np.train.backend import get_backend
    from minigpt_np.train.checkpoint import save_checkpoint
    from minigpt_np.train.pipeline import rl_from_checkpoint
    from minigpt_np.train.settings import settings_for
    from bench import default_setup

    _, tokenizer, config = default_setup()
    backend = get_backend("torch", device)
    folder = Path(os.environ.get("BENCH_FOLDER", tempfile.mkdtemp()))
    if backend.rank == 0:  # the untrained weights (not a backend's model: under DDP every rank must make it)
        weights = TinyGPT(config, seed=0).state_dict()
        save_checkpoint(folder / "start", weights, config, tokenizer, stage="sft", step=0, complete=True)
    backend.all_sum(0)
    settings = settings_for("seed", backend="torch", device=device, runs_dir=str(folder), name="rl", progress=False,
                            rl_steps=steps + 1, rl_eval_every=10**7)
    run, _, _ = rl_from_checkpoint(folder / "start", settings, notify=lambda message: None)
    seconds = run.metrics.series("rl", "step_seconds")[1][1:]  # the first step warms up
    return {"ms": 1000 * float(np.mean(seconds)), "answer_chars": float(np.mean(run.metrics.series("rl", "length_chars")[1][1:]))}


WORKERS = {"train": train_worker, "rl": rl_worker}


def measure(kind, ranks, threads, **kwargs):
    """One figure from a fresh set of ranks; rank 0 prints its JSON answer last."""
    script = [__file__, "--worker", kind, "--worker-args", json.dumps(kwargs)]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
                if ranks > 1 else [sys.executable])
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "BENCH_FOLDER": folder}
        done = subprocess.run([*launcher, *script], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench_ranks: the {kind} measurement at {ranks} ranks failed:\n{done.stderr.strip()[-3000:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def parse_args(argv):
    from minigpt_np.train.validation import OneLineParser
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts (default 1 2)")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256], help="global batches (default 32 256)")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per rank (default 1)")
    parser.add_argument("--compile", action="store_true", help="also measure the training step through torch.compile")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps first (default 5)")
    parser.add_argument("--rl-steps", type=int, default=3, help="timed RL steps (default 3; 0: no RL figures)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median counts (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check(args):
    """Refuse settings that cannot be measured (ValueError, one line)."""
    from minigpt_np.train.validation import check_values, count
    check_values(vars(args), {"ranks": count(1, 1024), "batches": count(1, 65536), "threads": count(1, 1024),
                              "steps": count(1, 10**5), "warmup": count(0, 10**5), "rl_steps": count(0, 10**4),
                              "rounds": count(1, 100)})
    for batch in args.batches:
        for ranks in args.ranks:
            if batch % ranks:
                raise ValueError(f"--batches: {batch} does not split evenly over {ranks} ranks")
    if args.rl_steps and any(16 % ranks for ranks in args.ranks):
        raise ValueError("--ranks: the RL step's 16 samples must split evenly over every rank count (or --rl-steps 0)")
    if args.device != "cpu":
        from minigpt_np.train.backend import get_backend
        get_backend("torch", args.device)


def plan_for(args):
    """(kind, batch, compile, ranks, threads) -> (kind, ranks, threads, worker arguments) of every figure."""
    plan = {}
    configurations = [(ranks, args.threads) for ranks in args.ranks]
    if args.device == "cpu" and 1 in args.ranks and max(args.ranks) * args.threads > args.threads:
        configurations.append((1, max(args.ranks) * args.threads))  # one process on all the ranks' threads
    for batch in args.batches:
        for compile in (False, True) if args.compile else (False,):
            for ranks, threads in configurations:
                plan[("train", batch, compile, ranks, threads)] = ("train", ranks, threads, dict(
                    device=args.device, batch=batch, steps=args.steps, warmup=args.warmup, compile=compile))
    if args.rl_steps:
        for ranks, threads in configurations:
            plan[("rl", 16, False, ranks, threads)] = ("rl", ranks, threads, dict(
                device=args.device, steps=args.rl_steps))
    return plan


def table_rows(rounds, threads):
    """One row per figure: the median round, and the speed-up over one rank at ``threads`` threads."""
    table = []
    for name, results in rounds.items():
        kind, batch, compile, ranks, row_threads = name
        base = rounds.get((kind, batch, compile, 1, threads))
        speedups = [b["ms"] / r["ms"] for b, r in zip(base, results)] if base else []
        tokens = float(np.median([r["tokens_per_s"] for r in results])) if kind == "train" else None
        table.append(dict(step=kind, batch=batch, compile=compile, ranks=ranks, threads=row_threads,
                          ms=float(np.median([r["ms"] for r in results])), tokens_per_s=tokens,
                          speedup=float(np.median(speedups)) if speedups else None,
                          speedups=speedups, rounds_ms=[r["ms"] for r in results]))
    return table


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](**json.loads(args.worker_args))
        from minigpt_np.train.backend import leave_ranks
        leave_ranks()
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result), flush=True)
        return 0
    try:
        check(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    plan = plan_for(args)
    rounds = {name: [] for name in plan}
    started = time.perf_counter()
    for _ in range(args.rounds):
        for name, (kind, ranks, threads, kwargs) in plan.items():
            rounds[name].append(measure(kind, ranks, threads, **kwargs))
    import torch
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
          + f"; {args.rounds} rounds in {time.perf_counter() - started:.0f} s")
    print(f"\n{'step':<8}{'batch':>6}{'compile':>8}{'ranks':>6}{'threads':>8}{'ms':>9}{'tokens/s':>11}"
          f"{'speed-up':>10}   round by round")
    table = table_rows(rounds, args.threads)
    for row in table:
        print(f"{row['step']:<8}{row['batch']:>6}{'yes' if row['compile'] else 'no':>8}{row['ranks']:>6}"
              f"{row['threads']:>8}{row['ms']:>9.1f}{row['tokens_per_s'] or float('nan'):>11.0f}"
              f"{row['speedup'] or float('nan'):>10.2f}   " + ", ".join(f"{s:.2f}" for s in row.pop("speedups")))
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "rows": table}, indent=1))
        print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

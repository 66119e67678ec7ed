"""Speed and memory of both backends on the default TinyGPT: one table, optionally JSON.

    python examples/bench.py                       # CPU: numpy float32/float64 and torch, RL steps
    python examples/bench.py --json bench.json     # the same, also written as JSON
    python examples/bench.py --device cuda         # adds the torch backend on the GPU
    python examples/bench.py --pipeline numpy      # adds a whole seed-preset pipeline run (wall, memory)
    python examples/bench.py --kernels plain       # the numpy backend on its plain ops (functional.py)
    python examples/bench.py --ablate --no-rl      # what each fast twin saves: the fast step with one plain op
    python examples/bench.py --markdown bench.json # the tables of docs/speed.md from a --json file

What is measured (default model: batch 32, context 64, d_model 128, 2 layers, 4 heads, dropout 0.1,
the embedded vocabulary):

* train_step_ms: one training step through the Backend interface, as the stages run it (forward,
  weighted cross-entropy, backward, gradient clipping, AdamW), median over --steps steps after
  --warmup steps; tokens/s = batch x context / step time.
* matmul_peak_gflops: numpy float32 matrix products at the model's own shapes (the best of them).
* step_gflop: the multiply-adds of one step (x2 flops), forward and backward (2x the forward);
  the share of the peak is step_gflop / step time / peak.
* rl_step_ms: one RL step with the default settings (prompts x samples rollout, log-probabilities,
  KL to the reference, update) from an untrained model, the mean over --rl-steps steps after a first
  one. Its answers end wherever the newline happens to be drawn, so the steps differ in work; both
  backends draw the same characters from the same uniforms (up to float32 rounding of a near tie),
  so they do the same work: the mean answer length is printed beside each figure.
* ablation (--ablate): what each fast twin saves: the numpy float32 step with the fast ops but that
  one op plain (and with all ops plain), minus the all-fast step, in one process with the variants
  taking turns step by step (``ablation_worker``).
* peak_rss_mb: the peak resident memory of the process that measured each figure (each
  measurement runs in its own process, so one backend's memory and threads never touch another's).

Every measurement runs --rounds times (default 3), interleaved (numpy, torch, numpy, torch, ...), so
that a slow spell of a shared machine falls on both backends alike; each figure is its median round
(the matmul peak: the best round), and the ratios are also printed round by round. Figures depend on
the machine and its load: compare only runs made on the same machine.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 32


def peak_rss_mb():
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def default_setup():
    """The embedded corpus, its vocabulary and the default model configuration."""
    from minigpt_np.config import GPTConfig
    from minigpt_np.train.data import load_corpus, load_sft_pairs
    from minigpt_np.train.pipeline import build_tokenizer
    from minigpt_np.train.settings import settings_for
    corpus = load_corpus("embedded")
    tokenizer = build_tokenizer(corpus, load_sft_pairs())
    s = settings_for("seed")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads,
                       context_length=s.context_length, dropout=s.dropout)
    return corpus, tokenizer, config


def step_gflop(config, batch):
    """Floating-point operations of one training step, in GFLOP: 2 per multiply-add, backward = 2 x forward."""
    N, C, T, V, L = batch * config.context_length, config.d_model, config.context_length, config.vocab_size, \
        config.n_layers
    per_layer = (2 * N * C * 3 * C  # packed q, k, v projection
                 + 2 * 2 * batch * T * T * C  # scores q k^T and weights @ v, over all heads
                 + 2 * N * C * C  # output projection
                 + 2 * 2 * N * C * config.d_ff)  # the two feed-forward layers
    forward = L * per_layer + 2 * N * C * V  # plus the output head
    return 3 * forward / 1e9


# ---------------------------------------------------------------------------- workers (one process each)
def train_worker(backend_name, dtype, device, batch, steps, warmup, kernels=None, compile=False):
    """kernels: the numpy backend's form of its ops (None for torch); compile: torch.compile (torch).
    Under torchrun (examples/bench_ranks.py) each rank computes its share of the batch, the ranks start
    each step together, and the step time is the ranks' mean."""
    import dataclasses
    from minigpt_np.train.backend import get_backend
    from minigpt_np.train.data import random_windows
    corpus, tokenizer, config = default_setup()
    config = dataclasses.replace(config, dtype=dtype)
    backend = get_backend(backend_name, device, kernels=kernels, compile=compile)
    model = backend.create_model(config, 0)
    optimizer = backend.create_optimizer(model, 3e-4, 0.01)
    backend.set_training(model, True)
    rng = np.random.default_rng(0)
    tokens = tokenizer.encode(corpus.train)
    times = []
    for step in range(warmup + steps):
        inputs, targets = random_windows(tokens, batch, config.context_length, rng)
        weights = np.full(targets.shape, 1.0 / targets.size)
        mine = backend.share(batch)  # all of the batch in one process
        backend.all_sum(0)  # the ranks start the step together (nothing to wait for in one process)
        started = time.perf_counter()
        loss = backend.weighted_nll(backend.forward(model, inputs[mine]), targets[mine], weights[mine])
        backend.read([backend.optimizer_step(model, optimizer, loss, 1.0)])  # waits for the step to finish
        if step >= warmup:
            times.append(time.perf_counter() - started)
    ms = 1000 * float(np.median(backend.all_sum(times) / backend.world_size))
    return {"ms": ms, "tokens_per_s": batch * config.context_length / ms * 1000,
            "step_gflop": step_gflop(config, batch), "peak_rss_mb": peak_rss_mb()}


def matmul_worker(batch, repeats=20):
    """numpy float32 products at the model's shapes: the machine's practical matmul peak."""
    _, _, config = default_setup()
    N, C, F = batch * config.context_length, config.d_model, config.d_ff
    rng = np.random.default_rng(0)
    best = {}
    for m, k, n in [(N, C, F), (N, F, C), (N, C, 3 * C), (C, N, F)]:
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
        a @ b
        seconds = min(_timed(lambda a=a, b=b: a @ b) for _ in range(repeats))
        best[f"{m}x{k}@{k}x{n}"] = 2 * m * k * n / seconds / 1e9
    return {"gflops": max(best.values()), "by_shape": best, "peak_rss_mb": peak_rss_mb()}


def _timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def rl_worker(backend_name, device, steps, kernels="fast"):
    from minigpt_np.train.backend import get_backend
    from minigpt_np.train.checkpoint import save_checkpoint
    from minigpt_np.train.pipeline import rl_from_checkpoint
    from minigpt_np.train.settings import settings_for
    _, tokenizer, config = default_setup()
    with tempfile.TemporaryDirectory() as folder:
        backend = get_backend(backend_name, device)
        weights = backend.state_dict(backend.create_model(config, 0))  # the same weights in every form
        save_checkpoint(Path(folder) / "start", weights, config, tokenizer, stage="sft", step=0, complete=True)
        settings = settings_for("seed", backend=backend_name, device=device, runs_dir=folder, name="rl",
                                progress=False, rl_steps=steps + 1, rl_eval_every=10**7, kernels=kernels)
        run, _, _ = rl_from_checkpoint(Path(folder) / "start", settings, notify=lambda message: None)
        seconds = run.metrics.series("rl", "step_seconds")[1][1:]  # the first step warms up
        lengths = run.metrics.series("rl", "length_chars")[1][1:]
    return {"ms": 1000 * float(np.mean(seconds)), "answer_chars": float(np.mean(lengths)),
            "prompts": settings.rl_prompts_per_step,
            "samples": settings.rl_samples, "max_new_tokens": settings.max_new_tokens, "peak_rss_mb": peak_rss_mb()}


def pipeline_worker(backend_name, device, scale):
    from minigpt_np.train.pipeline import run_pipeline
    from minigpt_np.train.settings import settings_for
    base = settings_for("seed")
    steps = {f"{stage}_steps": max(1, round(getattr(base, f"{stage}_steps") * scale)) for stage in ("pretrain", "sft", "rl")}
    with tempfile.TemporaryDirectory() as folder:
        settings = settings_for("seed", backend=backend_name, device=device, runs_dir=folder, progress=False, **steps)
        started = time.perf_counter()
        summaries, _ = run_pipeline(settings, notify=lambda message: None)
        wall = time.perf_counter() - started
    return {"wall_s": wall, "stage_s": {stage: meta.get("wall_time") for stage, meta in summaries.items()},
            "steps": steps, "peak_rss_mb": peak_rss_mb()}


def ablation_worker(batch, steps, warmup):
    """The numpy float32 step of the all-fast model against the same model with one op in its plain
    form, for each op with a fast twin (and all plain), in one process: the variants take turns step
    by step (fast, variant 1, fast, variant 2, ...), so a slow spell of the machine falls on all of
    them, and each saving is the median of the paired differences (variant step - the fast step
    just before it)."""
    from minigpt_np import fast, functional
    from minigpt_np.nn import KERNEL_OPS, mixed_kernels
    from minigpt_np.train.backend import get_backend
    from minigpt_np.train.data import random_windows
    corpus, tokenizer, config = default_setup()
    twins = [op for op in KERNEL_OPS if getattr(fast, op) is not getattr(functional, op)]
    variants = {"fast": "fast", "plain": "plain",
                **{op: mixed_kernels(fast, **{op: getattr(functional, op)}) for op in twins}}
    runs = {}
    for name, kernels in variants.items():
        backend = get_backend("numpy", kernels=kernels)
        model = backend.create_model(config, 0)
        backend.set_training(model, True)
        runs[name] = (backend, model, backend.create_optimizer(model, 3e-4, 0.01))
    rng = np.random.default_rng(0)
    tokens = tokenizer.encode(corpus.train)

    def step(name):
        backend, model, optimizer = runs[name]
        inputs, targets = random_windows(tokens, batch, config.context_length, rng)
        weights = np.full(targets.shape, 1.0 / targets.size)
        started = time.perf_counter()
        loss = backend.weighted_nll(backend.forward(model, inputs), targets, weights)
        backend.read([backend.optimizer_step(model, optimizer, loss, 1.0)])
        return 1000 * (time.perf_counter() - started)

    saved = {name: [] for name in variants if name != "fast"}
    fast_ms = []
    for index in range(warmup + steps):
        for name in saved:
            before = step("fast")
            after = step(name)
            if index >= warmup:
                saved[name].append(after - before)
                fast_ms.append(before)
    return {"fast_ms": float(np.median(fast_ms)),
            "saved_ms": {name: float(np.median(d)) for name, d in saved.items()},
            "saved_ms_quartiles": {name: [float(q) for q in np.percentile(d, [25, 75])] for name, d in saved.items()},
            "peak_rss_mb": peak_rss_mb()}


WORKERS = {"ablation": ablation_worker, "train": train_worker, "matmul": matmul_worker, "rl": rl_worker,
           "pipeline": pipeline_worker}


def run_worker(kind, **kwargs):
    """One measurement in a fresh Python process; returns its JSON answer."""
    command = [sys.executable, __file__, "--worker", kind, "--worker-args", json.dumps(kwargs)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench: the {kind} measurement {kwargs} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_rounds(plan, rounds):
    """Run every measurement of plan (name -> (worker, arguments)) ``rounds`` times, interleaved
    (a b c, a b c, ...), so that a slow spell of a shared machine falls on all of them alike.
    Each keeps its median round (the matmul peak: its best round), with every round's figure beside it."""
    runs = {name: [] for name in plan}
    for _ in range(rounds):
        for name, (kind, kwargs) in plan.items():
            runs[name].append(run_worker(kind, **kwargs))
    chosen = {}
    for name, results in runs.items():
        if name == "matmul":
            chosen[name] = {**max(results, key=lambda r: r["gflops"]), "rounds_gflops": [r["gflops"] for r in results]}
            continue
        median = sorted(results, key=lambda r: r["ms"])[(len(results) - 1) // 2]
        chosen[name] = {**median, "rounds_ms": [r["ms"] for r in results],
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}
    return chosen


def paired_ratios(numpy_figures, torch_figures):
    """numpy / torch in each round (the two ran one after the other)."""
    return ", ".join(f"{a / b:.2f}" for a, b in zip(numpy_figures["rounds_ms"], torch_figures["rounds_ms"]))


# ---------------------------------------------------------------------------- the table
def machine():
    import torch
    cpu = platform.processor() or platform.machine()
    return (f"{platform.system()} {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def parse_args(argv):
    from minigpt_np.train.validation import OneLineParser, Range, check_values, count
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30,
                        help="timed training steps per backend and round (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--rl-steps", type=int, default=3, help="timed RL steps per backend and round (default 3)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="each measurement is repeated this many times, interleaved; the median round counts "
                             "(default 3)")
    parser.add_argument("--no-rl", action="store_true", help="skip the RL step")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to add the torch backend on the GPU")
    parser.add_argument("--large-batch", type=int, default=512, help="the large batch of the GPU step (default 512)")
    parser.add_argument("--pipeline", nargs="*", default=[], choices=("numpy", "torch"),
                        help="also run the seed preset's whole pipeline on these backends (torch: on --device)")
    parser.add_argument("--pipeline-scale", type=float, default=1.0,
                        help="multiply the pipeline's step counts (default 1: the seed preset's own)")
    parser.add_argument("--kernels", default="fast", choices=("fast", "plain"),
                        help="the numpy backend's ops: fast (default) or plain (functional.py, for reading; slower)")
    parser.add_argument("--ablate", action="store_true",
                        help="also measure what each fast twin saves (the float32 step with that op plain)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--markdown", type=Path, metavar="JSON",
                        help="measure nothing: print the markdown tables of docs/speed.md from a --json file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        check_values(vars(args), {"steps": count(1, 10**5), "warmup": count(0, 10**5), "rl_steps": count(1, 10**4),
                                  "rounds": count(1, 100), "large_batch": count(1, 65536),
                                  "pipeline_scale": Range(float, 0.0, 100.0, low_open=True)})
        if args.markdown and not args.markdown.is_file():
            raise ValueError(f"--markdown: {args.markdown} is not a file")
    except ValueError as error:
        parser.error(str(error))
    if args.device != "cpu" and not args.worker and not args.markdown:  # a device that is not there: say so now
        from minigpt_np.train.backend import get_backend
        try:
            get_backend("torch", args.device)
        except ValueError as error:
            parser.error(str(error))
    return args


def plan_for(args):
    """name -> (worker, its arguments) of every measurement taken in rounds."""
    common = dict(device="cpu", batch=BATCH, steps=args.steps, warmup=args.warmup)
    form = "" if args.kernels == "fast" else "_plain"
    plan = {"matmul": ("matmul", dict(batch=BATCH)),
            f"numpy{form}_float32": ("train", dict(backend_name="numpy", dtype="float32", kernels=args.kernels, **common)),
            f"numpy{form}_float64": ("train", dict(backend_name="numpy", dtype="float64", kernels=args.kernels, **common)),
            "torch": ("train", dict(backend_name="torch", dtype="float32", **common))}
    if args.device != "cpu":
        for batch in (BATCH, args.large_batch):
            plan[f"torch_{args.device}_b{batch}"] = ("train", dict(
                backend_name="torch", dtype="float32", device=args.device, batch=batch, steps=args.steps,
                warmup=args.warmup))
    if not args.no_rl:
        runs = [(f"numpy{form}", "numpy", "cpu", args.kernels), ("torch", "torch", "cpu", "fast")]
        if args.device != "cpu":
            runs.append((f"torch_{args.device}", "torch", args.device, "fast"))
        for name, backend_name, device, kernels in runs:
            plan[f"rl_{name}"] = ("rl", dict(backend_name=backend_name, device=device, steps=args.rl_steps,
                                             kernels=kernels))
    return plan


def measure(args):
    """Every measurement the settings ask for; returns what --json writes."""
    measured = in_rounds(plan_for(args), args.rounds)
    matmul = measured.pop("matmul")
    rl = {name[len("rl_"):]: figures for name, figures in measured.items() if name.startswith("rl_")}
    train = {name: figures for name, figures in measured.items() if not name.startswith("rl_")}
    pipelines = {name: run_worker("pipeline", backend_name=name, device="cpu" if name == "numpy" else args.device,
                                  scale=args.pipeline_scale) for name in args.pipeline}
    ablation = run_worker("ablation", batch=BATCH, steps=args.steps, warmup=args.warmup) if args.ablate else None
    return {"train_step_ms": {k: v["ms"] for k, v in train.items()},
            "rl_step_ms": {k: v["ms"] for k, v in rl.items()},
            "matmul_peak_gflops": matmul["gflops"], "step_gflop": train["torch"]["step_gflop"],
            "peak_rss_mb": {**{f"train_{k}": v["peak_rss_mb"] for k, v in train.items()},
                            **{f"rl_{k}": v["peak_rss_mb"] for k, v in rl.items()},
                            **{f"pipeline_{k}": v["peak_rss_mb"] for k, v in pipelines.items()}},
            "pipeline_wall_s": {k: v["wall_s"] for k, v in pipelines.items()}, "ablation": ablation,
            "device": args.device, "kernels": args.kernels, "machine": machine(), "rounds": args.rounds,
            "steps": args.steps, "details": {"matmul": matmul, "train": train, "rl": rl, "pipeline": pipelines}}


def text_report(result):
    """What bench.py prints after measuring: the training steps, the ablation, the RL steps, the pipelines."""
    train, rl, peak = result["details"]["train"], result["details"]["rl"], result["matmul_peak_gflops"]
    form = "" if result["kernels"] == "fast" else "_plain"
    lines = [f"numpy float32 matmul peak at the model's shapes: {peak:.1f} GFLOP/s; "
             f"one training step (batch {BATCH}): {result['step_gflop']:.2f} GFLOP",
             f"\n{'training step':<26}{'ms':>9}{'tokens/s':>11}{'GFLOP/s':>9}{'of peak':>9}{'peak MB':>9}"]
    for name, figures in train.items():
        gflops = figures["step_gflop"] / (figures["ms"] / 1000)
        lines.append(f"{name:<26}{figures['ms']:>9.1f}{figures['tokens_per_s']:>11.0f}{gflops:>9.1f}"
                     f"{gflops / peak:>9.0%}{figures['peak_rss_mb']:>9.0f}")
    numpy32 = train[f"numpy{form}_float32"]
    lines.append(f"numpy{form} float32 / torch step time: {numpy32['ms'] / train['torch']['ms']:.2f}; round by round: "
                 f"{paired_ratios(numpy32, train['torch'])}; numpy{form} float32 share of the matmul peak: "
                 f"{numpy32['step_gflop'] / (numpy32['ms'] / 1000) / peak:.0%}")
    ablation = result["ablation"]
    if ablation:
        lines += [f"\nwhat each fast twin saves: the numpy float32 step (all fast: {ablation['fast_ms']:.1f} ms) with "
                  f"that op plain, minus the all-fast step before it (median of {result['steps']} pairs, interleaved "
                  "in one process):", f"{'plain op':<14}{'saved ms':>10}{'of the step':>13}   quartiles of the pairs (ms)"]
        for name, saved in ablation["saved_ms"].items():
            low, high = ablation["saved_ms_quartiles"][name]
            lines.append(f"{name:<14}{saved:>10.1f}{saved / ablation['fast_ms']:>13.0%}   {low:.1f} .. {high:.1f}")
    if rl:
        first = next(iter(rl.values()))
        lines.append(f"\n{'RL step':<22}{'ms':>9}{'peak MB':>9}{'answer chars':>14}   ({first['prompts']} prompt x "
                     f"{first['samples']} samples, answers up to {first['max_new_tokens']} characters)")
        lines += [f"{name:<22}{figures['ms']:>9.0f}{figures['peak_rss_mb']:>9.0f}{figures['answer_chars']:>14.1f}"
                  for name, figures in rl.items()]
        lines.append(f"numpy{form} / torch RL step time: {rl[f'numpy{form}']['ms'] / rl['torch']['ms']:.2f}; "
                     f"round by round: {paired_ratios(rl[f'numpy{form}'], rl['torch'])}")
    for name, figures in result["details"]["pipeline"].items():
        stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in figures["stage_s"].items())
        lines.append(f"\nseed pipeline, {name} ({figures['steps']}): {figures['wall_s']:.1f} s in all ({stages}); "
                     f"peak memory {figures['peak_rss_mb']:.0f} MB")
    return lines


def markdown_report(result):
    """The tables of docs/speed.md, from one --json file: the training step, the RL step, what each fast
    twin saves (with --ablate), and the machine they were measured on."""
    train, rl, peak = result["details"]["train"], result["details"]["rl"], result["matmul_peak_gflops"]
    lines = [f"Measured on: {result['machine']}; {result['rounds']} rounds, interleaved, the median round.", "",
             "| training step (batch 32) | ms | tokens/s | GFLOP/s | share of the matmul peak | peak MB | ms by round |",
             "|---|---|---|---|---|---|---|"]
    for name, figures in train.items():
        gflops = figures["step_gflop"] / (figures["ms"] / 1000)
        lines.append(f"| {name} | {figures['ms']:.1f} | {figures['tokens_per_s']:.0f} | {gflops:.1f} | "
                     f"{gflops / peak:.0%} | {figures['peak_rss_mb']:.0f} | "
                     f"{', '.join(f'{ms:.1f}' for ms in figures['rounds_ms'])} |")
    lines += ["", f"The matmul peak: {peak:.0f} GFLOP/s (numpy float32 at the model's shapes); one step: "
              f"{result['step_gflop']:.2f} GFLOP."]
    if rl:
        first = next(iter(rl.values()))
        lines += ["", f"| RL step ({first['prompts']} prompt x {first['samples']} samples, up to "
                  f"{first['max_new_tokens']} characters) | ms | peak MB | mean answer length | ms by round |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {figures['ms']:.0f} | {figures['peak_rss_mb']:.0f} | {figures['answer_chars']:.1f} | "
                  f"{', '.join(f'{ms:.0f}' for ms in figures['rounds_ms'])} |" for name, figures in rl.items()]
    ablation = result["ablation"]
    if ablation:
        lines += ["", f"| op in its plain form (all fast: {ablation['fast_ms']:.1f} ms) | what the fast twin saves, "
                  f"ms (median of {result['steps']} pairs) | share of the fast step | quartiles (ms) |",
                  "|---|---|---|---|"]
        lines += [f"| {'every op' if name == 'plain' else name} | {saved:+.1f} | {saved / ablation['fast_ms']:.0%} | "
                  f"{ablation['saved_ms_quartiles'][name][0]:.1f} .. {ablation['saved_ms_quartiles'][name][1]:.1f} |"
                  for name, saved in ablation["saved_ms"].items()]
    return lines


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](**json.loads(args.worker_args))))
        return
    if args.markdown:
        try:
            print("\n".join(markdown_report(json.loads(args.markdown.read_text()))))
        except (ValueError, KeyError, TypeError) as error:  # not a file bench.py --json wrote
            print(f"error: --markdown: {args.markdown} is not bench.py's JSON ({type(error).__name__}: {error})",
                  file=sys.stderr)
            return 2
        return
    print(f"machine: {machine()}")
    result = measure(args)
    print("\n".join(text_report(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    sys.exit(main())

"""Compare RL methods and best-of-N from one SFT checkpoint: does the policy get what the reward meant?

    python examples/run_all.py --backend torch                        # the seed preset: runs/seed-torch/sft
    python examples/compare_rl.py runs/seed-torch/sft --budget        # the default comparison (< 15 min, 2 cores)
    python examples/compare_rl.py runs/seed-torch/sft                 # the whole grid (hours on a CPU)

RL runs: reward (original, guarded) x KL coefficient x advantage estimator x seed, each sampling the same
number of answers (steps x samples per step), all from the checkpoint, with its run's sampling settings;
--entropy-coef and --split-duplicates apply to every run. The seed preset's RL method, from its SFT
checkpoint (3 runs of 250 steps, the target's figures):

    python examples/compare_rl.py runs/seed-torch/sft --rewards guarded --advantages rloo --kl-coefs 0.2 \
        --entropy-coef 0.2 --split-duplicates --lr 2e-4 --steps 250 --samples 16 --best-of 1 --pool 16

After each run the final policy answers the RL prompt 64 times; those answers give the final figures:
the original and the guarded reward, real-word rate, repeat rate, readable share (real-word rate >= 0.9
and no word more than twice), unique share and distinct-2. "last steps" is the mean original reward of
the run's last --last steps; "KL" the mean exact KL to the SFT policy per answer (nats, summed over the
answer's characters) over those steps.

Best-of-N, no training: a pool of --pool answers sampled from the SFT policy, split into groups of N, and
from each group the best answer by the reward kept, for each reward and N; its KL to the SFT policy is
the bound log N - (N-1)/N and the estimate from the pool's reward levels (minigpt_np/train/best_of_n.py).

Writes <out>/comparison.md (the table, mean +- std over seeds), frontier.png (final original reward
against KL per answer, coloured by real-word rate, best-of-N among the RL runs), curves.png (original
reward and readable share per step), results.json (every figure of every run). A new comparison in the
same --out folder replaces the runs of the old one.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from minigpt_np.train import best_of_n
from minigpt_np.train.checkpoint import CheckpointError, load_checkpoint
from minigpt_np.train.pipeline import RL_INSTRUCTION, rl_from_checkpoint
from minigpt_np.train.settings import backend_for, settings_for
from minigpt_np.train.rewards import REWARDS, score
from minigpt_np.train.evaluation import sample_answers, sample_metrics
from minigpt_np.train.rl import ADVANTAGES
from minigpt_np.train.runner import Run, SamplingSettings, stream
from minigpt_np.train.validation import SEED, OneLineParser, check_values, coefficient, count, positive

RANGES = {"steps": count(1, 10**6), "samples": count(1, 4096), "lr": positive(10.0), "seeds": SEED,
          "kl_coefs": coefficient(), "entropy_coef": coefficient(), "last": count(1, 10**6),
          "best_of": count(1, 4096), "pool": count(1, 10**6)}
# The whole grid, and the budget preset (each setting given on the command line overrides either).
GRID = dict(rewards=list(REWARDS), kl_coefs=[0.0, 0.05, 0.2, 0.5], advantages=["none", "rloo"], seeds=[0, 1, 2],
            steps=150, samples=16, lr=1e-4, best_of=[1, 4, 16, 64], pool=1024)
BUDGET = dict(rewards=list(REWARDS), kl_coefs=[0.0, 0.2], advantages=["none", "rloo"], seeds=[0, 1, 2],
              steps=40, samples=8, lr=3e-4, best_of=[1, 4, 16, 64], pool=512)
FIGURES = ("last_original", "original_reward_mean", "guarded_reward_mean", "real_word_rate", "repeat_rate",
           "readable_frac", "unique_frac", "distinct_2", "kl_per_answer", "wall_time")
HEADERS = ("original reward, last steps", "final: original", "guarded", "real-word rate", "repeat rate",
           "readable", "unique", "distinct-2", "KL per answer (nats)", "wall time (s)")


def run_settings(checkpoint, args, reward, advantage, kl_coef, seed, name):
    """The SFT run's own sampling settings (when its settings.json is there) with this method on top."""
    saved = Path(checkpoint).parent / "settings.json"
    base = json.loads(saved.read_text()) if saved.exists() else {}
    keep = {k: base[k] for k in ("temperature", "top_k", "max_new_tokens", "sft_file") if k in base}
    return settings_for(base.get("preset", "seed"), **keep, backend=args.backend, device=args.device,
                        runs_dir=str(args.out), name=name, seed=seed, progress=False, rl_steps=args.steps,
                        rl_lr=args.lr, rl_samples=args.samples, rl_advantage=advantage, rl_kl_coef=kl_coef,
                        rl_eval_every=args.steps, rl_entropy_coef=args.entropy_coef,
                        rl_split_duplicates=args.split_duplicates, reward=reward)


def parse(argv):
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the SFT stage folder to start every RL run from")
    parser.add_argument("--budget", action="store_true",
                        help=f"the default comparison, small enough for 2 CPU cores in under 15 minutes: {BUDGET}")
    parser.add_argument("--backend", default="torch", choices=("torch", "numpy"), help="default torch")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--rewards", nargs="+", choices=list(REWARDS), help=f"default {GRID['rewards']}")
    parser.add_argument("--kl-coefs", type=float, nargs="+", help=f"betas (default {GRID['kl_coefs']})")
    parser.add_argument("--entropy-coef", type=float, default=0.0,
                        help="weight of the entropy bonus in every RL run (default 0)")
    parser.add_argument("--split-duplicates", action="store_true",
                        help="every RL run trains an answer given k times in its group on its reward / k")
    parser.add_argument("--advantages", nargs="+", choices=ADVANTAGES, help=f"default {GRID['advantages']}")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"default {GRID['seeds']}")
    parser.add_argument("--steps", type=int, help=f"RL steps per run (default {GRID['steps']})")
    parser.add_argument("--samples", type=int, help=f"samples per RL step (default {GRID['samples']})")
    parser.add_argument("--lr", type=float, help=f"RL learning rate (default {GRID['lr']})")
    parser.add_argument("--best-of", type=int, nargs="+", help=f"N of best-of-N (default {GRID['best_of']})")
    parser.add_argument("--pool", type=int, help=f"SFT answers sampled for best-of-N (default {GRID['pool']})")
    parser.add_argument("--last", type=int, default=20, help="steps averaged for the 'last steps' figures (default 20)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare-rl"), help="output folder")
    args = parser.parse_args(argv)
    for name, value in (BUDGET if args.budget else GRID).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv=None):
    args = parse(argv)
    try:  # every setting, and every run's, before any folder is written
        check_values(vars(args), RANGES)
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out: {args.out} is a file, not a folder")
        if max(args.best_of) > args.pool:
            raise ValueError(f"--best-of: {max(args.best_of)} is more than the --pool of {args.pool} answers")
        for reward in args.rewards:
            for advantage in args.advantages:
                for kl_coef in args.kl_coefs:
                    run_settings(args.checkpoint, args, reward, advantage, kl_coef, args.seeds[0], "check")
        load_checkpoint(args.checkpoint)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        baseline = best_of_n_baseline(args)
        results = rl_runs(args)
    except (CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_results(args, results, baseline, time.perf_counter() - started)
    return 0


def rl_runs(args):
    """method -> [figures of each seed's run]."""
    results = {}
    total, done = len(args.rewards) * len(args.advantages) * len(args.kl_coefs) * len(args.seeds), 0
    for reward in args.rewards:
        for advantage in args.advantages:
            for kl_coef in args.kl_coefs:
                method = f"RL {reward}, {advantage}, beta={kl_coef:g}" + (
                    f", entropy {args.entropy_coef:g}" if args.entropy_coef else "") + (
                    ", duplicates split" if args.split_duplicates else "")
                results[method] = []
                for seed in args.seeds:
                    name = f"{reward}-{advantage}-beta{kl_coef:g}-seed{seed}"
                    shutil.rmtree(args.out / name, ignore_errors=True)
                    run, wall_time, final = rl_from_checkpoint(args.checkpoint, run_settings(
                        args.checkpoint, args, reward, advantage, kl_coef, seed, name), notify=lambda message: None)
                    def last(figure, run=run):  # the mean of the run's last --last steps
                        return float(np.mean(run.metrics.series("rl", figure)[1][-args.last:]))

                    figures = {**{k: final[k] for k in FIGURES[1:-2]}, "last_original": last("original_reward_mean"),
                               "kl_per_answer": last("kl_per_answer"), "wall_time": wall_time,
                               "curves": {k: run.metrics.series("rl", k)[1]
                                          for k in ("original_reward_mean", "readable_frac", "kl_per_answer")}}
                    results[method].append(figures)
                    done += 1
                    print(f"[{done}/{total}] {method}, seed {seed}: original reward {figures['last_original']:.3f} "
                          f"(last {args.last} steps), final {final['original_reward_mean']:.3f}, readable "
                          f"{final['readable_frac']:.2f}, KL {figures['kl_per_answer']:.2f} nats per answer "
                          f"({wall_time:.0f} s)", flush=True)
    return results


def best_of_n_baseline(args):
    """method -> [figures] of best-of-N by each reward, from one pool of SFT answers (seed: the first)."""
    checkpoint = load_checkpoint(args.checkpoint)
    settings = run_settings(args.checkpoint, args, args.rewards[0], args.advantages[0], 0.0, args.seeds[0], "pool")
    backend = backend_for(settings)
    model = backend.create_model(checkpoint.config, settings.seed)
    backend.load_state_dict(model, checkpoint.weights)
    backend.set_training(model, False)
    run = Run(backend, model, checkpoint.config, checkpoint.tokenizer, args.out, None, settings.seed,
              SamplingSettings(temperature=settings.temperature, top_k=settings.top_k,
                               max_new_tokens=settings.max_new_tokens), progress=False)
    rng = stream(settings.seed, "best_of_n")
    started, pool = time.perf_counter(), []
    while len(pool) < args.pool:
        pool += sample_answers(run, RL_INSTRUCTION, min(256, args.pool - len(pool)), rng)
    seconds = time.perf_counter() - started
    print(f"best-of-N: {len(pool)} answers sampled from the SFT policy in {seconds:.0f} s", flush=True)
    answers, finished = [a for a, _ in pool], [f for _, f in pool]
    results = {}
    for reward in args.rewards:
        rewards = score(REWARDS[reward], answers)[0]
        for n in args.best_of:
            chosen = best_of_n.choose(rewards, n)
            figures = sample_metrics([answers[i] for i in chosen], [finished[i] for i in chosen])
            results[f"best-of-{n} by {reward}"] = [{
                **{k: figures[k] for k in FIGURES[1:-2]}, "last_original": None,
                "kl_per_answer": best_of_n.kl_estimate(rewards, n), "kl_bound": best_of_n.kl_bound(n),
                "wall_time": seconds * n / len(pool) * len(chosen), "answers": len(chosen)}]
    return results


def _cell(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def write_results(args, results, baseline, seconds):
    rows = ["| method | " + " | ".join(HEADERS) + " |", "|---|" + "---|" * len(HEADERS)]
    for method, runs in {**baseline, **results}.items():
        cells = [_cell([r[k] for r in runs], 1 if k == "wall_time" else 3) for k in FIGURES]
        if "kl_bound" in runs[0]:
            cells[FIGURES.index("kl_per_answer")] += f" (bound {runs[0]['kl_bound']:.3f})"
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    answers = args.steps * args.samples
    lines = [f"# RL against best-of-N from `{args.checkpoint}`", "",
             f"{args.backend} backend; each RL run samples {args.steps} steps x {args.samples} = {answers} answers "
             f"at lr {args.lr:g}; "
             f"seeds {args.seeds} (mean ± std over seeds); final figures on 64 answers of the final policy; "
             f"best-of-N from a pool of {args.pool} SFT answers (each of its figures on pool / N answers). "
             f"Whole comparison: {seconds / 60:.1f} minutes.", "", *rows, "",
             "![original reward against KL](frontier.png)", "", "![curves](curves.png)", ""]
    (args.out / "comparison.md").write_text("\n".join(lines), encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v
                                                                    for k, v in vars(args).items()},
                                                       "best_of_n": baseline, "rl": results}, indent=1))
    plot_frontier(results, baseline, args.out / "frontier.png")
    plot_curves(results, args.out / "curves.png")
    print("\n".join(rows))
    print(f"\nwritten: {args.out / 'comparison.md'}, frontier.png, curves.png, results.json "
          f"({seconds / 60:.1f} minutes)")


def plot_frontier(results, baseline, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    markers = {"original": "o", "guarded": "s"}
    points = None
    for method, runs in {**results, **baseline}.items():
        reward = method.split(" by ")[-1] if method.startswith("best-of") else method.split(",")[0].split()[-1]
        kl = [max(r["kl_per_answer"], 1e-3) for r in runs]
        points = axes.scatter(kl, [r["original_reward_mean"] for r in runs], c=[r["real_word_rate"] for r in runs],
                              cmap="viridis", vmin=0.5, vmax=1.0, s=90 if method.startswith("best-of") else 40,
                              marker="*" if method.startswith("best-of") else markers.get(reward, "o"),
                              edgecolors="black" if reward == "guarded" else "none", linewidths=0.6)
        if method.startswith("best-of"):
            axes.annotate(method.replace("best-of-", "N=").replace(" by ", ", "), (kl[0], runs[0]["original_reward_mean"]),
                          fontsize=7, xytext=(4, -10), textcoords="offset points")
    if points is not None:
        figure.colorbar(points, label="real-word rate of the final answers")
    axes.set_xscale("log")
    axes.set_xlabel("KL to the SFT policy per answer (nats; log scale, 0 drawn at 1e-3)")
    axes.set_ylabel("original reward of the final answers (max 2.0)")
    axes.set_title("Original reward against KL to SFT\n(o RL on the original reward, outlined squares RL on the "
                   "guarded one, stars best-of-N)", fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_curves(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for method, runs in results.items():
        style = "-" if "guarded" in method else "--"
        for axes, figure_name in ((top, "original_reward_mean"), (bottom, "readable_frac")):
            curves = np.array([r["curves"][figure_name] for r in runs])
            axes.plot(np.arange(1, curves.shape[1] + 1), curves.mean(axis=0), style, label=method.removeprefix("RL "))
    top.set_ylabel("original reward (mean over seeds)")
    bottom.set_ylabel("readable share of the step's answers")
    bottom.set_xlabel("RL step")
    top.set_title("RL from the same SFT checkpoint\n(solid: trained on the guarded reward; dashed: on the original)",
                  fontsize=10)
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
    top.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())

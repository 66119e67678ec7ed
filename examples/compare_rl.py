"""Compare RL methods and best-of-N from one SFT checkpoint: does the policy get what the reward meant?

    python examples/run_all.py --backend torch                        # the seed preset: runs/seed-torch/sft
    python examples/compare_rl.py runs/seed-torch/sft --budget        # the default comparison (< 15 min, 2 cores)
    python examples/compare_rl.py runs/seed-torch/sft                 # the whole grid (hours on a CPU)

RL runs: reward x KL coefficient x advantage estimator x seed, each sampling the same number of answers
(steps x samples per step), all from the checkpoint, with its run's sampling settings; --entropy-coef and
--split-duplicates apply to every run. The rewards: original, guarded, fluent, and with --reward-model (the rm
folder of a run with --rm-steps, whose SFT checkpoint is the one compared) learned and combined:

    python examples/run_all.py --backend torch --preset quick --rm-steps 100 --rm-lr 1e-3
    python examples/compare_rl.py runs/quick-torch/sft --reward-model runs/quick-torch/rm \
        --rewards original guarded learned combined --advantages rloo --kl-coefs 0.05 0.2 --entropy-coef 0.2 \
        --split-duplicates --lr 1e-3 --steps 150 --samples 8 --best-of 1 4 16 64 --pool 512 The seed preset's RL method, from its SFT
checkpoint (3 runs of 250 steps, the target's figures):

    python examples/compare_rl.py runs/seed-torch/sft --rewards fluent --advantages rloo --kl-coefs 0.2 \
        --entropy-coef 0.2 --split-duplicates --lr 2e-4 --steps 250 --samples 16 --best-of 1 --pool 16

After each run the final policy answers the RL prompt 64 times; those answers give the final figures:
the original, the guarded and the fluent reward, real-word rate, repeat rate, readable share (real-word rate >= 0.9
and no word more than twice), unique share, distinct-2, and the gold judge's (minigpt_np/train/judge.py,
which no reward trains on): the English pair share and the gold score. "last steps" is the mean original
reward of the run's last --last steps; "KL" the mean exact KL to the SFT policy per answer (nats, summed
over the answer's characters) over those steps; "gold peak" the highest mean gold score of 10 consecutive
steps along the run, with the KL of those steps: where optimising the reward stopped buying what it meant.

Best-of-N, no training: a pool of --pool answers sampled from the SFT policy, split into groups of N, and
from each group the best answer by the reward kept, for each reward and N; its KL to the SFT policy is
the bound log N - (N-1)/N and the estimate from the pool's reward levels (minigpt_np/train/best_of_n.py).

Writes <out>/comparison.md (the table, mean +- std over seeds, and the SFT pool's pair share as written and
with its words shuffled), frontier.png (final original reward against KL per answer, coloured by real-word
rate, best-of-N among the RL runs), curves.png (original reward and readable share per step),
overoptimisation.png (for each reward: the reward trained on and the gold score against KL, along the RL
runs and for best-of-N), results.json (every figure of every run). A new comparison in the
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
from minigpt_np.train.data import load_sft_pairs, split_pairs
from minigpt_np.train.judge import gold_peak, judge_metrics, shuffled_pair_share, trailing_mean
from minigpt_np.train.pipeline import RL_INSTRUCTION, reward_from_checkpoint, rl_from_checkpoint
from minigpt_np.train.settings import LEARNED_REWARDS, backend_for, settings_for
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
BUDGET = dict(rewards=["original", "guarded"], kl_coefs=[0.0, 0.2], advantages=["none", "rloo"], seeds=[0, 1, 2],
              steps=40, samples=8, lr=3e-4, best_of=[1, 4, 16, 64], pool=512)
REWARD_CHOICES = list(REWARDS) + list(LEARNED_REWARDS)
GOLD_WINDOW = 10  # steps in each mean of the gold peak
FINAL = ("original_reward_mean", "guarded_reward_mean", "fluent_reward_mean", "real_word_rate", "repeat_rate",
         "readable_frac", "unique_frac", "distinct_2", "pair_share", "gold_score")  # the final answers' figures
FIGURES = ("last_original", *FINAL, "gold_peak", "gold_peak_kl", "kl_per_answer", "wall_time")
HEADERS = ("original reward, last steps", "final: original", "guarded", "fluent", "real-word rate", "repeat rate",
           "readable", "unique", "distinct-2", "English pair share", "gold score", "gold peak (10 steps)",
           "KL at the gold peak", "KL per answer (nats)", "wall time (s)")


def run_settings(checkpoint, args, reward, advantage, kl_coef, seed, name):
    """The SFT run's own sampling settings (when its settings.json is there) with this method on top."""
    saved = Path(checkpoint).parent / "settings.json"
    base = json.loads(saved.read_text()) if saved.exists() else {}
    keep = {k: base[k] for k in ("temperature", "top_k", "max_new_tokens", "sft_file") if k in base}
    # a learned reward comes from a reward model trained rm steps (its checkpoint's), as in the run it came from
    rm_steps = load_checkpoint(args.reward_model).step if reward in LEARNED_REWARDS and args.reward_model else 0
    return settings_for(base.get("preset", "seed"), **keep, backend=args.backend, device=args.device,
                        runs_dir=str(args.out), name=name, seed=seed, progress=False, rl_steps=args.steps,
                        rl_lr=args.lr, rl_samples=args.samples, rl_advantage=advantage, rl_kl_coef=kl_coef,
                        rl_eval_every=args.steps, rl_entropy_coef=args.entropy_coef,
                        rl_split_duplicates=args.split_duplicates, reward=reward, rm_steps=rm_steps)


def parse(argv):
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the SFT stage folder to start every RL run from")
    parser.add_argument("--budget", action="store_true",
                        help=f"the default comparison, small enough for 2 CPU cores in under 15 minutes: {BUDGET}")
    parser.add_argument("--backend", default="torch", choices=("torch", "numpy"), help="default torch")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--rewards", nargs="+", choices=REWARD_CHOICES, help=f"default {GRID['rewards']}")
    parser.add_argument("--reward-model", type=Path,
                        help="the rm folder of a run with --rm-steps (from the same SFT checkpoint): for the rewards "
                             "learned and combined")
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
        learned = [reward for reward in args.rewards if reward in LEARNED_REWARDS]
        if learned and args.reward_model is None:
            raise ValueError(f"--rewards {learned[0]}: needs --reward-model, the rm folder of a run with --rm-steps")
        if args.reward_model is not None and load_checkpoint(args.reward_model).meta.get("model") != "reward":
            raise ValueError(f"--reward-model: {args.reward_model} holds no reward model (a run's rm folder does)")
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
        baseline, sft = best_of_n_baseline(args)
        results = rl_runs(args)
    except (CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_results(args, results, baseline, sft, time.perf_counter() - started)
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
                        args.checkpoint, args, reward, advantage, kl_coef, seed, name), notify=lambda message: None,
                        reward_model=args.reward_model)
                    def last(figure, run=run):  # the mean of the run's last --last steps
                        return float(np.mean(run.metrics.series("rl", figure)[1][-args.last:]))

                    curves = {k: run.metrics.series("rl", k)[1] for k in
                              ("original_reward_mean", "readable_frac", "kl_per_answer", "reward_mean", "gold_score")}
                    _, peak, _ = gold_peak(run.metrics.series("rl", "gold_score")[0], curves["kl_per_answer"],
                                           curves["reward_mean"], curves["gold_score"], GOLD_WINDOW)
                    figures = {**{k: final[k] for k in FINAL}, "last_original": last("original_reward_mean"),
                               "kl_per_answer": last("kl_per_answer"), "wall_time": wall_time,
                               "gold_peak": peak["gold"], "gold_peak_kl": peak["kl"], "gold_peak_step": peak["step"],
                               "curves": curves}
                    results[method].append(figures)
                    done += 1
                    print(f"[{done}/{total}] {method}, seed {seed}: original reward {figures['last_original']:.3f} "
                          f"(last {args.last} steps), final {final['original_reward_mean']:.3f}, readable "
                          f"{final['readable_frac']:.2f}, gold {final['gold_score']:.3f} (peak {peak['gold']:.3f} at "
                          f"KL {peak['kl']:.1f}), KL {figures['kl_per_answer']:.2f} nats per answer "
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
    written = split_pairs(load_sft_pairs(settings.sft_file or None))[0]
    for reward in args.rewards:
        reward_fn = (reward_from_checkpoint(reward, args.reward_model, run, written) if reward in LEARNED_REWARDS
                     else REWARDS[reward])
        rewards = score(reward_fn, answers, [RL_INSTRUCTION] * len(answers))[0]
        for n in args.best_of:
            chosen = best_of_n.choose(rewards, n)
            figures = sample_metrics([answers[i] for i in chosen], [finished[i] for i in chosen])
            results[f"best-of-{n} by {reward}"] = [{
                **{k: figures[k] for k in FINAL}, "last_original": None, "gold_peak": None, "gold_peak_kl": None,
                "kl_per_answer": best_of_n.kl_estimate(rewards, n), "kl_bound": best_of_n.kl_bound(n),
                "proxy": float(np.mean([rewards[i] for i in chosen])),
                "wall_time": seconds * n / len(pool) * len(chosen), "answers": len(chosen)}]
    sft = {**judge_metrics(answers), "answers": len(answers),
           "shuffled_pair_share": shuffled_pair_share(answers, stream(settings.seed, "shuffled_words"))}
    return results, sft


def _cell(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def write_results(args, results, baseline, sft, seconds):
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
             f"Whole comparison: {seconds / 60:.1f} minutes.", "",
             f"The gold judge (minigpt_np/train/judge.py) on the pool of {sft['answers']} SFT answers: English pair "
             f"share {sft['pair_share']:.3f} as written, {sft['shuffled_pair_share']:.3f} with each answer's words "
             f"shuffled; gold score {sft['gold_score']:.3f}.", "", *rows, "",
             "![original reward against KL](frontier.png)", "", "![curves](curves.png)", "",
             "![the reward trained on and the gold score against KL](overoptimisation.png)", ""]
    (args.out / "comparison.md").write_text("\n".join(lines), encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v
                                                                    for k, v in vars(args).items()},
                                                       "sft_pool": sft, "best_of_n": baseline, "rl": results},
                                                      indent=1))
    plot_frontier(results, baseline, args.out / "frontier.png")
    plot_curves(results, args.out / "curves.png")
    plot_overoptimisation(args.rewards, results, baseline, sft, args.out / "overoptimisation.png")
    print("\n".join(rows))
    print(f"\nwritten: {args.out / 'comparison.md'}, frontier.png, curves.png, results.json "
          f"({seconds / 60:.1f} minutes)")


def plot_frontier(results, baseline, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    markers = {"original": "o", "guarded": "s", "fluent": "P", "learned": "^", "combined": "D"}
    points = None
    for method, runs in {**results, **baseline}.items():
        reward = method.split(" by ")[-1] if method.startswith("best-of") else method.split(",")[0].split()[-1]
        kl = [max(r["kl_per_answer"], 1e-3) for r in runs]
        points = axes.scatter(kl, [r["original_reward_mean"] for r in runs], c=[r["real_word_rate"] for r in runs],
                              cmap="viridis", vmin=0.5, vmax=1.0, s=90 if method.startswith("best-of") else 40,
                              marker="*" if method.startswith("best-of") else markers.get(reward, "o"),
                              edgecolors="black" if reward in ("guarded", "fluent") else "none", linewidths=0.6)
        if method.startswith("best-of"):
            axes.annotate(method.replace("best-of-", "N=").replace(" by ", ", "), (kl[0], runs[0]["original_reward_mean"]),
                          fontsize=7, xytext=(4, -10), textcoords="offset points")
    if points is not None:
        figure.colorbar(points, label="real-word rate of the final answers")
    axes.set_xscale("log")
    axes.set_xlabel("KL to the SFT policy per answer (nats; log scale, 0 drawn at 1e-3)")
    axes.set_ylabel("original reward of the final answers (max 2.0)")
    axes.set_title("Original reward against KL to SFT\n(RL on the original o, the guarded s (outlined), the learned ^ "
                   "and the combined reward D; stars best-of-N)", fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_overoptimisation(rewards, results, baseline, sft, path):
    """One panel per reward: the reward trained on (left axis) and the gold score (right) against KL per
    answer: RL runs as lines (means of GOLD_WINDOW steps, one line per run), best-of-N by that reward as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(2, len(rewards))
    rows = -(-len(rewards) // columns)
    figure, panels = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False)
    for axes in panels.flat[len(rewards):]:
        axes.set_visible(False)
    for axes, reward in zip(panels.flat, rewards):
        gold_axes = axes.twinx()
        for method, runs in results.items():
            if method.split(",")[0] != f"RL {reward}":
                continue
            for r in runs:
                kl = trailing(r["curves"]["kl_per_answer"])
                axes.plot(kl, trailing(r["curves"]["reward_mean"]), color="tab:blue", alpha=0.6, linewidth=1)
                gold_axes.plot(kl, trailing(r["curves"]["gold_score"]), color="tab:orange", alpha=0.8, linewidth=1)
                gold_axes.plot([r["gold_peak_kl"]], [r["gold_peak"]], "o", color="tab:orange", markersize=4)
        best = [runs[0] for method, runs in baseline.items() if method.endswith(f" by {reward}")]
        axes.plot([b["kl_per_answer"] for b in best], [b["proxy"] for b in best], "*", color="tab:blue",
                  markersize=10, label="best-of-N: reward")
        gold_axes.plot([b["kl_per_answer"] for b in best], [b["gold_score"] for b in best], "*", color="tab:orange",
                       markersize=10, label="best-of-N: gold")
        gold_axes.axhline(sft["gold_score"], color="tab:orange", linestyle=":", alpha=0.6)
        axes.set_title(f"trained on / chosen by: {reward}", fontsize=10)
        axes.set_xlabel("KL to the SFT policy (nats per answer)")
        axes.set_ylabel(f"{reward} reward (blue)")
        gold_axes.set_ylabel("gold score (orange; dotted: SFT)")
        axes.grid(alpha=0.3)
    figure.suptitle(f"Over-optimisation: the reward trained on and the gold judge\n(lines: RL runs, means of "
                    f"{GOLD_WINDOW} steps, dots at the gold peak; stars: best-of-N)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def trailing(values):
    return trailing_mean(values, GOLD_WINDOW)


def plot_curves(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for method, runs in results.items():
        style = "-" if "guarded" in method or "fluent" in method else "--"
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

"""Compare RL methods from one SFT checkpoint: each advantage estimator, with and without a KL leash.

    python examples/run_all.py --backend torch --preset quick              # makes runs/quick-torch/sft
    python examples/compare_rl.py runs/quick-torch/sft --backend torch

Every method samples the same number of completions (steps x prompts x samples per prompt), over
several seeds. Writes <out>/comparison.md (final reward mean +- std over seeds, KL to SFT, distinct-2,
unique fraction, held-out reward before and after, wall time; with --unique-of N also how many of N
fresh samples are distinct) and <out>/comparison.png (reward curves, mean over seeds). A new
comparison in the same --out folder replaces the runs of the old one.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from minigpt_np.train.checkpoint import CheckpointError, load_checkpoint
from minigpt_np.train.pipeline import RL_INSTRUCTION, rl_from_checkpoint, settings_for
from minigpt_np.train.rl import ADVANTAGES
from minigpt_np.train.stages import sample_answers
from minigpt_np.train.validation import SEED, OneLineParser, check_values, coefficient, count, positive

RANGES = {"steps": count(1, 10**6), "samples": count(1, 4096), "lr": positive(10.0), "seeds": SEED,
          "kl_coefs": coefficient(), "last": count(1, 10**6), "unique_of": count(0, 10**5)}


def run_settings(checkpoint, args, advantage, kl_coef, seed, name):
    """The SFT run's own sampling settings (when its settings.json is there) with this method on top."""
    saved = Path(checkpoint).parent / "settings.json"
    base = json.loads(saved.read_text()) if saved.exists() else {}
    keep = {k: base[k] for k in ("temperature", "top_k", "max_new_tokens", "sft_file", "reward") if k in base}
    return settings_for(base.get("preset", "seed"), **keep, backend=args.backend, device=args.device,
                        runs_dir=str(args.out), name=name, seed=seed, progress=False, rl_steps=args.steps,
                        rl_lr=args.lr, rl_samples=args.samples, rl_advantage=advantage, rl_kl_coef=kl_coef,
                        rl_eval_every=args.steps)


def main(argv=None):
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the SFT stage folder to start every RL run from")
    parser.add_argument("--backend", default="torch", choices=("torch", "numpy"), help="default torch")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--steps", type=int, default=25, help="RL steps per run (default 25)")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt per step (default 8)")
    parser.add_argument("--lr", type=float, default=1e-4, help="RL learning rate (default 1e-4)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    parser.add_argument("--kl-coefs", type=float, nargs="+", default=[0.0, 0.05], help="betas (default 0 0.05)")
    parser.add_argument("--advantages", nargs="+", default=list(ADVANTAGES), choices=ADVANTAGES)
    parser.add_argument("--last", type=int, default=5, help="final figures: mean of the last N steps (default 5)")
    parser.add_argument("--unique-of", type=int, default=0,
                        help="after each run, sample this many answers and count the distinct ones (default 0: off)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare-rl"), help="output folder")
    args = parser.parse_args(argv)
    try:  # every setting, and every run's, before any folder is written
        check_values(vars(args), RANGES)
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out: {args.out} is a file, not a folder")
        for advantage in args.advantages:
            for kl_coef in args.kl_coefs:
                run_settings(args.checkpoint, args, advantage, kl_coef, args.seeds[0], "check")
        load_checkpoint(args.checkpoint)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    results, before = {}, {}
    for advantage in args.advantages:
        for kl_coef in args.kl_coefs:
            method = f"{advantage}, beta={kl_coef:g}"
            runs = []
            for seed in args.seeds:
                name = f"{advantage}-beta{kl_coef:g}-seed{seed}"
                shutil.rmtree(args.out / name, ignore_errors=True)
                try:
                    first = seed not in before  # the held-out reward before RL is the same for every method
                    run, wall_time, _ = rl_from_checkpoint(args.checkpoint, run_settings(
                        args.checkpoint, args, advantage, kl_coef, seed, name), notify=lambda message: None,
                        evaluate_before=first)
                except (CheckpointError, ValueError, OSError) as error:
                    print(f"error: {error}", file=sys.stderr)
                    return 2
                series = {k: run.metrics.series("rl", k)[1]
                          for k in ("reward_mean", "kl", "distinct_2", "unique_frac", "heldout_reward_mean")}
                if first:
                    before[seed] = series["heldout_reward_mean"][0]
                result = {"series": series, "wall_time": wall_time, "heldout_before": before[seed]}
                line = (f"{method:<28} seed {seed}: final reward {np.mean(series['reward_mean'][-args.last:]):.3f} "
                        f"({wall_time:.1f} s)")
                if args.unique_of:
                    run.backend.set_training(run.model, False)
                    answers = [text for text, _ in
                               sample_answers(run, RL_INSTRUCTION, args.unique_of, np.random.default_rng(seed))]
                    result["unique_of"] = len(set(answers))
                    line += f"; {len(set(answers))} of {args.unique_of} samples unique, e.g. {answers[0]!r}"
                runs.append(result)
                print(line, flush=True)
            results[method] = runs

    unique_header = f" unique of {args.unique_of} after |" if args.unique_of else ""
    rows = ["| method | final reward (mean ± std over seeds) | KL to SFT | distinct-2 | unique |" + unique_header
            + " held-out reward before → after | wall time (s) |",
            "|---|---|---|---|---|" + ("---|" if args.unique_of else "") + "---|---|"]
    for method, runs in results.items():
        def final(name):
            return [np.mean(r["series"][name][-args.last:]) for r in runs]
        rewards = final("reward_mean")
        rows.append(f"| {method} | {np.mean(rewards):.3f} ± {np.std(rewards):.3f} | {np.mean(final('kl')):.4f} | "
                    f"{np.mean(final('distinct_2')):.3f} | {np.mean(final('unique_frac')):.3f} | "
                    + (f"{np.mean([r['unique_of'] for r in runs]):.1f} | " if args.unique_of else "")
                    + f"{np.mean([r['heldout_before'] for r in runs]):.3f} → "
                    f"{np.mean([r['series']['heldout_reward_mean'][-1] for r in runs]):.3f} | "
                    f"{np.mean([r['wall_time'] for r in runs]):.1f} |")
    completions = args.steps * args.samples
    header = [f"# RL methods compared from `{args.checkpoint}`", "",
              f"{args.backend} backend; {args.steps} steps x {args.samples} samples = {completions} completions per "
              f"run; seeds {args.seeds}; final figures are means over the last {args.last} steps.", ""]
    notes = scale_note(args.advantages)
    (args.out / "comparison.md").write_text("\n".join(header + rows + notes) + "\n\n![reward curves](comparison.png)\n")
    plot(results, args.out / "comparison.png")
    print("\n".join(rows + notes))
    print(f"\nwritten: {args.out / 'comparison.md'}, {args.out / 'comparison.png'}")
    return 0


def scale_note(advantages):
    """Why group_mean, rloo and group_zscore can come out (nearly) the same."""
    if len({"group_mean", "rloo", "group_zscore"} & set(advantages)) < 2:
        return []
    return ["", "Within one group, rloo's advantages are G/(G-1) times group_mean's and group_zscore's are "
            "group_mean's divided by the group's std: the same direction, another scale. AdamW divides each "
            "update by a running gradient size, so a constant scale changes (almost) nothing, and with one prompt "
            "per step the three runs follow nearly the same path; they part where the std changes from step to "
            "step (group_zscore) or where several prompts share a step."]


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for method, runs in results.items():
        curves = np.array([r["series"]["reward_mean"] for r in runs])
        mean = curves.mean(axis=0)
        steps = np.arange(1, len(mean) + 1)
        style = "--" if "beta=0," in method + "," else "-"
        axes.plot(steps, mean, style, label=method)
    axes.set_xlabel("RL step")
    axes.set_ylabel("reward mean (max 2.0), mean over seeds")
    axes.set_title("RL methods from the same SFT checkpoint")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())

"""Turn a run's metrics and checkpoints into PNG plots and report.md."""
import json
import math
from pathlib import Path

from .preferences import KINDS
from .ranges import load_references, report_lines
from .rewards import original_reward
from .evaluation import FINAL_SAMPLES
from .judge import gold_peak, judge_documents

# (column title, where the value is) for the stage comparison table.
COLUMNS = (
    ("steps", "step"), ("wall time (s)", "wall_time"), ("train loss", "train_loss"),
    ("val loss", "metrics.val_loss"), ("val bpc", "metrics.val_bpc"), ("answer loss", "metrics.answer_loss"),
    ("format rate", "metrics.format_rate"), ("reward mean", "metrics.reward_mean"),
    ("reward/coffee", "metrics.reward/coffee"), ("reward/exclamation", "metrics.reward/exclamation"),
    ("reward/length", "metrics.reward/length"), ("original reward", "metrics.original_reward_mean"),
    ("guarded reward", "metrics.guarded_reward_mean"), ("fluent reward", "metrics.fluent_reward_mean"),
    ("real-word rate", "metrics.real_word_rate"),
    ("repeat rate", "metrics.repeat_rate"), ("readable", "metrics.readable_frac"), ("unique", "metrics.unique_frac"),
    ("distinct-1", "metrics.distinct_1"), ("distinct-2", "metrics.distinct_2"),
    ("English pair share", "metrics.pair_share"), ("gold score", "metrics.gold_score"),
    ("held-out reward", "metrics.heldout_reward_mean"), ("log p(degenerate)/char", "metrics.degenerate_logprob"),
)

# The few figures per stage that tell whether it did its job: the table run_all.py prints (within 100 columns).
SHORT_COLUMNS = (
    ("steps", "step"), ("time (s)", "wall_time"), ("val loss", "metrics.val_loss"),
    ("format rate", "metrics.format_rate"), ("reward", "metrics.reward_mean"),
    ("original reward", "metrics.original_reward_mean"), ("readable", "metrics.readable_frac"),
    ("unique", "metrics.unique_frac"),
)

def _lookup(summary, path):
    value = summary
    for part in path.split(".", 1) if path.startswith("metrics.") else [path]:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _format(value, path=""):
    if value is None:
        return "–"
    if path == "wall_time":
        return f"{value:.0f}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"


def summary_rows(summaries, columns=COLUMNS):
    """[header, row per finished stage] of the comparison table (all of COLUMNS, or the given ones), as strings."""
    rows = [["stage"] + [title for title, _ in columns]]
    for stage, summary in summaries.items():
        if summary.get("model") == "reward":  # the reward model: not a policy, its figures are its own section's
            continue
        rows.append([stage] + [_format(_lookup(summary, path), path) for _, path in columns])
    return rows


def text_table(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows):
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def stage_problems(summaries):
    """Lines that say where a stage's figures show it did not do its job, each with its figure and meaning.
    Empty when every stage looks as it should."""
    problems = []
    accuracy = summaries.get("rm", {}).get("metrics", {}).get("pref_accuracy")
    if accuracy is not None and accuracy < 0.6:
        problems.append(f"rm: {accuracy:.0%} of the held-out preference pairs ranked right: the reward model tells "
                        "the written answers from the rejected ones little better than chance (50%)")
    for stage in ("sft", "rl"):
        summary = summaries.get(stage, {})
        answers = [record["answer"] for record in summary.get("final_samples") or []]
        if answers:
            empty = sum(not answer.strip() for answer in answers)
            distinct = len(set(answers))
            if empty >= len(answers) / 2:
                problems.append(f"{stage}: {empty} of {len(answers)} answers to the RL prompt are empty (the model "
                                "ends its answer at once)" + (": RL has nothing to learn from" if stage == "sft" else ""))
            elif distinct <= max(1, len(answers) // 10):
                problems.append(f"{stage}: {distinct} distinct answers of {len(answers)} to the RL prompt: one answer "
                                "repeated, no variety left to learn from")
        metrics = summary.get("metrics", {})
        if metrics.get("format_rate") is not None and metrics["format_rate"] < 0.5:
            why = [f"{metrics[key]:.0%} {meaning}" for key, meaning in (
                ("unfinished_rate", "ran to the length limit without the closing newline"),
                ("empty_rate", "were empty")) if metrics.get(key)]
            problems.append(f"{stage}: format rate {metrics['format_rate']:.2f}: most answers to the held-out prompts "
                            "are not well formed (a space, some text, the closing newline)"
                            + (f": {' and '.join(why)}" if why else ""))
    flat = summaries.get("rl", {}).get("metrics", {}).get("flat_group_share")
    if flat is not None and flat >= 0.5:
        problems.append(f"rl: in {flat:.0%} of the steps' groups every answer got the same reward: no advantage, so "
                        "no gradient from the reward")
    before, after = (summaries.get(stage, {}).get("metrics", {}).get("reward_mean") for stage in ("sft", "rl"))
    if before is not None and after is not None and after - before < 0.05:
        problems.append(f"rl: the reward did not rise ({before:.3f} after SFT, {after:.3f} after RL, on "
                        f"{FINAL_SAMPLES} answers each)")
    return problems


# name: (file, title, y label, the series drawn: (metric, legend label)); the first series decides whether it is drawn.
PLOTS = {
    "pretrain": ("pretrain_loss.png", "Pretraining: cross-entropy per character", "nats per character",
                 (("train_loss", "train"), ("val_loss", "validation"))),
    "sft": ("sft_loss.png", "SFT: answer-only cross-entropy", "nats per character",
            (("train_loss", "train"), ("answer_loss", "held-out"))),
    "rm": ("rm_loss.png", "Reward model: Bradley-Terry loss", "nats per pair",
           (("train_loss", "train"), ("pref_loss", "held-out pairs"))),
    "rm_accuracy": ("rm_accuracy.png", "Reward model: held-out pairs ranked right", "share of the pairs",
                    (("pref_accuracy", "all"),) + tuple((f"pref_accuracy/{kind}", kind.replace("_", " "))
                                                       for kind in KINDS)),
    "rl": ("rl_reward.png", "RL: reward of the step's samples", "reward (max 2.0)",
           (("reward_mean", "reward mean"), ("reward/coffee", "coffee"), ("reward/exclamation", "exclamation"),
            ("reward/length", "length"), ("heldout_reward_mean", "held-out prompts"))),
    "rl_diversity": ("rl_diversity.png", "RL: entropy and diversity of the samples", "nats per character, or fraction",
                     (("entropy", "entropy (nats/char)"), ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"),
                      ("unique_frac", "unique answers"), ("kl", "KL to SFT (nats/char)"))),
    "rl_readability": ("rl_readability.png", "RL: do the answers read as language?", "fraction",
                       (("readable_frac", "readable answers"), ("real_word_rate", "real-word rate"),
                        ("repeat_rate", "repeat rate"))),
}


def write_plots(folder, metrics):
    """One PNG per entry of PLOTS that has points, and RL's reward against KL; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for plot, (filename, title, ylabel, series) in PLOTS.items():
        stage = plot.split("_")[0]
        if metrics.series(stage, series[0][0])[0]:
            figure, axes = plt.subplots(figsize=(7, 4))
            for name, label in series:
                steps, values = metrics.series(stage, name)
                if steps:
                    axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
            if plot == "rl":
                _reward_band(axes, metrics)
            _finish_figure(plt, figure, axes, Path(folder) / filename, title, "step", ylabel, legend=True)
            written.append(filename)
    rewards, kls = metrics.series("rl", "reward_mean")[1], metrics.series("rl", "kl")[1]
    if rewards and len(rewards) == len(kls):
        figure, axes = plt.subplots(figsize=(6, 4))
        points = axes.scatter(kls, rewards, c=range(len(kls)), cmap="viridis", s=14)
        figure.colorbar(points, label="RL step")
        _finish_figure(plt, figure, axes, Path(folder) / "rl_reward_vs_kl.png",
                       "RL: reward against distance from the SFT policy", "KL to the SFT policy (nats per character)",
                       "reward mean")
        written.append("rl_reward_vs_kl.png")
    along = _gold_along_rl(metrics)
    if along:
        _plot_gold(plt, along, Path(folder) / "rl_gold.png")
        written.append("rl_gold.png")
    return written


GOLD_WINDOW = 10  # RL steps in each trailing mean of the over-optimisation figures


def _gold_along_rl(metrics):
    """judge.gold_peak of the RL stage's steps: (curves, peak, end), or None without RL steps."""
    steps, proxy = metrics.series("rl", "reward_mean")
    kl, gold = metrics.series("rl", "kl_per_answer")[1], metrics.series("rl", "gold_score")[1]
    if not steps or not len(steps) == len(kl) == len(gold):
        return None
    return gold_peak(steps, kl, proxy, gold, GOLD_WINDOW)


def _plot_gold(plt, along, path):
    """The proxy reward (left) and the gold score (right) against the KL to the SFT policy, step by step."""
    curves, peak, _ = along
    figure, left = plt.subplots(figsize=(7, 4))
    right = left.twinx()
    left.plot(curves["kl"], curves["proxy"], color="tab:blue", label="reward trained on (proxy)")
    right.plot(curves["kl"], curves["gold"], color="tab:orange", label="gold score (judge.py)")
    right.axvline(peak["kl"], color="tab:orange", linestyle=":", alpha=0.7)
    right.annotate(f"gold peak, step {peak['step']}", (peak["kl"], peak["gold"]), fontsize=8,
                   xytext=(4, 4), textcoords="offset points")
    right.set_ylabel("gold score", color="tab:orange")
    figure.legend(loc="lower right", fontsize=8)
    _finish_figure(plt, figure, left, path, f"RL: proxy and gold against KL (means of {GOLD_WINDOW} steps)",
                   "KL to the SFT policy (nats per answer)", "reward trained on")


def _reward_band(axes, metrics):
    """The reward mean ± the step's standard deviation, shaded."""
    steps, means = metrics.series("rl", "reward_mean")
    _, stds = metrics.series("rl", "reward_std")
    if len(stds) == len(means):
        axes.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                          alpha=0.2, label="reward ± std")


def _finish_figure(plt, figure, axes, path, title, xlabel, ylabel, legend=False):
    axes.set_ylabel(ylabel)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if legend:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(folder, context, summaries, metrics):
    """report.md: the data, the settings, the stages compared (and any that did not do their job), the
    plots, reward hacking, and the samples after each stage."""
    folder = Path(folder)
    settings = context["settings"]
    lines = [
        f"# minigpt run: {folder.name}", "",
        f"Backend **{context['backend']}** on {context['device']} ({context['machine']}), preset "
        f"`{settings['preset']}`, seed {settings['seed']}, started {context['started']}.", "",
    ]
    lines += _data_section(context) + _settings_section(context) + _stages_section(context, summaries)
    lines += report_lines(settings, metrics.records, load_references())
    lines += ["## Plots", ""]
    lines += [f"![{title}]({filename})" for filename, title, _, _ in PLOTS.values() if (folder / filename).exists()]
    if (folder / "rl_reward_vs_kl.png").exists():
        lines.append("![RL: reward against KL](rl_reward_vs_kl.png)")
    if (folder / "rl_gold.png").exists():
        lines.append("![RL: the reward trained on and the gold judge against KL](rl_gold.png)")
    lines += _reward_model_section(summaries)
    lines += _reward_hacking_section(summaries, metrics) + _over_optimisation_section(folder, summaries, metrics)
    lines += _rl_progress_section(folder)
    lines += context.get("inspection", []) + _samples_section(summaries)
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _data_section(context):
    """The corpus and its splits, the SFT pairs, the vocabulary, and the RL prompt as the model sees it."""
    lines = ["## Data", "", f"Pretraining corpus: **{context['corpus']}**.", ""]
    lines += [f"- {split}: {source} ({context['characters'][split]:,} characters)"
              for split, source in context["sources"].items()]
    lines += [f"- notice: {notice}" for notice in context["notices"]]
    context_length = context["config"]["context_length"]
    prompt = context["rl_prompt"]
    seen = prompt if len(prompt) <= context_length else prompt[-context_length:]
    return lines + [
        "", f"SFT pairs: {context['sft_pairs']['train']} for training, {context['sft_pairs']['held_out']} held out "
        f"({context['sft_pairs']['file']}). One character vocabulary of {context['vocab_size']} symbols for all stages.",
        "", f"RL prompt ({len(prompt)} characters, context {context_length}): the model sees "
        + ("all of it." if seen == prompt else f"only the last {context_length}:"), "",
        "```", seen, "```", "",
    ]


def _settings_section(context):
    settings = context["settings"]
    lines = ["## Model and training", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in context["config"].items()]
    for key in ("batch_size", "pretrain_steps", "pretrain_lr", "sft_steps", "sft_lr", "sft_answer_chars", "rl_steps",
                "rl_lr", "weight_decay", "grad_clip", "temperature", "top_k", "rl_samples", "rl_advantage", "reward"):
        lines.append(f"| {key} | {settings[key]} |")
    return lines


def _stages_section(context, summaries):
    """The comparison table, the stages that did not do their job, and the test loss after pretraining."""
    lines = ["", "## The stages compared", "",
             f"Figures after each stage: validation loss on {context['sources'].get('validation', 'the corpus')}, "
             "answer-only loss and format rate on "
             f"the held-out pairs; on {FINAL_SAMPLES} samples for the RL prompt, the mean reward (the run's "
             "reward and its components, then the original, the guarded and the fluent reward), how much the "
             "answers read as language (real-word rate, repeat rate, and the readable share: real-word rate >= 0.9 "
             "and no word more than twice; see readability.py), the share of distinct answers, and the gold "
             "judge's figures (judge.py: the share of the answers' adjacent word pairs found in an English text "
             "that no stage reads, and the gold score, that share for an answer that says coffee).", "",
             markdown_table(summary_rows(summaries)), ""]
    problems = stage_problems(summaries)
    if problems:
        lines += ["**Stages that did not do their job:**", ""] + [f"- {problem}" for problem in problems] + [""]
    pretrain_metrics = summaries.get("pretrain", {}).get("metrics", {})
    if "test_loss" in pretrain_metrics:
        lines += [f"Test after pretraining: loss {pretrain_metrics['test_loss']:.3f}, "
                  f"{pretrain_metrics['test_bpc']:.3f} bits per character.", ""]
    return lines


def _reward_model_section(summaries):
    """The reward model's held-out accuracy and margin per kind of rejected answer."""
    summary = summaries.get("rm")
    if not summary:
        return []
    metrics, counts = summary.get("metrics", {}), summary.get("preference_pairs", {})
    lines = ["", "## The reward model", "",
             f"Trained {summary.get('step')} steps on {sum(counts.get('train', {}).values())} preference pairs "
             "(the written answer chosen, a rejected one of each kind; see preferences.py); on the "
             f"{sum(counts.get('held_out', {}).values())} held-out pairs, made from the held-out answers, "
             f"{metrics.get('pref_accuracy', float('nan')):.0%} are ranked right (chance: 50%), Bradley-Terry loss "
             f"{metrics.get('pref_loss', float('nan')):.3f} (chance: ln 2 = 0.693).", "",
             "| rejected answer | held-out pairs | ranked right | mean margin r(chosen) - r(rejected) |",
             "|---|---|---|---|"]
    for kind in KINDS:
        if f"pref_accuracy/{kind}" in metrics:
            lines.append(f"| {kind.replace('_', ' ')} | {counts.get('held_out', {}).get(kind, '–')} | "
                         f"{metrics[f'pref_accuracy/{kind}']:.0%} | {metrics[f'pref_margin/{kind}']:.3f} |")
    return lines + [""]


def _over_optimisation_section(folder, summaries, metrics, shown=3):
    """Where the gold score peaked along RL, at what KL, and what the policy said there and at the end."""
    along = _gold_along_rl(metrics)
    if along is None:
        return []
    _, peak, end = along
    by_step = _kept_samples(folder)
    said = {}
    for name, where in (("peak", peak), ("end", end)):
        if by_step:
            step = min(by_step, key=lambda kept: (abs(kept - where["step"]), kept))
            said[name] = (step, " · ".join(f"`{_one_line(r['answer'])}`" for r in by_step[step][:shown]))
    sft = summaries.get("sft", {}).get("metrics", {})
    lines = ["", "## Over-optimisation: the reward trained on against a gold judge", "",
             f"The gold judge (judge.py) reads what no stage trains on: the share of an answer's adjacent word pairs "
             f"found in {len(judge_documents())} pieces of ordinary English, counted for answers that say coffee. Means of "
             f"{GOLD_WINDOW} RL steps (the step's answers; the SFT policy's {FINAL_SAMPLES} answers scored "
             f"{_format(sft.get('gold_score'))}):", "",
             "| where | step | KL per answer (nats) | reward trained on | gold score |", "|---|---|---|---|---|",
             f"| gold peak | {peak['step']} | {_format(peak['kl'])} | {_format(peak['proxy'])} | {_format(peak['gold'])} |",
             f"| end of RL | {end['step']} | {_format(end['kl'])} | {_format(end['proxy'])} | {_format(end['gold'])} |",
             ""]
    if end["step"] != peak["step"] and end["proxy"] > peak["proxy"] and end["gold"] < peak["gold"]:
        lines += [f"Past the gold peak the reward trained on kept rising ({_format(peak['proxy'])} → "
                  f"{_format(end['proxy'])}) while the gold score fell ({_format(peak['gold'])} → "
                  f"{_format(end['gold'])}): the policy was optimising the reward past what it measures.", ""]
    for name, label in (("peak", "near the gold peak"), ("end", "at the end")):
        if name in said:
            lines.append(f"- {label} (step {said[name][0]}): {said[name][1]}")
    return lines


def _kept_samples(folder):
    """{step: [records]} of the RL answers rl/samples.jsonl kept (not the final policy's)."""
    path = Path(folder) / "rl" / "samples.jsonl"
    by_step = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if not record.get("final"):
                by_step.setdefault(record["step"], []).append(record)
    return by_step


def _rl_progress_section(folder, rows=11, shown=3):
    """How the policy moved: the first answers to the RL prompt at evenly spaced RL steps (from rl/samples.jsonl)."""
    by_step = _kept_samples(folder)
    if not by_step:
        return []
    steps = sorted(by_step)
    chosen = sorted({steps[round(i * (len(steps) - 1) / (rows - 1))] for i in range(rows)}) if len(steps) > rows else steps
    lines = ["", "## How the RL policy moved", "",
             f"The first {shown} answers to the RL prompt at RL steps spread over the stage, and the mean reward of "
             "all the step's answers:", "", "| step | mean reward | answers |", "|---|---|---|"]
    for step in chosen:
        records = by_step[step]
        answers = " · ".join(f"`{_one_line(r['answer'])}`" for r in records[:shown])
        lines.append(f"| {step} | {_format(sum(r['reward'] for r in records) / len(records))} | {answers} |")
    return lines


def _samples_section(summaries):
    lines = ["", "## Samples after each stage", "",
             "The same prompts and seeds after every stage: two samples at the training temperature, then greedy "
             "(the reward of each answer to an instruction in brackets).", ""]
    for stage, summary in summaries.items():
        lines += [f"### after {stage}", "", "| prompt | how | answer | reward |", "|---|---|---|---|"]
        for sample in summary.get("samples", []):
            rewards = sample.get("rewards") or [None] * 3
            texts = list(zip(("sampled", "sampled", "greedy"), sample["sampled"] + [sample["greedy"]], rewards))
            for how, text, reward in texts:
                lines.append(f"| `{_one_line(sample['prompt'])[-40:]}` | {how} | `{_one_line(text)}` | "
                             f"{_format(reward)} |")
        lines.append("")
    return lines


def _reward_hacking_section(summaries, metrics):
    """Where the policy stands relative to the string that maximises the original reward."""
    from .evaluation import degenerate_answer, distinct_n

    degenerate = degenerate_answer()
    lines = ["", "## Reward hacking, for reference", "",
             f"The answer `{degenerate.strip()}` earns the original reward's maximum, 2.0, while saying nothing: "
             f"distinct-1 {distinct_n([degenerate], 1):.2f}, distinct-2 {distinct_n([degenerate], 2):.2f}. "
             "Its log-probability per character under the model after each stage (closer to 0: more likely):", ""]
    lines += [f"- after {stage}: {_format(summary.get('metrics', {}).get('degenerate_logprob'))}"
              for stage, summary in summaries.items()]
    last = {name: metrics.last("rl", name) for name in ("reward_mean", "kl", "distinct_1", "distinct_2", "unique_frac")}
    if last["reward_mean"] is not None:
        lines += ["", f"At the last RL step the policy's samples had reward {_format(last['reward_mean'])}, "
                  f"KL to SFT {_format(last['kl'])} nats per character, distinct-1 {_format(last['distinct_1'])}, "
                  f"distinct-2 {_format(last['distinct_2'])} and {_format(last['unique_frac'])} of them unique."]
    before, after = (summaries.get(stage, {}).get("metrics", {}) for stage in ("sft", "rl"))
    if "readable_frac" in before and "readable_frac" in after:
        lines += ["", f"Did RL get what the reward meant? From SFT to RL, on {FINAL_SAMPLES} samples each: the "
                  f"original reward went {_format(before['original_reward_mean'])} → "
                  f"{_format(after['original_reward_mean'])} (the reward trained on "
                  f"{_format(before.get('reward_mean'))} → {_format(after.get('reward_mean'))}), the "
                  f"readable share {_format(before['readable_frac'])} → {_format(after['readable_frac'])}, the "
                  f"repeat rate {_format(before['repeat_rate'])} → {_format(after['repeat_rate'])}, the English "
                  f"pair share {_format(before.get('pair_share'))} → {_format(after.get('pair_share'))} and the "
                  f"gold score {_format(before.get('gold_score'))} → {_format(after.get('gold_score'))}. A reward that "
                  "climbs while the readable share falls has been hacked: the policy found answers that score "
                  "without saying what the reward was written to ask for."]
    final = summaries.get("rl", {}).get("final_samples")
    if final:
        ranked = sorted(final, key=lambda record: -record["reward"])
        lines += ["", f"The final policy's {len(final)} answers, the 10 best and the 10 worst by the run's reward:", "",
                  "| rank | answer | reward | original | real-word rate | repeat rate | readable |",
                  "|---|---|---|---|---|---|---|"]
        shown = list(enumerate(ranked, 1))
        for rank, record in shown[:10] + (shown[-10:] if len(shown) > 20 else shown[10:]):
            lines.append(f"| {rank} | `{_one_line(record['answer'])}` | {_format(record['reward'])} | "
                         f"{_format(sum(original_reward(record['answer']).values()))} | "
                         f"{_format(record['real_word_rate'])} | {_format(record['repeat_rate'])} | "
                         f"{'yes' if record['readable'] else 'no'} |")
    return lines


def _one_line(text):
    return text.replace("\n", "⏎").replace("`", "'").replace("|", "/")

"""Is my run normal? Reference ranges of the figures a learner checks, each measured over several seeds.

A run's figures (``run_figures``) are read from its metrics.jsonl records:

    pretraining   the training loss at step 1 (about ln of the vocabulary size when the model starts
                  from random weights), the validation loss at the first, the middle and the last
                  evaluation
    SFT           the answer-only loss at the first and the last evaluation, the format rate at the end
    RL            the reward and the original reward over the last 20 steps, the KL to the SFT policy
                  per answer over the last 20 steps, the readable share of the final answers

The references are in reference_ranges.json beside this file, written by examples/reference_ranges.py
(one command measures them again), each with the settings it was measured with, its seeds, the commit,
the machine and the date. A run is compared with the reference of its own settings: every setting but
those that change no figure's distribution (``RUN_ONLY``: the seed, the run's name and folder, progress,
the kernels' form, ...). A figure is "within the range" when it lies between the lowest and the highest
value of the reference's seeds.
"""
import json
from pathlib import Path

RANGES_FILE = Path(__file__).with_name("reference_ranges.json")
LAST_STEPS = 20  # RL figures: the mean over the stage's last steps

# settings that change no figure's distribution: a run that differs from a reference only in these is compared
RUN_ONLY = frozenset({"preset", "name", "runs_dir", "resume", "seed", "progress", "checkpoint_every", "device",
                      "kernels", "lab_dir", "lab_steps", "compile", "rl_windows_per_pass"})

# the references examples/reference_ranges.py measures by name: (preset, backend, settings over the preset)
BUILT_IN = {
    "quick-numpy": ("quick", "numpy", {}),
    "quick-torch": ("quick", "torch", {}),
    "seed-torch": ("seed", "torch", {"data": "embedded"}),
}

STAGE_NAMES = {"pretrain": "pretraining", "sft": "SFT", "rl": "RL"}
NAMES = {"train_loss": "loss", "val_loss": "validation loss", "answer_loss": "answer-only loss",
         "format_rate": "format rate", "reward_mean": "reward", "original_reward_mean": "original reward",
         "kl_per_answer": "KL per answer", "readable_frac": "readable share"}


# ---------------------------------------------------------------------------- a run's figures
def _figure(stage, name, value, where, kind):
    """One figure: its label ("pretraining: validation loss at step 150"), its kind (the same figure of a
    run of another length: "pretraining: validation loss, first evaluation") and its value."""
    label = f"{STAGE_NAMES[stage]}: {NAMES[name]}"
    return {"label": f"{label} {where}".strip(), "kind": f"{label}{kind}", "value": float(value)}


def _by_step(records, stage, name, summary=False):
    """{step: value} of one figure in one stage (the last record of a step counts: a resumed stage logs
    its steps again); summary=True: the end-of-stage evaluation instead of the records during training."""
    return {r["step"]: r[name] for r in records
            if r["stage"] == stage and name in r and bool(r.get("summary")) == summary}


def run_figures(records):
    """{key: {"label", "kind", "value"}} of the figures above, for the stages the records hold."""
    figures = {}
    first_steps = _by_step(records, "pretrain", "train_loss")
    if 1 in first_steps:
        figures["pretrain.train_loss@1"] = _figure("pretrain", "train_loss", first_steps[1], "at step 1", " at step 1")
    for stage, name, picks in (("pretrain", "val_loss", ("first", "middle", "last")),
                               ("sft", "answer_loss", ("first", "last"))):
        evaluations = sorted(_by_step(records, stage, name).items())
        index = {"first": 0, "middle": (len(evaluations) - 1) // 2, "last": len(evaluations) - 1}
        for pick in picks if evaluations else ():
            step, value = evaluations[index[pick]]
            figures.setdefault(f"{stage}.{name}@{step}",
                               _figure(stage, name, value, f"at step {step}", f", {pick} evaluation"))
    for stage, name in (("sft", "format_rate"), ("rl", "readable_frac")):
        at_end = _by_step(records, stage, name, summary=True)
        if at_end:
            figures[f"{stage}.{name}"] = _figure(stage, name, at_end[max(at_end)], "at the end", " at the end")
    for name in ("reward_mean", "original_reward_mean", "kl_per_answer"):
        steps = sorted(_by_step(records, "rl", name).items())[-LAST_STEPS:]
        if steps:
            where = f"over the last {len(steps)} steps"
            figures[f"rl.{name}.last"] = _figure("rl", name, sum(v for _, v in steps) / len(steps), where,
                                                 f" over the last {LAST_STEPS} steps")
    return figures


# ---------------------------------------------------------------------------- the reference of a run
def settings_key(settings):
    """The settings that decide a run's figures (a dict of PipelineSettings without RUN_ONLY)."""
    return {name: value for name, value in settings.items() if name not in RUN_ONLY}


def load_references(path=None):
    """The references of the ranges file (default RANGES_FILE; [] when there is none)."""
    path = Path(path or RANGES_FILE)
    return json.loads(path.read_text(encoding="utf-8"))["references"] if path.exists() else []


def reference_for(settings, references):
    """The reference measured with these settings, or None. A setting the reference does not record
    (added after it was measured) must keep its default."""
    from .settings import PipelineSettings
    defaults = settings_key(PipelineSettings().__dict__)
    run = settings_key(settings)
    for entry in references:
        measured = entry["settings"]
        if all(run.get(name, defaults.get(name)) == value for name, value in measured.items()) and all(
                value == defaults.get(name) for name, value in run.items() if name not in measured):
            return entry
    return None


def verdicts(figures, entry):
    """(label, value, verdict) of each figure the reference has a range for, in the run's order."""
    seeds = len(entry["seeds"])
    rows = []
    for key, figure in figures.items():
        if key not in entry["figures"]:
            continue
        low, high = entry["figures"][key]["low"], entry["figures"][key]["high"]
        span = f"the range of {seeds} seeds ({low:.3f}-{high:.3f})"
        value = figure["value"]
        verdict = (f"within {span}" if low <= value <= high
                   else f"outside {span}: {'higher' if value > high else 'lower'}")
        rows.append((figure["label"], f"{value:.3f}", verdict))
    return rows


def count_within(rows):
    """(figures within their range, figures compared)."""
    return sum(verdict.startswith("within") for _, _, verdict in rows), len(rows)


def describe(entry):
    """Where and when a reference was measured, in one line."""
    return (f"`{entry['name']}`: {len(entry['seeds'])} seeds ({', '.join(map(str, entry['seeds']))}), "
            f"commit {entry['commit']}, {entry['machine']}, {entry['date']}")


def report_lines(settings, records, references):
    """The report's section: each figure beside its reference range, or why there is none."""
    lines = ["", "## Is this run normal?", ""]
    entry = reference_for(settings, references)
    if entry is None:
        known = ", ".join(f"`{e['name']}`" for e in references) or "none"
        return lines + [f"No reference ranges for these settings (references: {known}; each is a preset as it "
                        "is, on the embedded corpus). `python examples/reference_ranges.py --help` says how to "
                        "measure ranges for other settings.", ""]
    rows = verdicts(run_figures(records), entry)
    within, compared = count_within(rows)
    seeds = len(entry["seeds"])
    lines += [f"{within} of {compared} figures lie within the range of the reference runs of these settings "
              f"(the lowest to the highest value over their seeds; {describe(entry)}). Outside is not wrong by "
              f"itself: a run of the same settings falls outside a figure's range whenever it is the lowest or "
              f"the highest of the {seeds + 1}, which chance alone does 2 times in {seeds + 1}. Look closer when a "
              "figure lies far outside, or many do.", "", "| figure | this run | |", "|---|---|---|"]
    return lines + [f"| {label} | {value} | {verdict} |" for label, value, verdict in rows] + [""]


def summary_line(settings, records, references):
    """One line for the end of a run: how many figures lie within their ranges, or None without a reference."""
    entry = reference_for(settings, references)
    if entry is None:
        return None
    within, compared = count_within(verdicts(run_figures(records), entry))
    return (f"is this run normal? {within} of {compared} figures within the range of {len(entry['seeds'])} seeds "
            f"of the same settings (report.md, \"Is this run normal?\")")


# ---------------------------------------------------------------------------- the README's table
def markdown_table(references):
    """One row per kind of figure, one column per reference: the range of each (its step, if it has one)."""
    kinds = []
    for entry in references:
        for figure in entry["figures"].values():
            if figure["kind"] not in kinds:
                kinds.append(figure["kind"])
    header = "| figure | " + " | ".join(f"{e['name']} ({len(e['seeds'])} seeds)" for e in references) + " |"
    lines = [header, "|---" * (len(references) + 1) + "|"]
    for kind in kinds:
        cells = []
        for entry in references:
            found = [(key, f) for key, f in entry["figures"].items() if f["kind"] == kind]
            if not found:
                cells.append("–")
                continue
            key, figure = found[0]
            step = f" (step {key.split('@')[1]})" if "@" in key and not kind.endswith("step 1") else ""
            cells.append(f"{figure['low']:.3f}-{figure['high']:.3f}{step}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    where = {(e["commit"], e["machine"], e["date"], tuple(e["seeds"])) for e in references}
    if len(where) == 1:  # measured together: said once
        commit, machine, date, seeds = where.pop()
        lines += ["", f"Measured at commit {commit} on {machine}, {date}; seeds {', '.join(map(str, seeds))}."]
    else:
        lines += ["", "Measured: " + "; ".join(describe(entry) for entry in references) + "."]
    return "\n".join(lines) + "\n"

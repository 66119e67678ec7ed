"""Is my run normal? The figures read from a run's records, the reference a run is compared with, the verdicts,
the shipped reference file, the README's table of it, and examples/reference_ranges.py on tiny runs."""
import contextlib
import dataclasses
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt_np.train import ranges
from minigpt_np.train.settings import PipelineSettings, settings_for

ROOT = Path(__file__).resolve().parents[1]


def synthetic_records(rng, pretrain_evals=(150, 300, 450, 600), sft_evals=(40, 80, 120), rl_steps=30):
    """metrics.jsonl records of a made-up run, with random figures."""
    records = [{"stage": "pretrain", "step": s, "train_loss": float(rng.uniform(1, 4))} for s in (1, 10, 20)]
    records += [{"stage": "pretrain", "step": s, "val_loss": float(rng.uniform(1, 3))} for s in pretrain_evals]
    records.append({"stage": "pretrain", "step": 600, "summary": True, "val_loss": float(rng.uniform(1, 3))})
    records += [{"stage": "sft", "step": s, "train_loss": float(rng.uniform(1, 3))} for s in (1, 10)]
    records += [{"stage": "sft", "step": s, "answer_loss": float(rng.uniform(1, 3)),
                 "format_rate": float(rng.uniform())} for s in sft_evals]
    records.append({"stage": "sft", "step": 120, "summary": True, "answer_loss": float(rng.uniform(1, 3)),
                    "format_rate": float(rng.uniform())})
    for step in range(1, rl_steps + 1):
        records.append({"stage": "rl", "step": step, **{name: float(rng.uniform()) for name in (
            "reward_mean", "original_reward_mean", "kl_per_answer", "readable_frac")}})
        if step % 15 == 0:
            records.append({"stage": "rl", "step": step, "heldout_reward_mean": float(rng.uniform())})
    records.append({"stage": "rl", "step": rl_steps, "summary": True, "readable_frac": float(rng.uniform()),
                    "reward_mean": float(rng.uniform())})
    return records


def test_the_figures_are_read_from_the_records_where_each_one_says():
    records = synthetic_records(np.random.default_rng(0))
    figures = ranges.run_figures(records)

    def find(stage, name, step=None, summary=False):
        return [r[name] for r in records if r["stage"] == stage and name in r and bool(r.get("summary")) == summary
                and (step is None or r["step"] == step)]

    assert figures["pretrain.train_loss@1"]["value"] == find("pretrain", "train_loss", 1)[0]
    for step in (150, 300, 600):  # first, middle ((4 - 1) // 2 = index 1) and last evaluation
        assert figures[f"pretrain.val_loss@{step}"]["value"] == find("pretrain", "val_loss", step)[0]
    assert "pretrain.val_loss@450" not in figures
    assert figures["pretrain.val_loss@150"]["label"] == "pretraining: validation loss at step 150"
    assert figures["pretrain.val_loss@150"]["kind"] == "pretraining: validation loss, first evaluation"
    assert figures["sft.answer_loss@40"]["value"] == find("sft", "answer_loss", 40)[0]
    assert figures["sft.answer_loss@120"]["value"] == find("sft", "answer_loss", 120)[0]
    assert figures["sft.format_rate"]["value"] == find("sft", "format_rate", summary=True)[0]
    rl_steps = [r for r in records if r["stage"] == "rl" and "reward_mean" in r and not r.get("summary")]
    last = rl_steps[-ranges.LAST_STEPS:]
    assert len(last) == ranges.LAST_STEPS and last[0]["step"] == 11
    for name in ("reward_mean", "original_reward_mean", "kl_per_answer"):
        assert figures[f"rl.{name}.last"]["value"] == pytest.approx(np.mean([r[name] for r in last]), abs=1e-15)
    assert figures["rl.readable_frac"]["value"] == find("rl", "readable_frac", summary=True)[0]


def test_a_step_logged_twice_after_a_resume_counts_once_and_a_missing_stage_gives_no_figures():
    rng = np.random.default_rng(1)
    records = synthetic_records(rng)
    resumed = [dict(r, reward_mean=r["reward_mean"] + 100) for r in records
               if r["stage"] == "rl" and r["step"] == 25 and "reward_mean" in r and not r.get("summary")]
    records += resumed  # the resumed run logged step 25 again: the later record counts
    figures = ranges.run_figures(records)
    last = {r["step"]: r["reward_mean"] for r in records if r["stage"] == "rl" and "reward_mean" in r
            and not r.get("summary")}
    assert figures["rl.reward_mean.last"]["value"] == pytest.approx(np.mean([last[s] for s in range(11, 31)]))
    pretrain_only = [r for r in records if r["stage"] == "pretrain"]
    assert all(key.startswith("pretrain.") for key in ranges.run_figures(pretrain_only))


def reference(settings, values_by_key, name="test"):
    return {"name": name, "settings": ranges.settings_key(dataclasses.asdict(settings)), "seeds": [0, 1, 2, 3, 4],
            "commit": "c", "machine": "m", "date": "d", "command": "x",
            "figures": {key: {"label": key, "kind": key, "values": values, "low": min(values), "high": max(values)}
                        for key, values in values_by_key.items()}}


def test_a_run_is_compared_with_the_reference_of_its_settings_whatever_its_seed_name_or_folder():
    quick = settings_for("quick", backend="numpy")
    references = [reference(quick, {}, "quick-numpy"), reference(settings_for("quick", backend="torch"), {}, "qt")]
    same = dataclasses.asdict(settings_for("quick", backend="numpy", seed=7, name="mine", runs_dir="elsewhere",
                                           progress=False, resume=True, kernels="plain"))
    assert ranges.reference_for(same, references)["name"] == "quick-numpy"
    for other in (dict(pretrain_steps=601), dict(data="wikitext"), dict(rl_lr=2e-4), dict(dtype="float64")):
        changed = dataclasses.asdict(settings_for("quick", backend="numpy", **other))
        assert ranges.reference_for(changed, references) is None, other
    # a setting the reference file does not know yet: matches when the run keeps its default
    older = [dict(references[0], settings={k: v for k, v in references[0]["settings"].items() if k != "rl_lr"})]
    assert ranges.reference_for(dataclasses.asdict(settings_for("quick", backend="numpy", rl_lr=2e-4)), older)
    assert not ranges.reference_for(dataclasses.asdict(settings_for("quick", backend="numpy", rl_lr=1e-3)), older)
    assert PipelineSettings().rl_lr == 2e-4


def test_each_figure_is_said_within_or_outside_its_range():
    quick = settings_for("quick", backend="numpy")
    entry = reference(quick, {"a": [1.0, 1.2, 1.1, 0.9, 1.05], "b": [0.5, 0.6, 0.55, 0.52, 0.58],
                              "c": [2.0, 2.1, 2.2, 2.3, 2.4]})
    rows = ranges.verdicts({"a": {"label": "figure a", "value": 0.9}, "b": {"label": "figure b", "value": 0.61},
                            "d": {"label": "figure d", "value": 3.0}}, entry)
    assert rows == [
        ("figure a", "0.900", "within the range of 5 seeds (0.900-1.200)"),
        ("figure b", "0.610", "outside the range of 5 seeds (0.500-0.600): higher"),
    ]
    assert ranges.count_within(rows) == (1, 2)


def test_the_report_section_names_the_reference_or_says_there_is_none():
    rng = np.random.default_rng(2)
    records = synthetic_records(rng)
    settings = settings_for("quick", backend="numpy")
    figures = ranges.run_figures(records)
    entry = reference(settings, {key: [figure["value"]] * 5 for key, figure in figures.items()}, "quick-numpy")
    lines = "\n".join(ranges.report_lines(dataclasses.asdict(settings), records, [entry]))
    assert "## Is this run normal?" in lines and "quick-numpy" in lines
    assert lines.count("within the range of 5 seeds") == len(figures)
    lines = "\n".join(ranges.report_lines(dataclasses.asdict(settings_for("quick", backend="numpy", rl_steps=31)),
                                          records, [entry]))
    assert "No reference ranges for these settings" in lines and "quick-numpy" in lines


def test_the_shipped_references_hold_five_seeds_each_with_where_and_when_they_were_measured():
    references = ranges.load_references()
    names = {entry["name"] for entry in references}
    assert {"quick-numpy", "quick-torch", "seed-torch"} <= names
    for entry in references:
        assert len(entry["seeds"]) >= 5 and len(set(entry["seeds"])) == len(entry["seeds"])
        assert entry["commit"] and entry["machine"] and re.match(r"\d{4}-\d\d-\d\d", entry["date"])
        assert entry["figures"]
        for key, figure in entry["figures"].items():
            assert len(figure["values"]) == len(entry["seeds"]), key
            assert (figure["low"], figure["high"]) == (min(figure["values"]), max(figure["values"])), key
    for entry in references:
        if entry["name"] in ranges.BUILT_IN:  # measured with the preset as it is now: a run of it finds its reference
            preset, backend, overrides = ranges.BUILT_IN[entry["name"]]
            run = dataclasses.asdict(settings_for(preset, backend=backend, **overrides))
            assert ranges.reference_for(run, [entry]) is entry, (
                f"the {preset} preset changed since its ranges were measured: "
                f"python examples/reference_ranges.py --only {entry['name']}")


def test_the_readme_table_of_ranges_is_what_the_script_prints_from_the_shipped_file():
    printed = subprocess.run([sys.executable, str(ROOT / "examples" / "reference_ranges.py"), "--markdown"],
                             capture_output=True, text=True, check=True).stdout
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- reference_ranges.py --markdown: begin -->\n", "<!-- reference_ranges.py --markdown: end -->"
    assert readme[readme.index(begin) + len(begin):readme.index(end)] == printed
    assert "| figure |" in printed and "quick-numpy (5 seeds)" in printed


def script(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "examples" / "reference_ranges.py"), *args],
                          capture_output=True, text=True, cwd=cwd)


TINY = ["--set", "d_model=8", "--set", "n_heads=2", "--set", "context_length=16", "--set", "batch_size=2",
        "--set", "pretrain_steps=4", "--set", "pretrain_eval_every=2", "--set", "sft_steps=2",
        "--set", "sft_eval_every=1", "--set", "rl_steps=3", "--set", "rl_samples=2", "--set", "rl_eval_every=3",
        "--set", "eval_windows=2", "--set", "max_new_tokens=4"]


@pytest.mark.slow  # about 20 s: two tiny runs of two references, twice
def test_the_script_measures_ranges_over_seeds_and_a_run_of_those_settings_is_compared_with_them(tmp_path):
    out = tmp_path / "ranges.json"
    result = script("--only", "quick-numpy", "--seeds", "2", "--jobs", "2", "--file", str(out),
                    "--runs-dir", str(tmp_path / "runs"), *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "quick-numpy" in result.stdout and "seed 1" in result.stdout
    [entry] = json.loads(out.read_text())["references"]
    assert entry["seeds"] == [0, 1] and entry["settings"]["pretrain_steps"] == 4
    for seed in (0, 1):  # each value is the figure of its own run, read again here from its records
        records = [json.loads(line) for line in
                   (tmp_path / "runs" / f"{entry['name']}-seed{seed}" / "metrics.jsonl").read_text().splitlines()]
        for key, figure in ranges.run_figures(records).items():
            assert entry["figures"][key]["values"][seed] == figure["value"], key
    run_again_with_those_settings(tmp_path, out, entry)
    again = script("--only", "quick-torch", "--seeds", "2", "--file", str(out), "--runs-dir", str(tmp_path / "r2"),
                   *TINY)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [e["name"] for e in json.loads(out.read_text())["references"]] == [entry["name"],
                                                                              entry["name"].replace("numpy", "torch")]


def run_again_with_those_settings(tmp_path, ranges_file, entry, monkeypatch=None):
    """A run of the reference's settings with another seed: its summary line and its report compare it."""
    sys.path.insert(0, str(ROOT / "examples"))
    import run_all
    argv = ["--backend", "numpy", "--preset", "quick", "--seed", "9", "--name", "again", "--runs-dir",
            str(tmp_path / "again"), "--no-progress"]
    for item in TINY[1::2]:
        name, value = item.split("=")
        argv += ["--" + name.replace("_", "-"), value]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ranges, "RANGES_FILE", ranges_file)
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            assert run_all.main(argv) == 0
    compared = len([key for key in entry["figures"]])
    assert re.search(rf"is this run normal\? \d+ of {compared} figures within the range of 2 seeds", output.getvalue())
    report = (tmp_path / "again" / "again" / "report.md").read_text()
    assert "## Is this run normal?" in report and entry["name"] in report
    assert report.count("the range of 2 seeds") == compared


@pytest.mark.parametrize("args, message", [
    (["--only", "nothing"], "error: unknown reference 'nothing'"),
    (["--seeds", "1"], "error: --seeds"),
    (["--set", "pretrain_steps"], "error: --set pretrain_steps: expected SETTING=VALUE"),
    (["--set", "pretrain_steps=-3"], "error: "),
    (["--set", "colour=red"], "error: "),
    (["--set", "progress=maybe"], "error: --set progress=maybe: progress is true or false"),
    (["--markdown", "--file", "/nonexistent/ranges.json"], "error: "),
])
def test_a_refused_input_is_one_error_line_and_exit_2(tmp_path, args, message):
    result = script(*args, "--runs-dir", str(tmp_path / "runs"), *([] if "--file" in args else
                                                                   ["--file", str(tmp_path / "r.json")]))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "runs").exists()

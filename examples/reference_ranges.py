"""Is my run normal? Measure the reference ranges: each built-in reference's pipeline run over several seeds,
the figures of every run, and their lowest and highest values, written to the ranges file that every run's
report compares itself with (minigpt_np/train/reference_ranges.json).

    python examples/reference_ranges.py                        # all of them, 5 seeds each (hours on 2 cores)
    python examples/reference_ranges.py --only quick-numpy     # one of them
    python examples/reference_ranges.py --jobs 2               # two runs at a time, the cores shared between them
    python examples/reference_ranges.py --markdown             # the README's table, from the ranges file

The built-in references: quick-numpy and quick-torch (the quick preset), seed-torch (the seed preset on the
embedded corpus). --set SETTING=VALUE changes a setting of every run (the reference is then named after it):
ranges for the settings of your own runs. Each run is a folder under --runs-dir, kept: a measurement that was
stopped continues its runs where they stopped when started again; each reference is written to the file as
soon as its seeds are done.
"""
import argparse
import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from minigpt_np.train import ranges  # noqa: E402
from minigpt_np.train.checkpoint import write_durably  # noqa: E402
from minigpt_np.train.settings import PipelineSettings, settings_for  # noqa: E402
from minigpt_np.train.validation import OneLineParser  # noqa: E402


def parse_args(argv):
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=list(ranges.BUILT_IN), metavar="NAME",
                        help=f"the references to measure (default all: {', '.join(ranges.BUILT_IN)})")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per reference, 0 .. N-1 (default 5; at least 2)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                        help="a setting of examples/run_all.py for every run (repeatable), e.g. rl_steps=60")
    parser.add_argument("--file", default=str(ranges.RANGES_FILE), help="the ranges file (default: the package's)")
    parser.add_argument("--runs-dir", default="runs/reference-ranges", help="where the runs' folders go")
    parser.add_argument("--markdown", action="store_true", help="print the README's table from --file and stop")
    args = parser.parse_args(argv)
    unknown = [name for name in args.only if name not in ranges.BUILT_IN]
    if unknown:
        parser.error(f"unknown reference {unknown[0]!r}; choose from {', '.join(ranges.BUILT_IN)}")
    if not 2 <= args.seeds <= 1000:
        parser.error(f"--seeds: must be an integer >= 2 and <= 1000, got {args.seeds}")
    if not 1 <= args.jobs <= 64:
        parser.error(f"--jobs: must be an integer >= 1 and <= 64, got {args.jobs}")
    args.overrides = parse_sets(parser, args.set)
    return args


def parse_sets(parser, items):
    """{setting: value} of the --set items, each checked as examples/run_all.py checks its flag."""
    import run_all
    fields = {spec.name: spec for spec in dataclasses.fields(PipelineSettings)}
    flags = []
    for item in items:
        name, equals, value = item.partition("=")
        if not equals:
            parser.error(f"--set {item}: expected SETTING=VALUE, e.g. rl_steps=60")
        if name not in fields or name in ("backend", "preset", "seed", "name", "runs_dir", "resume"):
            parser.error(f"--set {item}: not a setting this script can change")
        flag = "--" + name.replace("_", "-")
        if fields[name].type in (bool, "bool"):
            if value.lower() not in ("true", "false"):
                parser.error(f"--set {item}: {name} is true or false")
            flags.append(flag if value.lower() == "true" else "--no-" + flag[2:])
        else:
            flags += [flag, value]
    parsed = vars(run_all.build_parser().parse_args(flags))  # a bad value: its one error line, exit 2
    return {name: value for name, value in parsed.items() if value is not None}


def custom_suffix(overrides):
    """A name's ending for runs with --set settings: the settings' short hash ("" without any)."""
    if not overrides:
        return ""
    return "-set-" + hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]


def run_command(name, preset, backend, overrides, seed, runs_dir):
    """The run_all.py command of one seed's run (--resume when its folder holds a run already)."""
    command = [sys.executable, str(ROOT / "examples" / "run_all.py"), "--backend", backend, "--preset", preset,
               "--seed", str(seed), "--name", f"{name}-seed{seed}", "--runs-dir", str(runs_dir), "--no-progress"]
    for setting, value in overrides.items():
        flag = "--" + setting.replace("_", "-")
        command += ([flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)])
    if (Path(runs_dir) / f"{name}-seed{seed}" / "settings.json").exists():
        command.append("--resume")
    return command


def measure_one(command, folder, threads):
    """Run one seed's pipeline (its output to <folder>.log); returns its figures and seconds."""
    started = time.perf_counter()
    log = Path(f"{folder}.log")
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=ROOT)
    if result.returncode:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{folder.name} stopped with exit status {result.returncode}: {tail[0]} (see {log})")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return ranges.run_figures(records), time.perf_counter() - started


def measure(plans, args, path):
    """Every reference's runs over the seeds, --jobs at a time (the longest references first); as soon as the
    runs of a reference are done, the range of each figure goes into the ranges file."""
    runs_dir = Path(args.runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    started = {"commit": commit(), "date": datetime.date.today().isoformat()}  # the code the runs start with
    results = {name: {} for name, *_ in plans}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(measure_one, run_command(name, preset, backend, overrides, seed, runs_dir),
                               runs_dir / f"{name}-seed{seed}", threads): (name, seed)
                   for name, preset, backend, overrides in sorted(plans, key=lambda plan: plan[1] != "seed")
                   for seed in seeds}
        for future in concurrent.futures.as_completed(futures):
            name, seed = futures[future]
            try:
                results[name][seed], seconds = future.result()
            except RuntimeError:
                for waiting in futures:  # the runs not started yet are not started; those running finish
                    waiting.cancel()
                raise
            print(f"{name}: seed {seed} done in {seconds:.0f} s ({len(results[name])} of {len(seeds)})", flush=True)
            if len(results[name]) == len(seeds):
                plan = next(plan for plan in plans if plan[0] == name)
                write_reference(path, reference_entry(*plan, results[name], seeds, threads, args, started))
                print(f"{name}: written to {path}", flush=True)


def reference_entry(name, preset, backend, overrides, results, seeds, threads, args, started):
    """The ranges file's record of one reference: its settings, seeds, where and when, each figure's range."""
    keys = [key for key in results[seeds[0]] if all(key in results[seed] for seed in seeds)]
    figures = {}
    for key in keys:
        values = [results[seed][key]["value"] for seed in seeds]
        figures[key] = {"label": results[seeds[0]][key]["label"], "kind": results[seeds[0]][key]["kind"],
                        "values": values, "low": min(values), "high": max(values)}
    settings = settings_for(preset, backend=backend, **overrides)
    return {"name": name, "preset": preset, "backend": backend, "set": args.overrides,
            "settings": ranges.settings_key(dataclasses.asdict(settings)), "seeds": seeds,
            "commit": started["commit"],
            "machine": f"{machine()}; {threads} thread{'s' * (threads > 1)} per run, "
                       f"{args.jobs} run{'s' * (args.jobs > 1)} at a time",
            "date": started["date"],
            "command": "python examples/reference_ranges.py " + " ".join(sys.argv[1:]), "figures": figures}


def commit():
    """The checkout's commit, marked when it has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()
        return head + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def machine():
    import torch
    return (f"{platform.system()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}")


def write_reference(path, entry):
    """Put the reference into the ranges file in place of one of its name (the others kept), atomically."""
    references = [e for e in ranges.load_references(path) if e["name"] != entry["name"]]
    order = list(ranges.BUILT_IN)
    references.append(entry)
    references.sort(key=lambda e: (order.index(e["name"]) if e["name"] in order else len(order), e["name"]))
    text = json.dumps({"about": "reference ranges of examples/reference_ranges.py: each figure over the seeds",
                       "references": references}, indent=1)
    write_durably(path, (text + "\n").encode("utf-8"))


def main(argv=None):
    args = parse_args(argv)
    path = Path(args.file)
    try:
        if args.markdown:
            if not path.is_file():
                raise ValueError(f"--file: {path} is not a ranges file")
            print(ranges.markdown_table(ranges.load_references(path)), end="")
            return 0
        if not path.parent.is_dir():
            raise ValueError(f"--file: the folder {path.parent} does not exist")
        plans = []
        for name in args.only:
            preset, backend, overrides = ranges.BUILT_IN[name]
            overrides = {**overrides, **args.overrides}
            settings_for(preset, backend=backend, **overrides)  # a refused combination: refused before any run
            plans.append((name + custom_suffix(args.overrides), preset, backend, overrides))
    except (ValueError, OSError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, preset, backend, overrides in plans:
        print(f"{name}: {args.seeds} runs of the {preset} preset on {backend}", flush=True)
    try:
        measure(plans, args, path)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the tests share: the tiny pipeline, the example scripts loaded as modules, and run folders read back.

TINY is a pipeline small enough to run every stage in about a second (a 16-wide model, a handful of
steps); a test changes what it needs with ``{**TINY, "rl_steps": 3}``. ``flags`` writes settings as
run_all.py's command line, for the tests that run it as a program.
"""
import importlib.util
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# WikiText-2 raw as split files (valid.txt, test.txt, and train.txt if there is one), for the tests that read
# it: $MINIGPT_WIKITEXT_DIR, or a data folder beside the checkout; those tests skip, saying so, without it.
WIKITEXT_DIR = Path(os.environ.get("MINIGPT_WIKITEXT_DIR", ROOT.parent / "shared" / "data" / "wikitext-2-raw"))

TINY = dict(d_model=16, n_heads=2, context_length=32, batch_size=4, pretrain_steps=8, pretrain_eval_every=4,
            sft_steps=4, sft_eval_every=2, rl_steps=2, rl_eval_every=2, rl_samples=2, max_new_tokens=12,
            eval_windows=4, progress=False)


def flags(settings):
    """Pipeline settings as run_all.py's flags: {"d_model": 16, "progress": False} -> --d-model 16 --no-progress."""
    out = []
    for name, value in settings.items():
        flag = name.replace("_", "-")
        out += ([f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)])
    return out


def load_cli(script="run_all"):
    """An example script (examples/<script>.py) as a module, to call its main() in this process."""
    spec = importlib.util.spec_from_file_location(script, ROOT / "examples" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def records(folder, name="metrics.jsonl", without=()):
    """The records of a run's JSON-lines file, each without the keys in `without` (e.g. timings)."""
    return [{k: v for k, v in json.loads(line).items() if k not in without}
            for line in (Path(folder) / name).read_text().splitlines()]

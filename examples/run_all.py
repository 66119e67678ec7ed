"""The whole pipeline in one command: pretraining, SFT and RL, then a report.

    python examples/run_all.py --backend torch --preset quick
    python examples/run_all.py --backend numpy --preset quick --data wikitext --data-dir path/to/wikitext-2-raw

Outputs go to runs/<name>/: a checkpoint folder per stage, metrics.jsonl, PNG plots and report.md.
Ctrl-C saves the current stage; --resume continues it.

Data-parallel on N processes (the torch backend; gloo on the CPU, NCCL with --device cuda, a GPU per rank):
    torchrun --standalone --nproc-per-node=N examples/run_all.py --backend torch ...
--batch-size stays the global batch; rank 0 writes every file and prints.
"""
import argparse
import dataclasses
import os
import sys
import textwrap

from minigpt_np.train.checkpoint import CheckpointWriteError
from minigpt_np.train.backend import leave_ranks
from minigpt_np.train.metrics import MetricsLog
from minigpt_np.train.pipeline import run_pipeline
from minigpt_np.train.ranges import load_references, summary_line
from minigpt_np.train.settings import PRESETS, PipelineSettings, settings_for
from minigpt_np.train.report import SHORT_COLUMNS, stage_problems, summary_rows, text_table
from minigpt_np.train.runner import StageInterrupted, TrainingDiverged
from minigpt_np.train.validation import OneLineParser


def build_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = PipelineSettings()
    for spec in dataclasses.fields(PipelineSettings):
        flag = "--" + spec.name.replace("_", "-")
        default = getattr(defaults, spec.name)
        by_preset = ", ".join(f"{name}: {preset[spec.name]}" for name, preset in PRESETS.items() if spec.name in preset)
        valid = f"; {spec.metadata['range'].describe()}" if spec.metadata["range"] else ""
        help_text = (f"{spec.metadata['help']} (default {default!r}" + (f"; {by_preset}" if by_preset else "")
                     + valid + ")")
        if spec.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(spec.type if isinstance(spec.type, str)
                                                               else spec.type.__name__, str)
            parser.add_argument(flag, type=kind, default=None, choices=spec.metadata.get("choices"), help=help_text)
    return parser


def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    preset = args.pop("preset") or "seed"
    explicit = {name: value for name, value in args.items() if value is not None}
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    tell = (lambda message: print(message, file=sys.stderr)) if rank == 0 else (lambda message: None)
    try:
        settings = settings_for(preset, **explicit)
        summaries, folder = run_pipeline(settings, notify=print if rank == 0 else lambda message: None)
        leave_ranks()
    except StageInterrupted as stop:  # under torchrun every rank stops at the same step: all of them get here
        leave_ranks()
        tell(f"\n{stop}")
        return 130
    except KeyboardInterrupt:  # before a stage began, or a second Ctrl-C during a save
        tell("\nerror: interrupted; the checkpoints saved before are kept (--resume continues from them)")
        return 130
    except (TrainingDiverged, CheckpointWriteError) as error:
        tell(f"\nerror: {error}")
        return 1
    except (ValueError, OSError) as error:
        tell(f"error: {error}")
        return 2
    except RuntimeError as error:  # under torchrun: a collective that failed, because another rank stopped
        if world_size == 1:
            raise
        print(f"error: rank {rank}: stopped, another rank stopped first ({str(error).splitlines()[0][:160]}); "
              f"the last checkpoint is kept", file=sys.stderr)
        return 1
    if rank:
        return 0
    print()
    print(text_table(summary_rows(summaries, SHORT_COLUMNS)))
    problems = stage_problems(summaries)
    if problems:
        print("\nstages that did not do their job:")
        for problem in problems:
            print(textwrap.fill(problem, 100, initial_indent="  ", subsequent_indent="    "))
    normal = summary_line(dataclasses.asdict(settings), MetricsLog(folder / "metrics.jsonl", writes=False).records, load_references())
    if normal:
        print(f"\n{normal}")
    print(f"\nfull report: {folder / 'report.md'}")
    return 0


def exit_process(code):
    """Exit with code. Under torchrun, without the interpreter's teardown: every file is written and closed by
    now, and a C++ thread that torch.distributed leaves behind (even after destroy_process_group) can abort
    the process while Python shuts down ("terminate called without an active exception"), now and then."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(main())

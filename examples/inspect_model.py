"""Look inside a checkpoint: attention heat maps, each character's probability, the 5 likeliest next characters;
and, given an SFT checkpoint to compare with, which characters of an answer RL made more likely.

    python examples/inspect_model.py runs/quick-torch/rl --text "Instruction: Give a creative tagline for coffee before practice.
    Answer: Coffee first!"
    python examples/inspect_model.py runs/quick-torch/rl --compare runs/quick-torch/sft --answer " Coffee first!"

Writes to --out (default: <checkpoint>/inspect): attention.png, probabilities.png, inspect.md (the table of the
likeliest next characters) and, with --compare, rl_change.png. Any checkpoint, from either backend.
"""
import argparse
import sys
from pathlib import Path

from minigpt_np.train.data import format_prompt
from minigpt_np.train.inspection import inspect_checkpoint, rl_change
from minigpt_np.train.pipeline import RL_INSTRUCTION
from minigpt_np.train.validation import OneLineParser


def main(argv=None):
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a stage folder (runs/<run>/<stage>)")
    parser.add_argument("--text", default=format_prompt(RL_INSTRUCTION) + " Coffee first, then the field!",
                        help="the text to look at (its last context-length characters)")
    parser.add_argument("--compare", type=Path, help="an SFT checkpoint: colour --answer by the change RL made")
    parser.add_argument("--answer", default=" Coffee first, then the field!", help="the answer for --compare")
    parser.add_argument("--instruction", default=RL_INSTRUCTION, help="the instruction --answer answers")
    parser.add_argument("--out", type=Path, help="output folder (default <checkpoint>/inspect)")
    args = parser.parse_args(argv)
    for folder in [args.checkpoint] + ([args.compare] if args.compare else []):
        if not (folder / "checkpoint.json").is_file():
            print(f"error: {folder}: no checkpoint.json (a stage folder such as runs/<run>/sft)", file=sys.stderr)
            return 2
    if not args.text:
        print("error: --text: empty", file=sys.stderr)
        return 2
    out = args.out or args.checkpoint / "inspect"
    try:
        lines = inspect_checkpoint(args.checkpoint, args.text, out, name="")
        if args.compare:
            before, after = rl_change(args.compare, args.checkpoint, format_prompt(args.instruction), args.answer,
                                      out / "rl_change.png")
            print(f"log p of the answer (nats, with its newline): {before.sum():.2f} before, {after.sum():.2f} after")
        (out / "inspect.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    except ValueError as error:  # e.g. a character outside the checkpoint's vocabulary
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: --out: cannot write to {out}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(f"written: {', '.join(sorted(p.name for p in out.iterdir()))} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

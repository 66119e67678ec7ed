"""How likely is an empty answer? The probability that the end-of-answer newline is the very first
character after "Answer:", for each checkpoint and instruction, with the prompt cropped to the context
as sampling crops it (temperature 1, no top-k).

    python examples/empty_answers.py runs/seed-torch/pretrain runs/seed-torch/sft
    python examples/empty_answers.py runs/seed-torch/sft --instruction "Say hi." --instruction "Name a fruit."

A prompt longer than the context shows the model its last context_length characters only; if SFT trained
the answer's characters in other windows than these, such prompts can end their answer at once.
"""
import argparse
import sys

from minigpt_np.functional import softmax_array
from minigpt_np.train.backend import get_backend
from minigpt_np.train.checkpoint import CheckpointError, load_checkpoint
from minigpt_np.train.data import format_prompt
from minigpt_np.train.pipeline import RL_INSTRUCTION
from minigpt_np.train.validation import OneLineParser

INSTRUCTIONS = [RL_INSTRUCTION, "Write a short tagline about a cup of coffee.",
                "Write a short tagline for a cycling club.", "Give a motto for a student before exams."]


def empty_answer_probability(backend, model, tokenizer, context_length, instruction):
    """P(newline | the last context_length characters of the prompt)."""
    ids = tokenizer.encode(format_prompt(instruction))[-context_length:]
    logits = backend.predict(model, ids[None], 1)[0, -1].astype("float64")
    return float(softmax_array(logits)[tokenizer.index["\n"]])


def main(argv=None):
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="stage folders of runs, e.g. runs/seed-torch/sft")
    parser.add_argument("--instruction", action="append", help="an instruction (repeatable; default: the RL "
                        "instruction and three of the SFT pairs', of prompt lengths around the context)")
    args = parser.parse_args(argv)
    instructions = args.instruction or INSTRUCTIONS
    backend = get_backend("numpy")
    try:
        checkpoints = [load_checkpoint(folder) for folder in args.checkpoints]
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("P(the answer is empty: newline first) per checkpoint and instruction (prompt length in characters)\n")
    print("| checkpoint | context | " + " | ".join(f"{i} ({len(format_prompt(i))})" for i in instructions) + " |")
    print("|---|---|" + "---|" * len(instructions))
    for folder, checkpoint in zip(args.checkpoints, checkpoints):
        model = backend.create_model(checkpoint.config, seed=0)
        backend.load_state_dict(model, checkpoint.weights)
        backend.set_training(model, False)
        T = checkpoint.config.context_length
        row = [empty_answer_probability(backend, model, checkpoint.tokenizer, T, i) for i in instructions]
        print(f"| {folder} | {T} | " + " | ".join(f"{p:.3f}" for p in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

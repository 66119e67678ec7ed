"""Generate text from any stage's checkpoint, with either backend.

    python examples/sample.py runs/quick-torch/sft --instruction "Give one tip for a first race."
    python examples/sample.py runs/quick-numpy/pretrain --prompt "The coach" --backend torch --samples 3
"""
import argparse
import sys
from functools import partial

import numpy as np

from minigpt_np.train.backend import get_backend
from minigpt_np.train.checkpoint import CheckpointError, load_checkpoint
from minigpt_np.train.data import format_prompt
from minigpt_np.train.sampling import generate
from minigpt_np.train.validation import SEED, OneLineParser, Range, check_values, count

RANGES = {"samples": count(1, 10**4), "temperature": Range(float, 0.0, 100.0), "top_k": count(1, 10**6),
          "max_new_tokens": count(1, 10**5), "seed": SEED}  # temperature 0: greedy


def main(argv=None):
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a stage folder of a run, e.g. runs/quick-torch/rl")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--instruction", help="wrapped as 'Instruction: ...\\nAnswer:'; sampling stops at the newline")
    text.add_argument("--prompt", default="The coach", help="raw text to continue (default 'The coach')")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "torch"), help="tensor library (default numpy)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--kernels", choices=("fast", "plain"),
                        help="numpy backend: the form of the model's ops (default fast)")
    parser.add_argument("--samples", type=int, default=3, help="how many samples (default 3)")
    parser.add_argument("--temperature", type=float, default=0.6, help="0 for greedy (default 0.6)")
    parser.add_argument("--top-k", type=int, default=10, help="sample among the k likeliest characters (default 10)")
    parser.add_argument("--max-new-tokens", type=int, default=120, help="longest sample (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    try:
        check_values(vars(args), RANGES)
        checkpoint = load_checkpoint(args.checkpoint)
        backend = get_backend(args.backend, args.device, kernels=args.kernels)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model = backend.create_model(checkpoint.config, seed=0)
    backend.load_state_dict(model, checkpoint.weights)
    backend.set_training(model, False)
    tokenizer = checkpoint.tokenizer
    prompt = format_prompt(args.instruction) if args.instruction else args.prompt
    tokens, lengths, finished = generate(
        partial(backend.predict, model), tokenizer.encode(prompt), args.samples, args.max_new_tokens,
        checkpoint.config.context_length, args.temperature, args.top_k, np.random.default_rng(args.seed),
        tokenizer.index["\n"] if args.instruction else -1)
    print(f"{checkpoint.stage} checkpoint, step {checkpoint.step}, {backend.name} backend")
    for row, length in zip(tokens, lengths):
        print("---")
        print(prompt + tokenizer.decode(row[:length]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

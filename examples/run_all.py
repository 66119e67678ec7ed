"""Train the numpy TinyGPT for a few steps on a short text and print the falling loss.

(The full three-stage pipeline grows here; for now this is the engine's smoke run.)
"""
import argparse
import time

import numpy as np

import minigpt_np
from minigpt_np import functional as F
from minigpt_np.optim import AdamW, clip_grad_norm_

TEXT = (
    "A good practice starts before the first drill. Drink water, stretch slowly, and have a small cup of "
    "coffee an hour before you train. Warm muscles learn faster, and a calm mind remembers the lesson. "
    "After practice, write down one thing that went well and one thing to try tomorrow. "
) * 4


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args()

    chars = sorted(set(TEXT))
    ids = np.array([chars.index(c) for c in TEXT])
    config = minigpt_np.GPTConfig(vocab_size=len(chars), d_model=64, n_layers=2, n_heads=4, context_length=32)
    model = minigpt_np.TinyGPT(config, seed=args.seed)
    optimizer = AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        starts = rng.integers(0, len(ids) - config.context_length - 1, 16)
        windows = np.stack([ids[s:s + config.context_length + 1] for s in starts])
        optimizer.zero_grad()
        loss = F.cross_entropy(model(windows[:, :-1]), windows[:, 1:])
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step == 1 or step % 10 == 0:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()

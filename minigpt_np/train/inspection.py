"""Pictures of the inside of a checkpoint: what each head attends to, how likely each character was, and
which characters RL made more likely.

Any checkpoint (from either backend) loads into the numpy model; the attention weights are those of the
model's own forward: its attention op is wrapped so that the packed q, k, v it is given are kept, and
P = softmax(q k^T / sqrt(D)), the future masked, is computed from them (the numbers the op itself uses).
"""
import math
from pathlib import Path

import numpy as np

from .. import functional
from ..autograd import no_grad
from ..model import TinyGPT
from ..nn import mixed_kernels
from .checkpoint import load_checkpoint
from .data import IGNORE, policy_windows


def load_model(checkpoint_folder):
    """(numpy TinyGPT with the checkpoint's weights in eval mode, its tokenizer, the attention inputs it will keep)."""
    checkpoint = load_checkpoint(checkpoint_folder)
    kept = []

    def attention(qkv, n_heads, *args, **kwargs):
        kept.append((qkv.data.copy(), n_heads))
        return functional.attention(qkv, n_heads, *args, **kwargs)

    model = TinyGPT(checkpoint.config, seed=0, kernels=mixed_kernels(functional, attention=attention))
    model.load_state_dict(checkpoint.weights)
    model.train(False)
    return model, checkpoint.tokenizer, kept


def attention_weights(qkv, n_heads):
    """P (H, T, T) of the first sequence: row t is how position t spreads its attention over 0..t."""
    T, C3 = qkv.shape[1], qkv.shape[2]
    D = C3 // 3 // n_heads
    q, k, _ = qkv[0].reshape(T, 3, n_heads, D).transpose(1, 2, 0, 3)  # 3 x (H, T, D)
    scores = np.where(functional.causal_mask(T), -np.inf, q @ k.swapaxes(-1, -2) / math.sqrt(D))
    return functional.softmax_array(scores)


def inspect_text(checkpoint_folder, text):
    """The text's last context_length characters through the model: {"chars", "attention": [layer] (H, T, T),
    "log_probs" (T - 1,): log p(char t | chars before it), "top": [(char, p)] x 5 after each position}."""
    model, tokenizer, kept = load_model(checkpoint_folder)
    ids = tokenizer.encode(text)[-model.config.context_length:]
    with no_grad():
        logits = model(ids[None]).data[0].astype(np.float64)  # (T, V)
    log_probs = functional.log_softmax_array(logits)
    top = [[(tokenizer.decode([int(i)]), float(np.exp(row[i]))) for i in np.argsort(-row)[:5]] for row in log_probs]
    return {"chars": [tokenizer.decode([int(i)]) for i in ids],
            "attention": [attention_weights(qkv, n_heads) for qkv, n_heads in kept],
            "log_probs": log_probs[np.arange(len(ids) - 1), ids[1:]], "top": top}


def answer_log_probs(checkpoint_folder, prompt, answer):
    """log p of each character of answer (and its closing newline) after prompt, each in the window the
    sampler would show the model (``data.policy_windows``: the last context_length characters before it)."""
    model, tokenizer, _ = load_model(checkpoint_folder)
    prompt_ids, answer_ids = tokenizer.encode(prompt), tokenizer.encode(answer + "\n")
    parts = []
    with no_grad():
        for ids, targets, _ in policy_windows([prompt_ids], answer_ids[None], np.array([len(answer_ids)]),
                                              model.config.context_length):
            log_probs = functional.log_softmax_array(model(ids, last=targets.shape[1]).data.astype(np.float64))
            counted = targets != IGNORE
            parts.append(log_probs[counted, targets[counted]])  # in the answer's order
    return np.concatenate(parts)


def _shown(char):
    return {"\n": "⏎", " ": "␣"}.get(char, char)


def plot_attention(attention, chars, path, title):
    """One heat map per layer and head: row = the position that attends, column = the one attended to."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layers, heads = len(attention), attention[0].shape[0]
    size = max(3.0, 0.1 * len(chars))
    figure, axes = plt.subplots(layers, heads, figsize=(size * heads, size * layers), squeeze=False)
    labels = [_shown(c) for c in chars]
    for layer, weights in enumerate(attention):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(weights[head], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.set_xticks(range(len(chars)), labels if layer == layers - 1 else [], fontsize=6)
            ax.set_yticks(range(len(chars)), labels if head == 0 else [], fontsize=6)
    figure.suptitle(title)
    import warnings
    with warnings.catch_warnings():  # a character the font lacks is drawn as a box
        warnings.simplefilter("ignore", UserWarning)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_coloured_text(chars, values, path, title, cmap="RdYlGn", vmin=0.0, vmax=1.0, label="probability"):
    """The characters in rows of 32, each on a box coloured by its value (None: no colour)."""
    import warnings

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    per_row = 32
    rows = math.ceil(len(chars) / per_row)
    grid = np.full(rows * per_row, np.nan)
    grid[:len(values)] = [np.nan if value is None else value for value in values]
    figure, ax = plt.subplots(figsize=(per_row * 0.32 + 1.5, rows * 0.42 + 1.0))
    colour_map = plt.get_cmap(cmap).with_extremes(bad="white")
    image = ax.imshow(grid.reshape(rows, per_row), cmap=colour_map, vmin=vmin, vmax=vmax, aspect="auto")
    for index, char in enumerate(chars):
        ax.text(index % per_row, index // per_row, _shown(char), ha="center", va="center", fontsize=10,
                family="monospace")
    ax.set_xticks([])
    ax.set_yticks([])
    figure.colorbar(image, ax=ax, label=label, fraction=0.03)
    ax.set_title(title)
    with warnings.catch_warnings():  # a character the font lacks is drawn as a box
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def inspect_checkpoint(checkpoint_folder, text, out_folder, name="inspect"):
    """Write [<name>_]attention.png and [<name>_]probabilities.png; return the top-5 table as markdown lines."""
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    seen = inspect_text(checkpoint_folder, text)
    chars = seen["chars"]
    prefix = f"{name}_" if name else ""
    plot_attention(seen["attention"], chars, out_folder / f"{prefix}attention.png",
                   f"attention weights of {Path(checkpoint_folder).name}")
    plot_coloured_text(chars, [None] + list(np.exp(seen["log_probs"])), out_folder / f"{prefix}probabilities.png",
                       "each character's probability given the characters before it")
    lines = ["| position | character | its probability | the 5 likeliest next characters |", "|---|---|---|---|"]
    for t, char in enumerate(chars):
        p = "–" if t == 0 else f"{math.exp(seen['log_probs'][t - 1]):.3f}"
        top = ", ".join(f"`{_shown(c)}` {q:.2f}" for c, q in seen["top"][t])
        lines.append(f"| {t} | `{_shown(char)}` | {p} | {top} |")
    return lines


def rl_change(sft_folder, rl_folder, prompt, answer, path):
    """The answer scored by both policies, each character coloured by log p_RL - log p_SFT; returns both arrays."""
    before, after = answer_log_probs(sft_folder, prompt, answer), answer_log_probs(rl_folder, prompt, answer)
    change = after - before
    bound = max(1.0, float(np.abs(change).max()))
    plot_coloured_text(list(answer + "\n"), list(change), path, "log p after RL - log p after SFT, per character",
                       cmap="RdBu", vmin=-bound, vmax=bound, label="change in log-probability (nats)")
    return before, after


def report_inspection(folder, summaries, rl_prompt, held_out_pair):
    """The report's look inside the final policy: its best answer to the RL prompt and a held-out pair through
    the RL checkpoint (attention, probabilities), and that answer coloured by what RL changed. Markdown lines."""
    from .data import format_prompt
    folder = Path(folder)
    final = summaries.get("rl", {}).get("final_samples") or []
    if not final or not (folder / "sft" / "checkpoint.json").exists():
        return []
    best = max(final, key=lambda record: record["reward"])["answer"]
    shown = best.strip().replace("`", "'").replace("\n", "⏎")
    table = inspect_checkpoint(folder / "rl", format_prompt(rl_prompt) + best, folder, name="inspect_rl_prompt")
    inspect_checkpoint(folder / "rl", format_prompt(held_out_pair[0]) + " " + held_out_pair[1], folder,
                       name="inspect_held_out")
    before, after = rl_change(folder / "sft", folder / "rl", format_prompt(rl_prompt), best,
                              folder / "inspect_rl_change.png")
    return ["", "## Inside the final policy", "",
            f"Its best answer to the RL prompt, `{shown}`, through the RL checkpoint: the attention weights of "
            "every layer and head (row: the position that attends; column: the one it attends to), and each "
            "character's probability given the characters before it.", "",
            "![attention](inspect_rl_prompt_attention.png)", "", "![probabilities](inspect_rl_prompt_probabilities.png)",
            "", f"The same for a held-out instruction and its written answer (`{held_out_pair[0]}`):", "",
            "![attention](inspect_held_out_attention.png)", "", "![probabilities](inspect_held_out_probabilities.png)",
            "", f"What RL changed: the answer's log-probability per character under the RL policy minus under the SFT "
            f"policy (in all {before.sum():.2f} -> {after.sum():.2f} nats, the closing newline included):", "",
            "![change](inspect_rl_change.png)", "", "The 5 likeliest next characters at each position of the RL "
            "prompt and its answer:", "", *table]

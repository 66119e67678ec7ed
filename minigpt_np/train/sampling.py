"""Sampling from the model: temperature, top-k, a context crop, and inverse-CDF draws.

Both backends sample here, in numpy, from the logits they return: given the same uniforms they
draw the same tokens, which makes sampling itself parity-testable.
"""
import numpy as np

from ..functional import softmax_array


def top_k_mask(logits, k):
    """True where a logit is below the k-th largest of its row: those tokens can never be sampled.
    Ties with the k-th largest are kept. k None (or >= V) keeps everything."""
    if k is None or k >= logits.shape[-1]:
        return np.zeros(logits.shape, dtype=bool)
    kth_largest = np.partition(logits, -k, axis=-1)[..., -k:].min(axis=-1, keepdims=True)
    return logits < kth_largest


def next_token_probs(logits, temperature, top_k):
    """p = softmax(logits / temperature) over the top-k logits (the rest get 0); float64 (N, V)."""
    logits = np.asarray(logits, dtype=np.float64) / temperature
    return softmax_array(np.where(top_k_mask(logits, top_k), -np.inf, logits))


def draw(probs, uniforms):
    """Inverse CDF: the first token whose cumulative probability exceeds u, per row."""
    cumulative = np.cumsum(probs, axis=-1)
    cumulative[:, -1] = np.inf  # rounding can leave the last cumulative sum just below 1
    return (cumulative > uniforms[:, None]).argmax(axis=-1)


def generate(predict, prompts, n_samples, max_new_tokens, context_length, temperature, top_k, rng, stop_id,
             rows=None):
    """Continue each prompt n_samples times, all samples advanced together.

    prompts: one id array, or a list of them (rows come out prompt by prompt).
    predict: (ids (N, T), last) -> the logits of the last ``last`` positions (N, last, V) as numpy,
    without gradients (``Backend.predict`` with its model); it is asked for the last position only.
    Each step every unfinished sample sees its last context_length tokens (the crop; ``next_tokens``);
    finished samples are left out. One uniform per sample per step, drawn
    in row order (finished samples' too, so a sample's draws do not depend on the others'
    lengths). temperature 0 is greedy.
    A sample ends at stop_id (kept as its last token) or after max_new_tokens.
    rows: the samples to draw (a slice; default all); the others are left out as if finished at once
    (length 0), and their uniforms are drawn all the same, so each sample drawn gets the tokens it
    gets when all are drawn (one rank's share of a data-parallel rollout).
    Returns (tokens (N, L) int64 padded with stop_id, lengths (N,), finished (N,) bool).
    """
    if isinstance(prompts, np.ndarray) and prompts.ndim == 1:
        prompts = [prompts]
    prompts = [np.asarray(p, dtype=np.int64) for p in prompts for _ in range(n_samples)]
    N = len(prompts)
    prompt_lengths = np.array([len(p) for p in prompts])
    sequences = np.zeros((N, prompt_lengths.max() + max_new_tokens), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        sequences[row, : len(prompt)] = prompt
    generated = np.full((N, max_new_tokens), stop_id, dtype=np.int64)
    lengths = np.zeros(N, dtype=np.int64)
    finished = np.ones(N, dtype=bool)
    finished[slice(None) if rows is None else rows] = False
    for step in range(max_new_tokens):
        ends = prompt_lengths + step  # each row's current length
        uniforms = rng.random(N) if temperature != 0 else None  # for every row, so the draws stay aligned
        tokens = next_tokens(predict, sequences, np.maximum(ends - context_length, 0), ends, ~finished,
                             temperature, top_k, uniforms, stop_id)
        generated[:, step] = tokens
        sequences[np.arange(N), ends] = tokens
        lengths += ~finished
        finished |= tokens == stop_id
        if finished.all():
            break
    return generated[:, : max(1, lengths.max())], lengths, finished


def next_tokens(predict, sequences, starts, ends, running, temperature, top_k, uniforms, stop_id):
    """One token for each running row of sequences, from its window sequences[r, starts[r]:ends[r]];
    rows not running get stop_id (they need no forward). Rows whose windows have one length share a
    forward. uniforms: one per row (None when temperature is 0: greedy). Returns (N,) int64."""
    running = np.flatnonzero(running)
    widths = (ends - starts)[running]  # each running row's window length
    tokens = np.full(len(sequences), stop_id, dtype=np.int64)
    for window in np.unique(widths):
        group = running[widths == window]
        batch = np.stack([sequences[r, starts[r]:ends[r]] for r in group])  # (rows, window)
        logits = predict(batch, 1)[:, -1]  # (rows, V)
        if temperature == 0:
            tokens[group] = logits.argmax(axis=-1)
        else:
            tokens[group] = draw(next_token_probs(logits, temperature, top_k), uniforms[group])
    return tokens

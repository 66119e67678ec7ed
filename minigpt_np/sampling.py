"""Sampling from the model: temperature, top-k, a context crop, and inverse-CDF draws.

Both backends sample here, in numpy, from the logits they return: given the same uniforms they
draw the same tokens, which makes sampling itself parity-testable.
"""
import numpy as np

from .backend import top_k_mask


def next_token_probs(logits, temperature, top_k):
    """p = softmax(logits / temperature) over the top-k logits (the rest get 0); float64 (N, V)."""
    logits = np.asarray(logits, dtype=np.float64) / temperature
    logits = np.where(top_k_mask(logits, top_k), -np.inf, logits)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def draw(probs, uniforms):
    """Inverse CDF: the first token whose cumulative probability exceeds u, per row."""
    cumulative = np.cumsum(probs, axis=-1)
    cumulative[:, -1] = np.inf  # rounding can leave the last cumulative sum just below 1
    return (cumulative > uniforms[:, None]).argmax(axis=-1)


def generate(predict, prompt_ids, n_samples, max_new_tokens, context_length, temperature, top_k, rng, stop_id):
    """Continue one prompt n_samples times, all samples advanced together (one forward per token).

    predict: ids (N, T) -> logits (N, T, V) as numpy, without gradients.
    Each step the model sees the last context_length tokens (the crop). temperature 0 is greedy.
    A sample ends at stop_id (kept as its last token) or after max_new_tokens.
    Returns (tokens (N, L) int64 padded with stop_id, lengths (N,), finished (N,) bool).
    """
    prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
    sequences = np.tile(prompt_ids, (n_samples, 1))
    generated = np.full((n_samples, max_new_tokens), stop_id, dtype=np.int64)
    lengths = np.zeros(n_samples, dtype=np.int64)
    finished = np.zeros(n_samples, dtype=bool)
    for step in range(max_new_tokens):
        logits = predict(sequences[:, -context_length:])[:, -1]  # (N, V)
        if temperature == 0:
            tokens = logits.argmax(axis=-1)
        else:
            tokens = draw(next_token_probs(logits, temperature, top_k), rng.random(n_samples))
        tokens = np.where(finished, stop_id, tokens)
        generated[:, step] = tokens
        lengths += ~finished
        finished |= tokens == stop_id
        sequences = np.concatenate([sequences, tokens[:, None]], axis=1)
        if finished.all():
            break
    return generated[:, : max(1, lengths.max())], lengths, finished

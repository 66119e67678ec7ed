"""The RL pieces: advantages, exact KL and entropy, the sampled contexts, diagnostics."""
from functools import partial

import numpy as np
import pytest

import minigpt_np
from minigpt_np.train.backend import NumpyBackend
from minigpt_np.train.data import IGNORE
from minigpt_np.train.rewards import original_reward
from minigpt_np.train.evaluation import degenerate_answer, distinct_n, text_metrics
from minigpt_np.train.rl import (
    RLSettings,
    advantages,
    kl_and_entropy,
    policy_windows,
    split_among_duplicates,
)
from minigpt_np.train.sampling import draw, generate, next_token_probs


def test_advantage_identities():
    rewards = np.array([0.0, 0.5, 2.0, 1.5])
    G = len(rewards)
    group_mean = advantages(rewards, "group_mean")
    np.testing.assert_allclose(group_mean, rewards - rewards.mean(), rtol=0, atol=1e-15)
    assert abs(group_mean.sum()) < 1e-12
    rloo = advantages(rewards, "rloo")
    leave_one_out = np.array([rewards[i] - np.delete(rewards, i).mean() for i in range(G)])
    np.testing.assert_allclose(rloo, leave_one_out, rtol=0, atol=1e-14)
    np.testing.assert_allclose(rloo, G / (G - 1) * group_mean, rtol=0, atol=1e-14)
    zscore = advantages(rewards, "group_zscore")
    assert abs(zscore.std() - 1.0) <= 1e-5
    np.testing.assert_allclose(zscore * (rewards.std() + 1e-6), group_mean, rtol=0, atol=1e-14)
    assert np.array_equal(advantages(rewards, "none"), rewards)
    np.testing.assert_allclose(advantages(rewards, "moving_average", baseline=0.75), rewards - 0.75, rtol=0, atol=1e-15)
    for method in ("group_mean", "rloo", "group_zscore"):
        assert np.array_equal(advantages(np.full(5, 1.5), method), np.zeros(5)), method


def test_rl_settings_reject_impossible_combinations():
    with pytest.raises(ValueError, match="at least 2 samples"):
        RLSettings.plain(samples_per_prompt=1, advantage="rloo")
    with pytest.raises(ValueError, match="unknown advantage"):
        RLSettings.plain(advantage="ppo")
    RLSettings.plain(samples_per_prompt=1, advantage="none")  # the original algorithm


def test_exact_kl_and_entropy_against_a_direct_sum():
    rng = np.random.default_rng(0)
    p_logits, q_logits = rng.standard_normal((5, 7)) * 2, rng.standard_normal((5, 7))
    kl, entropy = kl_and_entropy(p_logits, q_logits)
    p = np.exp(p_logits) / np.exp(p_logits).sum(-1, keepdims=True)
    q = np.exp(q_logits) / np.exp(q_logits).sum(-1, keepdims=True)
    for row in range(5):
        assert np.isclose(kl[row], sum(p[row, v] * np.log(p[row, v] / q[row, v]) for v in range(7)), rtol=1e-12, atol=0)
        assert np.isclose(entropy[row], -sum(p[row, v] * np.log(p[row, v]) for v in range(7)), rtol=1e-12, atol=0)
    np.testing.assert_allclose(kl_and_entropy(p_logits, p_logits)[0], 0.0, rtol=0, atol=1e-12)


def tiny_model():
    config = minigpt_np.GPTConfig(vocab_size=9, d_model=16, n_layers=1, n_heads=2, context_length=6, dtype="float64")
    model = minigpt_np.TinyGPT(config, seed=0)
    model.eval()
    return model


def test_loss_log_probs_are_the_sampling_distribution():
    """-weighted_nll of one token with temperature and top-k equals log of the probability that the
    sampler used: softmax of logits / T renormalised over the k kept tokens."""
    backend, model = NumpyBackend(), tiny_model()
    prompt = np.array([1, 2, 3, 4, 5, 6, 7])  # longer than the context: the crop is used
    generated, lengths, _ = generate(partial(backend.predict, model), prompt, 3, 5, 6, 0.7, 3,
                                     np.random.default_rng(0), stop_id=0)
    for sample in range(3):
        sequence = np.concatenate([prompt, generated[sample, :lengths[sample]]])
        for step in range(lengths[sample]):
            position = len(prompt) + step
            window = sequence[max(0, position - 6):position]
            probs = next_token_probs(backend.predict(model, window[None])[:, -1], 0.7, 3)[0]
            assert probs[sequence[position]] > 0 and (probs > 0).sum() <= 3
            targets = np.full(window.shape, IGNORE)[None]
            targets[0, -1] = sequence[position]
            weights = (targets != IGNORE).astype(float)
            nll = backend.weighted_nll(backend.forward(model, window[None]), targets, weights, 0.7, 3).item()
            assert abs(-nll - np.log(probs[sequence[position]])) <= 1e-12


def test_policy_windows_score_each_token_once_with_its_sampled_context():
    prompts = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])]
    generated = np.array([[1, 1, 0, 0], [2, 3, 4, 0]])
    lengths = np.array([3, 4])
    scored = []
    for ids, targets, index in policy_windows(prompts, generated, lengths, 6):
        for row in range(len(ids)):
            first_target = ids.shape[1] - targets.shape[1]  # targets cover the last positions of the window
            for column in np.flatnonzero(targets[row] != IGNORE):
                position = first_target + column
                scored.append((int(index[row]), tuple(ids[row, : position + 1]), int(targets[row, column])))
    expected = []
    for i, (prompt, row, n) in enumerate(zip(prompts, generated, lengths)):
        sequence = np.concatenate([prompt, row[:n]])
        for j in range(len(prompt), len(sequence)):
            expected.append((i, tuple(sequence[max(0, j - 6):j]), int(sequence[j])))
    assert sorted(scored) == sorted(expected)


def test_a_batch_whose_weights_are_all_zero_gives_no_nan():
    backend, model = NumpyBackend(), tiny_model()
    ids = np.array([[1, 2, 3, 4]])
    targets = np.full((1, 4), IGNORE)
    loss = backend.weighted_nll(backend.forward(model, ids), targets, np.zeros((1, 4)), 0.6, 3)
    loss = loss + backend.kl_entropy(backend.forward(model, ids), backend.predict(model, ids), np.zeros((1, 4)),
                                     np.zeros((1, 4)))
    loss.backward()
    assert loss.item() == 0.0
    assert all(np.isfinite(p.grad).all() and not p.grad.any() for p in model.parameters())


def test_generate_with_prompts_of_different_lengths_matches_one_prompt_at_a_time():
    backend, model = NumpyBackend(), tiny_model()
    prompts = [np.array([1, 2]), np.array([3, 4, 5, 6, 7, 8, 1])]
    together = generate(partial(backend.predict, model), prompts, 2, 6, 6, 0.0, None, None, stop_id=0)
    for index, prompt in enumerate(prompts):
        alone = generate(partial(backend.predict, model), prompt, 2, 6, 6, 0.0, None, None, stop_id=0)
        rows = slice(2 * index, 2 * index + 2)
        assert np.array_equal(together[1][rows], alone[1])
        for row_together, row_alone, n in zip(together[0][rows], alone[0], alone[1]):
            assert np.array_equal(row_together[:n], row_alone[:n])


def test_diversity_figures_and_the_degenerate_answer():
    assert distinct_n(["a b c", "a b d"], 1) == 4 / 6 and distinct_n(["a b c", "a b d"], 2) == 3 / 4
    figures = text_metrics(["a b", "a b", "c"], [True, True, False])
    assert figures["unique_frac"] == 2 / 3 and abs(figures["truncated_frac"] - 1 / 3) <= 1e-15
    degenerate = degenerate_answer()
    assert sum(original_reward(degenerate).values()) == 2.0 and distinct_n([degenerate], 2) < 0.3


def test_gradient_accumulated_in_pieces_equals_one_pass():
    """accumulate_policy_gradient over pieces of 2 windows gives the loss and every gradient of
    the unpieced windows (the pieces' gradients add up), with KL and entropy terms on."""
    from minigpt_np.train.backend import NumpyBackend
    from minigpt_np.train.rl import accumulate_policy_gradient
    from minigpt_np.train.sampling import generate
    backend = NumpyBackend()
    config = minigpt_np.GPTConfig(vocab_size=9, d_model=8, n_layers=1, n_heads=2, context_length=6, dtype="float64")
    reference = minigpt_np.TinyGPT(config, seed=1)
    reference.eval()
    prompts = [np.array([1, 2, 3, 4]), np.array([5, 6])]
    model = minigpt_np.TinyGPT(config, seed=0)
    model.eval()
    generated, lengths, _ = generate(partial(backend.predict, model), prompts, 3, 7, 6, 0.9, 5,
                                     np.random.default_rng(0), stop_id=0)
    sample_prompts = [prompts[0]] * 3 + [prompts[1]] * 3
    per_sample = np.linspace(-1.0, 1.0, 6)
    results = []
    for max_rows in (None, 2):
        batches = policy_windows(sample_prompts, generated, lengths, 6, max_rows)
        reference_logits = [backend.predict(reference, ids, targets.shape[1]) for ids, targets, _ in batches]
        loss, kl, entropy, sample = accumulate_policy_gradient(backend, model, batches, reference_logits,
                                                               per_sample, 0.9, 5, 0.1, 0.02)
        assert np.array_equal(np.bincount(sample, minlength=6), lengths)  # each sampled token once, by its sample
        order = np.lexsort((kl, sample))
        results.append((loss, kl[order], entropy[order], [p.grad.copy() for p in model.parameters()]))
        for p in model.parameters():
            p.grad = None
        assert max_rows is None or all(len(ids) <= 2 for ids, _, _ in batches)
    (loss_a, kl_a, entropy_a, grads_a), (loss_b, kl_b, entropy_b, grads_b) = results
    assert abs(loss_a - loss_b) < 1e-12
    np.testing.assert_allclose(kl_a, kl_b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(entropy_a, entropy_b, rtol=0, atol=1e-12)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_generate_matches_a_sample_by_sample_loop_and_forwards_only_unfinished_samples():
    """The batched sampler against the plain loop (each sample, each step: its cropped window, its
    own forward, its uniform), and one forward row per generated token: finished samples are left out."""
    backend, model = NumpyBackend(), tiny_model()
    rows_forwarded = []

    def predict(ids, last):
        rows_forwarded.append(len(ids))
        return backend.predict(model, ids, last)

    prompts = [np.array([1, 2, 3]), np.array([4, 5])]
    tokens, lengths, finished = generate(predict, prompts, 4, 9, 6, 1.5, 6, np.random.default_rng(5), stop_id=0)

    rng = np.random.default_rng(5)
    sequences = [list(p) for p in prompts for _ in range(4)]
    answers, done = [[] for _ in sequences], [False] * len(sequences)
    for _ in range(9):
        uniforms = rng.random(len(sequences))
        for i, sequence in enumerate(sequences):
            if done[i]:
                continue
            logits = backend.predict(model, np.array(sequence[-6:])[None], 1)[:, -1]
            token = int(draw(next_token_probs(logits, 1.5, 6), uniforms[i:i + 1])[0])
            answers[i].append(token)
            sequence.append(token)
            done[i] = token == 0
        if all(done):
            break
    assert 0 < sum(done) < len(done)  # some samples stopped early, some ran to the limit: both paths are used
    assert [list(row[:n]) for row, n in zip(tokens, lengths)] == answers
    assert list(finished) == done
    assert sum(rows_forwarded) == sum(len(a) for a in answers)


def test_each_ranks_share_of_a_rollout_draws_what_the_whole_rollout_draws():
    """generate(rows=...) is one rank's share of a data-parallel rollout: each sample of the share gets
    the tokens it gets when every sample is drawn (the uniforms stay aligned), whatever the split."""
    backend, model = NumpyBackend(), tiny_model()
    prompts = [np.array([1, 2]), np.array([3, 4, 5, 6, 7, 8, 1])]
    whole = generate(partial(backend.predict, model), prompts, 3, 9, 6, 1.3, 6, np.random.default_rng(4), stop_id=0)
    for world_size in (2, 3, 6):
        for rank in range(world_size):
            backend.rank, backend.world_size = rank, world_size
            mine = backend.share(6)
            tokens, lengths, finished = generate(partial(backend.predict, model), prompts, 3, 9, 6, 1.3, 6,
                                                 np.random.default_rng(4), stop_id=0, rows=mine)
            assert np.array_equal(lengths[mine], whole[1][mine]) and np.array_equal(finished[mine], whole[2][mine])
            for row, n in zip(range(6)[mine], lengths[mine]):
                assert np.array_equal(tokens[row, :n], whole[0][row, :n])
            assert not lengths[:mine.start].any() and not lengths[mine.stop:].any()  # the others' rows: not drawn
    assert len({int(n) for n in whole[1]}) > 1  # the samples end at different steps


def test_a_reward_given_k_times_in_a_group_is_split_k_ways():
    rewards = split_among_duplicates([2.0, 2.0, 1.5, 2.0, 0.5], [" a!", " a!", " b", " a!", " c"])
    assert rewards.tolist() == [2 / 3, 2 / 3, 1.5, 2 / 3, 0.5]
    assert split_among_duplicates([1.0, 1.0], [" x", " y"]).tolist() == [1.0, 1.0]  # no copies: unchanged

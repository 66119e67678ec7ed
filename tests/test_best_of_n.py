"""Best-of-N: the choice, and its KL to the sampled policy against the bound, a hand computation and a simulation."""
import itertools
import math

import numpy as np
import pytest

from minigpt_np.train import best_of_n


def test_choose_keeps_the_best_of_each_group_and_the_first_of_ties():
    rewards = [0.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 9.0]
    assert best_of_n.choose(rewards, 2).tolist() == [1, 2, 4, 6]  # the last answer is a remainder
    assert best_of_n.choose(rewards, 4).tolist() == [1, 4]
    assert best_of_n.choose(rewards, 1).tolist() == list(range(9))
    with pytest.raises(ValueError, match="best-of-16 needs a pool of at least 16 answers, got 9"):
        best_of_n.choose(rewards, 16)


def test_kl_bound_is_the_kl_of_the_best_of_n_density_computed_by_quadrature():
    """Under a continuous reward, the best of N answers has reward quantile u with density N u^(N-1)
    (the largest of N uniforms) while one answer's quantile is uniform: the KL is the integral of
    f log f over [0, 1], here by the midpoint rule on a million cells, not by the closed form."""
    cells = 1_000_000
    u = (np.arange(cells) + 0.5) / cells
    for n in (1, 2, 4, 16, 64):
        density = n * u ** (n - 1)  # its log, log n + (n - 1) log u, taken apart: u^63 underflows near 0
        by_quadrature = float(np.mean(density * (math.log(n) + (n - 1) * np.log(u))))
        assert abs(by_quadrature - best_of_n.kl_bound(n)) <= 1e-6 * n, (n, by_quadrature, best_of_n.kl_bound(n))


def test_kl_estimate_equals_the_kl_of_best_of_n_enumerated_over_every_draw():
    """Three answers of distinct rewards: best-of-3 over all 27 ordered draws, each with its probability;
    the KL of the distribution of the kept answer to pi, against kl_estimate on a pool with pi's shares."""
    pi = np.array([0.5, 0.3, 0.2])  # rewards 0 < 1 < 2: the kept answer is the draw's largest index
    kept = np.zeros(3)
    for draw in itertools.product(range(3), repeat=3):
        kept[max(draw)] += np.prod(pi[list(draw)])
    enumerated = float(np.sum(kept * np.log(kept / pi)))
    pool = np.repeat([0.0, 1.0, 2.0], [50, 30, 20])
    assert abs(best_of_n.kl_estimate(pool, 3) - enumerated) <= 1e-14
    assert 0 < enumerated < best_of_n.kl_bound(3)  # three levels: below the continuous bound


def test_kl_estimate_reaches_the_bound_without_ties_and_stays_below_it_with_ties():
    rng = np.random.default_rng(0)
    distinct = rng.random(200_000)  # a continuous reward: no ties
    for n in (1, 4, 16, 64):
        estimate = best_of_n.kl_estimate(distinct, n)
        assert abs(estimate - best_of_n.kl_bound(n)) <= 2e-3 * max(1.0, n / 16), (n, estimate)
    tied = rng.choice([0.0, 0.5, 1.0, 1.5, 2.0], size=10_000, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    for n in (4, 16, 64):
        assert 0 < best_of_n.kl_estimate(tied, n) < best_of_n.kl_bound(n)
    assert best_of_n.kl_estimate(tied, 1) == pytest.approx(0.0, abs=1e-15)


def test_kl_estimate_by_hand_for_a_two_level_reward():
    """A share q of the answers earns 1, the rest 0: best-of-N earns 1 with probability 1 - (1 - q)^N."""
    q, n = 0.25, 4
    rewards = np.array([1.0] * 25 + [0.0] * 75)
    top = 1 - (1 - q) ** n
    by_hand = top * math.log(top / q) + (1 - top) * math.log((1 - top) / (1 - q))
    assert abs(best_of_n.kl_estimate(rewards, n) - by_hand) <= 1e-14


def test_kl_estimate_matches_a_simulated_best_of_n_over_answers_with_known_probabilities():
    """Answers 0..5 with known probabilities and rewards (two pairs tie); best-of-4 simulated 400,000
    times, ties broken by draw order as choose() does; the KL of its answer frequencies to pi."""
    pi = np.array([0.3, 0.2, 0.2, 0.1, 0.15, 0.05])
    reward = np.array([0.0, 0.5, 0.5, 1.0, 1.0, 2.0])
    rng = np.random.default_rng(1)
    draws = rng.choice(6, size=(400_000, 4), p=pi)
    picked = draws[np.arange(len(draws)), reward[draws].argmax(axis=1)]
    frequency = np.bincount(picked, minlength=6) / len(picked)
    simulated = float(np.sum(frequency * np.log(frequency / pi)))
    exact_levels = np.repeat(reward, (pi * 1_000_000).round().astype(int))  # the level shares of pi, exactly
    assert abs(best_of_n.kl_estimate(exact_levels, 4) - simulated) <= 5e-3

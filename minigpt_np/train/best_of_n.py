"""Best-of-N: the baseline with no training. Sample N answers from the SFT policy, keep the best by the reward.

Its distribution pi_N leans towards high reward and stays close to the SFT policy pi. How close: for a
reward under which no two answers tie (a continuous one), KL(pi_N || pi) = log N - (N - 1) / N, whatever
the reward (the usual bound; 0 for N = 1, 1.8 nats for N = 16, 3.2 for N = 64). A reward with few
values (the original's are 0, 0.5, ..., 2) ties many answers; best-of-N keeps one of the tied best at
random, so within a reward level pi_N is pi's own distribution, and the KL is that of the levels:

    P_N(v) = F(v)^N - F(<v)^N      (the best of N draws has reward v)
    KL(pi_N || pi) = sum_v P_N(v) log(P_N(v) / p(v))

with p(v) the share of pi's answers at reward v and F the cumulative shares, both estimated from a
pool of samples (``kl_estimate``). Ties make it smaller than the bound.
"""
import math

import numpy as np


def kl_bound(n):
    """log N - (N - 1) / N: the KL of best-of-N to the sampled policy when no two rewards tie."""
    return math.log(n) - (n - 1) / n


def choose(rewards, n):
    """Split a pool of rewards into consecutive groups of n (a remainder is left out) and return the
    index of each group's best answer (the first of equal rewards; the pool is in sampling order, so
    that is a random one of them)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    groups = len(rewards) // n
    if groups == 0:
        raise ValueError(f"best-of-{n} needs a pool of at least {n} answers, got {len(rewards)}")
    best = rewards[: groups * n].reshape(groups, n).argmax(axis=1)
    return best + n * np.arange(groups)


def kl_estimate(rewards, n):
    """KL(pi_N || pi) of the module docstring, from the reward levels of a pool sampled from pi."""
    levels, counts = np.unique(np.asarray(rewards, dtype=np.float64), return_counts=True)
    p = counts / counts.sum()
    at_most = np.cumsum(p)
    below = at_most - p
    p_best = at_most ** n - below ** n
    kept = p_best > 0
    return float(np.sum(p_best[kept] * np.log(p_best[kept] / p[kept])))

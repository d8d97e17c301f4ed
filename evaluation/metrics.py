"""Statistics over per-user metric values: means, bootstrap intervals, a paired test and segments.

Ranks, the tie policy and the per-user HR/MRR/NDCG values come from :mod:`persona4rec.ranking`.
Means are over every evaluated user, so a user whose item the first stage missed scores 0 for every
reranker (as in the paper). Intervals are percentile bootstraps over users; the significance test is a
paired two-sided randomization (sign-flip) test on per-user differences.
"""

from __future__ import annotations

import numpy as np

METRICS = ("hr", "mrr", "ndcg")


def mean(values: np.ndarray) -> float:
    """The mean, NaN for no users (a metric over nobody is undefined, not zero)."""
    return float(np.mean(values)) if len(values) else float("nan")


def bootstrap_indices(n: int, reps: int, seed: int) -> np.ndarray:
    """(reps, n) user resamples; the same ones serve every reranker, so intervals are comparable."""
    return np.random.default_rng(seed).integers(0, n, size=(reps, n)) if n else np.zeros((reps, 0), np.int64)


def bootstrap_ci(values: np.ndarray, resamples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    if not len(values):
        return float("nan"), float("nan")
    means = np.asarray(values)[resamples].mean(axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


def paired_p_value(a: np.ndarray, b: np.ndarray, reps: int, seed: int) -> float:
    """Two-sided paired randomization test of mean(a - b) = 0: each user's difference keeps or flips its
    sign at random; p = (1 + #{|mean of flipped| >= |observed|}) / (1 + reps). 1.0 when a == b."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[d != 0]  # zero differences are unchanged by a flip
    if not len(d):
        return 1.0
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits, done, chunk = 0, 0, max(1, 2_000_000 // len(d))
    while done < reps:
        m = min(chunk, reps - done)
        signs = rng.integers(0, 2, size=(m, len(d)), dtype=np.int8) * 2 - 1
        hits += int((np.abs(signs @ d) / len(d) >= observed - 1e-12).sum())
        done += m
    return (1 + hits) / (1 + reps)


def segments(counts: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(bottom, top) masks: values at or below the ``share`` quantile, and at or above the ``1 - share`` one.

    The paper's rule (its eval.py): over the sorted counts, the upper threshold is the value at index
    int((1 - share) * n) - 1 and the lower one at int(share * n); ties on a threshold are inside.
    """
    counts = np.asarray(counts)
    n = len(counts)
    if not n:
        return np.zeros(0, bool), np.zeros(0, bool)
    ordered = np.sort(counts)
    upper = ordered[max(int((1 - share) * n) - 1, 0)]
    lower = ordered[min(int(share * n), n - 1)]
    return counts <= lower, counts >= upper

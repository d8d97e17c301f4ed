"""Statistics over per-user metrics against known answers: undefined means, intervals, the paired test, segments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from persona4rec.evaluation import metrics as M
from persona4rec.ranking import metrics_at


def test_no_users_is_undefined_not_zero():
    v = metrics_at(np.zeros(0, dtype=np.int64), ks=[10])
    assert math.isnan(M.mean(v["ndcg@10"]))
    assert all(math.isnan(x) for x in M.bootstrap_ci(v["ndcg@10"], M.bootstrap_indices(0, 10, 0), 0.95))


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_users():
    rng = np.random.default_rng(1)
    small, large = rng.random(50) < 0.3, rng.random(5000) < 0.3
    lo_s, hi_s = M.bootstrap_ci(small, M.bootstrap_indices(50, 1000, 0), 0.95)
    lo_l, hi_l = M.bootstrap_ci(large, M.bootstrap_indices(5000, 1000, 0), 0.95)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 5
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * np.sqrt(0.3 * 0.7 / 5000), rel=0.2)


def test_paired_test_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(2)
    base = (rng.random(400) < 0.2).astype(float)
    better = np.maximum(base, rng.random(400) < 0.15)  # only ever adds hits
    assert M.paired_p_value(better, base, 2000, 0) < 0.01
    assert M.paired_p_value(base, base, 2000, 0) == 1.0
    shuffled = base[rng.permutation(400)]  # same rate, unrelated: no evidence either way
    assert M.paired_p_value(shuffled, base, 2000, 0) > 0.05
    # the smallest p a test with R flips can give is 1 / (R + 1)
    assert M.paired_p_value(np.ones(50), np.zeros(50), 99, 0) == pytest.approx(1 / 100)


def test_segments_follow_the_papers_thresholds():
    counts = np.array([1, 2, 2, 3, 5, 8, 8, 9, 10, 40])
    low, high = M.segments(counts, 0.2)
    # sorted: index int(0.2 * 10) = 2 -> 2 (ties inside); index int(0.8 * 10) - 1 = 7 -> 9
    assert low.tolist() == [c <= 2 for c in counts] and high.tolist() == [c >= 9 for c in counts]

"""The one ranking module against hand-computed cases: the tie policy, metrics, profile windows, and that
every caller (fusion tuning, encoder validation, first-stage validation) ranks by it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from persona4rec.ranking import metrics_at, ndcg, target_ranks, window, windows
from persona4rec.scoring import tune_fusion

NEG = -np.inf


def test_ties_keep_the_given_order_and_a_miss_ranks_zero():
    scores = np.array(
        [
            [0.9, 0.5, 0.5, 0.1],  # target col 2 ties col 1, which comes first: rank 3
            [0.2, 0.5, 0.5, 0.1],  # target col 1 ties col 2, comes first: rank 1
            [0.3, 0.2, 0.1, NEG],  # target not generated: rank 0
            [NEG, NEG, NEG, NEG],  # empty list
            [0.1, 0.2, 0.9, NEG],  # target col 0 after cols 2, 1: rank 3; padding never outranks
        ]
    )
    assert target_ranks(scores, np.array([2, 1, -1, -1, 0]), np.arange(4)).tolist() == [3, 1, 0, 0, 3]
    # a constant scorer returns the given order (the service's stable sort) ...
    flat = np.zeros((3, 4))
    assert target_ranks(flat, np.array([0, 2, 3]), np.arange(4)).tolist() == [1, 3, 4]
    # ... while without an order (a catalogue) every tie counts against the target: a constant scorer earns nothing
    assert target_ranks(flat, np.array([0, 2, 3])).tolist() == [4, 4, 4]
    assert target_ranks(scores, np.array([2, 1, -1, -1, 0])).tolist() == [3, 2, 0, 0, 3]
    assert target_ranks(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)).tolist() == []


def test_metric_values_by_hand():
    v = metrics_at(np.array([1, 2, 3, 6, 0]), ks=[1, 5])
    assert v["hr@1"].tolist() == [1, 0, 0, 0, 0]
    assert v["hr@5"].tolist() == [1, 1, 1, 0, 0]
    assert v["mrr@5"].tolist() == pytest.approx([1, 1 / 2, 1 / 3, 0, 0])
    assert v["ndcg@5"].tolist() == pytest.approx([1, 1 / math.log2(3), 1 / math.log2(4), 0, 0])
    # users missing from the ranks (the first stage missed them) score zero in the mean
    assert ndcg(np.array([1, 3]), 10, users=4) == pytest.approx((1 + 1 / math.log2(4)) / 4)


def test_fusion_is_tuned_under_the_same_tie_policy_it_is_reported_under():
    # persona scores tie everywhere; the first stage puts the target (col 1) second. Weight 0 leaves every
    # score tied, so the list keeps its first-stage order: rank 2, NDCG 1/log2(3), not the pessimistic rank 3.
    persona = np.zeros((1, 3), dtype=np.float32)
    first = np.array([[3.0, 2.0, 1.0]], dtype=np.float32)
    _, grid = tune_fusion(persona, first, np.array([1]), grid=[0.0], k=10)
    assert grid[0.0] == pytest.approx(1 / math.log2(3))


def test_the_profile_window_is_the_last_l_oldest_first():
    assert window([1, 2, 3, 4], 2) == [3, 4] and window([1], 3) == [1] and window(range(5), 3) == [2, 3, 4]
    hist, lengths = windows([[7, 8, 9], [], [5]], 2)
    assert hist.tolist() == [[8, 9], [-1, -1], [5, -1]] and lengths.tolist() == [2, 0, 1]

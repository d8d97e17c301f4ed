"""Ranking with one held-out item per user: the tie policy, ranks, metrics and the profile window.

One implementation for every place that ranks: evaluation, fusion tuning, the learned reranker's model
selection, encoder validation and first-stage validation. (The max over an item's personas has its one
implementation in :class:`~persona4rec.scoring.PersonaTable`.)

**Tie policy.** Candidates are ordered by score, best first. Among equal scores the candidate with the
smaller ``order`` comes first. For a first stage's candidate list the order is the list position, which
is exactly what a stable sort of the list does (the service's :func:`~persona4rec.scoring.rerank`), so an
evaluation ranks a list the way the service would show it. Without an order (a whole catalogue, where
positions mean nothing) every tie counts against the target: a constant scorer earns nothing.

**Metrics** of one relevant item at rank r (1-based; 0 when the item is not in the list): HR@K = 1 if
1 <= r <= K; MRR@K = 1/r; NDCG@K = 1/log2(r + 1) (the ideal DCG is 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def target_ranks(scores: np.ndarray, target_col: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each row's target column under the tie policy; 0 where ``target_col`` is -1.

    ``scores`` (n, c), -inf on padding (a padding column never outranks a finite target); ``order``
    (n, c) or (c,), smaller first among equal scores, or None for ties against the target.
    """
    scores = np.asarray(scores, dtype=np.float64)
    target_col = np.asarray(target_col)
    ranks = np.zeros(len(scores), dtype=np.int64)
    rows = np.flatnonzero(target_col >= 0)
    if not len(rows):
        return ranks
    s = scores[rows]
    cols = target_col[rows]
    ts = s[np.arange(len(rows)), cols][:, None]
    if order is None:
        ahead = s >= ts  # the target itself included: rank = everything at least as good
        ranks[rows] = ahead.sum(1)
        return ranks
    o = np.broadcast_to(np.asarray(order), scores.shape)[rows]
    to = o[np.arange(len(rows)), cols][:, None]
    ahead = (s > ts) | ((s == ts) & (o < to))
    ranks[rows] = ahead.sum(1) + 1
    return ranks


def metrics_at(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user values of HR, MRR and NDCG at every K: {'hr@10': (n,), ...}."""
    r = np.asarray(ranks)
    out = {}
    for k in ks:
        hit = (r >= 1) & (r <= k)
        safe = np.maximum(r, 1)
        out[f"hr@{k}"] = hit.astype(np.float64)
        out[f"mrr@{k}"] = np.where(hit, 1.0 / safe, 0.0)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(safe + 1), 0.0)
    return out


def ndcg(ranks: np.ndarray, k: int, users: int | None = None) -> float:
    """Mean NDCG@k over ``users`` (default: one per rank; users missing from ``ranks`` score 0)."""
    r = np.asarray(ranks)
    n = len(r) if users is None else users
    if not n:
        return float("nan")
    hit = (r >= 1) & (r <= k)
    return float(np.where(hit, 1.0 / np.log2(np.maximum(r, 1) + 1), 0.0).sum() / n)


def window(rows: Sequence[int], length: int) -> list[int]:
    """A user's last ``length`` interactions, oldest first: the profile window of training, indexing,
    evaluation and serving (paper: the last L = 10)."""
    return list(rows[-length:]) if length > 0 else []


def windows(per_user: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned (n, length) index rows of each user's :func:`window`, -1 padded, and their lengths."""
    out = np.full((len(per_user), length), -1, dtype=np.int64)
    lengths = np.zeros(len(per_user), dtype=np.int64)
    for i, rows in enumerate(per_user):
        last = window(rows, length)
        out[i, : len(last)] = last
        lengths[i] = len(last)
    return out, lengths

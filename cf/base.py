"""The contract every first-stage generator honours, and top-N lists from its scores."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from persona4rec.cf.data import Interactions
from persona4rec.ranking import metrics_at, target_ranks

#: Users scored at once (a (batch, n_items) float32 block: 1024 x 100k items = 400 MB at most).
USER_BATCH = 1024


class Generator(ABC):
    """A candidate generator: ``fit`` on training interactions, then score users against every item."""

    #: registry name ("popularity", "bpr", "lightgcn")
    name: str

    def __init__(self) -> None:
        #: one dict per validation check during fit (epoch, metrics), for the manifest and MLflow
        self.history: list[dict[str, Any]] = []
        self.params: dict[str, Any] = {}

    @abstractmethod
    def fit(self, data: Interactions) -> Generator:
        """Learn from ``data``'s training rows only (the held-out items are for validation and test)."""

    @abstractmethod
    def scores(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_items) float32 preference scores; higher is better."""


def recommend(
    gen: Generator, data: Interactions, users: np.ndarray, n: int, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` items per user, best first, with the user's training items (and, for ``split='test'``, the
    validation item) left out. Returns ``(items, scores)``, both (len(users), n); a user with fewer than n
    items left gets a shorter list, padded with -1 / NaN (never with made-up items)."""
    users = np.asarray(users, dtype=np.int64)
    n = min(n, data.n_items)
    items = np.full((len(users), n), -1, dtype=np.int64)
    scores = np.full((len(users), n), np.nan, dtype=np.float32)
    for lo in range(0, len(users), USER_BATCH):
        batch = users[lo : lo + USER_BATCH]
        s = mask_seen(gen.scores(batch), data, batch, split)
        top = np.argpartition(-s, n - 1, axis=1)[:, :n] if n < data.n_items else np.tile(np.arange(n), (len(s), 1))
        top_s = np.take_along_axis(s, top, 1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        top, top_s = np.take_along_axis(top, order, 1), np.take_along_axis(top_s, order, 1)
        ok = np.isfinite(top_s)
        items[lo : lo + len(batch)] = np.where(ok, top, -1)
        scores[lo : lo + len(batch)] = np.where(ok, top_s, np.nan)
    return items, scores


def mask_seen(scores: np.ndarray, data: Interactions, users: np.ndarray, split: str) -> np.ndarray:
    """Scores with each user's excluded items set to -inf (in place)."""
    scores = np.asarray(scores, dtype=np.float32)
    for row, seen in enumerate(data.seen(users, split)):
        scores[row, seen] = -np.inf
    return scores


def full_ranking(gen: Generator, data: Interactions, split: str, ks=(10,), users=None) -> dict[str, float]:
    """HR@k and NDCG@k of the held-out item of ``split`` ranked against every unseen item.

    Ties count against the target (:mod:`persona4rec.ranking`'s policy for a whole catalogue: a constant
    scorer scores zero). Users without a held-out item are skipped; ``users`` restricts the evaluation to a
    subset (e.g. a sample for early stopping).
    """
    target = data.valid if split == "valid" else data.test
    pool = np.flatnonzero(target >= 0) if users is None else np.asarray(users)[target[users] >= 0]
    ranks = []
    for lo in range(0, len(pool), USER_BATCH):
        batch = pool[lo : lo + USER_BATCH]
        s = mask_seen(gen.scores(batch), data, batch, split)
        ranks.append(target_ranks(s, target[batch]))
    r = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    values = metrics_at(r, ks)
    out = {}
    for k in ks:
        for name in ("hr", "ndcg"):
            out[f"{name}@{k}"] = float(values[f"{name}@{k}"].mean()) if len(r) else float("nan")
    out["users"] = int(len(r))
    return out

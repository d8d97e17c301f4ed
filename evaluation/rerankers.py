"""The rerankers compared in an evaluation: each orders the same candidate lists.

A reranker maps :class:`Lists` (one generator's candidates for some users) to a score per candidate;
the order is by score, ties broken by first-stage position (the tie policy of :mod:`persona4rec.ranking`).
Persona rerankers score with :class:`~persona4rec.scoring.PersonaTable`, the code the service runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from persona4rec.scoring import PersonaTable, fuse


@dataclass(frozen=True)
class Lists:
    """Candidate lists of one generator for n users, best first (padding: '' item, -inf score)."""

    user_ids: np.ndarray  # (n,) str
    items: np.ndarray  # (n, c) str
    first_stage: np.ndarray  # (n, c) float32
    target: np.ndarray  # (n,) str: the held-out item
    target_col: np.ndarray  # (n,) int: its column, -1 when the generator missed it

    @property
    def valid(self) -> np.ndarray:
        return self.items != ""

    @property
    def tie_break(self) -> np.ndarray:
        return np.broadcast_to(np.arange(self.items.shape[1]), self.items.shape)

    def take(self, rows: np.ndarray) -> Lists:
        return Lists(self.user_ids[rows], self.items[rows], self.first_stage[rows], self.target[rows],
                     self.target_col[rows])  # fmt: skip

    @classmethod
    def build(cls, user_ids, lists: list[list[str]], scores: list[list[float]], target) -> Lists:
        width = max((len(x) for x in lists), default=0)
        n = len(lists)
        items = np.full((n, width), "", dtype=object)
        fs = np.full((n, width), -np.inf, dtype=np.float32)
        for r, (its, sc) in enumerate(zip(lists, scores, strict=True)):
            items[r, : len(its)] = its
            fs[r, : len(sc)] = sc
        target = np.asarray(target, dtype=object)
        hit = items == target[:, None]
        col = np.where(hit.any(1), hit.argmax(1), -1) if width else np.full(n, -1)
        return cls(np.asarray(user_ids, dtype=object), items, fs, target, col.astype(np.int64))


def first_stage(lists: Lists) -> np.ndarray:
    """The generator's own order."""
    return np.where(lists.valid, -lists.tie_break.astype(np.float32), -np.inf)


def popularity(lists: Lists, counts: dict[str, int]) -> np.ndarray:
    """Most training interactions first."""
    get = counts.get
    out = np.array([[get(i, 0) for i in row] for row in lists.items], dtype=np.float32).reshape(lists.items.shape)
    return np.where(lists.valid, out, -np.inf)


@dataclass
class PersonaScorer:
    """Max over an item's personas of cos(user, persona), optionally fused with the first stage."""

    table: PersonaTable
    profiles: dict[str, np.ndarray]  # user id -> unit profile (the split's history)
    weight: float = 0.0

    def persona_scores(self, lists: Lists) -> np.ndarray:
        if not len(lists.user_ids) or lists.items.shape[1] == 0:
            return np.full(lists.items.shape, -np.inf, dtype=np.float32)
        scores, _ = self.table.scores(*self._inputs(lists))
        return scores

    def persona_stats(self, lists: Lists) -> dict[str, np.ndarray]:
        """:meth:`~persona4rec.scoring.PersonaTable.persona_stats` of every candidate (the learned reranker's)."""
        return self.table.persona_stats(*self._inputs(lists))

    def _inputs(self, lists: Lists) -> tuple[np.ndarray, np.ndarray]:
        users = np.stack([self.profiles[u] for u in lists.user_ids])
        rows = np.full(lists.items.shape, -1, dtype=np.int64)
        valid = lists.valid
        rows[valid] = self.table.rows(lists.items[valid].tolist())  # summary rows cover items without personas
        return users, rows

    def __call__(self, lists: Lists) -> np.ndarray:
        fs = np.where(lists.valid, lists.first_stage, -np.inf)
        return fuse(self.persona_scores(lists), fs, self.weight)

    def latency_ms(self, lists: Lists, users: int, seed: int) -> list[float]:
        """Per-request time of the service's rerank path (profile lookup, score, order) on sampled users."""
        from persona4rec.scoring import rerank

        rng = np.random.default_rng(seed)
        rows = rng.choice(len(lists.user_ids), min(users, len(lists.user_ids)), replace=False)
        out = []
        for r in rows:
            cands = [i for i in lists.items[r] if i]
            if not cands:
                continue
            t0 = time.perf_counter()
            rerank(self.table, self.profiles[lists.user_ids[r]], cands)
            out.append((time.perf_counter() - t0) * 1000)
        return out

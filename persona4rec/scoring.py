"""Scoring: score(user, item) = max over the item's personas of cos(user, persona) (paper Eq. 10).

One implementation, used by evaluation and by the service. :class:`PersonaTable` holds what the hot
path needs in memory: every persona vector (unit length), grouped by item, and the text that explains
it. The arg-max persona of an item is its explanation. An item without personas is indexed with one
``summary`` row (its summary embedding), so every item in the table can be scored.

Optional fusion with a first-stage score: ``(1 - w) * persona + w * minmax(first_stage)``, the first
stage min-max scaled over each user's candidate list, ``w`` tuned on validation (:func:`tune_fusion`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from persona4rec.errors import Persona4RecError
from persona4rec.ranking import ndcg, target_ranks

#: Persona vectors gathered per chunk of a batched call: bounds its memory (64k x 384 floats: 100 MB).
CHUNK_ROWS = 1 << 16


class UnknownItems(Persona4RecError, KeyError):
    """Candidate ids that are not in the index."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        shown = ", ".join(map(repr, self.ids[:10])) + (" …" if len(self.ids) > 10 else "")
        super().__init__(f"{len(self.ids)} item id(s) not in the index: {shown}")

    def __str__(self) -> str:
        return self.args[0]


class Explanation(NamedTuple):
    """The persona that won an item's score: why this user is expected to like it."""

    persona_id: str
    kind: str  # "persona", or "summary" for an item without personas
    name: str
    description: str
    rationale: str
    evidence: list[str]
    similarity: float | None  # cosine with the user; None when listed without a user


class Ranked(NamedTuple):
    item_id: str
    score: float  # what the list is ordered by (fused when a first-stage score is given)
    persona_score: float
    first_stage: float | None
    explanation: Explanation


@dataclass
class PersonaTable:
    """Persona vectors grouped by item, with their explanation texts (rows in any order on input)."""

    persona_ids: np.ndarray  # (P,) str
    item_of: np.ndarray  # (P,) str: each row's item
    vectors: np.ndarray  # (P, d) float32, unit rows; stored with one zero row after them (padding)
    names: list[str]
    descriptions: list[str]
    rationales: list[str]
    evidence: list[list[str]]
    kinds: list[str]
    item_ids: np.ndarray = field(init=False)  # (n_items,) sorted
    slots: np.ndarray = field(init=False)  # (n_items, width) row indices, padded with P (the zero row)
    penalty: np.ndarray = field(init=False)  # (n_items, width) 0 on a persona, -inf on padding

    def __post_init__(self) -> None:
        self.persona_ids = np.asarray(self.persona_ids, dtype=object)
        self.item_of = np.asarray(self.item_of, dtype=object)
        n = len(self.persona_ids)
        if not (len(self.item_of) == len(self.vectors) == len(self.names) == n):
            raise ValueError("persona table: every column needs one value per persona")
        vectors = np.asarray(self.vectors, dtype=np.float32)
        self.vectors = np.concatenate([vectors, np.zeros((1, vectors.shape[1]), dtype=np.float32)])
        self.item_ids, item_idx = np.unique(self.item_of.astype(str), return_inverse=True)
        order = np.argsort(item_idx, kind="stable")
        counts = np.bincount(item_idx, minlength=len(self.item_ids))
        width = int(counts.max()) if n else 1
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(n) - np.repeat(starts, counts)  # position of each sorted row within its item
        self.slots = np.full((len(self.item_ids), width), n, dtype=np.int64)
        self.slots[item_idx[order], rank] = order
        self.penalty = np.where(self.slots == n, -np.inf, 0.0).astype(np.float32)
        self._row_of_item = {item: i for i, item in enumerate(self.item_ids.tolist())}

    @classmethod
    def of_vectors(cls, item_of: np.ndarray, vectors: np.ndarray) -> PersonaTable:
        """A table for scoring only (training, validation): vectors and their items, no explanation texts."""
        n = len(item_of)
        blank = [""] * n
        return cls(
            persona_ids=np.arange(n).astype(str), item_of=item_of, vectors=vectors, names=blank,
            descriptions=blank, rationales=blank, evidence=[[] for _ in range(n)], kinds=["persona"] * n,
        )  # fmt: skip

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.persona_ids)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Item rows (positions in ``item_ids``) of the given ids; unknown ids raise :class:`UnknownItems`."""
        get = self._row_of_item.get
        rows = [get(i, -1) for i in item_ids]
        if -1 in rows:
            raise UnknownItems([i for i, r in zip(item_ids, rows, strict=True) if r < 0])
        return np.asarray(rows, dtype=np.int64)

    def scores(self, users: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Max-over-personas scores and arg-max persona rows of candidate items, for each user.

        ``users`` (n, d) unit vectors; ``candidates`` (n, c) item rows (from :meth:`rows`), -1 for padding.
        Returns ``(scores, best)``, both (n, c): padding scores -inf and its best row is -1.
        """
        grid, idx, padding = self._grid(users, candidates)
        arg = grid.argmax(axis=2)[..., None]
        best = np.take_along_axis(idx, arg, 2)[..., 0]
        return np.take_along_axis(grid, arg, 2)[..., 0], np.where(padding, -1, best)

    def persona_stats(self, users: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
        """Per candidate (n, c): the best, second best and mean cosine over the item's personas, their count,
        and the best persona's row (``best``); padding: -inf scores, count 0, row -1. An item with one persona
        has its best as its second."""
        grid, idx, padding = self._grid(users, candidates)
        count = np.isfinite(grid).sum(axis=2)
        top2 = -np.partition(-grid, min(1, grid.shape[2] - 1), axis=2)[..., :2] if grid.shape[2] > 1 else grid
        best_col = grid.argmax(axis=2)[..., None]
        mean = np.where(count > 0, np.where(np.isfinite(grid), grid, 0).sum(axis=2) / np.maximum(count, 1), -np.inf)
        return {
            "max": top2[..., 0],
            "second": np.where(count > 1, top2[..., -1], top2[..., 0]),
            "mean": mean.astype(np.float32),
            "count": count,
            "best": np.where(padding, -1, np.take_along_axis(idx, best_col, 2)[..., 0]),
        }

    def _grid(self, users: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, c, width) cosines of each candidate's persona slots (-inf on padding), the slots' rows, padding.

        Each item's personas are gathered as a fixed-width block (padding hits the zero row and a -inf
        penalty), so one gather and one product cover every candidate.
        """
        users = np.asarray(users, dtype=np.float32)
        candidates = np.asarray(candidates, dtype=np.int64)
        padding = candidates < 0
        items = np.where(padding, 0, candidates)
        idx = self.slots[items]  # (n, c, width): persona rows, the zero row on padding
        penalty = np.where(padding[..., None], -np.inf, self.penalty[items])
        if len(users) == 1:  # the request path: one gather, one mat-vec
            grid = (self.vectors[idx[0]] @ users[0])[None] + penalty
        else:
            grid = np.empty(idx.shape, dtype=np.float32)
            step = max(1, CHUNK_ROWS // max(1, idx.shape[1] * idx.shape[2]))
            for lo in range(0, len(users), step):
                sl = slice(lo, lo + step)
                grid[sl] = np.einsum("ncwd,nd->ncw", self.vectors[idx[sl]], users[sl])
            grid += penalty
        return grid, idx, padding

    def catalogue_scores(self, users: np.ndarray) -> np.ndarray:
        """(n, n_items) max-over-personas scores of every item in the table (columns: :attr:`item_ids`).

        The same gather as :meth:`scores`, over every item: one product with every persona, then the max
        over each item's slots (padding hits the zero row and the -inf penalty).
        """
        users = np.asarray(users, dtype=np.float32)
        out = np.empty((len(users), len(self.item_ids)), dtype=np.float32)
        chunk = max(1, (CHUNK_ROWS << 8) // max(1, self.slots.size))  # a (chunk, items, width) block: 64 MB
        for lo in range(0, len(users), chunk):
            cos = users[lo : lo + chunk] @ self.vectors.T  # (n, P + 1): the last column is the zero row
            out[lo : lo + chunk] = (cos[:, self.slots] + self.penalty).max(axis=2)
        return out

    def explain(self, row: int, similarity: float | None = None) -> Explanation:
        return Explanation(
            self.persona_ids[row], self.kinds[row], self.names[row], self.descriptions[row], self.rationales[row],
            self.evidence[row], similarity,
        )  # fmt: skip

    def personas_of(self, item_id: str) -> list[int]:
        """Rows of one item's personas (raises :class:`UnknownItems`)."""
        slots = self.slots[self.rows([item_id])[0]]
        return slots[slots < len(self)].tolist()


def minmax(x: np.ndarray) -> np.ndarray:
    """Each row scaled to [0, 1] over its finite entries (a constant row becomes 0)."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    lo = np.where(finite, x, np.inf).min(axis=-1, keepdims=True)
    hi = np.where(finite, x, -np.inf).max(axis=-1, keepdims=True)
    span = hi - lo
    out = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1), 0.0)
    return np.where(finite, out, -np.inf).astype(np.float32)


def fuse(persona: np.ndarray, first_stage: np.ndarray | None, weight: float) -> np.ndarray:
    """(1 - w) * persona + w * minmax(first_stage); the persona score alone when w is 0 or there is none."""
    if first_stage is None or weight == 0:
        return persona
    return ((1 - weight) * persona + weight * minmax(first_stage)).astype(np.float32)


@dataclass(frozen=True)
class Reranking:
    """Candidates best first, as columns: a caller that serialises them builds each object once.

    Indexing or iterating gives :class:`Ranked` rows; :meth:`records` gives plain dicts (for JSON).
    """

    table: PersonaTable
    item_ids: list[str]
    scores: list[float]
    persona_scores: list[float]
    first_stage: list[float] | None
    best: list[int]  # the winning persona's row, per item

    def __len__(self) -> int:
        return len(self.item_ids)

    def __getitem__(self, i: int) -> Ranked:
        fs = None if self.first_stage is None else self.first_stage[i]
        sim = self.persona_scores[i]
        return Ranked(self.item_ids[i], self.scores[i], sim, fs, self.table.explain(self.best[i], sim))

    def __iter__(self) -> Iterator[Ranked]:
        return (self[i] for i in range(len(self)))

    def records(self) -> list[dict[str, Any]]:
        t, fs = self.table, self.first_stage
        return [
            {
                "item_id": item,
                "score": score,
                "persona_score": sim,
                "first_stage": None if fs is None else fs[i],
                "explanation": {
                    "persona_id": t.persona_ids[row],
                    "kind": t.kinds[row],
                    "name": t.names[row],
                    "description": t.descriptions[row],
                    "rationale": t.rationales[row],
                    "evidence": t.evidence[row],
                    "similarity": sim,
                },  # fmt: skip
            }
            for i, (item, score, sim, row) in enumerate(
                zip(self.item_ids, self.scores, self.persona_scores, self.best, strict=True)
            )
        ]


def rerank(
    table: PersonaTable,
    user: np.ndarray,
    candidates: Sequence[str],
    first_stage: Sequence[float] | None = None,
    weight: float = 0.0,
) -> Reranking:
    """Candidates ordered by (fused) score, best first, each with its winning persona."""
    if first_stage is not None and len(first_stage) != len(candidates):
        raise ValueError(f"{len(first_stage)} first-stage scores for {len(candidates)} candidates")
    if weight > 0 and first_stage is None:
        raise ValueError("fusion needs the first-stage scores of the candidates")
    rows = table.rows(candidates)
    persona, best = table.scores(np.asarray(user, dtype=np.float32)[None, :], rows[None, :])
    fs = None if first_stage is None else np.asarray(first_stage, dtype=np.float32)[None, :]
    final = fuse(persona, fs, weight)[0]
    order = np.argsort(-final, kind="stable")
    return Reranking(
        table=table,
        item_ids=[candidates[i] for i in order.tolist()],
        scores=final[order].tolist(),
        persona_scores=persona[0, order].tolist(),
        first_stage=None if fs is None else fs[0, order].tolist(),
        best=best[0, order].tolist(),
    )


def tune_fusion(
    persona: np.ndarray, first_stage: np.ndarray, target_col: np.ndarray, grid: Sequence[float], k: int = 10
) -> tuple[float, dict[float, float]]:
    """The fusion weight with the best NDCG@k on validation (ties: the smaller weight), and every weight's.

    Ranks follow :mod:`persona4rec.ranking`'s tie policy, as the evaluation that reports the weight does.

    ``persona`` and ``first_stage`` are (n, c) scores of each validation user's candidates, ``target_col``
    the column of the held-out item (users whose item is not among the candidates are left out before).
    """
    order = np.arange(persona.shape[1])  # the tie policy: equal scores keep the first-stage order
    results = {}
    for w in sorted(set(grid)):
        rank = target_ranks(fuse(persona, first_stage, w), target_col, order)
        results[w] = ndcg(rank, k) if len(rank) else 0.0
    best = max(results, key=lambda w: (results[w], -w))
    return best, results

"""Scoring: score(user, item) = max over the item's personas of cos(user, persona) (paper Eq. 10).

One implementation, used by evaluation and by the service. :class:`PersonaTable` holds what the hot
path needs in memory: every persona vector (unit length), grouped by item, and the text that explains
it. The arg-max persona of an item is its explanation. An item without personas is indexed with one
``summary`` row (its summary embedding), so every item in the table can be scored.

Optional fusion with a first-stage score: ``(1 - w) * persona + w * minmax(first_stage)``, the first
stage min-max scaled over each user's candidate list, ``w`` tuned on validation (:func:`tune_fusion`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from persona4rec.errors import Persona4RecError

#: Gathered persona vectors per chunk of a batched call (rows x dim floats), bounding its memory.
CHUNK_ROWS = 1 << 20


class UnknownItems(Persona4RecError, KeyError):
    """Candidate ids that are not in the index."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        shown = ", ".join(map(repr, self.ids[:10])) + (" …" if len(self.ids) > 10 else "")
        super().__init__(f"{len(self.ids)} item id(s) not in the index: {shown}")

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class Explanation:
    """The persona that won an item's score: why this user is expected to like it."""

    persona_id: str
    kind: str  # "persona", or "summary" for an item without personas
    name: str
    description: str
    rationale: str
    evidence: list[str]
    similarity: float | None  # cosine with the user; None when listed without a user


@dataclass(frozen=True)
class Ranked:
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
    vectors: np.ndarray  # (P, d) float32, unit rows
    names: list[str]
    descriptions: list[str]
    rationales: list[str]
    evidence: list[list[str]]
    kinds: list[str]
    item_ids: np.ndarray = field(init=False)  # (n_items,) sorted
    slots: np.ndarray = field(init=False)  # (n_items, width) row indices, -1 padded

    def __post_init__(self) -> None:
        self.persona_ids = np.asarray(self.persona_ids, dtype=object)
        self.item_of = np.asarray(self.item_of, dtype=object)
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        n = len(self.persona_ids)
        if not (len(self.item_of) == len(self.vectors) == len(self.names) == n):
            raise ValueError("persona table: every column needs one value per persona")
        self.item_ids, item_idx = np.unique(self.item_of.astype(str), return_inverse=True)
        order = np.argsort(item_idx, kind="stable")
        counts = np.bincount(item_idx, minlength=len(self.item_ids))
        width = int(counts.max()) if n else 1
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(n) - np.repeat(starts, counts)  # position of each sorted row within its item
        self.slots = np.full((len(self.item_ids), width), -1, dtype=np.int64)
        self.slots[item_idx[order], rank] = order
        self._row_of_item = {item: i for i, item in enumerate(self.item_ids.tolist())}

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
        users = np.asarray(users, dtype=np.float32)
        candidates = np.asarray(candidates, dtype=np.int64)
        n, c = candidates.shape
        scores = np.full((n, c), -np.inf, dtype=np.float32)
        best = np.full((n, c), -1, dtype=np.int64)
        step = max(1, CHUNK_ROWS // max(1, c * self.slots.shape[1]))
        for lo in range(0, n, step):
            cand = candidates[lo : lo + step]
            idx = np.where(cand[..., None] >= 0, self.slots[np.clip(cand, 0, None)], -1)  # (m, c, width)
            valid = idx >= 0
            flat = idx[valid]
            if len(users) == 1:
                sims = self.vectors[flat] @ users[0]
            else:
                owner = np.broadcast_to(np.arange(lo, lo + len(cand))[:, None, None], idx.shape)[valid]
                sims = np.einsum("md,md->m", self.vectors[flat], users[owner])
            grid = np.full(idx.shape, -np.inf, dtype=np.float32)
            grid[valid] = sims
            arg = grid.argmax(axis=2)
            scores[lo : lo + step] = np.take_along_axis(grid, arg[..., None], 2)[..., 0]
            best[lo : lo + step] = np.where(cand >= 0, np.take_along_axis(idx, arg[..., None], 2)[..., 0], -1)
        return scores, best

    def explain(self, row: int, similarity: float | None = None) -> Explanation:
        return Explanation(
            persona_id=str(self.persona_ids[row]),
            kind=self.kinds[row],
            name=self.names[row],
            description=self.descriptions[row],
            rationale=self.rationales[row],
            evidence=list(self.evidence[row]),
            similarity=None if similarity is None else float(similarity),
        )

    def personas_of(self, item_id: str) -> list[int]:
        """Rows of one item's personas (raises :class:`UnknownItems`)."""
        slots = self.slots[self.rows([item_id])[0]]
        return slots[slots >= 0].tolist()


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


def rerank(
    table: PersonaTable,
    user: np.ndarray,
    candidates: Sequence[str],
    first_stage: Sequence[float] | None = None,
    weight: float = 0.0,
) -> list[Ranked]:
    """Candidates ordered by (fused) score, best first, each with its winning persona."""
    if first_stage is not None and len(first_stage) != len(candidates):
        raise ValueError(f"{len(first_stage)} first-stage scores for {len(candidates)} candidates")
    if weight > 0 and first_stage is None:
        raise ValueError("fusion needs the first-stage scores of the candidates")
    rows = table.rows(candidates)
    persona, best = table.scores(np.asarray(user, dtype=np.float32)[None, :], rows[None, :])
    persona, best = persona[0], best[0]
    fs = None if first_stage is None else np.asarray(first_stage, dtype=np.float32)
    final = fuse(persona[None, :], None if fs is None else fs[None, :], weight)[0]
    order = np.argsort(-final, kind="stable")
    return [
        Ranked(
            item_id=candidates[i],
            score=float(final[i]),
            persona_score=float(persona[i]),
            first_stage=None if fs is None else float(fs[i]),
            explanation=table.explain(int(best[i]), float(persona[i])),
        )
        for i in order
    ]


def ranks_of(final: np.ndarray, target_col: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target column; ties count against the target."""
    target = final[np.arange(len(final)), target_col]
    return (final >= target[:, None]).sum(axis=1) - 1


def tune_fusion(
    persona: np.ndarray, first_stage: np.ndarray, target_col: np.ndarray, grid: Sequence[float], k: int = 10
) -> tuple[float, dict[float, float]]:
    """The fusion weight with the best NDCG@k on validation (ties: the smaller weight), and every weight's.

    ``persona`` and ``first_stage`` are (n, c) scores of each validation user's candidates, ``target_col``
    the column of the held-out item (users whose item is not among the candidates are left out before).
    """
    results = {}
    for w in sorted(set(grid)):
        rank = ranks_of(fuse(persona, first_stage, w), target_col)
        results[w] = float(np.where(rank < k, 1.0 / np.log2(rank + 2), 0.0).mean()) if len(rank) else 0.0
    best = max(results, key=lambda w: (results[w], -w))
    return best, results

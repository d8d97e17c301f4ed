"""The service's operations over the current snapshot: rerank, recommend, an item's personas.

``rerank`` never leaves memory (:func:`persona4rec.scoring.rerank` on the snapshot, or with first-stage
scores and a learned reranker registered with the encoder, :func:`persona4rec.learned.rerank`); ``recommend`` is a
grouping search in Milvus on the snapshot's own collection, so both answer from the same version.
Unknown users get :class:`UnknownUser` or, with ``serve.unknown_user: popularity``, the most popular
items (and no explanation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from persona4rec import learned
from persona4rec.config import Config
from persona4rec.errors import Persona4RecError
from persona4rec.infra import milvus
from persona4rec.scoring import Explanation, rerank
from persona4rec.serve.snapshot import Snapshot, Watcher


class UnknownUser(Persona4RecError, KeyError):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"unknown user {user_id!r}: no interactions in the index")

    def __str__(self) -> str:
        return self.args[0]


class NotReady(Persona4RecError):
    """No index version is loaded yet."""


@dataclass(frozen=True)
class Result:
    user_id: str
    index: str
    encoder_version: str
    fallback: str | None  # "popularity" for an unknown user, else None
    items: list[dict[str, Any]]


class Recommender:
    def __init__(self, cfg: Config, watcher: Watcher, client: Any) -> None:
        self.cfg, self.watcher, self.client = cfg, watcher, client

    def snapshot(self) -> Snapshot:
        snap = self.watcher.current
        if snap is None:
            raise NotReady(self.watcher.last_error or "the index is loading")
        return snap

    def rerank(self, user_id: str, candidates: Sequence[str], first_stage: Sequence[float] | None = None) -> Result:
        snap = self.snapshot()
        row = snap.user_row.get(user_id)
        if row is None:
            snap.table.rows(candidates)  # unknown candidate ids are an error either way
            return self._popular(snap, user_id, candidates)
        if first_stage is not None and snap.reranker is not None:  # the learned reranker fitted with this encoder
            popularity = [snap.item_interactions.get(i, 0) for i in candidates]
            history = int(snap.n_interactions[row]) if snap.n_interactions is not None else len(snap.seen[row])
            ranked = learned.rerank(snap.table, snap.profiles[row], candidates, first_stage, snap.reranker,
                                    popularity, history)  # fmt: skip
            return Result(user_id, snap.collection, snap.encoder_version, None, ranked.records())
        weight = self.cfg.score.fusion_weight if first_stage is not None else 0.0
        items = rerank(snap.table, snap.profiles[row], candidates, first_stage, weight).records()
        return Result(user_id, snap.collection, snap.encoder_version, None, items)

    def recommend(self, user_id: str, k: int) -> Result:
        snap = self.snapshot()
        row = snap.user_row.get(user_id)
        if row is None:
            return self._popular(snap, user_id, None, k)
        hits = milvus.search_items(
            self.client, snap.collection, snap.profiles[row][None, :], k, self.cfg.index, [snap.seen[row]]
        )[0]
        items = [
            {
                "item_id": h["item_id"],
                "score": h["score"],
                "persona_score": h["score"],
                "first_stage": None,
                "explanation": _explanation(h)._asdict(),
            }
            for h in hits
        ]
        return Result(user_id, snap.collection, snap.encoder_version, None, items)

    def personas(self, item_id: str) -> list[Explanation]:
        snap = self.snapshot()
        return [snap.table.explain(r) for r in snap.table.personas_of(item_id)]

    def _popular(self, snap: Snapshot, user_id: str, candidates: Sequence[str] | None, k: int = 0) -> Result:
        if self.cfg.serve.unknown_user == "error":
            raise UnknownUser(user_id)
        rank = {item: i for i, item in enumerate(snap.popular)}
        chosen = snap.popular[:k] if candidates is None else sorted(candidates, key=lambda i: rank.get(i, len(rank)))
        n = max(len(rank), 1)
        items = [
            {
                "item_id": i,
                "score": 1.0 - rank.get(i, n) / n,
                "persona_score": None,
                "first_stage": None,
                "explanation": None,
            }
            for i in chosen
        ]
        return Result(user_id, snap.collection, snap.encoder_version, "popularity", items)


def _explanation(hit: dict[str, Any]) -> Explanation:
    return Explanation(
        persona_id=hit["persona_id"],
        kind=hit["kind"],
        name=hit["name"],
        description=hit["description"],
        rationale=hit["rationale"],
        evidence=list(hit["evidence"] or []),
        similarity=hit["score"],
    )

"""The untrained persona ranking check: personas compared by themselves, with no encoder trained on them.

For every test user whose held-out item is one of a set of items, rank it among those items (the user's
earlier items left out) by max over each item's personas of cos(profile, persona passage), both embedded
with the off-the-shelf embedder. The profile is the recency-weighted mean of the user's earlier reviews,
written as item title plus the user's own words, so that no persona set's summaries leak into it. Same
users, same items, same embedder for every persona set: what differs is the personas alone. An item
without personas ranks last; ties count against the held-out item.

Used by the headline's comparison of reasoning modes and by the prompt A/B (benchmarks/).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from persona4rec.artifacts import StageResult

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class CheckUsers:
    """The users of one check: each one's held-out item (a column of ``items``), earlier items and profile."""

    items: list[str]  # the candidate items, sorted: columns of every score matrix
    targets: np.ndarray  # (users,) column of the held-out item
    seen: list[list[int]]  # per user, columns of earlier items (left out of the ranking)
    profiles: np.ndarray  # (users, dim), unit vectors


@dataclass(frozen=True)
class CheckResult:
    hits: np.ndarray  # (users,) HR@k per user
    ndcgs: np.ndarray  # (users,) NDCG@k per user
    personas: int
    within: float  # mean over items (two personas or more) of the mean pairwise cosine of their passages


def titles(prepared: StageResult) -> dict[str, str]:
    return {
        r["item_id"]: r["title"]
        for r in pq.read_table(prepared.table("items"), columns=["item_id", "title"]).to_pylist()
    }


def check_users(prepared: StageResult, items: set[str], embed: Embed, history: int, gamma: float) -> CheckUsers | None:
    """Test users of the prepared corpus whose held-out item is in ``items`` and who have earlier items,
    with profiles of their last ``history`` earlier reviews (``encoder.profile``); None when there are none."""
    from persona4rec.encoder.profile import profiles
    from persona4rec.texts import interaction_text

    title = titles(prepared)
    reviews = pq.read_table(prepared.table("reviews"), columns=["review_id", "item_id", "title", "text"]).to_pylist()
    text_of = {
        r["review_id"]: interaction_text(title.get(r["item_id"]) or r["item_id"], review_title=r["title"],
                                         review_text=r["text"])
        for r in reviews
    }  # fmt: skip
    inter = pq.read_table(
        prepared.table("interactions"), columns=["user_id", "item_id", "review_id", "position", "split"]
    )
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in inter.sort_by([("user_id", "ascending"), ("position", "ascending")]).to_pylist():
        by_user[r["user_id"]].append(r)
    order = sorted(items)
    col = {i: k for k, i in enumerate(order)}
    targets, seen, spans, texts = [], [], [], []
    for rows in by_user.values():
        test = [r for r in rows if r["split"] == "test"]
        earlier = [r for r in rows if r["split"] != "test"]
        if test and test[0]["item_id"] in col and earlier:
            target = test[0]["item_id"]
            shown = earlier[-history:]
            targets.append(col[target])
            seen.append(sorted({col[r["item_id"]] for r in earlier if r["item_id"] in col and r["item_id"] != target}))
            spans.append((len(texts), len(shown)))
            texts += [text_of[r["review_id"]] for r in shown]
    if not targets:
        return None
    vecs = embed(texts)
    prof = np.stack([profiles(vecs[lo : lo + n], np.arange(n)[None, :], np.array([n]), gamma)[0] for lo, n in spans])
    return CheckUsers(order, np.array(targets, dtype=np.int64), seen, prof)


def passages(personas: Sequence[dict[str, Any]], summaries: dict[str, str | None], title: dict[str, str]) -> list[str]:
    """Each persona's indexed passage (``texts.persona_text``), read with its own output's item summary."""
    from persona4rec.texts import item_text, persona_text

    return [
        persona_text(r, item_text(r["item_id"], summaries.get(r["item_id"]), title.get(r["item_id"]))) for r in personas
    ]


def rank(users: CheckUsers, personas: Sequence[dict[str, Any]], vecs: np.ndarray, k: int = 10) -> CheckResult:
    """HR@k and NDCG@k per user of one persona set (``vecs``: one unit vector per persona row, in order;
    personas of items outside ``users.items`` are ignored)."""
    col = {i: n for n, i in enumerate(users.items)}
    keep = np.array([r["item_id"] in col for r in personas], dtype=bool)
    owner = np.array([col[r["item_id"]] for r in personas if r["item_id"] in col], dtype=np.int64)
    vecs = vecs[keep] if len(keep) else vecs
    sims = users.profiles @ vecs.T  # (users, personas)
    score = np.full((len(users.targets), len(users.items)), -np.inf)
    within = []
    for n in range(len(users.items)):
        mine = owner == n
        if mine.any():
            score[:, n] = sims[:, mine].max(axis=1)
        if mine.sum() > 1:
            v = vecs[mine]
            within.append(float((v @ v.T)[np.triu_indices(len(v), 1)].mean()))
    hits, ndcgs = [], []
    for u, target in enumerate(users.targets):
        row = score[u].copy()
        row[users.seen[u]] = -np.inf
        r = int((row >= row[target]).sum()) - 1 if np.isfinite(row[target]) else len(users.items)
        hits.append(float(r < k))
        ndcgs.append(1.0 / np.log2(r + 2) if r < k else 0.0)
    return CheckResult(
        np.array(hits), np.array(ndcgs), int(len(owner)), float(np.mean(within)) if within else float("nan")
    )

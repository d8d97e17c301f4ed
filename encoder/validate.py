"""Validation metrics of an encoder: the reranking task itself, and two diagnostics.

- ``list_ndcg@10`` (the selection metric): each valid-split user's first-stage validation list (from a
  model trained on the training split) reordered by max over each item's personas of cos(profile,
  persona); NDCG@10 of the valid item over every user with a list (a user whose item the first stage
  missed scores 0), averaged over the generators of ``train.lists``; ``list_ndcg@10/<generator>`` each;
- ``hr@10``: every item with personas ranked for each valid-split user, the user's training items excluded;
- ``persona_recall@10``: for each held-out labelled interaction, every persona ranked by cosine with the
  profile of the history before it; a hit when the labelled persona is in the top 10.

Ranks follow :mod:`persona4rec.ranking` (list positions break ties in a list; ties count against the
target in a whole catalogue, so a degenerate encoder that maps everything to one vector scores zero
there); the max over personas is :class:`~persona4rec.scoring.PersonaTable`'s, the service's code.
"""

from __future__ import annotations

import numpy as np

from persona4rec.encoder.data import AlignmentData
from persona4rec.encoder.profile import profiles
from persona4rec.ranking import ndcg, target_ranks
from persona4rec.scoring import PersonaTable

K = 10
CHUNK = 2048


def persona_table(data: AlignmentData, persona_vectors: np.ndarray) -> PersonaTable:
    """The encoder's personas as a scoring table whose item rows are ``data``'s item indices."""
    return PersonaTable.of_vectors(np.asarray(data.item_ids, dtype=object)[data.persona_item], persona_vectors)


def evaluate(
    data: AlignmentData, persona_vectors: np.ndarray, interaction_vectors: np.ndarray, gamma: float
) -> dict[str, float]:
    """Every metric the data allows, for encoder vectors of every persona and (at least) the needed interactions."""
    out: dict[str, float] = {}
    if len(data.valid):
        table = persona_table(data, persona_vectors)
        users = profiles(interaction_vectors, data.valid.history, data.valid.lengths, gamma)
        hits = []
        for lo in range(0, len(users), CHUNK):
            scores = table.catalogue_scores(users[lo : lo + CHUNK])
            for row, seen in enumerate(data.valid.seen_items[lo : lo + CHUNK]):
                scores[row, seen] = -np.inf
            hits.append(target_ranks(scores, data.valid.target_item[lo : lo + CHUNK]) <= K)
        out[f"hr@{K}"] = float(np.concatenate(hits).mean())
        per_list = {gen: _list_ndcg(table, users, data, gen) for gen in sorted(data.valid.lists)}
        if per_list:
            out[f"list_ndcg@{K}"] = float(np.mean(list(per_list.values())))
            out.update({f"list_ndcg@{K}/{gen}": v for gen, v in per_list.items()})
    if len(data.heldout):
        hits = []
        for lo in range(0, len(data.heldout), CHUNK):
            ex = data.heldout.take(np.arange(lo, min(lo + CHUNK, len(data.heldout))))
            users = profiles(interaction_vectors, ex.history, ex.lengths, gamma)
            hits.append(target_ranks(users @ persona_vectors.T, ex.positive) <= K)
        out[f"persona_recall@{K}"] = float(np.concatenate(hits).mean())
    return out


def _list_ndcg(table: PersonaTable, users: np.ndarray, data: AlignmentData, generator: str) -> float:
    """NDCG@K of the valid item in each user's validation list reordered by persona score (0 on a miss)."""
    lists = data.valid.lists[generator]
    hit = lists == data.valid.target_item[:, None]
    rows = np.flatnonzero(hit.any(1))
    if not len(rows):
        return 0.0
    scores, _ = table.scores(users[rows], lists[rows])
    ranks = target_ranks(scores, hit[rows].argmax(1), np.arange(lists.shape[1]))
    return ndcg(ranks, K, users=data.valid.list_users[generator])


def chance(data: AlignmentData) -> dict[str, float]:
    """What a random ranking scores on the same data (a reference line for every report)."""
    out = {}
    if len(data.valid):
        unseen = len(data.item_ids) - np.array([len(s) for s in data.valid.seen_items])
        out[f"hr@{K}"] = float(np.mean(np.minimum(K / np.maximum(unseen, 1), 1.0)))
        per_list = {}
        for gen, lists in sorted(data.valid.lists.items()):
            hit = lists == data.valid.target_item[:, None]
            width = np.maximum((lists >= 0).sum(1), 1)
            # a random order puts the item at each of the list's positions with equal probability
            expected = [np.mean(1 / np.log2(np.arange(1, min(w, K) + 1) + 1)) * min(w, K) / w for w in width]
            per_list[gen] = float(np.sum(np.where(hit.any(1), expected, 0.0)) / max(data.valid.list_users[gen], 1))
        if per_list:
            out[f"list_ndcg@{K}"] = float(np.mean(list(per_list.values())))
            out.update({f"list_ndcg@{K}/{gen}": v for gen, v in per_list.items()})
    if len(data.heldout):
        out[f"persona_recall@{K}"] = min(K / len(data.persona_ids), 1.0)
    return out

"""Validation metrics of an encoder, computed by brute force over the whole persona set.

- ``hr@10``: for each valid-split user, rank every item that has personas by max over its personas of
  cos(profile, persona) (paper Eq. 10), the user's training items excluded; a hit when the valid item is
  in the top 10;
- ``persona_recall@10``: for each held-out labelled interaction, rank every persona by cosine with the
  profile of the history before it; a hit when the labelled persona is in the top 10.

Ties count against the target (its rank is the number of candidates scoring at least as high), so a
degenerate encoder that maps everything to one vector scores zero, not one.
"""

from __future__ import annotations

import numpy as np

from persona4rec.encoder.data import AlignmentData
from persona4rec.encoder.profile import profiles

K = 10
CHUNK = 2048


def item_scores(users: np.ndarray, personas: np.ndarray, persona_item: np.ndarray, n_items: int) -> np.ndarray:
    """(n_users, n_items): max over each item's personas of the cosine (every item must have a persona)."""
    order = np.argsort(persona_item, kind="stable")
    starts = np.searchsorted(persona_item[order], np.arange(n_items))
    return np.maximum.reduceat(users @ personas[order].T, starts, axis=1)


def evaluate(
    data: AlignmentData, persona_vectors: np.ndarray, interaction_vectors: np.ndarray, gamma: float
) -> dict[str, float]:
    """Both metrics for encoder vectors of every persona and (at least) the needed interactions."""
    out: dict[str, float] = {}
    n_items = len(data.item_ids)
    if len(data.valid):
        hits = []
        for lo in range(0, len(data.valid), CHUNK):
            sl = slice(lo, lo + CHUNK)
            users = profiles(interaction_vectors, data.valid.history[sl], data.valid.lengths[sl], gamma)
            scores = item_scores(users, persona_vectors, data.persona_item, n_items)
            for row, seen in enumerate(data.valid.seen_items[sl]):
                scores[row, seen] = -np.inf
            target = data.valid.target_item[sl]
            best = scores[np.arange(len(target)), target]
            hits.append((scores >= best[:, None]).sum(1) - 1 < K)
        out[f"hr@{K}"] = float(np.concatenate(hits).mean())
    if len(data.heldout):
        hits = []
        for lo in range(0, len(data.heldout), CHUNK):
            ex = data.heldout.take(np.arange(lo, min(lo + CHUNK, len(data.heldout))))
            users = profiles(interaction_vectors, ex.history, ex.lengths, gamma)
            scores = users @ persona_vectors.T
            best = scores[np.arange(len(ex)), ex.positive]
            hits.append((scores >= best[:, None]).sum(1) - 1 < K)
        out[f"persona_recall@{K}"] = float(np.concatenate(hits).mean())
    return out


def chance(data: AlignmentData) -> dict[str, float]:
    """What a random ranking scores on the same data (a reference line for every report)."""
    out = {}
    if len(data.valid):
        unseen = len(data.item_ids) - np.array([len(s) for s in data.valid.seen_items])
        out[f"hr@{K}"] = float(np.mean(np.minimum(K / np.maximum(unseen, 1), 1.0)))
    if len(data.heldout):
        out[f"persona_recall@{K}"] = min(K / len(data.persona_ids), 1.0)
    return out

"""Training and validation data of the encoder, as flat arrays that travel cheaply to Ray Train workers.

Built from the embed stage (texts and base vectors of every interaction and persona) and the align
stage (positive persona of labelled training interactions):

- **train examples**: a labelled interaction with the user's history strictly before it (last L);
- **held-out examples**: the labels of a deterministic share of users (``train.holdout_users``), never
  trained on, for persona-level recall;
- **validation users**: each user's valid-split interaction, with the last L training interactions as
  history and the user's training items excluded from the ranking (item-level hit rate).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from persona4rec.schemas import arrow_to_vectors


@dataclass
class Examples:
    """Rows of (history -> positive persona); ``history`` is (n, L) interaction indices, -1 padded."""

    history: np.ndarray
    lengths: np.ndarray
    positive: np.ndarray  # persona index
    user: np.ndarray  # user index (false-negative masking)

    def __len__(self) -> int:
        return len(self.positive)

    def take(self, idx: np.ndarray) -> Examples:
        return Examples(self.history[idx], self.lengths[idx], self.positive[idx], self.user[idx])


@dataclass
class ValidationUsers:
    history: np.ndarray
    lengths: np.ndarray
    target_item: np.ndarray  # item index of the valid interaction
    seen_items: list[np.ndarray]  # item indices to exclude (the user's training items)

    def __len__(self) -> int:
        return len(self.target_item)


@dataclass
class AlignmentData:
    """Everything the training loop and the validation metric read."""

    interaction_texts: list[str]
    interaction_vectors: np.ndarray  # (N, d) base vectors
    persona_ids: list[str]
    persona_texts: list[str]
    persona_vectors: np.ndarray  # (P, d) base vectors
    persona_item: np.ndarray  # (P,) item index of each persona
    item_ids: list[str]
    train: Examples
    heldout: Examples
    valid: ValidationUsers
    counts: dict[str, int]

    @property
    def dim(self) -> int:
        return int(self.persona_vectors.shape[1])

    def needed_interactions(self) -> np.ndarray:
        """Interaction indices that validation reads (text modes re-encode only these)."""
        rows = [self.heldout.history[self.heldout.history >= 0], self.valid.history[self.valid.history >= 0]]
        return np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


def held_out(user_id: str, share: float) -> bool:
    """Deterministic per-user coin: the same users are held out on every machine and run."""
    if share <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big")
    return h / 2**64 < share


def build(
    interactions: pa.Table, personas: pa.Table, labels: pa.Table, *, history: int, holdout_users: float
) -> AlignmentData:
    """``interactions``/``personas``: the embed stage's interaction_vectors/persona_vectors tables."""
    interactions = interactions.sort_by([("user_id", "ascending"), ("position", "ascending")])
    users = interactions["user_id"].to_pylist()
    positions = interactions["position"].to_pylist()
    splits = interactions["split"].to_pylist()
    inter_items = interactions["item_id"].to_pylist()
    persona_ids = personas["persona_id"].to_pylist()
    persona_items = personas["item_id"].to_pylist()
    item_ids = sorted(set(persona_items))
    item_index = {item: i for i, item in enumerate(item_ids)}
    persona_index = {pid: i for i, pid in enumerate(persona_ids)}
    user_index: dict[str, int] = {}
    row_of: dict[tuple[str, int], int] = {}
    train_rows: dict[str, list[int]] = {}
    valid_row: dict[str, int] = {}
    for row, (user, pos, split) in enumerate(zip(users, positions, splits, strict=True)):
        user_index.setdefault(user, len(user_index))
        row_of[(user, pos)] = row
        if split == "train":
            train_rows.setdefault(user, []).append(row)
        elif split == "valid":
            valid_row[user] = row

    counts = {"labels": labels.num_rows, "labels_without_history": 0, "labels_unknown_persona": 0}
    buckets: dict[bool, list[tuple[list[int], int, int]]] = {False: [], True: []}
    for user, pos, pid in zip(
        labels["user_id"].to_pylist(), labels["position"].to_pylist(), labels["persona_id"].to_pylist(), strict=True
    ):
        if pid not in persona_index or (user, pos) not in row_of:
            counts["labels_unknown_persona"] += 1
            continue
        earlier = [r for r in train_rows.get(user, []) if positions[r] < pos][-history:]
        if not earlier:
            counts["labels_without_history"] += 1
            continue
        buckets[held_out(user, holdout_users)].append((earlier, persona_index[pid], user_index[user]))

    valid_hist, valid_target, valid_seen = [], [], []
    counts["valid_users"] = len(valid_row)
    counts["valid_target_without_personas"] = 0
    for user, row in valid_row.items():
        target = item_index.get(inter_items[row])
        rows = train_rows.get(user, [])
        if target is None or not rows:
            counts["valid_target_without_personas"] += target is None
            continue
        valid_hist.append(rows[-history:])
        valid_target.append(target)
        seen = sorted({item_index[inter_items[r]] for r in rows if inter_items[r] in item_index})
        valid_seen.append(np.array(seen, dtype=np.int64))

    train, heldout = (_examples(buckets[flag], history) for flag in (False, True))
    hist, lengths = _pad(valid_hist, history)
    valid = ValidationUsers(hist, lengths, np.array(valid_target, dtype=np.int64), valid_seen)
    counts.update(train_examples=len(train), heldout_examples=len(heldout), valid_examples=len(valid))
    return AlignmentData(
        interaction_texts=interactions["text"].to_pylist(),
        interaction_vectors=arrow_to_vectors(interactions["vector"]),
        persona_ids=persona_ids,
        persona_texts=personas["text"].to_pylist(),
        persona_vectors=arrow_to_vectors(personas["vector"]),
        persona_item=np.array([item_index[i] for i in persona_items], dtype=np.int64),
        item_ids=item_ids,
        train=train,
        heldout=heldout,
        valid=valid,
        counts=counts,
    )


def _pad(rows: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, np.array([len(r) for r in rows], dtype=np.int64)


def _examples(rows: list[tuple[list[int], int, int]], width: int) -> Examples:
    hist, lengths = _pad([r[0] for r in rows], width)
    return Examples(
        hist, lengths, np.array([r[1] for r in rows], dtype=np.int64), np.array([r[2] for r in rows], dtype=np.int64)
    )

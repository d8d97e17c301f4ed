"""Training and validation data of the encoder, as flat arrays that travel cheaply to Ray Train workers.

Built from the embed stage (texts and base vectors of every interaction and persona), the align stage
(positive persona of labelled training interactions) and, when given, the candidates stage (first-stage
lists of the validation users):

- **item examples**: every training interaction that has an earlier one, with the user's history
  strictly before it (the last L, :func:`~persona4rec.ranking.window`) and the item as the positive;
  optionally the first stage's hard negatives for that user (its validation list: a model trained on the
  training split only, the user's training items already left out);
- **persona examples** (``train``): a labelled interaction with its positive persona (the paper's labels);
- **held-out examples**: the labels of a deterministic share of users (``train.holdout_users``), never
  trained on, for persona-level recall;
- **validation users**: each user's valid-split interaction, with the last L training interactions as
  history, the user's training items excluded from a catalogue ranking, and each first stage's
  validation list (what the reranker will reorder: model selection happens on it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona4rec.errors import StageUnavailable
from persona4rec.ranking import window, windows
from persona4rec.schemas import arrow_to_vectors

if TYPE_CHECKING:
    from persona4rec.artifacts import StageResult
    from persona4rec.config import Config


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
class ItemExamples:
    """Rows of (history -> positive item); ``negatives`` (n, H) hard-negative item indices, -1 padded."""

    history: np.ndarray
    lengths: np.ndarray
    item: np.ndarray  # item index of the interaction
    user: np.ndarray  # user index (false-negative masking)
    negatives: np.ndarray

    def __len__(self) -> int:
        return len(self.item)

    def take(self, idx: np.ndarray) -> ItemExamples:
        return ItemExamples(self.history[idx], self.lengths[idx], self.item[idx], self.user[idx], self.negatives[idx])


@dataclass
class ValidationUsers:
    history: np.ndarray
    lengths: np.ndarray
    target_item: np.ndarray  # item index of the valid interaction
    seen_items: list[np.ndarray]  # item indices to exclude (the user's training items)
    #: generator -> (n, c) item indices of each user's validation list, best first; -1 for padding and for
    #: items without personas (they never outrank an item with personas here)
    lists: dict[str, np.ndarray] = field(default_factory=dict)
    #: generator -> users with a validation list: the denominator of a list metric (a miss scores 0)
    list_users: dict[str, int] = field(default_factory=dict)

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
    items: ItemExamples | None = None
    user_items: list[np.ndarray] = field(default_factory=list)  # per user index: training item indices
    item_popularity: np.ndarray | None = None  # (n_items,) training interactions per item

    @property
    def dim(self) -> int:
        return int(self.persona_vectors.shape[1])

    @cached_property
    def _item_slots(self) -> np.ndarray:
        order = np.argsort(self.persona_item, kind="stable")
        counts = np.bincount(self.persona_item, minlength=len(self.item_ids))
        slots = np.full((len(self.item_ids), max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(order)) - np.repeat(starts, counts)
        slots[self.persona_item[order], rank] = order
        return slots

    def item_slots(self) -> np.ndarray:
        """(n_items, W) persona indices of each item, -1 padded (W: the most personas of an item)."""
        return self._item_slots

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
    interactions: pa.Table,
    personas: pa.Table,
    labels: pa.Table,
    *,
    history: int,
    holdout_users: float,
    candidates: pa.Table | None = None,
    hard_negatives: int = 0,
    hard_negatives_from: str | None = None,
) -> AlignmentData:
    """``interactions``/``personas``: the embed stage's interaction_vectors/persona_vectors tables;
    ``candidates``: the candidates stage's table (its 'valid' lists are read, never 'test')."""
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
        earlier = window([r for r in train_rows.get(user, []) if positions[r] < pos], history)
        if not earlier:
            counts["labels_without_history"] += 1
            continue
        buckets[held_out(user, holdout_users)].append((earlier, persona_index[pid], user_index[user]))

    valid_hist, valid_target, valid_seen, valid_users = [], [], [], []
    counts["valid_users"] = len(valid_row)
    counts["valid_target_without_personas"] = 0
    for user, row in valid_row.items():
        target = item_index.get(inter_items[row])
        rows = train_rows.get(user, [])
        if target is None or not rows:
            counts["valid_target_without_personas"] += target is None
            continue
        valid_users.append(user)
        valid_hist.append(window(rows, history))
        valid_target.append(target)
        seen = sorted({item_index[inter_items[r]] for r in rows if inter_items[r] in item_index})
        valid_seen.append(np.array(seen, dtype=np.int64))

    train, heldout = (_examples(buckets[flag], history) for flag in (False, True))
    hist, lengths = windows(valid_hist, history)
    valid = ValidationUsers(hist, lengths, np.array(valid_target, dtype=np.int64), valid_seen)

    lists = _valid_lists(candidates, item_index) if candidates is not None else {}
    for gen, per_user in lists.items():
        width = max((len(v) for v in per_user.values()), default=0)
        mat = np.full((len(valid_users), width), -1, dtype=np.int64)
        for k, u in enumerate(valid_users):
            row = per_user.get(u, [])
            mat[k, : len(row)] = row
        valid.lists[gen], valid.list_users[gen] = mat, len(per_user)
    if hard_negatives and hard_negatives_from not in lists:
        raise ValueError(
            f"hard negatives from {hard_negatives_from!r}: the candidates hold validation lists of {sorted(lists)}"
        )
    negatives_of = lists.get(hard_negatives_from, {}) if hard_negatives else {}

    # every training interaction with an earlier one: history -> item (and its first-stage negatives)
    user_items = [np.zeros(0, dtype=np.int64)] * len(user_index)
    item_rows: list[tuple[list[int], int, int, list[int]]] = []
    counts["interactions_item_without_personas"] = 0
    for user, rows in train_rows.items():
        uidx = user_index[user]
        known = sorted({item_index[inter_items[r]] for r in rows if inter_items[r] in item_index})
        user_items[uidx] = np.array(known, dtype=np.int64)
        known_set = set(known)
        negs = [i for i in negatives_of.get(user, []) if i >= 0 and i not in known_set][:hard_negatives]
        for k, r in enumerate(rows[1:], start=1):
            target = item_index.get(inter_items[r])
            if target is None:
                counts["interactions_item_without_personas"] += 1
                continue
            item_rows.append((window(rows[:k], history), target, uidx, negs))
    ih, il = windows([r[0] for r in item_rows], history)
    neg = np.full((len(item_rows), hard_negatives), -1, dtype=np.int64)
    for k, r in enumerate(item_rows):
        neg[k, : len(r[3])] = r[3]
    items = ItemExamples(
        ih, il, np.array([r[1] for r in item_rows], dtype=np.int64),
        np.array([r[2] for r in item_rows], dtype=np.int64), neg,
    )  # fmt: skip
    popularity = np.zeros(len(item_ids), dtype=np.int64)
    for rows in train_rows.values():
        for r in rows:
            if inter_items[r] in item_index:
                popularity[item_index[inter_items[r]]] += 1
    counts.update(train_examples=len(train), heldout_examples=len(heldout), valid_examples=len(valid),
                  item_examples=len(items), valid_lists={g: int(n) for g, n in valid.list_users.items()})  # fmt: skip
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
        items=items,
        user_items=user_items,
        item_popularity=popularity,
    )


def _valid_lists(candidates: pa.Table, item_index: dict[str, int]) -> dict[str, dict[str, list[int]]]:
    """generator -> user -> the item indices of that user's 'valid' list (-1: an item without personas)."""
    out: dict[str, dict[str, list[int]]] = {}
    cols = (candidates[c].to_pylist() for c in ("generator", "split", "user_id", "items"))
    for gen, split, user, items in zip(*cols, strict=True):
        if split == "valid":
            out.setdefault(gen, {})[user] = [item_index.get(i, -1) for i in items]
    return out


def _examples(rows: list[tuple[list[int], int, int]], width: int) -> Examples:
    hist, lengths = windows([r[0] for r in rows], width)
    return Examples(
        hist, lengths, np.array([r[1] for r in rows], dtype=np.int64), np.array([r[2] for r in rows], dtype=np.int64)
    )


def load(cfg: Config, embedded: StageResult, aligned: StageResult, listed: StageResult) -> AlignmentData:
    """The encoder's training and validation data; only the 'valid' lists of train.lists (and of the hard
    negatives' generator) are read from the candidates."""
    o = cfg.encoder.objective
    wanted = sorted(set(cfg.train_lists) | ({o.hard_negatives_from} if o.hard_negatives else set()))
    lists = pq.read_table(listed.table("candidates"), filters=[("split", "=", "valid")])
    lists = lists.filter(pc.is_in(lists["generator"], pa.array(wanted, pa.string())))
    made = set(lists["generator"].to_pylist())
    if missing := [g for g in wanted if g not in made]:
        raise StageUnavailable(
            f"train reads the validation lists of {missing}, which `p4r candidates` did not make "
            f"(candidates.generators: {cfg.candidates.generators}); set train.lists or candidates.generators"
        )
    return build(
        pq.read_table(embedded.table("interaction_vectors")),
        pq.read_table(embedded.table("persona_vectors")),
        pq.read_table(aligned.table("labels")),
        history=cfg.encoder.profile.history,
        holdout_users=cfg.train.holdout_users,
        candidates=lists,
        hard_negatives=o.hard_negatives if o.target == "item" else 0,
        hard_negatives_from=o.hard_negatives_from,
    )

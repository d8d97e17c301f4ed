"""The user-item matrix of a leave-one-out split, as integer ids and compressed rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Interactions:
    """Training interactions as CSR rows (user -> item indices), with each user's held-out items.

    ``valid[u]`` / ``test[u]`` is the item index of user u's validation / test interaction, -1 when none.
    """

    user_ids: np.ndarray  # (n_users,) str, sorted
    item_ids: np.ndarray  # (n_items,) str, sorted
    indptr: np.ndarray  # (n_users + 1,) int64
    indices: np.ndarray  # (nnz,) int64, sorted within each row, no repeats
    valid: np.ndarray  # (n_users,) int64
    test: np.ndarray  # (n_users,) int64

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def row(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of every training interaction."""
        return np.repeat(np.arange(self.n_users), np.diff(self.indptr)), self.indices

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.indices, minlength=self.n_items)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Elementwise: is (users[k], items[k]) a training interaction? (binary search in sorted keys)"""
        keys = self._keys()
        probe = users.astype(np.int64) * self.n_items + items
        pos = np.searchsorted(keys, probe)
        return keys[np.minimum(pos, len(keys) - 1)] == probe if len(keys) else np.zeros(len(probe), bool)

    def _keys(self) -> np.ndarray:
        u, i = self.pairs()
        return u.astype(np.int64) * self.n_items + i  # sorted: rows ascending, indices sorted per row

    def seen(self, users: np.ndarray, split: str) -> list[np.ndarray]:
        """Items to leave out of each user's list: training items, plus the validation item for 'test'."""
        out = []
        for u in users:
            row = self.row(u)
            if split == "test" and self.valid[u] >= 0:
                row = np.append(row, self.valid[u])
            out.append(row)
        return out

    @classmethod
    def from_arrays(
        cls, users: np.ndarray, items: np.ndarray, splits: np.ndarray, user_ids=None, item_ids=None
    ) -> Interactions:
        """From parallel arrays of user ids, item ids and split names ('train', 'valid', 'test')."""
        users, items, splits = (np.asarray(a).astype(str) for a in (users, items, splits))
        user_ids = np.unique(users) if user_ids is None else np.asarray(user_ids).astype(str)
        item_ids = np.unique(items) if item_ids is None else np.asarray(item_ids).astype(str)
        u = np.searchsorted(user_ids, users)
        i = np.searchsorted(item_ids, items)
        train = splits == "train"
        keys = np.unique(u[train].astype(np.int64) * len(item_ids) + i[train])
        tu, ti = keys // len(item_ids), keys % len(item_ids)
        indptr = np.zeros(len(user_ids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(tu, minlength=len(user_ids)), out=indptr[1:])
        held = {}
        for name in ("valid", "test"):
            col = np.full(len(user_ids), -1, dtype=np.int64)
            mask = splits == name
            col[u[mask]] = i[mask]
            held[name] = col
        return cls(user_ids, item_ids, indptr, ti.astype(np.int64), held["valid"], held["test"])

    @classmethod
    def from_table(cls, table: pa.Table) -> Interactions:
        """From the prepare stage's ``interactions`` table (user_id, item_id, split)."""
        return cls.from_arrays(
            pc.cast(table["user_id"], pa.string()).to_numpy(zero_copy_only=False),
            pc.cast(table["item_id"], pa.string()).to_numpy(zero_copy_only=False),
            table["split"].to_numpy(zero_copy_only=False),
        )

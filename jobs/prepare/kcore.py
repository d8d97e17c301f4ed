"""Iterative k-core: drop users and items with fewer than k interactions until none is left.

The k-core is the subgraph induced by its surviving users and items, so both algorithms return just
those two id sets. Up to ``driver_max_pairs`` pairs the iteration runs in numpy on the driver (one
transfer, then microseconds per pass); beyond, it runs as Spark aggregations and joins.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def k_core(pairs: DataFrame, k: int, *, n_pairs: int, driver_max_pairs: int) -> tuple[DataFrame, DataFrame, int]:
    """(users, items, passes) of the k-core of ``pairs`` (unique (user_id, item_id) rows)."""
    if n_pairs <= driver_max_pairs:
        return _on_driver(pairs, k)
    return _on_spark(pairs, k)


def k_core_mask(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Which pairs (integer-coded users and items) survive the k-core, and the passes it took."""
    keep = np.ones(len(users), dtype=bool)
    n_users, n_items = (int(users.max()) + 1, int(items.max()) + 1) if len(users) else (0, 0)
    passes = 0
    while True:
        passes += 1
        user_deg = np.bincount(users[keep], minlength=n_users)
        item_deg = np.bincount(items[keep], minlength=n_items)
        nxt = keep & (user_deg[users] >= k) & (item_deg[items] >= k)
        if nxt.sum() == keep.sum():
            return keep, passes
        keep = nxt


def _on_driver(pairs: DataFrame, k: int) -> tuple[DataFrame, DataFrame, int]:
    table = pairs.select("user_id", "item_id").toArrow()
    user = table.column("user_id").combine_chunks().dictionary_encode()
    item = table.column("item_id").combine_chunks().dictionary_encode()
    keep, passes = k_core_mask(user.indices.to_numpy(), item.indices.to_numpy(), k)
    spark = pairs.sparkSession
    kept_users = user.dictionary.take(pa.array(np.unique(user.indices.to_numpy()[keep])))
    kept_items = item.dictionary.take(pa.array(np.unique(item.indices.to_numpy()[keep])))
    return (
        spark.createDataFrame(pa.table({"user_id": kept_users})),
        spark.createDataFrame(pa.table({"item_id": kept_items})),
        passes,
    )


def _on_spark(pairs: DataFrame, k: int) -> tuple[DataFrame, DataFrame, int]:
    current = pairs.select("user_id", "item_id").localCheckpoint()
    size = current.count()
    passes = 0
    while True:
        passes += 1
        users = current.groupBy("user_id").count().filter(F.col("count") >= k).select("user_id")
        items = current.groupBy("item_id").count().filter(F.col("count") >= k).select("item_id")
        nxt = current.join(users, "user_id", "left_semi").join(items, "item_id", "left_semi").localCheckpoint()
        new_size = nxt.count()
        current = nxt
        if new_size == size:
            return current.select("user_id").distinct(), current.select("item_id").distinct(), passes
        size = new_size

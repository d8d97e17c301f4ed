"""Iterative k-core: drop users and items with fewer than k interactions until none is left."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def k_core(pairs: DataFrame, k: int) -> tuple[DataFrame, int]:
    """Largest subset of (user_id, item_id) pairs in which every user and item has >= k pairs.

    ``pairs`` must be unique per (user, item). Returns the surviving pairs (checkpointed, so the
    iteration does not grow the query plan) and the number of passes it took.
    """
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
            return current, passes
        size = new_size

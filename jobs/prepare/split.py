"""Leave-one-out split by time: per user, last = test, second-to-last = valid, the rest train."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def leave_one_out(reviews: DataFrame) -> DataFrame:
    """Interactions with position, split and tie flag (order: timestamp, then review_id).

    Every user must have >= 3 interactions (guaranteed by the k-core, k >= 3).
    """
    by_user = Window.partitionBy("user_id")
    ordered = by_user.orderBy("timestamp", "review_id")
    df = reviews.select("user_id", "item_id", "review_id", "rating", "timestamp")
    df = (
        df.withColumn("position", F.row_number().over(ordered) - 1)
        .withColumn("_n", F.count("*").over(by_user))
        .withColumn(
            "tie_broken",
            F.coalesce(F.lag("timestamp").over(ordered) == F.col("timestamp"), F.lit(False))
            | F.coalesce(F.lead("timestamp").over(ordered) == F.col("timestamp"), F.lit(False)),
        )
        .withColumn(
            "split",
            F.when(F.col("position") == F.col("_n") - 1, "test")
            .when(F.col("position") == F.col("_n") - 2, "valid")
            .otherwise("train"),
        )
    )
    return df.drop("_n")


def tie_counts(interactions: DataFrame) -> dict[str, int]:
    """How often the split depended on the review_id tie-break."""
    held_out = interactions.filter(F.col("split") != "train")
    row = (
        held_out.groupBy()
        .agg(
            F.count_if((F.col("split") == "test") & F.col("tie_broken")).alias("test"),
            F.count_if((F.col("split") == "valid") & F.col("tie_broken")).alias("valid"),
        )
        .first()
    )
    return {
        "tie_broken_interactions": interactions.filter("tie_broken").count(),
        "users_test_tie_broken": int(row["test"] or 0),
        "users_valid_tie_broken": int(row["valid"] or 0),
    }

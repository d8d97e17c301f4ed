"""De-duplication and the metadata-based item filter: valid reviews in, kept + removed out."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from persona4rec.config import ItemFilterConfig


def deduplicate(reviews: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Keep one review per (user, item): the earliest, then the first in file order.

    Returns (kept, duplicates); each duplicate's ``detail`` names the review that was kept.
    """
    order = Window.partitionBy("user_id", "item_id").orderBy("timestamp", "source_file", "source_line")
    ranked = reviews.withColumn("_rank", F.row_number().over(order)).withColumn(
        "_kept_id", F.first("review_id").over(order)
    )
    kept = ranked.filter(F.col("_rank") == 1).drop("_rank", "_kept_id")
    dups = ranked.filter(F.col("_rank") > 1).select(
        "*", F.concat(F.lit("same user and item as review "), F.col("_kept_id")).alias("_detail")
    )
    return kept, dups.drop("_rank", "_kept_id")


def deduplicate_metadata(meta: DataFrame) -> tuple[DataFrame, DataFrame]:
    """One metadata record per item (the first in file order); returns (kept, duplicates)."""
    order = Window.partitionBy("item_id").orderBy("source_file", "source_line")
    ranked = meta.withColumn("_rank", F.row_number().over(order))
    return ranked.filter("_rank = 1").drop("_rank"), ranked.filter("_rank > 1").drop("_rank")


def filter_items(reviews: DataFrame, meta: DataFrame | None, rule: ItemFilterConfig) -> tuple[DataFrame, DataFrame]:
    """Apply the item filter; returns (kept, removed) where removed carries a ``_detail``."""
    active = rule.require_metadata or rule.categories_any or rule.cities
    if not active:
        return reviews, reviews.limit(0).withColumn("_detail", F.lit(None).cast("string"))
    if meta is None:
        why = "the dataset has no metadata, so no item can pass prepare.item_filter"
        return reviews.limit(0), reviews.withColumn("_detail", F.lit(why))
    m = meta.select(
        "item_id",
        F.lit(True).alias("_has_meta"),
        F.coalesce(F.col("categories"), F.array()).alias("_cats"),
        F.col("city").alias("_city"),
    )
    joined = reviews.join(m, "item_id", "left")
    detail = F.lit(None).cast("string")
    if rule.cities:
        wanted = F.array(*[F.lit(c) for c in rule.cities])
        detail = F.when(
            ~F.coalesce(F.array_contains(wanted, F.col("_city")), F.lit(False)), F.lit("city not listed")
        ).otherwise(detail)
    if rule.categories_any:
        wanted = F.array(*[F.lit(c) for c in rule.categories_any])
        detail = F.when(
            ~F.arrays_overlap(F.col("_cats"), wanted) | F.col("_cats").isNull(), F.lit("no listed category")
        ).otherwise(detail)
    if rule.require_metadata or rule.categories_any or rule.cities:
        detail = F.when(F.col("_has_meta").isNull(), F.lit("no metadata record")).otherwise(detail)
    joined = joined.withColumn("_detail", detail).drop("_has_meta", "_cats", "_city")
    return joined.filter(F.col("_detail").isNull()).drop("_detail"), joined.filter(F.col("_detail").isNotNull())

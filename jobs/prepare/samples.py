"""Per-item review samples for the LLM, spread over ratings and time.

Within each (item, rating) bucket, reviews are ordered by time and picked in bit-reversed index order
(0, n/2, n/4, 3n/4, …), so any prefix covers the bucket's time span evenly. Buckets are then visited
round-robin, lowest rating first, so minority and critical views are represented before the majority
repeats itself. ``sample_rank`` is the pick order: a prefix of a sample is itself a spread sample.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from persona4rec.config import SamplesConfig
from persona4rec.jobs.prepare.readers import strip


def bit_reversed(index: Column, bits: Column) -> Column:
    """``index`` with its lowest ``bits`` bits reversed (0 when bits is 0)."""
    padded = F.lpad(F.bin(index), bits, "0")
    return F.when(bits == 0, F.lit(0)).otherwise(F.conv(F.reverse(padded), 2, 10).cast("long"))


def review_samples(train_reviews: DataFrame, cfg: SamplesConfig) -> DataFrame:
    """At most ``cfg.max_per_item`` training reviews with text per item (columns of REVIEW_SAMPLES)."""
    eligible = train_reviews.filter(~F.col("empty_text") & (F.length(strip("text")) >= cfg.min_text_chars))
    eligible = eligible.repartition("item_id")  # one shuffle serves both windows (per bucket, per item)
    bucket = Window.partitionBy("item_id", "rating")
    in_time = bucket.orderBy("timestamp", "review_id")
    df = (
        eligible.withColumn("_i", F.row_number().over(in_time) - 1)
        .withColumn("_n", F.count("*").over(bucket))
        .withColumn("_bits", F.ceil(F.log2(F.col("_n"))).cast("int"))
        .withColumn("_spread", bit_reversed(F.col("_i"), F.col("_bits")))
        .withColumn("_round", F.row_number().over(bucket.orderBy("_spread")) - 1)
        .withColumn(
            "sample_rank",
            F.row_number().over(Window.partitionBy("item_id").orderBy("_round", "rating", "review_id")) - 1,
        )
    )
    return df.filter(F.col("sample_rank") < cfg.max_per_item).select(
        "item_id", "sample_rank", "review_id", "user_id", "rating", "timestamp", "title", "text"
    )

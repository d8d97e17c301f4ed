"""Raw input rows with their provenance: file name and 1-based line (or row) number."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

_ROW_BITS = 33  # monotonically_increasing_id = partition index << 33 | row index within the partition


def numbered(df: DataFrame) -> DataFrame:
    """Add ``source_file`` and ``source_line`` to rows read from files, in file order.

    A partition reads contiguous, ordered runs of one or more files, so a row's line number is its
    rank within its (file, partition) run plus the rows of the same file in earlier partitions. Costs
    one small aggregation over a second scan of the input, not a shuffle of the data.
    """
    tagged = df.select(
        "*",
        F.col("_metadata.file_name").alias("source_file"),
        F.monotonically_increasing_id().alias("_mid"),
    )  # not cached: a file scan yields the same partitions and ids each time it is read
    runs = (
        tagged.groupBy("source_file", F.shiftright("_mid", _ROW_BITS).alias("_part"))
        .agg(F.count("*").alias("_n"), F.min("_mid").alias("_first"))
        .withColumn(
            "_before",
            F.coalesce(
                F.sum("_n").over(
                    Window.partitionBy("source_file").orderBy("_part").rowsBetween(Window.unboundedPreceding, -1)
                ),
                F.lit(0),
            ),
        )
        .drop("_n")
    )
    return (
        tagged.withColumn("_part", F.shiftright("_mid", _ROW_BITS))
        .join(F.broadcast(runs), ["source_file", "_part"])
        .withColumn("source_line", F.col("_mid") - F.col("_first") + F.col("_before") + 1)
        .drop("_mid", "_part", "_first", "_before")
    )


def text_lines(spark: SparkSession, path: str) -> DataFrame:
    """Lines of a text file (gzip and other Hadoop codecs decompressed), as ``value``, numbered."""
    return numbered(spark.read.text(path))

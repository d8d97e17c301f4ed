"""SparkSession from configuration: ``local[*]`` by default, any master by ``spark.master``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from persona4rec.config import SparkConfig
from persona4rec.schemas import TableSchema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType


def spark_session(cfg: SparkConfig) -> SparkSession:
    """Get or create the process's SparkSession, configured from ``cfg``.

    Python workers run this interpreter (the project's environment) so they can import what the
    driver imports; a local master binds to loopback.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(cfg.master)
        .appName(cfg.app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.ansi.enabled", "true")
    )
    if cfg.master.startswith("local"):
        log4j = Path(__file__).with_name("log4j2.properties")
        builder = (
            builder.config("spark.ui.enabled", "false")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile={log4j.as_uri()}")
        )
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    return spark


def spark_type(arrow_type: pa.DataType) -> DataType:
    from pyspark.sql import types as T

    if pa.types.is_string(arrow_type):
        return T.StringType()
    if pa.types.is_int64(arrow_type):
        return T.LongType()
    if pa.types.is_float64(arrow_type):
        return T.DoubleType()
    if pa.types.is_boolean(arrow_type):
        return T.BooleanType()
    if pa.types.is_list(arrow_type):
        return T.ArrayType(spark_type(arrow_type.value_type))
    raise TypeError(f"no Spark type for {arrow_type}")


def spark_schema(table: TableSchema) -> StructType:
    from pyspark.sql import types as T

    return T.StructType([T.StructField(c.name, spark_type(c.type), c.nullable) for c in table])


def conform(df: DataFrame, table: TableSchema) -> DataFrame:
    """Select and cast ``df`` to exactly the table's contract, failing fast on a missing column."""
    from pyspark.sql import functions as F

    missing = [c.name for c in table if c.name not in df.columns]
    if missing:
        raise ValueError(f"table {table.name}: the job did not produce columns {missing}")
    return df.select([F.col(c.name).cast(spark_type(c.type)).alias(c.name) for c in table])

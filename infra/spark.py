"""SparkSession from configuration: ``local[*]`` by default, any master by ``spark.master``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from persona4rec.config import SparkConfig
from persona4rec.schemas import TableSchema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType


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


def spark_running() -> bool:
    """Whether this process already has a live SparkContext (started, and owned, by someone else)."""
    from pyspark import SparkContext

    return SparkContext._active_spark_context is not None


@contextlib.contextmanager
def stage_session(cfg: SparkConfig, spark: SparkSession | None = None) -> Iterator[SparkSession]:
    """The session a stage runs on: ``spark`` when given, else the process's own (:func:`spark_session`).

    A session this call started is stopped on exit, JVM included (:func:`stop_spark`), so that `p4r run`
    does not carry Spark's memory through every later stage; a session that was already running (a
    test's shared one, a notebook's) is left as it is.
    """
    if spark is not None:
        yield spark
        return
    started = not spark_running()
    session = spark_session(cfg)
    try:
        yield session
    finally:
        if started:
            stop_spark(session)


def stop_spark(spark: SparkSession, timeout_s: float = 30.0) -> None:
    """Stop ``spark`` and end its JVM: ``SparkSession.stop()`` alone keeps the gateway JVM (and its heap)
    alive for the next session of the process. The JVM exits when its stdin closes; it is killed if it
    lingers past ``timeout_s``. The next :func:`spark_session` starts a fresh one."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    try:
        spark.stop()
    except Exception as exc:  # noqa: BLE001 - a JVM that died already: still end what is left of it
        warnings.warn(f"stopping Spark: {exc}", RuntimeWarning, stacklevel=2)
    if gateway is None:
        return
    with SparkContext._lock:
        SparkContext._gateway = None
        SparkContext._jvm = None
    proc: subprocess.Popen | None = getattr(gateway, "proc", None)
    with contextlib.suppress(Exception):  # py4j's own shutdown may complain about a closing JVM
        gateway.shutdown()
    if proc is None:  # a gateway this process did not launch: not ours to end
        return
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


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


def conform(df: DataFrame, table: TableSchema) -> DataFrame:
    """Select and cast ``df`` to exactly the table's contract, failing fast on a missing column."""
    from pyspark.sql import functions as F

    missing = [c.name for c in table if c.name not in df.columns]
    if missing:
        raise ValueError(f"table {table.name}: the job did not produce columns {missing}")
    return df.select([F.col(c.name).cast(spark_type(c.type)).alias(c.name) for c in table])

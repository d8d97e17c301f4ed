"""`p4r prepare` on a Spark standalone cluster (issue #28): executors in another JVM, the same tables as local mode."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.clusters import current
from tests.clusters import manifest as read_manifest

pytestmark = pytest.mark.slow

TABLES = ("reviews", "items", "interactions", "review_samples", "quarantine")


def _table(folder, name) -> pd.DataFrame:
    """A table in a total order of its rows (their text), whatever order the writers left it in."""
    frame = pd.read_parquet(folder / name)
    order = frame.astype(str).agg("\x1f".join, axis=1).sort_values(kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def test_prepare_on_spark_standalone_writes_the_tables_local_mode_writes(
    spark_standalone, cluster_prepared, mi_pipeline
):
    on_cluster = cluster_prepared.folder
    manifest = read_manifest(on_cluster)
    assert manifest["environment"]["spark_master"] == spark_standalone.master

    # the work ran in executors of the worker's JVMs, not in the driver: the master lists a finished application
    # that held the worker's cores, and the worker has an executor folder for it
    apps = spark_standalone.state()["completedapps"]
    assert apps and apps[-1]["cores"] >= 1, apps
    executors = list(spark_standalone.work_dir.glob(f"{apps[-1]['id']}/*/stderr"))
    assert executors, f"no executor ran on the worker ({sorted(spark_standalone.work_dir.iterdir())})"
    assert "Finished task" in "".join(e.read_text(errors="replace") for e in executors)

    # the same input in local mode: conftest's corpus of the same settings, prepared by the session's local[2] Spark
    config, _ = mi_pipeline
    in_local = current(Path(config().paths.artifacts), "prepare")
    assert in_local.name == on_cluster.name  # where it runs is not part of the version
    local_manifest = read_manifest(in_local)
    assert local_manifest["environment"]["spark_master"].startswith("local")
    assert manifest["summary"] == local_manifest["summary"] and manifest["summary"]["input_lines"] == 10_261
    for name in TABLES:
        a, b = _table(on_cluster, name), _table(in_local, name)
        assert len(a) == manifest["tables"][name]["rows"], name
        pd.testing.assert_frame_equal(a, b, obj=name)
    assert len(_table(on_cluster, "interactions")) == 544

"""`prepare` stops the Spark it started, JVM included, so `p4r run` does not carry Spark's memory through
every later stage; a session it found running (the tests' shared one) is left alone (issue #25, item 7).

The first test runs in a fresh interpreter: the test session's own Spark (conftest) must not be the one
that gets stopped, and only a process without one shows whether the stage leaves a JVM behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from persona4rec import jobs
from persona4rec.config import load_config

REPO = Path(__file__).resolve().parents[1]
A23 = Path(__file__).resolve().parent / "fixtures" / "amazon2023"


def _overrides(root: Path) -> list[str]:
    return [
        f"paths.artifacts={root}",
        f"data.local_dir={A23}",
        "data.reviews.filename=reviews.jsonl",
        "data.metadata.filename=meta.jsonl",
        "prepare.k_core=3",
        "spark.master=local[1]",
        "spark.shuffle_partitions=2",
        "spark.driver_memory=1g",
    ]


SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time

    import psutil
    from pyspark import SparkContext

    from persona4rec import jobs
    from persona4rec.config import load_config
    me = psutil.Process()
    peak_java = 0
    watching = True

    def children():
        out = []
        for p in me.children(recursive=True):
            try:
                out.append(p.name())
            except psutil.Error:
                pass
        return out

    def watch():
        global peak_java
        while watching:
            peak_java = max(peak_java, sum(name == "java" for name in children()))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    cfg = load_config(json.loads(sys.argv[1]), dataset="amazon2023-musical-instruments").config
    first = jobs.run("prepare", cfg, progress=False)
    after_first = children()
    second = jobs.run("prepare", cfg, force=True, progress=False)  # a fresh JVM starts after the first one ended
    watching = False
    watcher.join()
    print(json.dumps({
        "rows": [first.manifest.tables["reviews"]["rows"], second.manifest.tables["reviews"]["rows"]],
        "peak_java": peak_java,
        "after_first": after_first,
        "after_second": children(),
        "context": SparkContext._active_spark_context is not None,
        "gateway": SparkContext._gateway is not None,
    }))
    """
)


def test_prepare_stops_the_spark_and_the_jvm_it_started(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(_overrides(tmp_path / "artifacts"))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["rows"] == [9, 9]
    assert seen["peak_java"] >= 1  # Spark did run in a JVM child of this process...
    assert seen["after_first"] == [] and seen["after_second"] == []  # ...which is gone after each run
    assert not seen["context"] and not seen["gateway"]


def test_prepare_leaves_a_running_session_alone(spark, tmp_path: Path):
    shared = ["spark.master=local[2]", "spark.shuffle_partitions=4", "spark.driver_memory=2g"]  # as in conftest
    cfg = load_config([*_overrides(tmp_path / "artifacts"), *shared], dataset="amazon2023-musical-instruments").config
    result = jobs.run("prepare", cfg, progress=False)  # no session passed: it joins the one already running
    assert result.manifest.tables["reviews"]["rows"] == 9
    assert spark.range(5).count() == 5
    assert spark.sparkContext._jsc is not None

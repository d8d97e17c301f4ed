"""`p4r index` and `p4r serve` on the real Musical Instruments pipeline.

A real `milvus-lite server` (the documented way to share an index between processes) holds the index;
`p4r serve` runs as its own process and is called over HTTP, including malformed requests; a rebuilt
index is picked up by the running service (hot reload).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from persona4rec import jobs, schemas
from tests.conftest import FAST, _stop_group, _tail, free_port, wait_for_http

MAX_CANDIDATES = 50


def _wait_port(port: int, proc: subprocess.Popen, log, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"milvus-lite server exited with {proc.returncode}:\n{_tail(log)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"milvus-lite server not listening after {timeout}s:\n{_tail(log)}")


@pytest.fixture(scope="module")
def served(mi_pipeline, tmp_path_factory):
    """A trained champion, its index in a real `milvus-lite server`, and `p4r serve` on top of it."""
    config, _ = mi_pipeline
    tmp = tmp_path_factory.mktemp("serve")
    milvus_port, http_port = free_port(), free_port()
    milvus_log = tmp / "milvus.log"
    milvus_proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "milvus-lite"), "server", "--data-dir", str(tmp / "milvus"),
         "--host", "127.0.0.1", "--port", str(milvus_port)],
        stdout=milvus_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    overrides = (
        f"index.uri=http://127.0.0.1:{milvus_port}", "index.index_type=FLAT", "serve.reload_interval_s=0.5",
        f"serve.max_candidates={MAX_CANDIDATES}", "serve.max_k=30",
    )  # fmt: skip
    serve_proc = None
    try:
        _wait_port(milvus_port, milvus_proc, milvus_log)
        trained = jobs.run("train", config(), progress=False)  # reused when the training tests ran first
        # index that version by number: promotion (and its "no champion yet") is test_train_job's to check
        cfg = config(*overrides, f"index.encoder_version={trained.summary.mlflow['version']}")
        first = jobs.run("index", cfg, progress=False)
        serve_log = tmp / "serve.log"
        args = [f"paths.artifacts={cfg.paths.artifacts}", f"data.local_dir={cfg.data.local_dir}", *overrides]
        serve_proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "p4r"), "serve", "-d", cfg.dataset, "--port",
             str(http_port), *FAST, *args],
            stdout=serve_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{http_port}"
        wait_for_http(f"{url}/ready", alive=lambda: serve_proc.poll() is None, what="p4r serve", log=serve_log)
        yield cfg, url, first
    finally:
        for proc in (serve_proc, milvus_proc):
            if proc is not None:
                _stop_group(proc)


def _users(first) -> dict:
    table = pq.read_table(first.table("user_profiles"))
    vectors = schemas.arrow_to_vectors(table["vector"])
    return {u: (vectors[i], items) for i, (u, items) in enumerate(zip(table["user_id"].to_pylist(),
            table["items"].to_pylist(), strict=True))}  # fmt: skip


def _personas(cfg):
    from persona4rec.infra import milvus

    client = milvus.connect(cfg)
    try:
        cols = milvus.read(client, cfg.index_alias, ["persona_id", "item_id", "vector"])
    finally:
        client.close()
    return cols["persona_id"], np.asarray(cols["item_id"]), np.asarray(cols["vector"], dtype=np.float32)


def test_index_stage_writes_a_checked_version_and_a_rerun_does_nothing(served):
    cfg, _, first = served
    c = first.summary
    assert not first.skipped and c.rows == c.personas + c.summary_rows and c.personas > 62
    assert c.copied == 0 and c.encoded == c.rows and c.self_queries_checked == cfg.index.check_queries
    assert c.users == 92 and first.manifest.tables["item_popularity"]["rows"] == 62
    again = jobs.run("index", cfg, progress=False)
    assert again.skipped and again.summary.collection == c.collection


def test_rerank_over_http_is_max_over_personas_with_the_argmax_as_explanation(served):
    cfg, url, first = served
    users = _users(first)
    pids, items, vectors = _personas(cfg)
    user = sorted(users)[7]
    profile, _ = users[user]
    candidates = sorted(set(items.tolist()))[:20]
    r = httpx.post(f"{url}/rerank", json={"user_id": user, "candidates": candidates})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index"] == first.summary.collection and body["fallback"] is None
    sims = vectors @ profile
    expected = {c: sims[items == c].max() for c in candidates}
    got = [(it["item_id"], it["score"]) for it in body["items"]]
    assert sorted(i for i, _ in got) == sorted(candidates)
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    for it in body["items"]:
        assert it["score"] == pytest.approx(expected[it["item_id"]], abs=1e-4)
        winner = pids.index(it["explanation"]["persona_id"])
        assert items[winner] == it["item_id"] and sims[winner] == pytest.approx(it["score"], abs=1e-4)
        explanation = it["explanation"]
        if explanation["kind"] == "persona":
            assert explanation["name"] and explanation["evidence"]
        else:  # an item without personas is scored and explained by its summary row
            assert explanation["kind"] == "summary" and explanation["name"] == it["item_id"]

    fused = httpx.post(
        f"{url}/rerank",
        json={"user_id": user, "candidates": candidates, "first_stage_scores": list(range(20, 0, -1))},
    )
    assert fused.status_code == 200 and fused.json()["items"][0]["first_stage"] is not None


def test_recommend_over_http_excludes_what_the_user_has_and_equals_brute_force(served):
    cfg, url, first = served
    users = _users(first)
    pids, items, vectors = _personas(cfg)
    user = sorted(users)[3]
    profile, seen = users[user]
    r = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 10})
    assert r.status_code == 200, r.text
    got = [it["item_id"] for it in r.json()["items"]]
    sims = vectors @ profile
    best = {i: sims[items == i].max() for i in set(items.tolist()) - set(seen)}
    assert got == sorted(best, key=lambda i: -best[i])[:10]
    assert not set(got) & set(seen)

    personas = httpx.get(f"{url}/items/{got[0]}/personas")
    assert personas.status_code == 200 and len(personas.json()) == int((items == got[0]).sum())


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/rerank", {"candidates": ["x"]}, 422, "user_id"),
        ("/rerank", {"user_id": "u", "candidates": []}, 422, "candidates"),
        ("/rerank", {"user_id": "u", "candidates": [f"i{n}" for n in range(MAX_CANDIDATES + 1)]}, 422, "at most"),
        ("/rerank", {"user_id": "u", "candidates": ["a", "a"]}, 422, "repeat"),
        ("/rerank", {"user_id": "u", "candidates": ["a"], "first_stage_scores": [1, 2]}, 422, "2 first_stage_scores"),
        ("/rerank", {"user_id": "u", "candidates": ["a"], "extra": 1}, 422, "extra"),
        ("/recommend", {"user_id": "u", "k": 0}, 422, "greater than or equal to 1"),
        ("/recommend", {"user_id": "u", "k": 31}, 422, "less than or equal to 30"),
        ("/recommend", {"user_id": "nobody", "k": 5}, 404, "unknown user 'nobody'"),
    ],
)
def test_malformed_requests_get_a_4xx_that_says_what_is_wrong(served, path, body, status, says):
    _, url, _ = served
    r = httpx.post(f"{url}{path}", json=body)
    assert r.status_code == status and says in r.text, r.text


def test_unknown_items_and_bad_json_are_named(served):
    cfg, url, first = served
    user = sorted(_users(first))[0]
    r = httpx.post(f"{url}/rerank", json={"user_id": user, "candidates": ["B000NOPE", "B000GONE"]})
    assert r.status_code == 422 and r.json()["unknown_items"] == ["B000NOPE", "B000GONE"]
    r = httpx.post(f"{url}/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "json" in r.text.lower()
    assert httpx.get(f"{url}/items/B000NOPE/personas").status_code == 404


def test_health_metrics_and_openapi(served):
    _, url, _ = served
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/ready").json()
    assert ready["status"] == "ready" and ready["users"] == 92 and ready["items"] == 62
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/rerank", "/recommend", "/items/{item_id}/personas", "/health", "/ready"} <= set(paths)
    text = httpx.get(f"{url}/metrics").text
    assert 'p4r_request_latency_seconds_bucket{le="0.001",route="/rerank"}' in text
    assert 'p4r_request_errors_total{route="/recommend"}' in text and "p4r_index_personas" in text


def test_the_running_service_swaps_in_a_rebuilt_index(served):
    cfg, url, first = served
    old = first.summary.collection
    rebuilt = jobs.run("index", cfg, force=True, progress=False)
    c = rebuilt.summary
    new = c.collection
    assert new != old and c.replaced == old
    assert c.copied == c.rows and c.encoded == 0  # nothing changed: every vector was copied
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/ready").json()["index"] != new:
        assert time.monotonic() < deadline, "the service did not pick up the new index version"
        time.sleep(0.2)
    user = sorted(_users(first))[0]
    r = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 3})
    assert r.status_code == 200 and r.json()["index"] == new
    from persona4rec.infra import milvus

    client = milvus.connect(cfg)
    try:  # the old version stays until dropped
        assert {v.name: v.live for v in milvus.versions(client, cfg.index_alias)} == {old: False, new: True}
    finally:
        client.close()

    from click.testing import CliRunner

    from persona4rec.cli import main

    args = ["-d", cfg.dataset, f"paths.artifacts={cfg.paths.artifacts}", f"index.uri={cfg.index.uri}"]
    listed = CliRunner().invoke(main, ["index", "--list", *args])
    assert listed.exit_code == 0 and f"* {new}" in listed.output and f"  {old}" in listed.output, listed.output
    refused = CliRunner().invoke(main, ["index", "--drop", new, *args])
    assert refused.exit_code == 2 and "is the live version" in refused.output
    dropped = CliRunner().invoke(main, ["index", "--drop", old, *args])
    assert dropped.exit_code == 0 and f"dropped {old}" in dropped.output


def test_rerank_with_first_stage_scores_uses_the_learned_reranker_registered_with_the_encoder(served, tmp_path):
    from persona4rec import learned
    from persona4rec.infra import mlflow as registry
    from persona4rec.scoring import PersonaTable

    cfg, url, _ = served
    rng = np.random.default_rng(0)
    n, c = 60, 10  # made-up validation lists whose held-out item is the most popular: a model that reads popularity
    stats = {k: rng.random((n, c)).astype(np.float32) for k in ("max", "second", "mean")}
    stats["count"] = np.full((n, c), 3)
    pop = rng.integers(1, 100, (n, c))
    x = learned.features(stats, rng.random((n, c)), pop, rng.integers(1, 9, n))
    model = learned.fit(x, pop.argmax(1), folds=2, leaves=(7,), min_leaf=(5,), rounds=(25,))
    registry.log_reranker(cfg, cfg.index.encoder_version, model.save(tmp_path / "m"), cfg.learned_generator, "test")
    rebuilt = jobs.run("index", cfg, force=True, progress=False)  # a new snapshot loads what its encoder has
    new = rebuilt.summary.collection
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/ready").json()["index"] != new:
        assert time.monotonic() < deadline, "the service did not pick up the new index version"
        time.sleep(0.2)

    users = _users(rebuilt)
    user = sorted(users)[3]
    pids, items, vectors = _personas(cfg)
    candidates = sorted(set(items.tolist()))[:15]
    first_stage = [float(v) for v in np.linspace(2.0, 1.0, len(candidates))]
    r = httpx.post(f"{url}/rerank", json={"user_id": user, "candidates": candidates, "first_stage_scores": first_stage})
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    popularity = dict(zip(*(pq.read_table(rebuilt.table("item_popularity"))[c].to_pylist()
                            for c in ("item_id", "interactions")), strict=True))  # fmt: skip
    profiles = pq.read_table(rebuilt.table("user_profiles")).to_pylist()
    history = next(p["n_interactions"] for p in profiles if p["user_id"] == user)
    table = PersonaTable.of_vectors(np.asarray(items, dtype=object), vectors)
    want = learned.rerank(table, users[user][0], candidates, first_stage, model,
                          [popularity.get(i, 0) for i in candidates], history)  # fmt: skip
    assert [it["item_id"] for it in got] == want.item_ids
    np.testing.assert_allclose([it["score"] for it in got], want.scores, rtol=1e-5)
    for it in got:  # the explanation stays the item's best persona
        winner = pids.index(it["explanation"]["persona_id"])
        assert items[winner] == it["item_id"]
        assert it["persona_score"] == pytest.approx(
            float((vectors[items == it["item_id"]] @ users[user][0]).max()), abs=1e-4
        )


def test_unknown_users_fall_back_to_popularity_when_configured(served):
    cfg, _, first = served
    from persona4rec.infra import milvus
    from persona4rec.serve.recommender import Recommender
    from persona4rec.serve.snapshot import Watcher, load

    pop_cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"unknown_user": "popularity"})})
    client = milvus.connect(pop_cfg)
    try:
        watcher = Watcher(lambda: milvus.resolve(client, cfg.index_alias), lambda n: load(client, n), 60)
        assert watcher.refresh()
        rec = Recommender(pop_cfg, watcher, client)
        popular = pq.read_table(first.table("item_popularity"))["item_id"].to_pylist()
        top = rec.recommend("someone-new", 5)
        assert top.fallback == "popularity" and [i["item_id"] for i in top.items] == popular[:5]
        reranked = rec.rerank("someone-new", list(reversed(popular[:4])))
        assert [i["item_id"] for i in reranked.items] == popular[:4]
        assert all(i["explanation"] is None for i in reranked.items)
    finally:
        client.close()

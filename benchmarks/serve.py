"""Benchmark the online path: in-process rerank, HTTP under load, full-catalogue recommend in Milvus.

    python benchmarks/serve.py                                  # every part (~20 min on 2 cores)
    python benchmarks/serve.py --parts rerank,http --sizes 10000,100000

Parts (``--parts``):

- ``rerank``: :func:`persona4rec.scoring.rerank` (and the service's ``Recommender.rerank``, which adds
  the response dicts) on a 100k-persona table in memory, for 20 and 100 candidates: p50/p99 per call;
- ``http``: `p4r serve` (uvicorn, one process) over a `milvus-lite server`, POST /rerank with 20
  candidates under `wrk` (Debian package `wrk`) on loopback for ``--seconds``: latency, requests/s, errors;
- ``recommend``: top 10 items (5 excluded) per user on collections of ``--sizes`` personas, with
  ``--index-type``, on each of ``--backends``: ``lite`` (a `milvus-lite server`), ``server`` (the Milvus 2.3.5
  standalone server of the ``milvus`` package, started here on loopback with ``--shards`` shards; it has no
  grouping search, so infra/milvus.py groups plain persona searches by item), or ``uri`` (a server you run,
  ``--server-uri``); recall@10 of the items against brute force, one table for every backend.

    python benchmarks/serve.py --parts recommend --backends lite,server --sizes 100000,1000000 --queries 200

Vectors are synthetic and clustered like real embeddings: each item has a centre, its personas lie
around it, users lie near a random persona (uniform random vectors would make ANN look worse than it
is on text embeddings). Prints a Markdown table per part; ``--json`` writes the raw figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from persona4rec import schemas
from persona4rec.config import IndexConfig, load_config
from persona4rec.infra import milvus
from persona4rec.jobs.index.build import build_version
from persona4rec.scoring import PersonaTable, rerank
from persona4rec.serve.recommender import Recommender
from persona4rec.serve.snapshot import Snapshot, Watcher

PER_ITEM = 5
DATASET = "amazon2014-musical-instruments"  # any dataset layer: serving reads only the index and the config


def catalogue(n_personas: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(item index of each persona, unit persona vectors): PER_ITEM personas around each item's centre."""
    rng = np.random.default_rng(seed)
    n_items = max(1, n_personas // PER_ITEM)
    centres = rng.normal(size=(n_items, dim)).astype(np.float32)
    item_of = np.repeat(np.arange(n_items), PER_ITEM)[:n_personas]
    vectors = np.empty((n_personas, dim), dtype=np.float32)
    for lo in range(0, n_personas, 200_000):  # bounded memory at 1M x 384
        hi = min(lo + 200_000, n_personas)
        vectors[lo:hi] = centres[item_of[lo:hi]] + 0.6 * rng.normal(size=(hi - lo, dim)).astype(np.float32)
    return item_of, _unit(vectors)


def users_near(vectors: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = vectors[rng.integers(0, len(vectors), size=n)]
    noise = rng.normal(size=picks.shape).astype(np.float32) / np.sqrt(vectors.shape[1])  # norm ~1: cos ~0.7
    return _unit(picks + noise)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def table_of(item_of: np.ndarray, vectors: np.ndarray) -> PersonaTable:
    n = len(item_of)
    return PersonaTable(
        persona_ids=np.array([f"p{i}" for i in range(n)], dtype=object),
        item_of=np.array([f"i{j:07d}" for j in item_of], dtype=object),
        vectors=vectors, names=[f"Persona {i}" for i in range(n)], descriptions=["d"] * n, rationales=["r"] * n,
        evidence=[[f"rev{i}"] for i in range(n)], kinds=["persona"] * n,
    )  # fmt: skip


def index_table(item_of: np.ndarray, vectors: np.ndarray) -> pa.Table:
    n = len(item_of)
    return pa.table(
        {
            "persona_id": [f"p{i}" for i in range(n)],
            "item_id": [f"i{j:07d}" for j in item_of],
            "kind": ["persona"] * n,
            "name": [f"Persona {i}" for i in range(n)],
            "description": ["d"] * n,
            "rationale": ["r"] * n,
            "evidence": [[f"rev{i}"] for i in range(n)],
            "text_sha": ["x"] * n,
            "encoder": ["bench/1/run"] * n,
            "vector": schemas.vectors_to_arrow(vectors),
        },
        schema=schemas.INDEX_ROWS.arrow(),
    )


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


# --------------------------------------------------------------------------------------------- parts


def bench_rerank(dim: int, n_personas: int, calls: int) -> list[dict]:
    item_of, vectors = catalogue(n_personas, dim)
    table = table_of(item_of, vectors)
    users = users_near(vectors, 256)
    rng = np.random.default_rng(2)
    snap = Snapshot("bench", {}, table, {f"u{i}": i for i in range(len(users))}, users, [[] for _ in users], [], 0.0)
    watcher = Watcher(lambda: "bench", lambda _: snap, 60)
    watcher.current = snap
    rec = Recommender(load_config([], dataset=DATASET).config, watcher, client=None)
    rows = []
    for n_cand in (20, 100):
        cands = [list(table.item_ids[rng.choice(len(table.item_ids), n_cand, replace=False)]) for _ in range(64)]
        for name, fn in (
            ("scoring.rerank", lambda i, c: rerank(table, users[i % 256], c)),
            ("Recommender.rerank (service, no HTTP)", lambda i, c: rec.rerank(f"u{i % 256}", c)),
        ):
            for i in range(200):  # warm-up
                fn(i, cands[i % 64])
            times = []
            for i in range(calls):
                t0 = time.perf_counter()
                fn(i, cands[i % 64])
                times.append(time.perf_counter() - t0)
            rows.append({"part": "rerank", "what": name, "personas": n_personas, "candidates": n_cand,
                         **percentiles(times)})  # fmt: skip
    return rows


def bench_recommend(
    dim: int,
    sizes: list[int],
    queries: int,
    icfg: IndexConfig,
    uri: str,
    backend: str = "lite",
    search_grid: list[dict] | None = None,
) -> list[dict]:
    """Build a collection per size, then time ``queries`` users one at a time for each search setting of
    ``search_grid`` (default: ``icfg.search_params``) on that one build."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    version = milvus.server_version(client)
    grouping = milvus.supports_grouping(client)
    rows = []
    for size in sizes:
        item_of, vectors = catalogue(size, dim, seed=size)
        users = users_near(vectors, queries, seed=size + 1)
        rng = np.random.default_rng(size)
        n_items = int(item_of.max()) + 1
        seen = [rng.choice(n_items, 5, replace=False) for _ in range(queries)]
        name = f"bench_{size}"
        if client.has_collection(name):
            client.drop_collection(name)
        t0 = time.perf_counter()
        build_version(client, name, index_table(item_of, vectors), icfg, {}, progress=True)
        build_s = time.perf_counter() - t0
        try:  # the segments a search visits (each holds its own index); Milvus Lite does not say
            segments: int | None = len(client.list_loaded_segments(name))
        except Exception:  # noqa: BLE001
            segments = None
        exclude = [[f"i{j:07d}" for j in s] for s in seen]
        truth = brute_force_top(users, item_of, vectors, n_items, seen, 10)
        for params in search_grid or [icfg.search_params]:
            scfg = icfg.model_copy(update={"search_params": params})
            for u in range(min(20, queries)):  # warm-up
                milvus.search_items(client, name, users[u : u + 1], 10, scfg, [exclude[u]])
            times, hits = [], []
            for u in range(queries):
                t0 = time.perf_counter()
                got = milvus.search_items(client, name, users[u : u + 1], 10, scfg, [exclude[u]])[0]
                times.append(time.perf_counter() - t0)
                hits.append([int(h["item_id"][1:]) for h in got])
            recall = float(np.mean([len(set(h) & set(t)) / 10 for h, t in zip(hits, truth, strict=True)]))
            rows.append({"part": "recommend", "backend": backend, "version": version,
                         "search_path": "grouping search" if grouping else "persona search, grouped here",
                         "shards": icfg.shards if backend != "lite" else 1, "segments": segments,
                         "personas": size, "items": n_items,
                         "index_type": icfg.index_type, "search": json.dumps(params),
                         "build_s": round(build_s, 1), "recall@10": recall, **percentiles(times)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        client.drop_collection(name)
    client.close()
    return rows


def brute_force_top(users, item_of, vectors, n_items, seen, k) -> list[list[int]]:
    """Exact top-k items by max over personas (personas are stored item by item, so reduceat applies)."""
    starts = np.searchsorted(item_of, np.arange(n_items))
    out = []
    for lo in range(0, len(users), 16):
        scores = np.maximum.reduceat(users[lo : lo + 16] @ vectors.T, starts, axis=1)
        for r, row in enumerate(scores):
            row[seen[lo + r]] = -np.inf
            out.append(np.argsort(-row, kind="stable")[:k].tolist())
    return out


def bench_http(dim: int, seconds: int, connections: int, root: Path, milvus_uri: str) -> list[dict]:
    if shutil.which("wrk") is None:
        print("http: skipped, no `wrk` on PATH (apt-get install wrk)")
        return []
    from pymilvus import MilvusClient

    item_of, vectors = catalogue(10_000, dim, seed=7)
    users = users_near(vectors, 1000, seed=8)
    art = root / "index-artifacts"
    for name in ("user_profiles", "item_popularity"):
        (art / name).mkdir(parents=True, exist_ok=True)
    items = [f"i{j:07d}" for j in range(int(item_of.max()) + 1)]
    pq.write_table(
        pa.table({"user_id": [f"u{i}" for i in range(len(users))], "vector": schemas.vectors_to_arrow(users),
                  "items": [[items[i % len(items)]] for i in range(len(users))],
                  "n_interactions": np.ones(len(users), dtype=np.int64)}, schema=schemas.USER_PROFILES.arrow()),
        art / "user_profiles" / "part-0.parquet",
    )  # fmt: skip
    pq.write_table(
        pa.table({"item_id": items, "interactions": np.ones(len(items), dtype=np.int64)}),
        art / "item_popularity" / "part-0.parquet",
    )
    client = MilvusClient(milvus_uri)
    alias = "p4r_bench_http"
    build_version(client, f"{alias}__v1", index_table(item_of, vectors), IndexConfig(), {"artifacts": str(art)})
    milvus.move_alias(client, alias, f"{alias}__v1")
    client.close()

    port = _free_port()
    log = root / "serve.log"
    p4r = Path(sys.executable).parent / "p4r"
    proc = subprocess.Popen(
        [str(p4r), "serve", "-d", DATASET, "--port", str(port), f"paths.artifacts={root}",
         f"index.uri={milvus_uri}", f"index.alias={alias}"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_ready(f"http://127.0.0.1:{port}/ready", proc, log)
        rng = np.random.default_rng(9)
        bodies = [
            json.dumps({"user_id": f"u{rng.integers(1000)}", "candidates": list(rng.choice(items, 20, replace=False))})
            for _ in range(256)
        ]
        script = root / "rerank.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nbodies = {\n'
            + ",\n".join("  " + json.dumps(b) for b in bodies)
            + "\n}\ni = 0\nrequest = function()\n  i = i % #bodies + 1\n"
            '  return wrk.format(nil, "/rerank", nil, bodies[i])\nend\n'
        )
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
             f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        print(out)
        return [{"part": "http", "route": "POST /rerank (20 candidates)", "connections": connections,
                 "seconds": seconds, **parse_wrk(out)}]  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def parse_wrk(out: str) -> dict:
    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]

    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms(lat["50"]),
        "p99_ms": ms(lat["99"]),
        "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"p4r serve exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready: {log.read_text()[-3000:]}")


@contextlib.contextmanager
def lite_server(folder: Path):
    """A `milvus-lite server` on loopback (the way several processes share a Milvus Lite folder)."""
    port = _free_port()
    exe = Path(sys.executable).parent / "milvus-lite"
    log = folder.parent / "milvus.log"
    proc = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"milvus-lite server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def milvus_server(folder: Path, extra: tuple[str, ...] = ()):
    """The Milvus 2.3.5 standalone server (`milvus-server`, ``pip install milvus==2.3.5``) on loopback.

    Every port is chosen free; its embedded etcd listens on 127.0.0.1 (``ETCD_CONFIG_PATH``), its components
    announce 127.0.0.1. The settings are the ones tests/clusters.py starts it with; ``extra`` adds Milvus
    settings (``dataCoord.segment.maxSize=2048``: keys of its milvus.yaml).
    """
    exe = Path(sys.executable).parent / "milvus-server"
    if not exe.exists():
        raise SystemExit("no milvus-server here: pip install milvus==2.3.5 (the dev extra has it)")
    folder.mkdir(parents=True, exist_ok=True)
    ports = {
        name: _free_port()
        for name in ("proxy-port", "etcd-port", "root-coord-port", "proxy-internal-port", "query-coord-port",
                     "query-node-port", "index-coord-port", "index-node-port", "data-coord-port", "data-node-port")
    }  # fmt: skip
    client_url, peer_url = f"http://127.0.0.1:{ports['etcd-port']}", f"http://127.0.0.1:{_free_port()}"
    etcd = folder / "etcd.yaml"
    etcd.write_text(
        f"name: p4r-bench\nlisten-client-urls: {client_url}\nadvertise-client-urls: {client_url}\n"
        f"listen-peer-urls: {peer_url}\ninitial-advertise-peer-urls: {peer_url}\n"
        f"initial-cluster: p4r-bench={peer_url}\n"
    )
    cmd = [str(exe), "--data", str(folder / "data"), *(f"--{k}={v}" for k, v in ports.items())]
    for role in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode"):
        cmd += ["--extra-config", f"{role}.ip=127.0.0.1"]
    for setting in extra:
        cmd += ["--extra-config", setting]
    log = folder / "server.log"
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "ETCD_CONFIG_PATH": str(etcd)})  # fmt: skip
    uri = f"http://127.0.0.1:{ports['proxy-port']}"
    try:
        from pymilvus import MilvusClient

        deadline = time.monotonic() + 180
        while True:
            try:
                MilvusClient(uri=uri, timeout=5).get_server_version()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"milvus-server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(1)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = [k for k in rows[0] if k != "part"]
    fmt = lambda v: f"{v:,.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)  # noqa: E731
    return "\n".join(
        ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        + ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="rerank,http,recommend")
    ap.add_argument("--dim", type=int, default=384, help="vector dimension (all-MiniLM-L6-v2: 384)")
    ap.add_argument("--rerank-personas", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=5000, help="timed rerank calls per configuration")
    ap.add_argument("--seconds", type=int, default=60, help="HTTP load duration")
    ap.add_argument("--connections", type=int, default=8, help="HTTP connections kept open by wrk")
    ap.add_argument("--sizes", default="10000,100000,1000000", help="recommend: personas per collection")
    ap.add_argument("--queries", type=int, default=200, help="recommend: timed users per size")
    ap.add_argument("--index-type", default=IndexConfig().index_type, help="recommend: Milvus index type")
    ap.add_argument(
        "--search-params", type=json.loads, default=IndexConfig().search_params,
        help='recommend: search parameters as JSON (default: index.search_params, e.g. {"ef": 128}); a list '
        '(\'[{"ef": 512}, {"ef": 1024}]\') times each on the same build',
    )  # fmt: skip
    ap.add_argument("--backends", default="lite", help="recommend: lite, server (Milvus 2.3.5, started here), uri")
    ap.add_argument("--server-uri", help="recommend: the Milvus server of the `uri` backend, http://host:19530")
    ap.add_argument("--shards", type=int, default=2, help="recommend: shards per collection on a server")
    ap.add_argument(
        "--server-config", action="append", default=[], metavar="KEY=VALUE",
        help="recommend: a setting of the started server's milvus.yaml, e.g. dataCoord.segment.maxSize=2048",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, help="append each row here (JSON lines)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="p4r-bench-serve-") as tmp:
        root = Path(tmp)
        if "rerank" in parts:
            results += bench_rerank(args.dim, args.rerank_personas, args.calls)
            print(table([r for r in results if r["part"] == "rerank"]), flush=True)
        backends = args.backends.split(",") if "recommend" in parts else []
        grid = args.search_params if isinstance(args.search_params, list) else [args.search_params]
        sizes = [int(s) for s in args.sizes.split(",")]
        if "http" in parts or "lite" in backends:
            with lite_server(root / "milvus") as uri:
                if "http" in parts:
                    results += bench_http(args.dim, args.seconds, args.connections, root, uri)
                if "lite" in backends:
                    icfg = IndexConfig(index_type=args.index_type, search_params=grid[0], insert_batch=5000)
                    results += bench_recommend(args.dim, sizes, args.queries, icfg, uri, "lite", grid)
        servers = {"server": lambda: milvus_server(root / "milvus-server", tuple(args.server_config))}
        if args.server_uri:
            servers["uri"] = lambda: contextlib.nullcontext(args.server_uri)
        for backend in (b for b in backends if b != "lite"):
            if backend not in servers:
                raise SystemExit(f"unknown backend {backend!r} (lite, server, uri with --server-uri)")
            icfg = IndexConfig(index_type=args.index_type, search_params=grid[0], insert_batch=5000,
                               shards=args.shards)  # fmt: skip
            with servers[backend]() as uri:
                results += bench_recommend(args.dim, sizes, args.queries, icfg, uri, backend, grid)
    if args.json:
        with args.json.open("a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    print(f"\n{os.cpu_count()} CPUs, dim {args.dim}")
    for part in ("rerank", "http", "recommend"):
        rows = [r for r in results if r["part"] == part]
        if rows:
            print(f"\n{part}\n{table(rows)}")


if __name__ == "__main__":
    main()

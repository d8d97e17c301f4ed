"""`p4r index` and `p4r serve` on a real Milvus server (issue #28): shards, the alias, a reindex under load.

The server is Milvus 2.3.5 standalone (tests/clusters.py): collections with 2 shards, aliases, and no grouping
search, so `/recommend` takes the client-side grouping of infra/milvus.py, which must give exactly the brute
force answer. A second `p4r index` moves the alias while clients keep calling the service: no request fails.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from persona4rec import schemas
from persona4rec.cli import main
from persona4rec.config import load_config
from persona4rec.infra import milvus
from tests.clusters import BIN, DATASET, _clean_env, current, manifest, p4r
from tests.conftest import FAST, MUSICAL_INSTRUMENTS, _stop_group, free_port, wait_for_http

pytestmark = pytest.mark.slow

ALIAS = "p4r_cluster_test"


def test_the_embedded_milvus_2_3_server_is_not_taken_for_milvus_lite():
    # `milvus-server` 2.3.5 says "v2.3.5-lite"; Milvus Lite (milvus-lite 3.2.2) says "milvus_lite-3.2.2"
    assert milvus.grouping_in("v2.3.5-lite") is False
    assert milvus.grouping_in("milvus_lite-3.2.2") is True


class Served:
    def __init__(self, root: Path, args: list[str], url: str, log: Path, collection: str, folder: Path) -> None:
        self.root, self.args, self.url, self.log = root, args, url, log
        self.collection, self.folder = collection, folder

    def config(self):
        return load_config(self.args[2:], dataset=DATASET).config


def _index(args: list[str], *flags: str) -> tuple[str, Path, str]:
    done = p4r("index", "-q", *flags, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    m = re.search(r"^index: wrote (\S+) \((.+)\)$", done.stdout, re.M)
    assert m, done.stdout
    return m.group(1), Path(m.group(2)), done.stdout


@pytest.fixture(scope="module")
def served(mi_pipeline, milvus_server, tmp_path_factory):
    """The session's trained encoder, indexed on the Milvus server (2 shards), and `p4r serve` reading it."""
    config, _ = mi_pipeline
    root = Path(config().paths.artifacts)
    base = ["-d", DATASET, f"paths.artifacts={root}", f"data.local_dir={MUSICAL_INSTRUMENTS}", *FAST]
    trained = CliRunner().invoke(main, ["train", "-q", *base])  # up to date when the training tests ran first
    assert trained.exit_code == 0, trained.output
    version = manifest(current(root, "train"))["summary"]["mlflow"]["version"]
    args = [*base, f"index.uri={milvus_server.uri}", f"index.alias={ALIAS}", "index.shards=2",
            "index.index_type=FLAT", f"index.encoder_version={version}", "serve.reload_interval_s=0.5"]  # fmt: skip
    collection, folder, _ = _index(args)
    port = free_port()
    log = tmp_path_factory.mktemp("cluster-serve") / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "p4r"), "serve", "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
            env=_clean_env(), start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/ready", alive=lambda: proc.poll() is None, what="p4r serve", log=log, timeout_s=180)
        yield Served(root, args, url, log, collection, folder)
    finally:
        _stop_group(proc)


def _users(folder: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
    table = pq.read_table(folder / "user_profiles")
    vectors = schemas.arrow_to_vectors(table["vector"])
    return {u: (vectors[i], items) for i, (u, items) in enumerate(zip(table["user_id"].to_pylist(),
            table["items"].to_pylist(), strict=True))}  # fmt: skip


def test_index_on_the_server_has_shards_and_the_alias_and_recommend_is_exact(served):
    cfg = served.config()
    client = milvus.connect(cfg)
    try:
        assert milvus.server_version(client) == "v2.3.5-lite" and not milvus.supports_grouping(client)
        assert client.describe_collection(served.collection)["num_shards"] == 2
        assert milvus.resolve(client, ALIAS) == served.collection
        rows = manifest(served.folder)["summary"]["rows"]
        assert milvus.count(client, ALIAS) == rows
        cols = milvus.read(client, ALIAS, ["persona_id", "item_id", "vector"])
    finally:
        client.close()
    assert len(set(cols["persona_id"])) == rows
    items, vectors = np.asarray(cols["item_id"]), np.asarray(cols["vector"], dtype=np.float32)

    assert httpx.get(f"{served.url}/ready").json()["index"] == served.collection
    users = _users(served.folder)
    for user in sorted(users)[:8]:
        profile, seen = users[user]
        r = httpx.post(f"{served.url}/recommend", json={"user_id": user, "k": 10}, timeout=60)
        assert r.status_code == 200, r.text
        got = [it["item_id"] for it in r.json()["items"]]
        sims = vectors @ profile
        best = {i: sims[items == i].max() for i in set(items.tolist()) - set(seen)}
        want = sorted(best, key=lambda i: (-best[i], i))[:10]
        assert got == want or (set(got) == set(want) and np.allclose([best[i] for i in got], [best[i] for i in want]))
    assert "has no grouping search" in served.log.read_text()  # the service said it groups by item itself


def test_a_second_index_moves_the_alias_under_load_with_no_failed_request(served):
    users = sorted(_users(served.folder))
    stop = threading.Event()
    statuses: Counter = Counter()
    seen_indexes: Counter = Counter()
    errors: list[str] = []

    def load(worker: int) -> None:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            n = worker
            while not stop.is_set():
                n += 1
                try:
                    r = http.post("/recommend", json={"user_id": users[n % len(users)], "k": 10})
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        seen_indexes[r.json()["index"]] += 1
                    else:
                        errors.append(r.text[:300])
                except httpx.HTTPError as exc:
                    statuses["exception"] += 1
                    errors.append(repr(exc))

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    try:
        new, folder, out = _index(served.args, "--force")
        assert new != served.collection and f"(was {served.collection})" in out, out
        deadline = time.monotonic() + 60
        while seen_indexes[new] < 5:  # the service swapped the new version in, under load
            assert time.monotonic() < deadline, f"the service did not serve {new}: {dict(seen_indexes)}"
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)
    assert statuses and set(statuses) == {200}, (dict(statuses), errors[:5])
    assert seen_indexes[served.collection] > 0 and seen_indexes[new] >= 5
    client = milvus.connect(served.config())
    try:
        assert milvus.resolve(client, ALIAS) == new
        assert {v.name: v.live for v in milvus.versions(client, ALIAS)} == {served.collection: False, new: True}
        assert client.describe_collection(new)["num_shards"] == 2
    finally:
        client.close()
    assert manifest(folder)["summary"]["copied"] == manifest(folder)["summary"]["rows"]  # every vector reused

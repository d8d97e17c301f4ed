"""The persona index on real Milvus Lite: versions behind an alias, incremental rebuilds, failed builds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from persona4rec import schemas
from persona4rec.config import IndexConfig
from persona4rec.encoder.encode import text_sha
from persona4rec.infra import milvus
from persona4rec.jobs.index.build import assemble, build_version, plan_reuse
from persona4rec.scoring import PersonaTable
from persona4rec.serve.snapshot import Watcher

DIM = 8
ALIAS = "p4r_test"
ENCODER = "persona4rec-encoder-test/1/run0"


@pytest.fixture
def client(tmp_path):
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import MilvusClient

    path = str(tmp_path / "milvus.db")
    c = MilvusClient(path)
    yield c
    c.close()
    server_manager_instance.release_server(path)


def catalogue(n_items: int, per_item: int = 3, changed: str | None = None) -> pa.Table:
    """Rows without vectors; ``changed`` gives one item new persona texts (as a new reasoning run would)."""
    rows: dict[str, list] = {k: [] for k in ("persona_id", "item_id", "kind", "name", "description", "rationale")}
    rows.update(evidence=[], text=[])
    for i in range(n_items):
        item = f"item-{i:03d}"
        for j in range(per_item):
            text = f"persona {j} of {item}" + (" (rewritten)" if item == changed else "")
            rows["persona_id"].append(f"{item}-{j}")
            rows["item_id"].append(item)
            rows["kind"].append("persona")
            rows["name"].append(f"Persona {j}")
            rows["description"].append(text)
            rows["rationale"].append("because")
            rows["evidence"].append([f"r{i}-{j}"])
            rows["text"].append(text)
    rows["text_sha"] = [text_sha(t) for t in rows["text"]]
    rows["encoder"] = [ENCODER] * len(rows["text"])
    return pa.table(rows)


class CountingEncoder:
    """A deterministic stand-in for the encoder (a hash of the text -> unit vector) that records its calls."""

    def __init__(self, texts: list[str]) -> None:
        self.texts, self.calls = texts, []

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.extend(int(r) for r in rows)
        out = np.stack([np.random.default_rng(abs(hash(self.texts[r])) % 2**32).normal(size=DIM) for r in rows])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def build(client, name: str, rows: pa.Table, icfg: IndexConfig) -> tuple[pa.Table, CountingEncoder]:
    enc = CountingEncoder(rows.column("text").to_pylist())
    table, _ = assemble(rows, plan_reuse(client, ALIAS, rows, ENCODER), enc, DIM)
    build_version(client, name, table, icfg, {"test": True}, progress=False)
    return table, enc


def test_build_alias_swap_and_incremental_rebuild(client):
    icfg = IndexConfig(index_type="FLAT", insert_batch=16)
    v1_rows = catalogue(12)
    v1, enc1 = build(client, f"{ALIAS}__v1", v1_rows, icfg)
    assert sorted(enc1.calls) == list(range(36))  # a first build encodes everything
    assert milvus.move_alias(client, ALIAS, f"{ALIAS}__v1") is None
    assert milvus.resolve(client, ALIAS) == f"{ALIAS}__v1" and milvus.count(client, ALIAS) == 36

    # one item's personas changed: only its 3 rows are encoded, the other 33 are copied from v1
    v2_rows = catalogue(12, changed="item-004")
    v2, enc2 = build(client, f"{ALIAS}__v2", v2_rows, icfg)
    changed = [i for i, item in enumerate(v2_rows.column("item_id").to_pylist()) if item == "item-004"]
    assert sorted(enc2.calls) == changed
    assert milvus.resolve(client, ALIAS) == f"{ALIAS}__v1"  # building never moves the alias
    assert milvus.move_alias(client, ALIAS, f"{ALIAS}__v2") == f"{ALIAS}__v1"
    copied = [i for i in range(36) if i not in changed]
    old, new = schemas.arrow_to_vectors(v1["vector"]), schemas.arrow_to_vectors(v2["vector"])
    np.testing.assert_array_equal(new[copied], old[copied])
    back = milvus.read(client, ALIAS, ["persona_id", "vector", "evidence"])
    assert len(back["persona_id"]) == 36 and back["evidence"][0][0].startswith("r")

    # both versions listed, the live one marked; the live one cannot be dropped, the old one can
    listed = {v.name: v for v in milvus.versions(client, ALIAS)}
    assert listed[f"{ALIAS}__v2"].live and not listed[f"{ALIAS}__v1"].live and listed[f"{ALIAS}__v1"].rows == 36
    assert listed[f"{ALIAS}__v1"].meta == {"test": True}  # the index stage's notes travel with the version
    with pytest.raises(milvus.PersonaIndexError, match="live version"):
        milvus.drop_version(client, ALIAS, f"{ALIAS}__v2")
    milvus.drop_version(client, ALIAS, f"{ALIAS}__v1")
    assert [v.name for v in milvus.versions(client, ALIAS)] == [f"{ALIAS}__v2"]

    # a different encoder reuses nothing
    other = catalogue(12).set_column(9, "encoder", pa.array(["other/2/run1"] * 36))
    assert len(plan_reuse(client, ALIAS, other, "other/2/run1").rows) == 0


def test_a_rebuild_reads_a_live_version_that_is_not_loaded(client):
    """A new process (or a restarted server) finds the live version released: the rebuild still reuses it."""
    icfg = IndexConfig(index_type="FLAT", insert_batch=16)
    build(client, f"{ALIAS}__v1", catalogue(4), icfg)
    milvus.move_alias(client, ALIAS, f"{ALIAS}__v1")
    client.release_collection(f"{ALIAS}__v1")
    _, enc = build(client, f"{ALIAS}__v2", catalogue(4, changed="item-001"), icfg)
    assert sorted(enc.calls) == [3, 4, 5]  # only the changed item's rows are encoded


def test_a_build_that_fails_half_way_leaves_the_alias_and_the_old_version_intact(client):
    icfg = IndexConfig(index_type="FLAT", insert_batch=10)
    build(client, f"{ALIAS}__good", catalogue(10), icfg)
    milvus.move_alias(client, ALIAS, f"{ALIAS}__good")

    rows = catalogue(10, changed="item-001")
    table, _ = assemble(rows, plan_reuse(client, ALIAS, rows, ENCODER), CountingEncoder(rows["text"].to_pylist()), DIM)
    vectors = table.column("vector").to_pylist()
    vectors[25] = vectors[25][:-1]  # a corrupt vector in the third insert batch
    broken = table.set_column(table.schema.get_field_index("vector"), "vector", pa.array(vectors, schemas.VECTOR))
    with pytest.raises(Exception):  # noqa: B017 - Milvus's own error for the bad row
        build_version(client, f"{ALIAS}__broken", broken, icfg, {}, progress=False)
    assert not client.has_collection(f"{ALIAS}__broken")  # the half-built version is gone
    assert milvus.resolve(client, ALIAS) == f"{ALIAS}__good" and milvus.count(client, ALIAS) == 30


@pytest.mark.parametrize("partitions", [0, 4])
def test_recommend_equals_brute_force_on_a_small_catalogue(client, partitions):
    icfg = IndexConfig(index_type="FLAT", partitions=partitions)  # 4: item_id as the partition key
    rows = catalogue(30, per_item=4)
    table, _ = build(client, f"{ALIAS}__v1", rows, icfg)
    vectors = schemas.arrow_to_vectors(table["vector"])
    personas = PersonaTable(
        persona_ids=np.asarray(rows["persona_id"].to_pylist(), dtype=object),
        item_of=np.asarray(rows["item_id"].to_pylist(), dtype=object),
        vectors=vectors, names=rows["name"].to_pylist(), descriptions=rows["description"].to_pylist(),
        rationales=rows["rationale"].to_pylist(), evidence=rows["evidence"].to_pylist(), kinds=rows["kind"].to_pylist(),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    users = rng.normal(size=(5, DIM)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    seen = [list(rng.choice(personas.item_ids, size=s, replace=False)) for s in (0, 1, 3, 5, 10)]
    got = milvus.search_items(client, f"{ALIAS}__v1", users, 8, icfg, seen)
    all_items = np.arange(len(personas.item_ids))
    scores, best = personas.scores(users, np.tile(all_items, (5, 1)))
    for u in range(5):
        s = scores[u].copy()
        s[personas.rows(seen[u])] = -np.inf
        top = np.argsort(-s, kind="stable")[:8]
        assert [h["item_id"] for h in got[u]] == personas.item_ids[top].tolist()
        assert [h["persona_id"] for h in got[u]] == personas.persona_ids[best[u, top]].tolist()
        np.testing.assert_allclose([h["score"] for h in got[u]], s[top], atol=1e-5)


def test_the_watcher_swaps_in_a_moved_alias_and_keeps_serving_when_a_reload_fails():
    target = {"name": None}
    loaded = []

    def loader(name):
        if name == "bad":
            raise RuntimeError("unreadable")
        loaded.append(name)
        return type("Snap", (), {"collection": name, "table": []})()

    w = Watcher(lambda: target["name"], loader, interval_s=60)
    assert not w.refresh() and w.current is None and "p4r index" in w.last_error
    target["name"] = "v1"
    assert w.refresh() and w.current.collection == "v1"
    assert not w.refresh() and loaded == ["v1"]  # an unmoved alias loads nothing
    target["name"] = "bad"
    assert not w.refresh() and w.current.collection == "v1" and "unreadable" in w.last_error
    target["name"] = "v2"
    assert w.refresh() and w.current.collection == "v2" and w.last_error is None


def test_a_lite_folder_held_by_another_process_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    from persona4rec.config import load_config

    path = tmp_path / "held.db"
    code = (
        f"import time; from pymilvus import MilvusClient; MilvusClient({str(path)!r}); "
        "print('ready', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert holder.stdout.readline().strip() == b"ready"
        cfg = load_config([f"index.uri={path}"], dataset="amazon2014-musical-instruments").config
        with pytest.raises(milvus.PersonaIndexError, match="one process at a time"):
            milvus.connect(cfg)
    finally:
        holder.kill()
        holder.wait()

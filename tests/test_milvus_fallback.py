"""recommend's search on a Milvus without grouping search (< 2.4): personas grouped by item on the client."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from persona4rec.config import IndexConfig
from persona4rec.infra import milvus

DIM = 8


class UngroupedMilvus:
    """A stand-in for a Milvus server that ignores ``group_by_field``, as Milvus 2.3 does: it answers with raw
    persona hits (an item as often as its personas rank), best first, at most ``limit`` of them."""

    def __init__(self, version: str, n_items: int = 40, max_per_item: int = 5, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.version = version
        self.item_of, self.persona_ids = [], []
        for i in range(n_items):
            for j in range(1 + i % max_per_item):  # 1..max_per_item personas per item
                self.item_of.append(f"item-{i:03d}")
                self.persona_ids.append(f"item-{i:03d}-{j}")
        v = rng.normal(size=(len(self.item_of), DIM))
        self.vectors = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        self.calls: list[dict] = []

    def get_server_version(self) -> str:
        return self.version

    def search(self, name, data, anns_field, limit, output_fields, search_params, **kwargs):
        self.calls.append({"limit": limit, "group_by_field": kwargs.get("group_by_field"), "users": len(data)})
        out = []
        for q in np.asarray(data, dtype=np.float32):
            scores = self.vectors @ q
            top = np.argsort(-scores, kind="stable")[:limit]
            out.append(
                [
                    {
                        "id": self.persona_ids[r],
                        "distance": float(scores[r]),
                        "entity": {"persona_id": self.persona_ids[r], "item_id": self.item_of[r], "kind": "persona"},
                    }
                    for r in top
                ]
            )
        return out

    def brute_force(self, user: np.ndarray, k: int, seen: list[str]) -> list[tuple[str, str]]:
        """(item, best persona) of the top k unseen items by max over their personas."""
        scores = self.vectors @ user
        best: dict[str, int] = {}
        for r, item in enumerate(self.item_of):
            if item not in seen and (item not in best or scores[r] > scores[best[item]]):
                best[item] = r
        ranked = sorted(best, key=lambda item: -scores[best[item]])
        return [(item, self.persona_ids[best[item]]) for item in ranked[:k]]


def users(n: int, seed: int = 1) -> np.ndarray:
    u = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def warnings_about(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and name in r.getMessage()]


def test_milvus_2_3_gets_k_distinct_items_in_brute_force_order_logged_once(caplog):
    stub = UngroupedMilvus("v2.3.5")
    icfg = IndexConfig(index_type="FLAT")
    u = users(4)
    seen = [[], ["item-004", "item-009"], [f"item-{i:03d}" for i in range(0, 40, 3)], ["item-039"]]
    with caplog.at_level(logging.WARNING, logger="persona4rec.infra.milvus"):
        got = milvus.search_items(stub, "p4r_old__v1", u, 10, icfg, seen)
        again = milvus.search_items(stub, "p4r_old__v1", u[:1], 10, icfg, seen[:1])
    assert all(c["group_by_field"] is None for c in stub.calls)  # it never asks a 2.3 server to group
    for i in range(4):
        items = [h["item_id"] for h in got[i]]
        assert len(items) == 10 and len(set(items)) == 10
        assert not set(items) & set(seen[i])
        assert [(h["item_id"], h["persona_id"]) for h in got[i]] == stub.brute_force(u[i], 10, seen[i])
        assert all(a["score"] >= b["score"] for a, b in zip(got[i], got[i][1:], strict=False))
    assert again[0] == got[0]
    logged = warnings_about(caplog, "p4r_old__v1")
    assert len(logged) == 1 and "v2.3.5" in logged[0].getMessage()


def test_the_fallback_doubles_its_fetch_until_k_items_or_the_collection_runs_out():
    stub = UngroupedMilvus("2.3.0", n_items=12, max_per_item=5)
    u = users(1, seed=3)
    seen = [[f"item-{i:03d}" for i in range(5)]]
    got = milvus.search_items(stub, "p4r_small__v1", u, 20, IndexConfig(index_type="FLAT"), seen)[0]
    assert [(h["item_id"], h["persona_id"]) for h in got] == stub.brute_force(u[0], 20, seen[0])
    assert len(got) == 7  # all 12 items but the 5 seen: the collection ran out

    # the best item has 100 personas, and the user has seen it: the fetch doubles until the next item shows
    deep = UngroupedMilvus("v2.3.5", n_items=1, max_per_item=1)
    user = deep.vectors[:1]
    deep.item_of = ["item-000"] * 100 + ["item-001"]
    deep.persona_ids = [f"p{i}" for i in range(101)]
    deep.vectors = np.concatenate([np.repeat(user, 100, axis=0), -user])
    got = milvus.search_items(deep, "p4r_deep__v1", user, 1, IndexConfig(), [["item-000"]])[0]
    assert [(h["item_id"], h["persona_id"]) for h in got] == [("item-001", "p100")]
    assert [c["limit"] for c in deep.calls] == [16, 32, 64, 128]  # (1 + 1 excluded) x 8, doubled, to the end


def test_a_grouped_answer_that_repeats_an_item_is_not_trusted(caplog):
    stub = UngroupedMilvus("v2.4.3")  # says it can group, but ignores group_by_field
    u = users(2, seed=5)
    with caplog.at_level(logging.WARNING, logger="persona4rec.infra.milvus"):
        got = milvus.search_items(stub, "p4r_liar__v1", u, 10, IndexConfig(), [[], ["item-001"]])
        milvus.search_items(stub, "p4r_liar__v1", u, 10, IndexConfig(), [[], ["item-001"]])
    assert [h["item_id"] for h in got[1]] == [item for item, _ in stub.brute_force(u[1], 10, ["item-001"])]
    assert stub.calls[0]["group_by_field"] == "item_id"
    assert all(c["group_by_field"] is None for c in stub.calls[1:])  # asked to group once, never again
    assert len(warnings_about(caplog, "p4r_liar__v1")) == 1
    assert "repeated items" in warnings_about(caplog, "p4r_liar__v1")[0].getMessage()


@pytest.mark.parametrize(
    ("version", "grouped"),
    [
        ("v2.3.5", False), ("2.3.21", False), ("v2.2.16", False), ("v2.4.0", True), ("v2.4.15", True),
        ("2.6.6", True), ("v3.0.0", True), ("milvus_lite-3.2.2", True), ("unknown", True),
    ],
)  # fmt: skip
def test_the_version_check(version, grouped):
    assert milvus.grouping_in(version) is grouped


def test_a_grouping_server_gets_one_grouped_search():
    stub = UngroupedMilvus("v2.4.5")
    stub.search = lambda name, data, **kw: (stub.calls.append(kw), [[] for _ in data])[1]
    assert milvus.supports_grouping(stub)
    assert milvus.search_items(stub, "p4r_new__v1", users(3), 10, IndexConfig()) == [[], [], []]
    assert len(stub.calls) == 1 and stub.calls[0]["group_by_field"] == "item_id" and stub.calls[0]["limit"] == 10


def test_milvus_lite_reports_itself_and_is_searched_grouped(tmp_path):
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import MilvusClient

    path = str(tmp_path / "milvus.db")
    client = MilvusClient(path)
    try:
        assert milvus.server_version(client).startswith("milvus_lite")  # "milvus_lite-3.2.2" with milvus-lite 3.2.2
        assert milvus.supports_grouping(client)
    finally:
        client.close()
        server_manager_instance.release_server(path)

"""Milvus: the persona index's collections, their alias, and the reads the scorer and service need.

Every build writes a new collection version ``<alias>__<fingerprint>``; readers only ever name the alias,
which :func:`move_alias` points at a version once it is built, indexed, loaded and checked. Milvus Lite
(a local folder, ``index.uri`` null) serves one process at a time (its in-process server stops when
that process exits); ``milvus-lite server`` or any Milvus
server or cluster (a URI) serves many. Shards and partitions (``item_id`` as the partition key) apply to a
server; Lite has one of each.
"""

from __future__ import annotations

import json
import logging
import os
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from persona4rec.config import Config, IndexConfig
from persona4rec.errors import Persona4RecError, StageUnavailable
from persona4rec.infra.secrets import milvus_token

try:
    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException
except ImportError as exc:  # pragma: no cover - the extra is part of every install that indexes or serves
    raise StageUnavailable("the persona index needs Milvus: pip install 'persona4rec[milvus]'") from exc

VERSION_SEP = "__"
VECTOR_FIELD = "vector"
METRIC = "COSINE"
#: Collection property holding the index stage's notes on a version, as JSON.
META_PROPERTY = "persona4rec.meta"
#: Milvus caps a search's limit (topk) at this.
MAX_TOPK = 16384

#: Column limits of the collection (VARCHAR lengths are in bytes; texts are cut to fit, never rejected).
LIMITS = {"persona_id": 64, "item_id": 256, "kind": 16, "name": 512, "description": 4096, "rationale": 4096}
EVIDENCE_MAX = 64
EVIDENCE_ID_LEN = 128
ENCODER_LEN = 256
SHA_LEN = 32

#: Fields read back to explain a score (everything but the vector and the bookkeeping).
EXPLAIN_FIELDS = ["persona_id", "item_id", "kind", "name", "description", "rationale", "evidence"]


class PersonaIndexError(Persona4RecError):
    """The persona index is missing, or a version failed its checks."""


log = logging.getLogger(__name__)

#: The oldest Milvus whose search groups by a field (``group_by_field``); older ones ignore the argument.
GROUPING_SINCE = (2, 4)
#: The first over-fetch of the client-side grouping: this many personas per item asked for.
FALLBACK_PERSONAS_PER_ITEM = 8

#: Per client: whether its server groups search results (asked once, on connect or on the first search).
_grouping: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
#: Collections whose client-side grouping this process has already logged (once each).
_fallback_logged: set[str] = set()


@dataclass(frozen=True)
class VersionInfo:
    name: str
    rows: int
    meta: dict[str, Any]
    live: bool


def connect(cfg: Config) -> MilvusClient:
    """A client on ``index.uri`` (a Milvus Lite folder by default; token from ``index.token_env`` or a file)."""
    uri = cfg.milvus_uri
    token = milvus_token(cfg)
    if is_lite(uri):
        os.makedirs(os.path.dirname(os.path.abspath(uri)) or ".", exist_ok=True)
    locked = _LockedLite()
    lite_log = logging.getLogger("milvus_lite.server_manager")
    lite_log.addFilter(locked)  # Lite logs a 20-line traceback before pymilvus raises: one line instead
    try:
        client = MilvusClient(uri=uri, token=token)
    except MilvusException as exc:
        if locked.seen:
            folder = os.path.abspath(uri)
            raise PersonaIndexError(
                f"the Milvus Lite database {folder} is in use by another process (`p4r serve`?); Milvus Lite "
                f"serves one process at a time: stop that process, or run `milvus-lite server --data-dir {folder}` "
                "and point index.uri at it (http://127.0.0.1:19530) for every process"
            ) from None
        hint = ""
        if is_lite(uri):
            hint = (
                ". Milvus Lite serves one process at a time: if another one (`p4r serve`, `p4r index`) has this "
                "folder open, stop it, or run `milvus-lite server --data-dir <folder>` and set "
                "index.uri=http://127.0.0.1:19530 for every process"
            )
        raise PersonaIndexError(f"cannot open Milvus at {uri}: {getattr(exc, 'message', exc)}{hint}") from None
    finally:
        lite_log.removeFilter(locked)
    supports_grouping(client)
    return client


class _LockedLite(logging.Filter):
    """Drops (and notes) Milvus Lite's log record of a data folder another process holds."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "DataDirLockedError":
            self.seen = True
            return False
        return True


def is_lite(uri: str) -> bool:
    return "://" not in uri


def server_version(client: Any) -> str:
    """What the server says it is: ``"v2.4.5"``/``"2.6.6"`` for Milvus, ``"milvus_lite-3.2.2"`` for Lite."""
    try:
        return str(client.get_server_version())
    except Exception:  # noqa: BLE001 - a server that will not say is treated as a current one
        return "unknown"


def grouping_in(version: str) -> bool:
    """Whether a server of this version groups search results by a field (Milvus >= 2.4, and Milvus Lite).

    Milvus Lite (the ``milvus-lite`` package) says ``milvus_lite-3.2.2``; the embedded Milvus 2.3 server of the
    ``milvus`` package says ``v2.3.5-lite`` and does not group, so only the former counts as Lite.
    """
    if version.lower().startswith("milvus_lite"):
        return True
    m = re.search(r"(\d+)\.(\d+)", version)
    return m is None or (int(m[1]), int(m[2])) >= GROUPING_SINCE  # unknown: try it (answers are checked)


def supports_grouping(client: Any) -> bool:
    """Whether this client's server groups searches (asked once per client)."""
    if client not in _grouping:
        _grouping[client] = grouping_in(server_version(client))
    return _grouping[client]


def version_name(alias: str, fingerprint: str) -> str:
    return f"{alias}{VERSION_SEP}{fingerprint[:16]}"


def create_version(client: MilvusClient, name: str, dim: int, icfg: IndexConfig, meta: dict[str, Any]) -> None:
    """An empty collection for one index version (``meta`` goes into a collection property, as JSON)."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("persona_id", DataType.VARCHAR, is_primary=True, max_length=LIMITS["persona_id"])
    schema.add_field("item_id", DataType.VARCHAR, max_length=LIMITS["item_id"], is_partition_key=icfg.partitions > 0)
    schema.add_field("kind", DataType.VARCHAR, max_length=LIMITS["kind"])
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    for text in ("name", "description", "rationale"):
        schema.add_field(text, DataType.VARCHAR, max_length=LIMITS[text])
    schema.add_field(
        "evidence", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=EVIDENCE_MAX,
        max_length=EVIDENCE_ID_LEN,
    )  # fmt: skip
    schema.add_field("text_sha", DataType.VARCHAR, max_length=SHA_LEN)
    schema.add_field("encoder", DataType.VARCHAR, max_length=ENCODER_LEN)
    extra: dict[str, Any] = {"num_shards": icfg.shards}
    if icfg.partitions > 0:
        extra["num_partitions"] = icfg.partitions
    client.create_collection(name, schema=schema, **extra)
    client.alter_collection_properties(name, properties={META_PROPERTY: json.dumps(meta, sort_keys=True)})


def meta_of(client: MilvusClient, name: str) -> dict[str, Any]:
    """What the index stage noted on a version (dataset, encoder, gamma, where its user tables are)."""
    text = (client.describe_collection(name).get("properties") or {}).get(META_PROPERTY, "{}")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {}


def insert(client: MilvusClient, name: str, table: pa.Table) -> int:
    """Insert rows of the index table (see :func:`row_dicts`); returns how many."""
    rows = list(row_dicts(table))
    if rows:
        client.insert(name, rows)
    return len(rows)


def row_dicts(table: pa.Table) -> Iterator[dict[str, Any]]:
    """Rows as Milvus entities: texts cut to the column limits, evidence capped."""
    vectors = table.column(VECTOR_FIELD).to_pylist()
    cols = {c: table.column(c).to_pylist() for c in table.column_names if c != VECTOR_FIELD}
    for i, vector in enumerate(vectors):
        row = {c: values[i] for c, values in cols.items()}
        for c, limit in LIMITS.items():
            row[c] = _fit(row[c], limit)
        row["evidence"] = [_fit(e, EVIDENCE_ID_LEN) for e in (row["evidence"] or [])[:EVIDENCE_MAX]]
        row[VECTOR_FIELD] = vector
        yield row


def _fit(text: str, limit: int) -> str:
    """Cut a text to at most ``limit`` UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", errors="ignore")


def build_and_load(client: MilvusClient, name: str, icfg: IndexConfig) -> None:
    """Flush, build the vector index (``index.index_type``, cosine) and load the version into memory."""
    client.flush(name)
    params = client.prepare_index_params()
    params.add_index(field_name=VECTOR_FIELD, index_type=icfg.index_type, metric_type=METRIC, params=icfg.index_params)
    try:
        client.create_index(name, params)
    except MilvusException:
        # A build longer than gRPC's keepalive (20 min for 1M personas on Lite, 2 cores) makes pymilvus retry
        # the call, and the retry finds the index the first call built: that is success.
        if VECTOR_FIELD not in client.list_indexes(name):
            raise
    client.load_collection(name)


def count(client: MilvusClient, name: str) -> int:
    rows = client.query(name, filter="", output_fields=["count(*)"])
    return int(rows[0]["count(*)"])


def resolve(client: MilvusClient, alias: str) -> str | None:
    """The collection the alias points at, or None when it does not exist yet."""
    if alias not in client.list_aliases().get("aliases", []):  # asking Milvus about a missing alias logs an error
        return None
    return client.describe_alias(alias)["collection_name"]


def move_alias(client: MilvusClient, alias: str, name: str) -> str | None:
    """Point the alias at ``name`` in one step (created if new); returns the version it pointed at before."""
    before = resolve(client, alias)
    if before is None:
        client.create_alias(name, alias)
    else:
        client.alter_alias(name, alias)
    return before


def versions(client: MilvusClient, alias: str) -> list[VersionInfo]:
    """Every version of the alias's index, the live one marked."""
    live = resolve(client, alias)
    out = []
    for name in sorted(client.list_collections()):
        if not name.startswith(alias + VERSION_SEP):
            continue
        rows = int(client.get_collection_stats(name).get("row_count", 0))
        out.append(VersionInfo(name, rows, meta_of(client, name), name == live))
    return out


def drop_version(client: MilvusClient, alias: str, name: str) -> None:
    """Drop an old version; the live one (behind the alias) is refused."""
    if resolve(client, alias) == name:
        raise PersonaIndexError(f"{name} is the live version of {alias}: build another one first, then drop this one")
    if not client.has_collection(name):
        raise PersonaIndexError(f"no index version named {name}")
    client.drop_collection(name)


def read(
    client: MilvusClient, name: str, fields: list[str], filter: str = "", batch_size: int = 4096
) -> dict[str, list[Any]]:
    """Every row matching ``filter`` as columns (an iterator underneath: any collection size).

    A collection another process built, or one a restarted server has not loaded yet, is loaded first:
    Milvus refuses to query a released collection, and the next index build reads the live one."""
    client.load_collection(name)
    out: dict[str, list[Any]] = {f: [] for f in fields}
    it = client.query_iterator(name, batch_size=batch_size, filter=filter, output_fields=fields)
    try:
        while batch := it.next():
            for row in batch:
                for f in fields:
                    out[f].append(row[f])
    finally:
        it.close()
    return out


def search_items(
    client: MilvusClient,
    name: str,
    users: np.ndarray,
    k: int,
    icfg: IndexConfig,
    exclude: list[list[str]] | None = None,
) -> list[list[dict[str, Any]]]:
    """Top-k items per user vector by max over their personas: one batched grouping search on ``item_id``.

    Items in ``exclude[u]`` are dropped from user u's list; the search asks for k more groups than that user
    excludes instead of a filter, so that the users of a batch share one call. Each hit is the item's best
    persona: ``{"item_id", "persona_id", "score", ...explanation fields}``. A server without grouping search
    (Milvus < 2.4 ignores ``group_by_field``), or whose grouped answer repeats an item, gets plain searches
    grouped here instead (:func:`_group_here`: the same answer, more personas fetched), logged once.
    """
    exclude = exclude or [[] for _ in range(len(users))]
    data = np.asarray(users, dtype=np.float32).tolist()
    search_params = {"metric_type": METRIC, "params": icfg.search_params}
    if supports_grouping(client):
        limit = min(MAX_TOPK, k + max((len(e) for e in exclude), default=0))
        results = client.search(
            name,
            data=data,
            anns_field=VECTOR_FIELD,
            limit=limit,
            group_by_field="item_id",
            group_size=1,
            output_fields=EXPLAIN_FIELDS,
            search_params=search_params,
        )
        if all(len({h["entity"]["item_id"] for h in hits}) == len(hits) for hits in results):
            out = []
            for hits, seen in zip(results, exclude, strict=True):
                skip = set(seen)
                kept = [_hit(h) for h in hits if h["entity"]["item_id"] not in skip]
                out.append(kept[:k])
            return out
        _grouping[client] = False  # it ignored group_by_field: never ask this server to group again
        _note_fallback(client, name, "answered a grouping search with repeated items")
    else:
        _note_fallback(client, name, "has no grouping search (Milvus 2.4 or later has)")
    return _group_here(client, name, data, k, exclude, search_params)


def _hit(h: dict[str, Any]) -> dict[str, Any]:
    return {**h["entity"], "score": float(h["distance"])}


def _note_fallback(client: Any, name: str, why: str) -> None:
    if name not in _fallback_logged:
        _fallback_logged.add(name)
        log.warning(
            "Milvus %s %s: searches of %s group personas by item in this process instead (exact, more personas "
            "fetched per search)", server_version(client), why, name,
        )  # fmt: skip


def _group_here(
    client: Any, name: str, data: list[list[float]], k: int, exclude: list[list[str]], search_params: dict[str, Any]
) -> list[list[dict[str, Any]]]:
    """Top-k items by max over personas from plain persona searches, grouped here.

    An item's score is its best persona's, which is where the item first appears in a persona ranking; so
    once the top ``limit`` personas hold k items outside ``exclude[u]``, their first k are exactly the
    top k. ``limit`` starts at (k + excluded) x FALLBACK_PERSONAS_PER_ITEM and doubles until that holds, the
    collection runs out, or it reaches Milvus's cap (MAX_TOPK).
    """
    out: list[list[dict[str, Any]]] = [[] for _ in data]
    want = [min(MAX_TOPK, max(1, (k + len(e)) * FALLBACK_PERSONAS_PER_ITEM)) for e in exclude]
    pending = list(range(len(data)))
    while pending:
        limit = max(want[u] for u in pending)
        results = client.search(
            name,
            data=[data[u] for u in pending],
            anns_field=VECTOR_FIELD,
            limit=limit,
            output_fields=EXPLAIN_FIELDS,
            search_params=search_params,
        )
        still = []
        for u, hits in zip(pending, results, strict=True):
            skip, best = set(exclude[u]), {}
            for h in sorted(hits, key=lambda h: -float(h["distance"])):  # stable: the server's order on ties
                item = h["entity"]["item_id"]
                if item not in skip and item not in best:
                    best[item] = _hit(h)
            if len(best) >= k or len(hits) < limit or limit >= MAX_TOPK:
                out[u] = list(best.values())[:k]
            else:
                want[u] = min(MAX_TOPK, limit * 2)
                still.append(u)
        pending = still
    return out

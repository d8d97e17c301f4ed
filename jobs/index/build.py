"""One index version: copy what the live version already has, encode the rest, then build and check it.

:func:`plan_reuse` matches rows with the live version (same persona id, same text hash, same encoder):
those vectors are copied, so an incremental rebuild encodes only the personas that changed.
:func:`build_version` creates the collection, inserts, indexes, loads and checks it (row count, a sample
of self-queries). If anything fails the half-built version is dropped; the alias is never touched here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from persona4rec import schemas
from persona4rec.config import IndexConfig
from persona4rec.infra import milvus

#: Self-query hits at or above this cosine count as finding the row itself (identical texts tie).
SELF_MATCH = 0.999


@dataclass(frozen=True)
class Reuse:
    """Which rows of a new version take their vector from the live one."""

    live: str | None
    rows: np.ndarray  # indices into the new rows
    vectors: np.ndarray  # (len(rows), d)


def plan_reuse(client: Any, alias: str, rows: pa.Table, encoder: str) -> Reuse:
    """Rows whose persona id and text hash are in the live version, encoded by the same encoder."""
    live = milvus.resolve(client, alias)
    empty = Reuse(live, np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32))
    if live is None:
        return empty
    old = milvus.read(
        client, live, ["persona_id", "text_sha", milvus.VECTOR_FIELD], filter=f"encoder == {_quote(encoder)}"
    )
    known = {(p, s): i for i, (p, s) in enumerate(zip(old["persona_id"], old["text_sha"], strict=True))}
    keys = zip(rows.column("persona_id").to_pylist(), rows.column("text_sha").to_pylist(), strict=True)
    pairs = [(i, known[k]) for i, k in enumerate(keys) if k in known]
    if not pairs:
        return empty
    new_rows, old_rows = map(np.asarray, zip(*pairs, strict=True))
    vectors = np.asarray(old[milvus.VECTOR_FIELD], dtype=np.float32)[old_rows]
    return Reuse(live, new_rows.astype(np.int64), vectors)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def assemble(
    rows: pa.Table, reuse: Reuse, encode: Callable[[np.ndarray], np.ndarray], dim: int
) -> tuple[pa.Table, int]:
    """The rows with their vectors: copied where :func:`plan_reuse` allows, ``encode(row indices)`` elsewhere."""
    vectors = np.zeros((len(rows), dim), dtype=np.float32)
    if len(reuse.rows):
        vectors[reuse.rows] = reuse.vectors
    todo = np.setdiff1d(np.arange(len(rows)), reuse.rows)
    if len(todo):
        vectors[todo] = encode(todo)
    table = rows.append_column("vector", schemas.vectors_to_arrow(vectors))
    return table.select(schemas.INDEX_ROWS.arrow().names).cast(schemas.INDEX_ROWS.arrow()), len(todo)


def build_version(
    client: Any, name: str, table: pa.Table, icfg: IndexConfig, meta: dict[str, Any], *, progress: bool = True
) -> int:
    """Create, fill, index, load and check collection ``name``; on any failure it is dropped again.

    Returns the number of self-queries checked.
    """
    dim = len(table.column("vector")[0]) if len(table) else 0
    if not dim:
        raise milvus.PersonaIndexError("nothing to index: no personas and no item summaries")
    milvus.create_version(client, name, dim, icfg, meta)
    try:
        with tqdm(total=len(table), desc="index: insert", unit="row", disable=not progress) as bar:
            for lo in range(0, len(table), icfg.insert_batch):
                bar.update(milvus.insert(client, name, table.slice(lo, icfg.insert_batch)))
        milvus.build_and_load(client, name, icfg)
        return check(client, name, table, icfg)
    except BaseException:
        client.drop_collection(name)
        raise


def check(client: Any, name: str, table: pa.Table, icfg: IndexConfig) -> int:
    """The version holds every row, and a sample of personas finds itself first."""
    stored = milvus.count(client, name)
    if stored != len(table):
        raise milvus.PersonaIndexError(f"{name}: {stored} rows stored, {len(table)} written")
    n = min(icfg.check_queries, len(table))
    if not n:
        return 0
    sample = np.unique(np.linspace(0, len(table) - 1, n).round().astype(np.int64))
    vectors = schemas.arrow_to_vectors(table.column("vector").take(pa.array(sample)))
    ids = table.column("persona_id").take(pa.array(sample)).to_pylist()
    hits = client.search(
        name, data=vectors.tolist(), anns_field=milvus.VECTOR_FIELD, limit=1, output_fields=["persona_id"],
        search_params={"metric_type": milvus.METRIC, "params": icfg.search_params},
    )  # fmt: skip
    for pid, found in zip(ids, hits, strict=True):
        if not found or (found[0]["entity"]["persona_id"] != pid and found[0]["distance"] < SELF_MATCH):
            got = found[0]["entity"]["persona_id"] if found else "nothing"
            raise milvus.PersonaIndexError(f"{name}: self-query of {pid} returned {got}; the index is not usable")
    return len(sample)

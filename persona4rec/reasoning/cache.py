"""Content-addressed store of LLM results: what makes reasoning resumable and reindexing incremental.

A result is keyed by the hash of everything that determines it (the item's sampled reviews, the prompt
set, the model and the generation settings). Results are appended as small Parquet part files, each
written to a temporary name and renamed, so a crash loses at most the batch in flight and never leaves a
half-written part. A rerun reads the keys already present and skips them; a changed item has a new key
and is redone. Failed results are stored too (status ``failed`` with the reason, and the last answer as
``{"last_answer": ...}`` in ``payload``, to read why) and are retried only when asked.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from persona4rec.config import stable_hash
from persona4rec.errors import ConfigError

RESULT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("subject", pa.string()),
        ("status", pa.string()),
        ("payload", pa.string()),
        ("error", pa.string()),
        ("attempts", pa.int64()),
        ("calls", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("seconds", pa.float64()),
        ("model", pa.string()),
        ("engine", pa.string()),
        ("created_at", pa.string()),
    ]
)

STATUSES = ("ok", "failed")


def content_key(kind: str, **parts: Any) -> str:
    """The cache key of one unit of LLM work: a hash of its kind and everything that determines it."""
    return stable_hash({"kind": kind, **parts})[:32]


class ResultCache:
    """Append-only Parquet parts under ``folder``; the newest row of a key wins.

    ``schema`` must have a ``key`` column; LLM results use :data:`RESULT_SCHEMA`, vectors their own.
    ``seeds`` are read-only folders of parts from other runs (a committed cache), read before this one's
    own parts, so this cache's rows win; nothing is ever written to them.
    """

    def __init__(self, folder: Path, schema: pa.Schema = RESULT_SCHEMA, seeds: Sequence[Path] = ()) -> None:
        self.folder = folder
        self.schema = schema
        self.seeds = tuple(seeds)
        for seed in self.seeds:
            if not seed.is_dir():
                raise ConfigError(
                    f"seed cache {seed} is not a folder (reason.seed_caches; a relative path starts at the current one)"
                )
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".tmp-*"):
            stale.unlink(missing_ok=True)

    def parts(self) -> list[Path]:
        """This cache's own parts (not the seeds')."""
        return sorted(self.folder.glob("part-*.parquet"))

    def load(self) -> dict[str, dict[str, Any]]:
        """Every known row by key: the seeds' first, then this cache's own."""
        seeded = [part for seed in self.seeds for part in sorted(seed.glob("part-*.parquet"))]
        return self._rows(seeded + self.parts())

    def _rows(self, parts: list[Path]) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for part in parts:
            for row in pq.read_table(part, schema=self.schema).to_pylist():
                rows[row["key"]] = row
        return rows

    def load_table(self) -> pa.Table:
        """Every stored row, oldest part first (for large payloads such as vectors)."""
        tables = [pq.read_table(part, schema=self.schema) for part in self.parts()]
        return pa.concat_tables(tables) if tables else self.schema.empty_table()

    def append(self, rows: Iterable[dict[str, Any]]) -> Path | None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        stamp = {"created_at": now} if "created_at" in self.schema.names else {}
        rows = [{**stamp, **row} for row in rows]
        if not rows:
            return None
        return self.append_table(pa.Table.from_pylist(rows, schema=self.schema))

    def append_table(self, table: pa.Table) -> Path:
        """Write one part atomically (temporary name, fsync, rename)."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        final = self.folder / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.folder / f".tmp-{final.name}"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return final

    def compact(self, min_parts: int = 32) -> None:
        """Fold many small parts into one (newest row per key); readers see either the old or new set."""
        parts = self.parts()
        if len(parts) < min_parts:
            return
        rows = self._rows(parts)
        merged = self.append(rows.values())
        for part in parts:
            if part != merged:
                part.unlink(missing_ok=True)

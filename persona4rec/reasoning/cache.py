"""Content-addressed store of LLM results: what makes reasoning resumable and reindexing incremental.

A result is keyed by the hash of everything that determines it (the item's sampled reviews, the prompt
set, the model and the generation settings). Results are appended as small Parquet part files, each
written to a temporary name and renamed, so a crash loses at most the batch in flight and never leaves a
half-written part. A rerun reads the keys already present and skips them; a changed item has a new key
and is redone. Failed results are stored too (status ``failed`` with the reason, and the last answer as
``{"last_answer": ...}`` in ``payload``, to read why) and are retried only when asked.

Beside it, :class:`PromptStore` keeps what was sent: each conversation an engine saw, content-addressed by
the sha256 of its messages, and for each answer the conversations of its attempts, so that after a run
anyone can show what the model saw (``p4r prompts ITEM``). Answers and their keys are unchanged by it: a
cache written before it, or a seed cache, simply has no stored prompts.
"""

from __future__ import annotations

import json
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

#: One row per answered unit: the sha256 of the conversation of each attempt, in order (the last one
#: produced the answer that the result cache holds under ``key``).
PROMPT_INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("subject", pa.string()),
        ("kind", pa.string()),
        ("prompts", pa.list_(pa.string())),
        ("created_at", pa.string()),
    ]
)


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


class PromptStore:
    """What each answer was asked with: content-addressed conversations plus an index from answer keys.

    ``objects/<sha256[:2]>/<sha256>.json`` holds one conversation (its chat messages, as JSON), named by
    the sha256 of the messages' canonical JSON (:func:`prompt_digest`); writing one that exists is a no-op.
    ``index/`` holds Parquet parts (:data:`PROMPT_INDEX_SCHEMA`, the newest row of a key wins) naming the
    conversations of each answer's attempts. Like the result cache, everything is written atomically.
    """

    def __init__(self, folder: Path, *, create: bool = True) -> None:
        """``create=False``: only read (nothing is created where no store exists)."""
        self.folder = folder
        self.index: ResultCache | None = None
        if create:
            self.index = ResultCache(folder / "index", schema=PROMPT_INDEX_SCHEMA)
            (folder / "objects").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.folder / "objects" / digest[:2] / f"{digest}.json"

    def put(self, messages: Sequence[dict[str, str]]) -> str:
        """Store a conversation (if new); its sha256."""
        digest = prompt_digest(messages)
        final = self.path(digest)
        if not final.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{final.name}")
            tmp.write_text(json.dumps({"messages": list(messages)}, ensure_ascii=False, indent=1), encoding="utf-8")
            os.replace(tmp, final)
        return digest

    def get(self, digest: str) -> list[dict[str, str]] | None:
        """A stored conversation, or None when it was never stored."""
        path = self.path(digest)
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))["messages"]

    def record(self, rows: Iterable[dict[str, Any]]) -> None:
        """Store the conversations of finished units: rows of ``key``, ``subject``, ``kind`` and
        ``conversations`` (one list of messages per attempt)."""
        index = [
            {
                "key": row["key"],
                "subject": row["subject"],
                "kind": row["kind"],
                "prompts": [self.put(messages) for messages in row["conversations"]],
            }
            for row in rows
            if row.get("conversations")
        ]
        if self.index is None:
            raise RuntimeError("a PromptStore opened with create=False is read-only")
        self.index.append(index)

    def attempts(self) -> dict[str, dict[str, Any]]:
        """Every indexed answer key with the sha256 of each attempt's conversation."""
        return read_rows(sorted((self.folder / "index").glob("part-*.parquet")), PROMPT_INDEX_SCHEMA)

    def compact(self) -> None:
        if self.index is not None:
            self.index.compact()


def read_rows(parts: Sequence[Path], schema: pa.Schema = RESULT_SCHEMA) -> dict[str, dict[str, Any]]:
    """Rows of cache parts by key, later parts winning, without creating or cleaning anything."""
    rows: dict[str, dict[str, Any]] = {}
    for part in parts:
        for row in pq.read_table(part, schema=schema).to_pylist():
            rows[row["key"]] = row
    return rows


def read_results(folder: Path, seeds: Sequence[Path] = ()) -> dict[str, dict[str, Any]]:
    """What :meth:`ResultCache.load` returns (seeds first, then ``folder``'s own parts), read-only."""
    parts = [part for seed in seeds for part in sorted(Path(seed).glob("part-*.parquet"))]
    return read_rows(parts + sorted(folder.glob("part-*.parquet")))


def prompt_digest(messages: Sequence[dict[str, str]]) -> str:
    """sha256 of a conversation's canonical JSON: the name of its stored copy."""
    return stable_hash(list(messages))

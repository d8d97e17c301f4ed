"""Versioned, atomically published stage outputs and their manifests.

A stage writes into ``<artifacts>/<dataset>/<stage>/<fingerprint>/``, where the fingerprint hashes the
stage's code version, the configuration sections it reads and the checksums of its inputs. It builds in a
temporary sibling folder and renames it into place only when complete, then points ``CURRENT`` at it
(write-then-rename, so readers never see a half-written version). A rerun whose fingerprint already
has a complete version does no work; a crash leaves only a temporary folder, removed by the next run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona4rec import __version__
from persona4rec.config import stable_hash

if TYPE_CHECKING:
    import pyarrow as pa

    from persona4rec.schemas import TableSchema

MANIFEST = "manifest.json"
CURRENT = "CURRENT"


@dataclass
class Manifest:
    """What a stage version is made of and what it holds; written as JSON beside its tables."""

    stage: str
    fingerprint: str
    config_hash: str
    stage_config: dict[str, Any]
    inputs: list[dict[str, Any]]
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # the stage's Summary (persona4rec.stage)
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # per timed step; see Timer
    environment: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def start(
        cls, stage: str, fp: str, config_hash: str, stage_config: dict[str, Any], inputs: list[dict[str, Any]],
        **environment: str,
    ) -> Manifest:  # fmt: skip
        """A stage's manifest before its tables are written: identity, inputs and where it runs."""
        env = {"persona4rec": __version__, "python": platform.python_version(), "cpu_count": str(os.cpu_count())}
        return cls(stage, fp, config_hash, stage_config, inputs, environment={**env, **environment})

    def add_table(self, folder: Path, table: pa.Table, schema: TableSchema) -> int:
        """Write a contracted table as ``folder/<name>/part-0.parquet``, check it, and record its rows."""
        import pyarrow.parquet as pq

        from persona4rec.schemas import validate_parquet

        (folder / schema.name).mkdir()
        pq.write_table(table, folder / schema.name / "part-0.parquet")
        rows = validate_parquet(folder / schema.name, schema)
        self.tables[schema.name] = {"rows": rows}
        return rows

    def record(self, timer: Timer) -> None:
        """Take the wall time and peak memory of every timed step."""
        self.timings_s = dict(timer.timings)
        self.peak_rss_mb = dict(timer.peak_rss_mb)

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST
        atomic_write(path, json.dumps(self.__dict__, indent=2, sort_keys=False, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if "counts" in doc:  # written before summaries had a name
            doc["summary"] = doc.pop("counts")
        return cls(**doc)


def fingerprint(stage: str, version: int, stage_config: dict[str, Any], inputs: list[dict[str, Any]]) -> str:
    """Identity of a stage's output: same code version, same config sections, same input bytes."""
    return stable_hash(
        {"stage": stage, "version": version, "config": stage_config, "inputs": [i["sha256"] for i in inputs]}
    )


def upstream(stage: str, result: StageResult) -> dict[str, Any]:
    """How a stage names one of its inputs in its manifest (and fingerprint)."""
    return {"stage": stage, "path": str(result.folder), "sha256": result.manifest.fingerprint}


@dataclass(frozen=True)
class StageResult:
    """A published stage version: where it is, its manifest, and whether this call reused it."""

    folder: Path
    manifest: Manifest
    skipped: bool
    summary: Any = None  # the stage's Summary; see persona4rec.stage

    def table(self, name: str) -> Path:
        return self.folder / name


@dataclass(frozen=True)
class StageStore:
    """The versions of one stage's output for one dataset."""

    root: Path

    def version_dir(self, fp: str) -> Path:
        return self.root / fp[:16]

    def complete(self, fp: str) -> Path | None:
        """The finished version for this fingerprint, if one exists."""
        folder = self.version_dir(fp)
        if (folder / MANIFEST).is_file():
            try:
                if Manifest.read(folder).fingerprint == fp:
                    return folder
            except (json.JSONDecodeError, TypeError):
                return None
        return None

    def current(self) -> Path | None:
        """The version that downstream stages read (the last one published)."""
        pointer = self.root / CURRENT
        if not pointer.is_file():
            return None
        folder = self.root / pointer.read_text(encoding="utf-8").strip()
        return folder if (folder / MANIFEST).is_file() else None

    def begin(self, fp: str) -> Path:
        """A fresh temporary folder to build a version in; stale ones from crashed runs are removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f".tmp-{fp[:16]}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        return tmp

    @contextmanager
    def building(self, fp: str) -> Iterator[Path]:
        """:meth:`begin`, removed again if the block fails (publish inside the block)."""
        tmp = self.begin(fp)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def publish(self, tmp: Path, fp: str) -> Path:
        """Move a finished build into place and point CURRENT at it."""
        final = self.version_dir(fp)
        if final.exists():  # an incomplete leftover under the final name (no manifest)
            shutil.rmtree(final)
        os.replace(tmp, final)
        self.point_current(final)
        return final

    def point_current(self, folder: Path) -> None:
        atomic_write(self.root / CURRENT, folder.name + "\n")


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Timer:
    """Accumulates named wall-clock timings and peak memory: ``with timer("kcore"): ...``.

    Memory is the resident set of this process and all its descendants (a local Ray cluster's workers,
    Spark's JVM, an in-process LLM engine), sampled every ``sample_s`` while a span is open. Pages
    shared between processes count once per process, so the figure is an upper bound.
    """

    def __init__(self, sample_s: float = 0.25) -> None:
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self.sample_s = sample_s

    def __call__(self, name: str) -> _Span:
        return _Span(self, name)


def tree_rss_bytes() -> int:
    """Resident bytes of this process plus all its descendants (0 for any that vanish while being read)."""
    import psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


class _Span:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.peak = tree_rss_bytes()
        self.done = threading.Event()
        self.sampler = threading.Thread(target=self._sample, name=f"rss-{self.name}", daemon=True)
        self.sampler.start()
        self.start = time.perf_counter()

    def _sample(self) -> None:
        while not self.done.wait(self.timer.sample_s):
            self.peak = max(self.peak, tree_rss_bytes())

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.done.set()
        self.sampler.join()
        self.peak = max(self.peak, tree_rss_bytes())
        t = self.timer
        t.timings[self.name] = round(t.timings.get(self.name, 0.0) + elapsed, 3)
        t.peak_rss_mb[self.name] = max(t.peak_rss_mb.get(self.name, 0.0), round(self.peak / 2**20, 1))

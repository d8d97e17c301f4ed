"""What the persona explorer (``/ui``) shows beside the served index, loaded once per index version.

The service's :class:`~persona4rec.serve.snapshot.Snapshot` holds the personas and user profiles; the
explorer also needs the texts they rest on. A :class:`Catalog` follows the index version's own lineage
(the index stage manifest names the reason version, whose manifest names the prepare version), so the
reviews, summaries and reasoning status it shows are exactly the ones the served personas were built
from. It also picks up, when they exist, the first-stage candidate lists made from the same prepared
corpus and the newest evaluation of the same personas and encoder. Whatever is missing is recorded with
the reason, for the page to say so; nothing here raises for a missing optional stage.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona4rec.artifacts import CURRENT, MANIFEST, Manifest
from persona4rec.serve.snapshot import Snapshot

log = logging.getLogger("persona4rec.serve.ui")

REVIEW_COLUMNS = ["review_id", "user_id", "item_id", "rating", "timestamp", "title", "text"]
INTERACTION_COLUMNS = ["user_id", "item_id", "review_id", "rating", "timestamp", "position", "split"]


@dataclass(frozen=True)
class Review:
    review_id: str
    user_id: str
    item_id: str
    rating: float
    timestamp: int
    title: str | None
    text: str

    @property
    def date(self) -> str:
        return datetime.fromtimestamp(self.timestamp, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Interaction:
    item_id: str
    review_id: str
    rating: float
    timestamp: int
    position: int
    split: str

    @property
    def date(self) -> str:
        return datetime.fromtimestamp(self.timestamp, UTC).strftime("%Y-%m-%d")


@dataclass
class ItemInfo:
    item_id: str
    title: str | None = None
    interactions: int = 0
    summary: str | None = None
    summary_source: str | None = None
    status: str | None = None  # 'ok' / 'failed' from item_status; None when the reason stage is unreadable
    reason: str | None = None
    n_reviews: int = 0  # reviews shown to the LLM
    attempts: int = 0
    calls: int = 0


@dataclass(frozen=True)
class PersonaInfo:
    """What the reason stage knows about a persona beyond what the index holds."""

    index: int
    merged_from: int
    model: str
    prompt_version: str


@dataclass(frozen=True)
class CandidateList:
    items: list[str]
    scores: list[float]
    target: str


@dataclass
class Evaluation:
    folder: Path
    created_at: str
    report: str  # Markdown, written by evaluation/report.py
    plots: dict[str, Path]  # file name -> path, the only files the plot route serves


@dataclass
class Catalog:
    """Reviews, items, histories, candidates and evaluation of one index version (see the module doc)."""

    collection: str
    dataset_dir: Path | None
    index_manifest: Manifest | None
    reason_manifest: Manifest | None
    items: dict[str, ItemInfo]
    reviews: dict[str, Review]
    reviews_of_item: dict[str, list[str]]  # newest first
    history: dict[str, list[Interaction]]  # per user, oldest first
    personas: dict[str, PersonaInfo]
    search_text: dict[str, str]  # item -> id, title, summary and persona names, lower-cased
    indexed: frozenset[str]  # items the index version can score
    counts: dict[str, int]  # index rows by kind, items
    candidates: dict[str, dict[str, CandidateList]]  # generator -> user -> test list
    evaluation: Evaluation | None
    missing: dict[str, str] = field(default_factory=dict)  # what could not be read, and why
    other_evaluations: int = 0  # evaluations of other personas or encoders, not shown
    built_s: float = 0.0
    registry: Future | None = None  # MLflow model version details, fetched in the background
    rendered: dict[tuple[str, str], Any] = field(default_factory=dict)  # pages' derived HTML, cached with the catalog

    @property
    def failed(self) -> list[ItemInfo]:
        return [i for i in self.items.values() if i.status == "failed"]

    def registry_info(self, timeout: float) -> dict[str, Any]:
        """The encoder's registry entry (``{"error": ...}`` when MLflow cannot say, or is still loading)."""
        if self.registry is None:
            return {"error": "no encoder recorded on this index version"}
        try:
            return self.registry.result(timeout=timeout)
        except FutureTimeout:
            return {"error": f"MLflow has not answered yet (waited {timeout:g} s); reload the page"}
        except Exception as exc:  # the page says why; serving is unaffected
            return {"error": f"{type(exc).__name__}: {exc}"}


def _folder(dataset_dir: Path, ref: dict[str, Any]) -> Path | None:
    """A stage version named in a manifest: beside the index first (artifacts moved as a whole), else as recorded."""
    recorded = Path(ref.get("path", ""))
    for candidate in (dataset_dir / ref.get("stage", "") / recorded.name, recorded):
        if (candidate / MANIFEST).is_file():
            return candidate
    return None


def _upstream(manifest: Manifest, stage: str) -> dict[str, Any] | None:
    return next((i for i in manifest.inputs if i.get("stage") == stage), None)


def _versions(stage_dir: Path) -> list[tuple[Path, Manifest]]:
    """Published versions of a stage, newest first (CURRENT first among equals)."""
    if not stage_dir.is_dir():
        return []
    current = (stage_dir / CURRENT).read_text(encoding="utf-8").strip() if (stage_dir / CURRENT).is_file() else ""
    out = []
    for folder in stage_dir.iterdir():
        if folder.is_dir() and (folder / MANIFEST).is_file():
            try:
                out.append((folder, Manifest.read(folder)))
            except (ValueError, TypeError):
                continue
    return sorted(out, key=lambda fm: (fm[1].created_at, fm[0].name == current), reverse=True)


def build(snap: Snapshot, tracking_uri: str | None = None) -> Catalog:
    """Read what the explorer shows for ``snap``; each missing piece is noted in ``Catalog.missing``."""
    t0 = datetime.now(UTC)
    missing: dict[str, str] = {}
    index_folder = Path(snap.meta.get("artifacts", ""))
    dataset_dir = index_folder.parent.parent if snap.meta.get("artifacts") else None
    index_manifest = reason_manifest = None
    reason_folder = prepare_folder = None
    if dataset_dir is not None and (index_folder / MANIFEST).is_file():
        index_manifest = Manifest.read(index_folder)
        ref = _upstream(index_manifest, "reason")
        reason_folder = _folder(dataset_dir, ref) if ref else None
        if reason_folder is not None:
            reason_manifest = Manifest.read(reason_folder)
            ref = _upstream(reason_manifest, "prepare")
            prepare_folder = _folder(dataset_dir, ref) if ref else None
    if reason_folder is None:
        missing["reason"] = "the reason stage output this index was built from is not readable from here"
    if prepare_folder is None:
        missing["prepare"] = "the prepared corpus (reviews, histories) this index was built from is not readable here"

    items: dict[str, ItemInfo] = {i: ItemInfo(i) for i in snap.table.item_ids.tolist()}
    reviews: dict[str, Review] = {}
    reviews_of_item: dict[str, list[str]] = defaultdict(list)
    history: dict[str, list[Interaction]] = defaultdict(list)
    if prepare_folder is not None:
        t = pq.read_table(prepare_folder / "items", columns=["item_id", "title", "n_interactions"])
        for item, title, n in zip(*(t[c].to_pylist() for c in t.column_names), strict=True):
            info = items.setdefault(item, ItemInfo(item))
            info.title, info.interactions = title, n
        t = pq.read_table(prepare_folder / "reviews", columns=REVIEW_COLUMNS)
        t = t.sort_by([("timestamp", "descending"), ("review_id", "ascending")])
        for row in zip(*(t[c].to_pylist() for c in REVIEW_COLUMNS), strict=True):
            review = Review(*row)
            reviews[review.review_id] = review
            reviews_of_item[review.item_id].append(review.review_id)
        t = pq.read_table(prepare_folder / "interactions", columns=INTERACTION_COLUMNS)
        t = t.sort_by([("user_id", "ascending"), ("position", "ascending")])
        for user, *rest in zip(*(t[c].to_pylist() for c in INTERACTION_COLUMNS), strict=True):
            history[user].append(Interaction(*rest))

    personas: dict[str, PersonaInfo] = {}
    if reason_folder is not None:
        t = pq.read_table(reason_folder / "summaries")
        for item, summary, source in zip(*(t[c].to_pylist() for c in ("item_id", "summary", "source")), strict=True):
            info = items.setdefault(item, ItemInfo(item))
            info.summary, info.summary_source = summary, source
        cols = ["item_id", "status", "reason", "n_reviews", "attempts", "calls"]
        t = pq.read_table(reason_folder / "item_status", columns=cols)
        for item, status, why, n, attempts, calls in zip(*(t[c].to_pylist() for c in cols), strict=True):
            info = items.setdefault(item, ItemInfo(item))
            info.status, info.reason, info.n_reviews, info.attempts, info.calls = status, why, n, attempts, calls
        cols = ["persona_id", "persona_index", "merged_from", "model", "prompt_version"]
        t = pq.read_table(reason_folder / "personas", columns=cols)
        for pid, *rest in zip(*(t[c].to_pylist() for c in cols), strict=True):
            personas[pid] = PersonaInfo(*rest)

    names: dict[str, list[str]] = defaultdict(list)
    kinds = defaultdict(int)
    for item, name, kind in zip(snap.table.item_of.tolist(), snap.table.names, snap.table.kinds, strict=True):
        kinds[kind] += 1
        if kind == "persona":
            names[item].append(name)
    search_text = {
        i: " ".join([i, info.title or "", info.summary or "", *names.get(i, [])]).lower() for i, info in items.items()
    }

    prepare_sha = _upstream(reason_manifest, "prepare")["sha256"] if reason_manifest is not None else None
    candidates = _candidates(dataset_dir, prepare_sha, missing)
    reason_sha = _upstream(index_manifest, "reason")["sha256"] if index_manifest is not None else None
    evaluation, others = _evaluation(dataset_dir, reason_sha, snap.meta.get("encoder"), missing)

    catalog = Catalog(
        collection=snap.collection, dataset_dir=dataset_dir, index_manifest=index_manifest,
        reason_manifest=reason_manifest, items=items, reviews=reviews, reviews_of_item=dict(reviews_of_item),
        history=dict(history), personas=personas, search_text=search_text,
        indexed=frozenset(snap.table.item_ids.tolist()),
        counts={"items": len(snap.table.item_ids), "personas": kinds["persona"], "summary_rows": kinds["summary"]},
        candidates=candidates, evaluation=evaluation, missing=missing, other_evaluations=others,
    )  # fmt: skip
    catalog.built_s = (datetime.now(UTC) - t0).total_seconds()
    encoder = snap.meta.get("encoder")
    if encoder and tracking_uri:
        catalog.registry = _REGISTRY_POOL.submit(registry_entry, tracking_uri, encoder)
    return catalog


def _candidates(dataset_dir: Path | None, prepare_sha: str | None, missing: dict[str, str]):
    """The newest candidate lists (test split) made from the same prepared corpus, per generator and user."""
    if dataset_dir is None or prepare_sha is None:
        missing["candidates"] = "the index's prepared corpus is unknown, so no candidate lists can be matched"
        return {}
    for folder, manifest in _versions(dataset_dir / "candidates"):
        ref = _upstream(manifest, "prepare")
        if ref is None or ref["sha256"] != prepare_sha:
            continue
        t = pq.read_table(folder / "candidates", columns=["generator", "split", "user_id", "target", "items", "scores"])
        t = t.filter(pc.equal(t["split"], "test"))
        out: dict[str, dict[str, CandidateList]] = {}
        cols = ("generator", "user_id", "items", "scores", "target")
        for gen, user, its, scores, target in zip(*(t[c].to_pylist() for c in cols), strict=True):
            out.setdefault(gen, {})[user] = CandidateList(its, scores, target)
        return out
    missing["candidates"] = "no first-stage candidate lists for this corpus yet: run `p4r candidates`"
    return {}


def _evaluation(dataset_dir: Path | None, reason_sha: str | None, encoder: dict | None, missing: dict[str, str]):
    """The newest evaluation of the same personas (reason version) and encoder version, and how many others exist."""
    if dataset_dir is None or reason_sha is None:
        missing["evaluation"] = "the index's personas are unknown, so no evaluation can be matched"
        return None, 0
    versions = [(f, m) for f, m in _versions(dataset_dir / "evaluate") if (f / "report.md").is_file()]
    for folder, manifest in versions:
        ref = _upstream(manifest, "reason")
        used = manifest.stage_config.get("encoder")
        same_encoder = used is None or encoder is None or str(used.get("version")) == str(encoder.get("version"))
        if ref is not None and ref["sha256"] == reason_sha and same_encoder:
            plots_dir = folder / "plots"
            plots = {p.name: p for p in sorted(plots_dir.glob("*.png")) if p.is_file()} if plots_dir.is_dir() else {}
            report = (folder / "report.md").read_text(encoding="utf-8", errors="replace")
            return Evaluation(folder, manifest.created_at, report, plots), len(versions) - 1
    missing["evaluation"] = "no evaluation of this index's personas and encoder yet: run `p4r evaluate`"
    return None, len(versions)


# ------------------------------------------------------------------------------------------ MLflow

_REGISTRY_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ui-registry")


def registry_entry(tracking_uri: str, encoder: dict[str, str]) -> dict[str, Any]:
    """The registered encoder version the index was built with, read-only from MLflow.

    A SQLite store that does not exist is reported, not created (MLflow would create an empty one).
    """
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return {"error": f"no MLflow store at {tracking_uri}"}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)
    mv = client.get_model_version(encoder["model"], str(encoder["version"]))
    tags = dict(mv.tags or {})
    created = datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, UTC).isoformat(timespec="seconds")
    return {
        "model": mv.name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "created": created,
        "aliases": sorted(mv.aliases or []),
        "status": mv.status,
        "validation": {k.removeprefix("val."): v for k, v in sorted(tags.items()) if k.startswith("val.")},
        "mode": tags.get("mode"),
        "indexes": sorted(k.removeprefix("index.") for k in tags if k.startswith("index.")),
    }


class Catalogs:
    """The catalog of the current snapshot, built on first use after each swap (one build at a time)."""

    def __init__(self, tracking_uri: str | None) -> None:
        self.tracking_uri = tracking_uri
        self._lock = threading.Lock()
        self._entry: tuple[tuple[str, float], Catalog] | None = None  # replaced as one reference

    def get(self, snap: Snapshot) -> Catalog:
        key = (snap.collection, snap.loaded_at)
        entry = self._entry
        if entry is not None and entry[0] == key:
            return entry[1]
        with self._lock:
            entry = self._entry
            if entry is None or entry[0] != key:
                catalog = build(snap, self.tracking_uri)
                log.info("persona explorer: %s read in %.2f s", snap.collection, catalog.built_s)
                entry = self._entry = (key, catalog)
            return entry[1]

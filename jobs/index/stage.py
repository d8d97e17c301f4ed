"""The index stage's contract: every persona, encoded by a registered encoder, in a new Milvus collection version."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from persona4rec.artifacts import StageResult
from persona4rec.jobs.embed.stage import embed_config
from persona4rec.stage import Build, Option, Stage, Summary
from persona4rec.texts import TEXTS_VERSION

if TYPE_CHECKING:
    from persona4rec.config import Config


@dataclass(frozen=True)
class IndexSummary(Summary):
    collection: str  # the Milvus collection of this version
    alias: str
    rows: int
    personas: int
    summary_rows: int  # items without personas get one summary row
    copied: int  # vectors copied from the live version (same persona, text and encoder)
    copied_from: str | None
    encoded: int
    self_queries_checked: int
    users: int
    encoder: dict[str, str]  # model, version, run_id
    index_type: str
    replaced: str | None = None  # the collection the alias pointed at before this run (not stored)

    def lines(self) -> Iterable[str]:
        yield (
            f"  {self.personas:,} personas + {self.summary_rows:,} summary rows (items without personas); "
            f"{self.copied:,} vectors copied from {self.copied_from or 'no earlier version'}, {self.encoded:,} encoded"
        )
        e = self.encoder
        yield (
            f"  {self.index_type} index, {self.self_queries_checked} self-queries checked; encoder {e['model']} "
            f"version {e['version']}; {self.users:,} user profiles"
        )
        yield f"  alias {self.alias} -> {self.collection}" + (f" (was {self.replaced})" if self.replaced else "")


def encoder_ref(cfg: Config) -> dict[str, str]:
    """The registered encoder version the index (and evaluation) uses: index.encoder_version, else the champion."""
    from persona4rec.infra import mlflow as registry

    ref = registry.resolve_version(cfg, cfg.index.encoder_version)
    return {"model": ref.name, "version": ref.version, "run_id": ref.run_id}


class Index(Stage):
    """Write the persona index: a new Milvus collection version, then move the alias to it.

    \b
    Every persona (and a summary row for each item without personas) is encoded with the champion
    encoder (or index.encoder_version); vectors of unchanged personas are copied from the live version.
    The version is built, indexed (index.index_type), loaded and checked before the alias moves; a
    failed build never touches it, and old versions stay until dropped (--drop).
    Milvus Lite (a local folder) by default; index.uri=http://host:19530 for a Milvus server.
    """

    name = "index"
    version = 1
    upstream = ("embed", "reason")
    summary = IndexSummary
    options = (
        Option("--list", "List the index versions in Milvus (the live one marked) and exit.", action=True),
        Option("--drop", "Drop an old index version (never the live one) and exit.", "COLLECTION", action=True),
    )

    def config(self, cfg: Config) -> dict[str, Any]:
        i = cfg.index
        return {
            "encoder": encoder_ref(cfg),
            "alias": cfg.index_alias,
            "index": {"type": i.index_type, "params": i.index_params, "shards": i.shards, "partitions": i.partitions},
            "texts": TEXTS_VERSION,
            "embed": embed_config(cfg),
        }

    def missing(self, cfg: Config) -> str:
        return f"no persona index for {cfg.dataset}: run `p4r index`"

    def build(self, b: Build) -> IndexSummary:
        from persona4rec.jobs.index.job import build

        return build(b)

    def reusable(self, cfg: Config, result: StageResult) -> bool:
        """Only while its collection is still in Milvus, whole."""
        from persona4rec.infra import milvus

        with closing(milvus.connect(cfg)) as client:
            name = result.summary.collection
            return client.has_collection(name) and milvus.count(client, name) == result.summary.rows

    def activate(self, cfg: Config, result: StageResult) -> StageResult:
        """Load the version's collection and move the alias to it: the one step readers see."""
        from persona4rec.infra import milvus
        from persona4rec.infra import mlflow as registry

        s = result.summary
        with closing(milvus.connect(cfg)) as client:
            client.load_collection(s.collection)
            previous = milvus.move_alias(client, s.alias, s.collection)
        if not result.skipped:
            registry.record_index(cfg, s.encoder["version"], s.collection)
        return replace(result, summary=replace(s, replaced=previous if previous != s.collection else None))

    def discard(self, cfg: Config, summary: IndexSummary) -> None:
        from persona4rec.infra import milvus

        with closing(milvus.connect(cfg)) as client:
            client.drop_collection(summary.collection)

    def act(self, cfg: Config, *, list: bool = False, drop: str | None = None) -> Iterable[str] | None:
        if not (list or drop):
            return None
        from persona4rec.infra import milvus

        with closing(milvus.connect(cfg)) as client:
            if drop:
                milvus.drop_version(client, cfg.index_alias, drop)
                return [f"index: dropped {drop}"]
            found = milvus.versions(client, cfg.index_alias)
        if not found:
            return [f"index: no versions of {cfg.index_alias} at {cfg.milvus_uri}"]
        encoder = [v.meta.get("encoder", {}).get("version", "?") for v in found]
        return [
            f"{'*' if v.live else ' '} {v.name}  {v.rows:>9,} rows  encoder version {e}"
            for v, e in zip(found, encoder, strict=True)
        ]

    def written(self, result: StageResult) -> str:
        return f"{result.summary.collection} ({result.folder})"

    def report(self, cfg: Config, result: StageResult) -> Iterable[str]:
        if result.skipped:
            return [f"  {result.summary.alias} -> {result.summary.collection}"]
        return result.summary.lines()


STAGE = Index()

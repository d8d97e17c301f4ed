"""The prepare stage's contract: raw reviews (+ item metadata) into the cleaned, split corpus, on Spark."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from persona4rec.stage import Build, Stage, Summary

if TYPE_CHECKING:
    from persona4rec.config import Config


@dataclass(frozen=True)
class PrepareSummary(Summary):
    """Every input line is a review or quarantined: ``accounting`` states the sum."""

    input_lines: int
    valid_after_clean: int
    k_core: dict[str, int]  # k and the passes it took
    reviews: int
    split: dict[str, int]  # interactions per split
    ties: dict[str, int]
    quarantine_by_reason: dict[str, int]  # "<source table>.<reason>" -> lines
    empty_text_reviews: int
    users: int
    items: int
    accounting: str
    metadata_lines: int | None = None
    metadata_records_valid: int | None = None

    def lines(self) -> Iterable[str]:
        yield f"  {self.accounting}"
        for reason, n in self.quarantine_by_reason.items():
            yield f"    quarantined {reason:<28} {n:>10,}"
        s = self.split
        yield (
            f"  users {self.users:,}  items {self.items:,}  train/valid/test {s.get('train', 0):,}/"
            f"{s.get('valid', 0):,}/{s.get('test', 0):,}  empty-text reviews {self.empty_text_reviews:,}"
        )


class Prepare(Stage):
    """Clean, filter and split the review corpus on Spark.

    \b
    Reads the dataset's raw files (data.local_dir, else the download cache), quarantines every bad
    line with its reason, de-duplicates, applies the item filter and the iterative k-core
    (prepare.k_core), splits leave-one-out by time and samples each item's training reviews for the
    LLM. Writes reviews, items, interactions, review_samples and quarantine as Parquet, plus
    manifest.json, under <paths.artifacts>/<dataset>/prepare/<fingerprint>/. A rerun with the same
    inputs and configuration does no work. Too little kept (prepare.min_kept_share) publishes nothing.

    \b
    Example (the real data shipped on this machine):
      p4r prepare -d amazon2014-musical-instruments \\
          data.local_dir=../shared/data/amazon2014_musical_instruments_5core
    """

    name = "prepare"
    version = 1
    summary = PrepareSummary

    def config(self, cfg: Config) -> dict[str, Any]:
        """What determines the output (not where files live, not Spark tuning, not the publish threshold)."""
        data = cfg.data.model_dump(mode="json", include={"format", "file_format", "columns", "timestamp_unit"})
        data["files"] = {
            "reviews": cfg.data.reviews.filename,
            "metadata": cfg.data.metadata.filename if cfg.data.metadata else None,
        }
        prepare = cfg.prepare.model_dump(mode="json", exclude={"k_core_driver_max_pairs", "min_kept_share"})
        return {"data": data, "prepare": prepare}

    def sources(self, cfg: Config, progress: bool) -> list[dict[str, Any]]:
        from persona4rec.datasets import checked_inputs, resolve_files

        return checked_inputs(cfg, resolve_files(cfg), progress=progress)

    def missing(self, cfg: Config) -> str:
        return f"no prepared corpus for this configuration of {cfg.dataset}: run `p4r prepare` first (or `p4r run`)"

    def build(self, b: Build, *, spark: Any = None) -> PrepareSummary:
        """``spark``: a session to run on; without one the stage starts its own and stops it when done."""
        from persona4rec.jobs.prepare.job import build

        return build(b, spark)


STAGE = Prepare()

"""The promote stage's contract: the champion alias moves to a registered encoder only if it beats the champion."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from persona4rec.artifacts import StageResult
from persona4rec.stage import Build, Option, Stage, Summary

if TYPE_CHECKING:
    from persona4rec.config import Config


@dataclass(frozen=True)
class Promotion(Summary):
    """One decision: both versions scored now on the same validation data and metric."""

    model: str
    metric: str
    candidate: str
    candidate_score: float | None  # None when the candidate already is the champion (nothing scored)
    champion: str | None
    champion_score: float | None
    promoted: bool
    reason: str
    at: str

    def table(self) -> str:
        if self.candidate_score is None:
            return "kept: " + self.reason
        rows = [
            f"{'':<11}{'version':>8}  {self.metric:>18}",
            f"{'candidate':<11}{self.candidate:>8}  {self.candidate_score:>18.4f}",
        ]
        if self.champion is not None and self.champion_score is not None:
            rows.append(f"{'champion':<11}{self.champion:>8}  {self.champion_score:>18.4f}")
        rows.append(("promoted: " if self.promoted else "kept: ") + self.reason)
        return "\n".join(rows)

    def lines(self) -> Iterable[str]:
        yield f"  {self.model} on {self.metric} (validation)"
        for row in self.table().splitlines():
            yield f"  {row}"


class Promote(Stage):
    """Move the champion alias to a registered encoder if it beats the current champion.

    \b
    Both are scored now, on the same validation data and train.metric; a tie keeps the champion.
    The decision is printed and recorded on the model version (tag `promotion`), in its MLflow run and
    in the stage's manifest; the same candidate against the same champion is decided once.
    """

    name = "promote"
    version = 1
    upstream = ("embed", "align", "candidates")
    summary = Promotion
    options = (
        Option("--version", "Registered version to consider (default: the latest).", "N", override="promote.version"),
    )

    def config(self, cfg: Config) -> dict[str, Any]:
        """The decision depends on which versions meet, on what metric, over which data (the inputs)."""
        from persona4rec.infra import mlflow as registry

        candidate = cfg.promote.version or registry.latest_version(cfg)
        return {
            "model": cfg.registered_model,
            "tracking_uri": cfg.tracking_uri,
            "metric": cfg.train.metric,
            "lists": cfg.train_lists,
            "candidate": candidate,
            "champion": registry.champion(cfg),
        }

    def build(self, b: Build) -> Promotion:
        from persona4rec.jobs.promote.job import decide

        return decide(b)

    def report(self, cfg: Config, result: StageResult) -> Iterable[str]:
        return result.summary.lines()


STAGE = Promote()

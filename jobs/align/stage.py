"""The align stage's contract: (user, item, positive persona) labels for training interactions only."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from persona4rec.jobs.reason.stage import spent_lines
from persona4rec.stage import Build, Option, Stage, Summary

if TYPE_CHECKING:
    from persona4rec.config import Config


@dataclass(frozen=True)
class AlignSummary(Summary):
    train_interactions: int
    labels: int
    coverage: float  # labels / training interactions
    unlabelled_by_reason: dict[str, int]
    llm: dict[str, float] | None = None  # paper mode: the judge's calls, tokens and seconds
    spent_this_run: dict[str, dict[str, int]] = field(default_factory=dict)

    def lines(self) -> Iterable[str]:
        yield (
            f"  {self.labels:,} labels for {self.train_interactions:,} training interactions "
            f"(coverage {self.coverage:.1%})"
        )
        for reason, n in self.unlabelled_by_reason.items():
            yield f"    {reason:<24} {n:>8,}"
        if self.llm is not None:
            yield from spent_lines(self.spent_this_run)


class Align(Stage):
    """Label training interactions with their positive persona (the encoder's training data).

    \b
    efficient mode: the persona of the item that cites the user's own review (no LLM call).
    paper mode: an LLM judge reads the user's earlier history (strictly before the interaction) and
    picks the best-fitting persona of the item. Only training interactions are labelled.
    """

    name = "align"
    version = 1
    upstream = ("prepare", "reason")
    summary = AlignSummary
    options = (
        Option(
            "--retry-failed",
            "Redo judge answers recorded as failed (by default they are kept as failed).",
            rebuild=True,
        ),
    )

    def config(self, cfg: Config) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": cfg.reason.mode}
        if cfg.reason.mode == "paper":
            out["align"] = cfg.align.model_dump(mode="json")
            out["llm"] = cfg.llm.model_dump(mode="json", include={"engine", "model", "temperature", "seed"})
            out["prompts"] = cfg.reason.prompts
        return out

    def missing(self, cfg: Config) -> str:
        return f"no labels for {cfg.dataset}: run `p4r align` first"

    def build(self, b: Build, *, retry_failed: bool = False, engine: Any = None, embed: Any = None) -> AlignSummary:
        from persona4rec.jobs.align.job import build

        return build(b, retry_failed=retry_failed, engine=engine, embed=embed)


STAGE = Align()

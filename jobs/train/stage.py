"""The train stage's contract: the alignment encoder fitted on Ray Train, logged and registered in MLflow."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from persona4rec.artifacts import StageResult
from persona4rec.jobs.embed.stage import embed_config
from persona4rec.stage import Build, Stage, Summary

if TYPE_CHECKING:
    from persona4rec.config import Config


@dataclass(frozen=True)
class TrainSummary(Summary):
    data: dict[str, Any]  # example counts (persona4rec.encoder.data)
    metric: str  # train.metric, what early stopping and gamma were chosen on
    validation: dict[str, float]
    chance: dict[str, float]
    gamma: float
    gamma_scores: list[str]
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]]
    mlflow: dict[str, Any]  # model, version, run_id, tracking_uri of the registration this run uses
    target: str = "persona"  # encoder.objective.target

    def lines(self) -> Iterable[str]:
        d = self.data
        examples = (
            f"{d.get('item_examples', 0):,} training interactions with a history (item target; "
            f"{d['train_examples']:,} labelled)"
            if self.target == "item"
            else f"{d['train_examples']:,} labelled examples"
        )
        lists = ", ".join(f"{g} {n:,}" for g, n in d.get("valid_lists", {}).items())
        yield (
            f"  {examples}, {d['heldout_examples']:,} held out, {d['valid_examples']:,} validation users"
            + (f" (validation lists: {lists})" if lists else "")
        )
        for name, value in self.validation.items():
            yield f"  {name:<20} {value:.4f}   (chance {self.chance.get(name, float('nan')):.4f})"
        yield f"  gamma {self.gamma:g} (tried {', '.join(self.gamma_scores)}); best epoch {self.best_epoch}"
        m = self.mlflow
        yield f"  registered {m['model']} version {m['version']} at {m['tracking_uri']} (run {m['run_id']})"


class Train(Stage):
    """Train the alignment encoder on Ray Train and register it in MLflow.

    \b
    encoder.mode: head (frozen base + residual head, fast on a CPU), lora (the paper), full, or vanilla
    (registers the untuned base model). encoder.objective: target item (every training interaction with
    a history, the item scored as the max over its personas, against the whole catalogue or the batch,
    optionally with first-stage hard negatives) or persona (the paper's labels). train.num_workers workers
    (train.use_gpu for GPUs), a checkpoint per epoch, early stopping and gamma on train.metric
    (list_ndcg@10: the first stage's validation lists reordered, so `p4r candidates` runs first). A
    crashed run resumes from its last checkpoint when run again.
    Example:
      p4r train encoder.objective.negatives=batch encoder.objective.hard_negatives=10
    """

    name = "train"
    version = 2  # 2: item-level objective, first-stage negatives, selection on validation lists
    upstream = ("embed", "align", "candidates")
    summary = TrainSummary

    def config(self, cfg: Config) -> dict[str, Any]:
        return {
            "encoder": cfg.encoder.model_dump(mode="json"),
            "train": {**cfg.train.model_dump(mode="json"), "lists": cfg.train_lists},
            "embed": embed_config(cfg),
        }

    def missing(self, cfg: Config) -> str:
        return f"no trained encoder for {cfg.dataset}: run `p4r train`"

    def build(self, b: Build) -> TrainSummary:
        from persona4rec.jobs.train.job import build

        return build(b)

    def activate(self, cfg: Config, result: StageResult) -> StageResult:
        """A reused version is registered wherever the configuration now tracks models (once)."""
        if not result.skipped:
            return result
        from persona4rec.jobs.train.job import ensure_registered

        return replace(result, summary=replace(result.summary, mlflow=ensure_registered(cfg, result)))

    def report(self, cfg: Config, result: StageResult) -> Iterable[str]:
        return result.summary.lines()


STAGE = Train()

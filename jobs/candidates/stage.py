"""The candidates stage's contract: first-stage generators trained on the training split, top-N lists."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from persona4rec.stage import Build, Stage, Summary

if TYPE_CHECKING:
    from persona4rec.config import Config


@dataclass(frozen=True)
class CandidatesSummary(Summary):
    users: int
    items: int
    train_interactions: int
    top_n: int
    generators: dict[str, dict[str, Any]]  # name -> params kept, grid tried, test full-ranking metrics
    hit_rate: dict[str, dict[str, float]]  # name -> split -> share of users whose item is in the list

    def lines(self) -> Iterable[str]:
        yield f"  {self.users:,} users, {self.items:,} items, {self.train_interactions:,} training interactions"
        for name, g in self.generators.items():
            tuned = (
                ", ".join(f"{k}={v:g}" for k, v in g["params"].items() if not isinstance(v, dict)) or "no parameters"
            )
            t = g["test_full_ranking"]
            yield (
                f"  {name:<10} test HR@{self.top_n} {self.hit_rate[name]['test']:.4f}  full-ranking HR@10 "
                f"{t['hr@10']:.4f} NDCG@10 {t['ndcg@10']:.4f}  ({tuned})"
            )


class Candidates(Stage):
    """Train the first-stage generators on the training split and list top-N candidates per user.

    \b
    candidates.generators: popularity, BPR-MF and LightGCN (PyTorch; candidates.num_workers=N runs them
    on Ray Train). Every combination of a model's grid (e.g. candidates.bpr.grid.l2=[1e-4,1e-3]) is
    trained, stopping early on validation NDCG@top_n, and the best is kept. Lists leave out the user's
    training items (and, for test, the validation item) and are never padded.
    Example:
      p4r candidates -c conf/experiments/offline-cpu.yaml candidates.top_n=50
    """

    name = "candidates"
    version = 1
    upstream = ("prepare",)
    summary = CandidatesSummary

    def config(self, cfg: Config) -> dict[str, Any]:
        # num_workers too: data-parallel training learns other weights; not what a worker reserves or how often
        # a worker group may restart
        return cfg.candidates.model_dump(mode="json", exclude={"cpus_per_worker", "max_failures"})

    def missing(self, cfg: Config) -> str:
        return f"no candidates for this configuration of {cfg.dataset}: run `p4r candidates`"

    def build(self, b: Build) -> CandidatesSummary:
        from persona4rec.jobs.candidates.job import build

        return build(b)


STAGE = Candidates()

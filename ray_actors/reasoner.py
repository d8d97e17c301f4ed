"""The reasoning worker: one LLM engine (and the de-duplication embedder) held by a long-lived process.

The same class runs in-process (tests, a single machine without Ray) and as a Ray actor, one engine per
actor; an actor pool of them is sized by ``reason.actors``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from persona4rec.config import LLMConfig, ReasonConfig
from persona4rec.reasoning.solve import Solver
from persona4rec.reasoning.units import Unit


class Reasoner:
    def __init__(
        self,
        llm: LLMConfig,
        reason: ReasonConfig,
        *,
        engine: Any = None,
        embed: Callable[[list[str]], np.ndarray] | None = None,
    ) -> None:
        from persona4rec.ray_actors.embedder import load_embedder
        from persona4rec.ray_actors.engines import build_engine

        self.llm, self.reason = llm, reason
        self.engine = engine if engine is not None else build_engine(llm)
        self.embed = embed if embed is not None else load_embedder(reason.dedup.embedder)
        self.solver = Solver(
            self.engine, temperature=llm.temperature, embed=self.embed, dedup_threshold=reason.dedup.threshold
        )

    def describe(self) -> dict[str, str]:
        info = {"engine": self.engine.name, "model": self.engine.model_id}
        return info if self.engine.dtype is None else {**info, "dtype": self.engine.dtype}

    def step(self, units: list[Unit], max_attempts: int) -> list[dict[str, Any]]:
        """Answer ``units`` and the retries carried from earlier calls in one batch; rows of those that finished.

        Units still to retry stay here for the next call (``Solver``): call ``drain`` after the last batch.
        """
        return self._label(self.solver.step(units, max_attempts))

    def drain(self) -> list[dict[str, Any]]:
        """Finish every carried unit; their rows."""
        return self._label(self.solver.drain())

    def _label(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for row in rows:
            row["engine"], row["model"] = self.engine.name, self.engine.model_id
        return rows

    def close(self) -> None:
        self.engine.close()

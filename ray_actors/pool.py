"""Where LLM units run, and the bookkeeping around them.

Pools: a Ray actor pool of Reasoners (the production path) or one Reasoner in-process. Both hand the rows
of finished units back as each batch completes; :class:`LLMWork` persists them in the result cache before
the next arrive, so a crash loses only the batches in flight and the retries a Reasoner carries to its
next batch (``reasoning.solve.Solver``).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from persona4rec.config import Config
from persona4rec.errors import WorkerLost
from persona4rec.ray_actors.reasoner import Reasoner
from persona4rec.reasoning.cache import PromptStore, ResultCache
from persona4rec.reasoning.units import Unit

Rows = list[dict[str, Any]]


def batches(units: Sequence[Unit], size: int) -> Iterator[list[Unit]]:
    for start in range(0, len(units), size):
        yield list(units[start : start + size])


class LocalPool:
    """One Reasoner in this process (an injected engine in tests, or a single engine without Ray)."""

    def __init__(self, reasoner: Reasoner, batch_size: int) -> None:
        self.reasoner, self.batch_size = reasoner, batch_size

    def describe(self) -> dict[str, Any]:
        return {**self.reasoner.describe(), "actors": 0}

    def run(self, units: Sequence[Unit], max_attempts: int, on_rows: Callable[[Rows], None]) -> None:
        for batch in batches(units, self.batch_size):
            on_rows(self.reasoner.step(batch, max_attempts))
        on_rows(self.reasoner.drain())

    def close(self) -> None:
        """The injected engine belongs to the caller."""


class RayPool:
    """``reason.actors.num_actors`` Reasoner actors, each with its own engine, fed batches as they free up."""

    def __init__(self, cfg: Config) -> None:
        import ray
        from ray.util import ActorPool

        from persona4rec.infra.ray import ensure_ray

        ensure_ray(cfg.ray)
        a = cfg.reason.actors
        remote = ray.remote(Reasoner).options(num_cpus=a.num_cpus, num_gpus=a.num_gpus, max_restarts=0)
        self.actors = [remote.remote(cfg.llm, cfg.reason) for _ in range(a.num_actors)]
        self._info = ray.get(self.actors[0].describe.remote())  # waits for the engine: start-up errors surface here
        self.pool = ActorPool(self.actors)
        self.batch_size = a.batch_size

    def describe(self) -> dict[str, Any]:
        return {**self._info, "actors": len(self.actors)}

    def run(self, units: Sequence[Unit], max_attempts: int, on_rows: Callable[[Rows], None]) -> None:
        import ray
        from ray.exceptions import OutOfMemoryError, RayActorError

        work = list(batches(units, self.batch_size))
        try:
            for rows in self.pool.map_unordered(lambda actor, b: actor.step.remote(b, max_attempts), work):
                on_rows(rows)
            draining = [actor.drain.remote() for actor in self.actors]  # each actor's own carried retries
            while draining:
                [ready], draining = ray.wait(draining)
                on_rows(ray.get(ready))
        except (OutOfMemoryError, RayActorError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = (
                " Free memory, or lower reason.actors.batch_size or llm.vllm.cpu_kv_cache_gib."
                if isinstance(exc, OutOfMemoryError)
                else ""
            )
            raise WorkerLost(
                f"a Reasoner actor was lost mid-batch ({type(exc).__name__}: {why}). Every finished answer is in "
                f"the result cache: run the same command again to resume.{hint}"
            ) from exc

    def close(self) -> None:
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):  # the actor is killed next either way
                ray.get(actor.close.remote(), timeout=60)
            ray.kill(actor)


def pool_factory(cfg: Config, engine: Any, embed: Any) -> Any:
    """A thunk that builds the pool: in-process around an injected engine, else Ray actors."""
    if engine is not None:
        return lambda: LocalPool(
            Reasoner(cfg.llm, cfg.reason, engine=engine, embed=embed), cfg.reason.actors.batch_size
        )
    return lambda: RayPool(cfg)


@dataclass
class Ledger:
    """The cache as seen by one run: what is known, what this run added, and what it cost. With a
    ``prompts`` store, the conversations each answer's attempts sent are kept beside the answers."""

    cache: ResultCache
    retry_failed: bool
    prompts: PromptStore | None = None
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    spent: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    def __post_init__(self) -> None:
        self.known = self.cache.load()

    def pending(self, units: Sequence[Unit]) -> list[Unit]:
        seen, out = set(), []
        for u in units:
            row = self.known.get(u.key)
            redo = row is None or (self.retry_failed and row["status"] == "failed")
            if redo and u.key not in seen:
                seen.add(u.key)
                out.append(u)
        return out

    def record(self, kind: str, rows: list[dict[str, Any]]) -> None:
        sent = [
            {
                "key": r["key"],
                "subject": r["subject"],
                "kind": r.pop("kind", kind),
                "conversations": r.pop("conversations", []),
            }
            for r in rows
        ]
        if self.prompts is not None:  # before the answers: an answer in the cache has its prompt stored
            self.prompts.record(sent)
        self.cache.append(rows)
        for row in rows:
            self.known[row["key"]] = row
            s = self.spent[kind]
            s["units"] += 1
            s["failed"] += row["status"] == "failed"
            for k in ("calls", "prompt_tokens", "completion_tokens"):
                s[k] += row[k]


class LLMWork:
    """Runs units through a pool created on first need (a fully cached rerun starts no engine)."""

    def __init__(self, cfg: Config, ledger: Ledger, pool_factory: Any, progress: bool) -> None:
        self.cfg, self.ledger, self.pool_factory, self.progress = cfg, ledger, pool_factory, progress
        self.pool: Any = None
        self.info: dict[str, Any] = {}

    def run(self, kind: str, units: Sequence[Unit]) -> dict[str, dict[str, Any]]:
        todo = self.ledger.pending(units)
        if todo:
            if self.pool is None:
                self.pool = self.pool_factory()
                self.info = self.pool.describe()
            bar = tqdm(total=len(todo), desc=f"reason: {kind}", unit="unit", disable=not self.progress)
            started, tokens = time.perf_counter(), 0

            def on_rows(rows: list[dict[str, Any]]) -> None:
                nonlocal tokens
                self.ledger.record(kind, rows)
                tokens += sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
                bar.update(len(rows))
                elapsed = max(time.perf_counter() - started, 1e-9)
                failed = self.ledger.spent[kind]["failed"]
                bar.set_postfix_str(f"{tokens / elapsed:.0f} tok/s, {failed} failed")

            try:
                self.pool.run(todo, self.cfg.reason.max_attempts, on_rows)
            finally:
                bar.close()
        return {u.key: self.ledger.known[u.key] for u in units}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

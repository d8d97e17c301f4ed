"""The reason stage's contract: item summaries and personas written by an LLM on a Ray actor pool."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona4rec.stage import Build, Option, Stage, Summary

if TYPE_CHECKING:
    from persona4rec.config import Config


def spent_lines(spent: dict[str, dict[str, int]]) -> Iterable[str]:
    """What one run of an LLM stage cost, per kind of unit (cached answers cost nothing)."""
    for kind, s in spent.items():
        yield (
            f"  this run, {kind}: {s['units']:,} units ({s['failed']:,} failed), {s['calls']:,} LLM calls, "
            f"{s['prompt_tokens']:,} prompt + {s['completion_tokens']:,} generated tokens"
        )
    if not spent:
        yield "  this run: every answer came from the cache (no LLM call)"


@dataclass(frozen=True)
class ReasonSummary(Summary):
    """Items reasoned over and what it cost, for the whole output (cached answers included)."""

    items: int
    items_ok: int
    items_failed: int
    failures_by_reason: dict[str, int]
    personas: int
    personas_per_ok_item: float
    llm_calls: int
    llm_calls_per_item: float
    prompt_tokens: int
    completion_tokens: int
    tokens_per_item: float
    personas_dropped_cut: int
    items_short: int
    llm_seconds: float
    llm_seconds_per_item: float
    reviews_quarantined: int = 0  # sampled reviews kept out of prompts as orders to the model
    reviews_quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    personas_screened: int = 0  # personas dropped for following planted orders
    personas_screened_by_reason: dict[str, int] = field(default_factory=dict)
    aspects: dict[str, int] | None = None  # paper mode: aspect tuples, failed, kept
    spent_this_run: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> units, calls, tokens
    #: persona quality of the whole output (``PersonaQuality.to_dict()``; reason.quality), also as quality.md
    quality: dict[str, Any] | None = None

    def lines(self) -> Iterable[str]:
        yield (
            f"  items {self.items:,}: {self.items_ok:,} ok, {self.items_failed:,} failed  "
            f"personas {self.personas:,} ({self.personas_per_ok_item} per item)"
        )
        for reason, n in self.failures_by_reason.items():
            yield f"    failed: {reason:<24} {n:>8,}"
        yield f"  whole output: {self.llm_calls_per_item} LLM calls and {self.tokens_per_item} tokens per item"
        yield from spent_lines(self.spent_this_run)
        if self.quality:
            yield from quality_lines(self.quality)


def quality_lines(q: dict[str, Any]) -> Iterable[str]:
    """The persona quality measures that have targets, each marked met or missed (details in quality.md)."""

    def shown(key: str) -> str:
        value = q.get(key)
        return "n/a" if value is None else (f"{value:,}" if isinstance(value, int) else f"{value:.3g}")

    parts = []
    for key, t in q.get("targets", {}).items():
        mark = {True: "ok", False: "MISSED", None: "n/a"}[t["met"]]
        parts.append(f"{key} {shown(key)} ({t['target']}: {mark})")
    yield "  persona quality: " + "; ".join(parts[:2])
    for lo in range(2, len(parts), 2):
        yield "                   " + "; ".join(parts[lo : lo + 2])


QUALITY_REPORT = "quality.md"  # in the version folder, when reason.quality is on


def cache_dir(cfg: Config) -> Path:
    """The answer cache, shared by every version of the stage (keyed by content)."""
    return cfg.artifacts_root / "reason" / "cache"


def prompts_dir(cfg: Config) -> Path:
    """The prompt store beside the answer cache: what each cached answer was asked with."""
    return cfg.artifacts_root / "reason" / "prompts"


class Reason(Stage):
    """Write item summaries and personas with an LLM, on a Ray actor pool.

    \b
    Reads prepare's items and review samples. reason.mode=efficient (default) spends one LLM call
    per item: a summary plus 2-7 personas (name, description, rationale), each citing the reviews it
    rests on. reason.mode=paper follows the paper: a summary call, one aspect call per review, then
    a persona call over the aspects. Answers are schema-constrained and validated; an invalid one is
    retried (reason.max_attempts) and then recorded as failed with its reason, never left empty.

    \b
    Every answer is cached by content hash as soon as its batch finishes: a rerun skips done work,
    a killed run resumes, and only items whose reviews, prompts or model changed are redone.

    \b
    Engines (llm.engine): vllm (Ray actors; GPUs via reason.actors.num_gpus), llamacpp (GGUF on a
    CPU), openai (any OpenAI-compatible endpoint at llm.openai.base_url), extractive (no LLM: baseline).
    Example on this CPU (offline models, see README):
      p4r reason -c conf/experiments/offline-cpu.yaml reason.limit_items=20
    """

    name = "reason"
    # 2: paper-mode aspect answers decoded with spaced JSON on vLLM (see the vLLM engine)
    # 3: item_status.llm_seconds and .notes (a cut persona is dropped, not the item; a cut aspect slot is nulled)
    # 4: an item still short of sound personas after its last attempt keeps them (notes "short:"), not failed
    version = 4
    upstream = ("prepare",)
    summary = ReasonSummary
    options = (
        Option("--retry-failed", "Redo units recorded as failed (by default they are kept as failed).", rebuild=True),
    )

    def config(self, cfg: Config) -> dict[str, Any]:
        """The reasoning settings and the model (not pool sizing, addresses or seed caches, which only save
        work: answers are keyed by content)."""
        from persona4rec.config import stable_hash
        from persona4rec.reasoning.prompts import load_prompts

        reason = cfg.reason.model_dump(mode="json", exclude={"actors", "seed_caches"})
        llm = cfg.llm.model_dump(mode="json", include={"engine", "model", "temperature", "seed", "max_model_len"})
        # the prompt set's content (templates and checks), not just its name: an edited prompt file is a new output
        prompts = stable_hash(dataclasses.asdict(load_prompts(cfg.reason.prompts)))[:16]
        return {"reason": reason, "llm": llm, "prompt_set": prompts}

    def missing(self, cfg: Config) -> str:
        return f"no personas for this configuration of {cfg.dataset}: run `p4r reason` first"

    def report(self, cfg: Config, result: Any) -> Iterable[str]:
        yield from super().report(cfg, result)
        if not result.skipped and (result.folder / QUALITY_REPORT).exists():
            yield f"  persona quality report: {result.folder / QUALITY_REPORT}"

    def build(self, b: Build, *, retry_failed: bool = False, engine: Any = None, embed: Any = None) -> ReasonSummary:
        """``engine`` (and ``embed``) run the work in this process instead of a Ray actor pool: tests inject
        their session's engine this way."""
        from persona4rec.jobs.reason.job import build

        return build(b, retry_failed=retry_failed, engine=engine, embed=embed)


STAGE = Reason()

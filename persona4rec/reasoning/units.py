"""Units of LLM work: one chat request with its schema, how to check its answer, and its cache key.

Units are built on the driver from the prepared tables and shipped to engine actors; they are plain data
(picklable), and the key is the hash of exactly what the engine will see plus the settings that shape
its answer, so equal work is never done twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from persona4rec.config import LLMConfig, ReasonConfig
from persona4rec.reasoning import answers
from persona4rec.reasoning.cache import content_key
from persona4rec.reasoning.prompts import PromptSet, count_rule, fence_text, item_block, review_line

KINDS = ("personas", "summary", "aspects", "personas_from_aspects", "judge")


@dataclass(frozen=True)
class Unit:
    kind: str
    subject: str
    messages: tuple[dict[str, str], ...]
    schema: dict[str, Any]
    max_tokens: int
    spec: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    #: Screen the answer for injected orders (``reason.defences.screen_personas``). How an answer is
    #: checked, not what the engine sees: not part of the key (the job screens cached answers again).
    screened: bool = True
    #: Check a persona answer as a set (``reasoning/quality.set_defects``) and retry it once with the
    #: reason (a prompt set's ``distinct_personas``). How an answer is checked: not part of the key.
    distinct: bool = False


def _keyed(unit: Unit, llm: LLMConfig, extra: dict[str, Any] | None = None) -> Unit:
    key = content_key(
        unit.kind,
        messages=unit.messages,
        schema=unit.schema,
        max_tokens=unit.max_tokens,
        model=llm.model,
        temperature=llm.temperature,
        seed=llm.seed,
        spec=unit.spec,
        extra=extra or {},
    )
    return replace(unit, key=key)


def _reviews(samples: list[dict[str, Any]], rc: ReasonConfig) -> list[dict[str, Any]]:
    """The prefix of an item's spread sample that the prompt shows (sample_rank order)."""
    return sorted(samples, key=lambda r: r["sample_rank"])[: rc.reviews_per_item]


def persona_unit(
    item: dict[str, Any], samples: list[dict[str, Any]], prompts: PromptSet, llm: LLMConfig, rc: ReasonConfig
) -> Unit:
    """Efficient mode: one call writes the item's summary and its personas, citing reviews by number."""
    shown = _reviews(samples, rc)
    low, high, count = count_rule(len(shown), rc.personas.min, rc.personas.max)
    lines = [_line(n, r, prompts, rc) for n, r in enumerate(shown, 1)]
    spec = _persona_spec(low, high, shown, rc, summary=True)
    unit = Unit(
        kind="personas",
        subject=item["item_id"],
        messages=prompts.chat("personas", item=item_block(item), reviews="\n".join(lines), count=count),
        schema=answers.persona_schema(
            **_schema_args(spec), name_pattern=prompts.name_pattern, evidence_first=prompts.evidence_first
        ),
        max_tokens=rc.max_tokens,
        spec=spec,
        screened=rc.defences.screen_personas,
        distinct=prompts.distinct_personas,
    )
    return _keyed(unit, llm, {"dedup": rc.dedup.model_dump()})


def summary_unit(
    item: dict[str, Any], samples: list[dict[str, Any]], prompts: PromptSet, llm: LLMConfig, rc: ReasonConfig
) -> Unit:
    """Paper mode: the objective summary, from metadata when present, else from the reviews."""
    block = ""
    if not item.get("has_metadata"):
        shown = _reviews(samples, rc)
        lines = [_line(n, r, prompts, rc) for n, r in enumerate(shown, 1)]
        block = "Reviews of this item, fenced as data:\n<reviews>\n" + "\n".join(lines) + "\n</reviews>\n"
    spec = {"text_chars": rc.personas.text_chars}
    unit = Unit(
        kind="summary",
        subject=item["item_id"],
        messages=prompts.chat("summary", item=item_block(item), reviews_block=block),
        schema=answers.summary_schema(rc.personas.text_chars),
        max_tokens=300,
        spec=spec,
        screened=rc.defences.screen_personas,
    )
    return _keyed(unit, llm)


def aspects_unit(review: dict[str, Any], summary: str, prompts: PromptSet, llm: LLMConfig, rc: ReasonConfig) -> Unit:
    """Paper mode: one aspect tuple from one review."""
    spec = {"text_chars": 200, "item_id": review["item_id"]}
    unit = Unit(
        kind="aspects",
        subject=review["review_id"],
        messages=prompts.chat(
            "aspects",
            summary=fence_text(summary, 600),
            review=_line(1, review, prompts, rc),
        ),
        schema=answers.aspect_schema(200),
        max_tokens=500,
        spec=spec,
    )
    # revision 2: answers vLLM wrote in compact JSON (every slot null) are not reused
    return _keyed(unit, llm, {"aspects_revision": 2})


def personas_from_aspects_unit(
    item_id: str,
    summary: str,
    tuples: list[tuple[dict[str, Any], dict[str, str | None]]],
    prompts: PromptSet,
    llm: LLMConfig,
    rc: ReasonConfig,
) -> Unit:
    """Paper mode: personas from the summary and the item's kept aspect tuples (review, aspects) pairs."""
    shown = [review for review, _ in tuples]
    low, high, count = count_rule(len(shown), rc.personas.min, rc.personas.max)
    lines = []
    for n, (review, aspects) in enumerate(tuples, 1):
        slots = "; ".join(f"{k.replace('_', ' ')}: {fence_text(v, 200)}" for k, v in aspects.items() if v)
        lines.append(f"[R{n}] ({review['rating']:g}★) {slots}")
    spec = _persona_spec(low, high, shown, rc, summary=False)
    unit = Unit(
        kind="personas_from_aspects",
        subject=item_id,
        messages=prompts.chat(
            "personas_from_aspects", summary=fence_text(summary, 600), reviews="\n".join(lines), count=count
        ),
        schema=answers.persona_schema(
            **_schema_args(spec), name_pattern=prompts.name_pattern, evidence_first=prompts.evidence_first
        ),
        max_tokens=rc.max_tokens,
        spec=spec,
        screened=rc.defences.screen_personas,
        distinct=prompts.distinct_personas,
    )
    return _keyed(unit, llm, {"dedup": rc.dedup.model_dump()})


def judge_unit(
    subject: str,
    history: list[str],
    target: str,
    options: list[dict[str, Any]],
    prompts: PromptSet,
    llm: LLMConfig,
    max_tokens: int,
) -> Unit:
    """Paper mode, align: which of the target item's personas fits the user's earlier history best."""
    lines = [f"{n}. {fence_text(p['name'], 80)}: {fence_text(p['description'], 300)}" for n, p in enumerate(options, 1)]
    spec = {"n_options": len(options), "text_chars": 600, "persona_ids": [p["persona_id"] for p in options]}
    unit = Unit(
        kind="judge",
        subject=subject,
        messages=prompts.chat(
            "judge", history="\n".join(history), target=fence_text(target, 600), options="\n".join(lines)
        ),
        schema=answers.judge_schema(len(options), 600),
        max_tokens=max_tokens,
        spec=spec,
    )
    return _keyed(unit, llm)


def _line(number: int, review: dict[str, Any], prompts: PromptSet, rc: ReasonConfig) -> str:
    return review_line(
        number, review["rating"], review.get("title"), review["text"], rc.review_chars, quote=prompts.quote_reviews
    )


def _persona_spec(low: int, high: int, shown: list[dict[str, Any]], rc: ReasonConfig, *, summary: bool) -> dict:
    return {
        "low": low,
        "high": high,
        "n_reviews": len(shown),
        "name_chars": rc.personas.name_chars,
        "text_chars": rc.personas.text_chars,
        "summary": summary,
        "review_ids": [r["review_id"] for r in shown],
    }


def _schema_args(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: spec[k] for k in ("low", "high", "n_reviews", "name_chars", "text_chars", "summary")}

"""Run units on an engine with a bounded retry budget, check every answer, and make cache rows.

An invalid answer is retried with the rejection reason appended to the conversation (so a deterministic
engine does not repeat itself), at most ``max_attempts`` times in all. After a cut text field the retry
also shows the fenced reviews with double quotes as ″, and its schema lets no text end on a space or a
comma, where a stray inner quote would close it (``answers.without_early_ends``). Then the unit is
recorded as ``failed`` with the last reason. Nothing is ever silently empty.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from persona4rec.reasoning import answers
from persona4rec.reasoning.answers import AnswerError
from persona4rec.reasoning.dedup import EmbedFn, dedup_many
from persona4rec.reasoning.prompts import without_double_quotes
from persona4rec.reasoning.units import Unit

#: Engines are duck-typed (``ray_actors.engines.base.Engine``): the core imports no LLM library.
#: How much of a failed unit's last answer its cache row keeps, for reading why it failed.
LAST_ANSWER_CHARS = 6000
RETRY_NOTE = (
    "Your answer was rejected ({reason}). Answer again with one JSON object in exactly the requested "
    "shape, complete and without double quotes inside text values."
)


def check(unit: Unit, completion: Any) -> Any:
    """Parse and validate one completion for its unit; returns the payload or raises AnswerError."""
    if completion.error:
        raise AnswerError("no_answer", completion.error)
    if completion.finish_reason == "length":
        raise AnswerError("truncated", f"stopped at max_tokens={unit.max_tokens}")
    try:
        data = json.loads(completion.text)
    except json.JSONDecodeError as exc:
        raise AnswerError("invalid_json", f"{exc.msg} at char {exc.pos}") from None
    s = unit.spec
    if unit.kind in ("personas", "personas_from_aspects"):
        return answers.parse_personas(
            data,
            low=s["low"],
            high=s["high"],
            n_reviews=s["n_reviews"],
            name_chars=s["name_chars"],
            text_chars=s["text_chars"],
            summary=s["summary"],
        )
    if unit.kind == "summary":
        return answers.parse_summary(data, s["text_chars"])
    if unit.kind == "aspects":
        return answers.parse_aspects(data, s["text_chars"])
    if unit.kind == "judge":
        return answers.parse_judge(data, s["n_options"], s["text_chars"])
    raise ValueError(f"unknown unit kind {unit.kind!r}")


def solve(
    engine: Any,
    units: Sequence[Unit],
    *,
    max_attempts: int,
    temperature: float = 0.0,
    retry_temperature: float = 0.5,
    embed: EmbedFn | None = None,
    dedup_threshold: float = 1.0,
) -> list[dict[str, Any]]:
    """Answer every unit (batched per attempt) and return one cache row per unit, ok or failed."""
    from persona4rec.ray_actors.engines.base import ChatRequest

    started = time.perf_counter()
    convo = {u.key: list(u.messages) for u in units}
    schema = {u.key: u.schema for u in units}
    last_text: dict[str, str] = {}
    stats = {u.key: {"attempts": 0, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0} for u in units}
    done: dict[str, Any] = {}
    errors: dict[str, AnswerError] = {}
    partial: dict[str, Any] = {}  # the fullest answer that fell short, per unit
    pending = list(units)
    for attempt in range(1, max_attempts + 1):
        if not pending:
            break
        temp = temperature if attempt == 1 else max(temperature, retry_temperature)
        requests = [ChatRequest(u.key, tuple(convo[u.key]), schema[u.key], u.max_tokens, temp) for u in pending]
        completions = engine.complete(requests)
        retry = []
        for unit, comp in zip(pending, completions, strict=True):
            st = stats[unit.key]
            st["attempts"] = attempt
            st["calls"] += 1
            st["prompt_tokens"] += comp.prompt_tokens
            st["completion_tokens"] += comp.completion_tokens
            last_text[unit.key] = comp.text
            try:
                done[unit.key] = check(unit, comp)
                errors.pop(unit.key, None)
            except AnswerError as exc:
                errors[unit.key] = exc
                retry.append(unit)
                if exc.partial is not None and len(exc.partial.personas) > len(_personas(partial.get(unit.key))):
                    partial[unit.key] = exc.partial
                if exc.code == "cut_field":  # most often a stray double quote closed a text early
                    convo[unit.key] = [_unquoted(m) for m in convo[unit.key]]
                    schema[unit.key] = answers.without_early_ends(unit.schema)
                if comp.text:
                    convo[unit.key].append({"role": "assistant", "content": comp.text[:1500]})
                    convo[unit.key].append({"role": "user", "content": RETRY_NOTE.format(reason=exc)})
        pending = retry
    for unit in pending:
        if unit.key in partial:
            last = errors.pop(unit.key)
            kept = done[unit.key] = partial[unit.key]
            kept.notes.append(
                f"short: {len(kept.personas)}/{unit.spec['low']} sound personas after {max_attempts} attempts "
                f"(last: {last})"
            )

    persona_keys = [u.key for u in units if u.key in done and u.kind in ("personas", "personas_from_aspects")]
    if embed is not None and persona_keys:
        merged = dedup_many([done[k].personas for k in persona_keys], embed, dedup_threshold)
        for key, personas in zip(persona_keys, merged, strict=True):
            done[key].personas = personas

    seconds = (time.perf_counter() - started) / max(len(units), 1)
    rows = []
    for unit in units:
        ok = unit.key in done
        rows.append(
            {
                "key": unit.key,
                "subject": unit.subject,
                "status": "ok" if ok else "failed",
                "payload": json.dumps(
                    _payload(unit, done[unit.key]) if ok else {"last_answer": last_text[unit.key][:LAST_ANSWER_CHARS]},
                    ensure_ascii=False,
                ),
                "error": None if ok else str(errors[unit.key]),
                "seconds": seconds,
                **stats[unit.key],
            }
        )
    return rows


def _personas(answer: Any) -> list[Any]:
    return answer.personas if answer is not None else []


def _unquoted(message: dict[str, str]) -> dict[str, str]:
    return {**message, "content": without_double_quotes(message["content"])} if message["role"] == "user" else message


def _payload(unit: Unit, value: Any) -> Any:
    """What the cache stores: JSON with review numbers resolved to review ids."""
    if unit.kind in ("personas", "personas_from_aspects"):
        ids = unit.spec["review_ids"]
        return {
            **({"notes": value.notes} if value.notes else {}),  # e.g. a cut persona dropped
            "summary": value.summary,
            "personas": [
                {
                    "name": p.name,
                    "description": p.description,
                    "rationale": p.rationale,
                    "evidence": [ids[n - 1] for n in p.evidence],
                    "merged_from": p.merged_from,
                }
                for p in value.personas
            ],
        }
    if unit.kind == "summary":
        return {"summary": value}
    if unit.kind == "aspects":
        aspects, notes = value
        return {"aspects": aspects, "kept": answers.aspects_kept(aspects), **({"notes": notes} if notes else {})}
    if unit.kind == "judge":
        choice, reasoning = value
        return {"persona_id": unit.spec["persona_ids"][choice - 1], "choice": choice, "reasoning": reasoning}
    raise ValueError(unit.kind)

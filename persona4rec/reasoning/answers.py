"""What a valid LLM answer is: JSON Schemas for constrained decoding, and the checks behind them.

The schema goes to the engine (vLLM and llama.cpp enforce it while decoding; an HTTP endpoint may not),
and every answer is validated again here: a constrained decoder can still cut a string short, cite a
review that was not shown, or stop at max_tokens. ``AnswerError`` carries a short reason code that ends up
in the output tables when an item finally fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ASPECT_SLOTS = ("category_preference", "purchase_purpose", "quality_criteria", "usage_context")


class AnswerError(ValueError):
    """An answer that cannot be used. ``code`` is one of REASONS; the message says what exactly.

    ``partial`` is what the answer still offers when it falls short only in quantity (fewer sound
    personas than asked for): worth retrying for, and better than nothing once the attempts run out.
    """

    def __init__(self, code: str, message: str, *, partial: PersonaAnswer | None = None) -> None:
        assert code in REASONS, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.partial = partial


REASONS = {
    "no_answer": "the engine returned no answer (context overflow, transport failure)",
    "truncated": "the answer stopped at max_tokens",
    "invalid_json": "the answer is not JSON",
    "schema": "a field is missing, of the wrong type or empty",
    "cut_field": "a text field was cut short (hit its length cap or ended mid-phrase)",
    "persona_count": "fewer or more personas than the item allows",
    "unknown_evidence": "a persona cites a review number that was not shown",
    "unknown_option": "the judge chose a persona number that was not offered",
    "not_distinct": "the personas are not distinct audiences: near-duplicates, a rationale restating its "
    "description or a sibling's, siblings citing mostly the same reviews (distinct_personas; reasoning/quality.py)",
    "injection": "the answer took orders planted in a review: a persona or summary echoing instructions, role "
    "tags, markup or the system prompt, or a name that is no audience (reasoning/screen.py)",
}


@dataclass
class Persona:
    name: str
    description: str
    rationale: str
    evidence: list[int]
    merged_from: int = 1


@dataclass
class PersonaAnswer:
    personas: list[Persona]
    summary: str | None = None
    notes: list[str] = field(default_factory=list)


def _text(max_chars: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_chars}


#: What a text may not end on under :func:`without_early_ends` (a space, or punctuation that leads on).
_NO_END = " ,;:(-"


def without_early_ends(schema: Any) -> Any:
    """``schema`` with every capped text property (not the nullable ones inside ``anyOf``) rewritten as a
    pattern that cannot end on a space or on punctuation that leads on; for the retry after a cut field.

    A small model that opens an inner quotation (``a 1/4 inch "jack"``) closes the JSON string there, and
    always right after a space or a comma. Under this pattern the closing quote is not allowed at that
    point, so the model writes on instead. The pattern admits no double quote, backslash or line break
    at all (with ``.``, llama.cpp's grammar runs past the closing quote). The cap is left to the
    validation (a longer text keeps its complete sentences within the cap): xgrammar ignores
    ``maxLength`` beside a ``pattern`` and cannot compile a counted repetition of a few hundred
    characters.
    """
    if isinstance(schema, list):
        return [without_early_ends(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") == "string" and "maxLength" in schema and "pattern" not in schema:  # a name keeps its own
        rest = {k: v for k, v in schema.items() if k not in ("minLength", "maxLength")}
        return {**rest, "pattern": rf'^[^"\\\n]*[^"\\\n{_NO_END}]$'}
    return {k: (v if k == "anyOf" else without_early_ends(v)) for k, v in schema.items()}


def persona_schema(
    *,
    low: int,
    high: int,
    n_reviews: int,
    name_chars: int,
    text_chars: int,
    summary: bool,
    name_pattern: str | None = None,
    evidence_first: bool = False,
) -> dict:
    """The answer's JSON Schema. ``name_pattern`` (a prompt set's, e.g. Title Case words only) constrains
    names while decoding; ``evidence_first`` puts each persona's evidence before its name and texts (a
    decoder writes properties in schema order, so the text is written once the reviews are chosen).
    Without either the schema is exactly what it always was (it is part of cache keys)."""
    name = _text(name_chars) if name_pattern is None else {**_text(name_chars), "pattern": name_pattern}
    persona = {
        "type": "object",
        "properties": {
            "name": name,
            "description": _text(text_chars),
            "rationale": _text(text_chars),
            "evidence": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": n_reviews},
                "minItems": 1,
                "maxItems": n_reviews,
            },
        },
        "required": ["name", "description", "rationale", "evidence"],
        "additionalProperties": False,
    }
    if evidence_first:
        order = ["evidence", "name", "description", "rationale"]
        persona = {**persona, "properties": {k: persona["properties"][k] for k in order}, "required": order}
    props: dict[str, Any] = {"personas": {"type": "array", "items": persona, "minItems": low, "maxItems": high}}
    if summary:
        props = {"summary": _text(text_chars), **props}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def summary_schema(text_chars: int) -> dict:
    return {
        "type": "object",
        "properties": {"summary": _text(text_chars)},
        "required": ["summary"],
        "additionalProperties": False,
    }


def aspect_schema(text_chars: int) -> dict:
    nullable = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": text_chars}, {"type": "null"}]}
    props: dict[str, Any] = {}
    for slot in ASPECT_SLOTS:
        props[slot] = nullable
        props[f"{slot}_reason"] = nullable
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def judge_schema(n_options: int, text_chars: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "reasoning": _text(text_chars),
            "persona": {"type": "integer", "minimum": 1, "maximum": n_options},
        },
        "required": ["reasoning", "persona"],
        "additionalProperties": False,
    }


_ID_PREFIX = re.compile(r"^\s*(?:P\s*\d+|Persona\s*\d+|\d+)\s*[:.)\-–]\s*", re.IGNORECASE)


_SENTENCE_END = (".", "!", "?", "…", ")", '"', "'")
_DANGLING = (",", ":", ";", "(", "-")
#: Words a finished sentence or phrase does not end on: text ending on one was cut (e.g. "...it is also").
_DANGLING_WORDS = frozenset(
    {
        *("a", "an", "the", "and", "or", "but", "nor", "of", "to", "in", "on", "at", "by", "for", "from", "with"),
        *("into", "onto", "about", "as", "than", "that", "which", "who", "whose", "is", "are", "was", "were"),
        *("be", "been", "being", "has", "have", "had", "its", "their", "his", "her", "our", "your", "my", "this"),
        *("these", "those", "because", "like", "also", "very", "so", "such", "if", "when", "while"),
        # issue #29: a rationale ended "...what" and passed. Words that introduce a clause or a noun and so
        # cannot close a sentence; words that can ("it", "them", "more", "do", "can") stay out.
        *("what", "how", "why", "whom", "whether", "whereas", "although", "though", "unless", "until"),
        *("between", "within", "upon", "among", "amongst", "against", "toward", "towards", "via", "per"),
        *("despite", "during", "including", "especially", "particularly", "namely", "both", "each", "every"),
        *("either", "neither", "they", "we", "he", "she", "i", "you", "our", "not", "can't", "don't", "even"),
    }
)


def unfinished(text: str, prose: bool) -> bool:
    """Text that stops where nothing can stop: on punctuation that leads on or, in prose, on a word such
    as "the". Prose may lack its final full stop (small models drop it); that alone is not a cut. A
    phrase may end on a preposition ("easy to put on"), so only punctuation judges a phrase."""
    text = text.rstrip()
    if text.endswith(_DANGLING):
        return True
    if not prose or text.endswith(_SENTENCE_END):
        return False
    words = text.split()
    return len(words) > 1 and words[-1].lower() in _DANGLING_WORDS


def _field(obj: dict, key: str, cap: int, where: str, *, prose: bool = True) -> str:
    """A non-empty text field. One that hit its cap or stops mid-phrase (a decoder cut it, or a stray
    double quote ended it early) keeps its complete sentences when it has any; otherwise it is rejected."""
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise AnswerError("schema", f"{where}.{key} is missing or empty")
    capped = len(value) >= cap
    if capped or value != value.rstrip() or unfinished(value, prose):
        whole = _complete_sentences(value[:cap]) if prose else ""
        if not whole:
            why = f"reached its {cap}-character cap" if capped else f"ends mid-phrase: {value[-30:]!r}"
            raise AnswerError("cut_field", f"{where}.{key} {why}")
        return whole
    return value.strip()


def _complete_sentences(text: str) -> str:
    end = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    return text[: end + 1].strip() if end >= 20 else ""


def _object(data: Any, what: str) -> dict:
    if not isinstance(data, dict):
        raise AnswerError("schema", f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def parse_personas(
    data: Any, *, low: int, high: int, n_reviews: int, name_chars: int, text_chars: int, summary: bool
) -> PersonaAnswer:
    """Check a persona answer against what the item allows; returns cleaned personas or raises AnswerError.

    A persona whose text was cut (cap reached, or closed mid-phrase by a stray double quote) is dropped
    with a note, as long as at least ``low`` sound personas remain: one broken sentence should not cost
    the item the others. With fewer, the answer is rejected but carries the sound ones as its
    ``partial`` (see :class:`~persona4rec.reasoning.solve.Solver`). Every other defect rejects the whole
    answer.
    """
    data = _object(data, "answer")
    items = data.get("personas")
    if not isinstance(items, list):
        raise AnswerError("schema", "personas is missing or not a list")
    if not low <= len(items) <= high:
        raise AnswerError("persona_count", f"{len(items)} personas; this item allows {low}..{high}")
    personas, cuts = [], []
    for n, raw in enumerate(items, start=1):
        raw = _object(raw, f"personas[{n}]")
        where = f"personas[{n}]"
        evidence = raw.get("evidence")
        if not isinstance(evidence, list) or not evidence or not all(type(e) is int for e in evidence):
            raise AnswerError("schema", f"{where}.evidence must be a non-empty list of review numbers")
        unknown = sorted({e for e in evidence if not 1 <= e <= n_reviews})
        if unknown:
            raise AnswerError("unknown_evidence", f"{where} cites R{unknown} but only R1..R{n_reviews} were shown")
        try:
            name = _ID_PREFIX.sub("", _field(raw, "name", name_chars, where, prose=False)).strip()
            description = _field(raw, "description", text_chars, where)
            rationale = _field(raw, "rationale", text_chars, where)
        except AnswerError as exc:
            if exc.code != "cut_field":
                raise
            cuts.append(exc)
            continue
        if not name:
            raise AnswerError("schema", f"{where}.name holds only an id")
        evidence = sorted(set(evidence))
        personas.append(Persona(name=name, description=description, rationale=rationale, evidence=evidence))
    text = _field(data, "summary", text_chars, "answer") if summary else None
    answer = PersonaAnswer(personas=personas, summary=text, notes=[f"dropped: {c}" for c in cuts])
    if cuts and len(personas) < low:
        cuts[0].partial = answer if personas else None
        raise cuts[0]
    return answer


def parse_summary(data: Any, text_chars: int) -> str:
    return _field(_object(data, "answer"), "summary", text_chars, "answer")


def parse_aspects(data: Any, text_chars: int) -> tuple[dict[str, str | None], list[str]]:
    """An aspect tuple with every slot present (null allowed), and notes on what was nulled.

    A non-null slot must be a usable phrase. A slot whose phrase or reason was cut (cap reached, or
    closed mid-phrase by a stray double quote) is nulled with its reason, and noted, rather than costing
    the review its whole tuple; the paper's filter (:func:`aspects_kept`) then judges what is left.
    """
    data = _object(data, "answer")
    out: dict[str, str | None] = {}
    notes: list[str] = []
    for slot in ASPECT_SLOTS:
        try:
            for key in (slot, f"{slot}_reason"):
                value = data.get(key)
                if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none", "n/a")):
                    out[key] = None
                elif isinstance(value, str):  # short phrases, not sentences: only a cut or dangling end fails
                    out[key] = _field(data, key, text_chars, "answer", prose=False)
                else:
                    raise AnswerError("schema", f"answer.{key} must be a string or null")
        except AnswerError as exc:
            if exc.code != "cut_field":
                raise
            out[slot] = out[f"{slot}_reason"] = None
            notes.append(f"nulled {slot}: {exc}")
    return out, notes


def aspects_kept(aspects: dict[str, str | None]) -> bool:
    """The paper drops a tuple when more than 75% of its slots are null; with four slots, all four."""
    nulls = sum(aspects.get(slot) is None for slot in ASPECT_SLOTS)
    return nulls / len(ASPECT_SLOTS) <= 0.75


def parse_judge(data: Any, n_options: int, text_chars: int) -> tuple[int, str]:
    data = _object(data, "answer")
    choice = data.get("persona")
    if type(choice) is not int:
        raise AnswerError("schema", "persona must be an integer option number")
    if not 1 <= choice <= n_options:
        raise AnswerError("unknown_option", f"chose {choice}; options were 1..{n_options}")
    return choice, _field(data, "reasoning", text_chars, "answer")

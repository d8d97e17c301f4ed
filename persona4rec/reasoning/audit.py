"""What the model saw for an item, beside what it answered (``p4r prompts ITEM``).

The item's units are rebuilt from the current inputs and configuration exactly as ``p4r reason`` builds
them (review screening included), so their cache keys find the answers. Each answer's prompt is then
read from the prompt store (``reason/prompts``, written beside the answer cache): the conversation of
every attempt, retries and their feedback included. An answer with no stored prompt (one from a seed
cache such as ``benchmarks/headline-musical-instruments/reason-cache``, or written before prompts were
stored) shows the prompt re-rendered from the current inputs, said as such: its cache key is a hash of
those very messages, so they are what the first attempt was sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona4rec.config import Config
from persona4rec.errors import Persona4RecError
from persona4rec.reasoning import screen
from persona4rec.reasoning.cache import PromptStore, read_results
from persona4rec.reasoning.prompts import load_prompts
from persona4rec.reasoning.units import Unit, aspects_unit, persona_unit, personas_from_aspects_unit, summary_unit

STORED = "stored"
RERENDERED = "re-rendered"
NOT_ANSWERED = "not answered yet"


@dataclass
class UnitAudit:
    """One unit of an item's work: its prompt (per attempt) and its answer."""

    kind: str
    subject: str
    key: str
    status: str | None  # ok | failed | None: not in any cache
    answer: Any  # the cached payload (JSON), or None
    error: str | None
    attempts: int
    prompt_source: str  # STORED | RERENDERED | NOT_ANSWERED
    conversations: list[list[dict[str, str]]]  # one per attempt (a re-rendered prompt: just the first)
    digests: list[str] = field(default_factory=list)  # sha256 of each stored conversation
    screened: list[str] = field(default_factory=list)  # what the persona screen says about the answer

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class ItemAudit:
    item_id: str
    mode: str
    prompt_version: str
    model: str
    quarantined: list[tuple[str, str]]  # (review_id, why) kept out of the prompt
    units: list[UnitAudit]

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "units": [u.to_json() for u in self.units]}


def audit_item(cfg: Config, item_id: str) -> ItemAudit:
    """The prompts and answers of one prepared item under this configuration."""
    from persona4rec import jobs
    from persona4rec.jobs.reason.stage import cache_dir, prompts_dir

    upstream = jobs.locate("prepare", cfg)
    items = pq.read_table(upstream.table("items"), filters=pc.field("item_id") == item_id).to_pylist()
    if not items:
        raise Persona4RecError(
            f"item {item_id!r} is not in the prepared corpus ({upstream.folder}); "
            "`p4r personas -n 20` lists items that have personas"
        )
    item = items[0]
    rows = pq.read_table(upstream.table("review_samples"), filters=pc.field("item_id") == item_id).to_pylist()
    samples, quarantined = screen.screen_samples({item_id: rows}, enabled=cfg.reason.defences.screen_reviews)
    shown = samples[item_id]
    rc, llm = cfg.reason, cfg.llm
    prompts = load_prompts(rc.prompts)
    seeds = [Path(folder).expanduser() for folder in rc.seed_caches]
    for seed in seeds:
        if not seed.is_dir():
            raise Persona4RecError(f"reason.seed_caches: {seed} is not a folder")
    results = read_results(cache_dir(cfg), seeds)
    store = PromptStore(prompts_dir(cfg), create=False)
    index = store.attempts()
    system = prompts.system

    def audit(unit: Unit) -> UnitAudit:
        row = results.get(unit.key)
        indexed = index.get(unit.key)
        conversations = [store.get(d) for d in indexed["prompts"]] if indexed and row else []
        if row is None:
            source, conversations, digests = NOT_ANSWERED, [list(unit.messages)], []
        elif conversations and all(c is not None for c in conversations):
            source, digests = STORED, list(indexed["prompts"])
        else:
            source, conversations, digests = RERENDERED, [list(unit.messages)], []
        answer = json.loads(row["payload"]) if row and row["payload"] else None
        flagged: list[str] = []
        if row and row["status"] == "ok" and isinstance(answer, dict):
            if "personas" in answer:
                _, flagged, bad = screen.screen_answer(answer["personas"], answer.get("summary"), system)
                flagged += [bad] if bad else []
            elif "summary" in answer and (flag := screen.screen_summary(answer["summary"], system)):
                flagged = [f"summary {flag}"]
        return UnitAudit(
            kind=unit.kind,
            subject=unit.subject,
            key=unit.key,
            status=row["status"] if row else None,
            answer=answer,
            error=row["error"] if row else None,
            attempts=row["attempts"] if row else 0,
            prompt_source=source,
            conversations=conversations,
            digests=digests,
            screened=flagged,
        )

    units: list[UnitAudit] = []
    if shown and rc.mode == "efficient":
        units.append(audit(persona_unit(item, shown, prompts, llm, rc)))
    elif shown:
        summary = audit(summary_unit(item, shown, prompts, llm, rc))
        units.append(summary)
        if summary.status == "ok" and not summary.screened:
            text = summary.answer["summary"]
            reviews = sorted(shown, key=lambda r: r["sample_rank"])[: rc.reviews_per_item]
            kept = []
            for review in reviews:
                a = audit(aspects_unit(review, text, prompts, llm, rc))
                units.append(a)
                if a.status == "ok" and a.answer.get("kept"):
                    kept.append((review, a.answer["aspects"]))
            if kept:
                units.append(audit(personas_from_aspects_unit(item_id, text, kept, prompts, llm, rc)))
    return ItemAudit(
        item_id=item_id,
        mode=rc.mode,
        prompt_version=prompts.version,
        model=llm.model,
        quarantined=[(rid, str(flag)) for rid, flag in quarantined.get(item_id, [])],
        units=units,
    )


def render_markdown(audit: ItemAudit, prompts_folder: Path | None = None) -> str:
    """The audit as Markdown: per unit, where its prompt comes from, each attempt's messages, the answer."""
    out = [f"# {audit.item_id}", ""]
    out.append(f"{audit.mode} mode, prompt set {audit.prompt_version}, model {audit.model}")
    out.append("")
    if audit.quarantined:
        out.append("Reviews kept out of the prompt (reason.defences.screen_reviews):")
        out += [f"- `{rid}`: {why}" for rid, why in audit.quarantined]
    else:
        out.append("Reviews kept out of the prompt: none")
    if not audit.units:
        out += ["", "No unit: the item has no sampled review to reason on."]
    for u in audit.units:
        status = {None: "not answered yet", "ok": "ok", "failed": "failed"}[u.status]
        attempts = f", {u.attempts} attempt(s)" if u.status else ""
        out += ["", f"## {u.kind} `{u.subject}`: {status}{attempts}", "", f"cache key `{u.key}`", ""]
        if u.prompt_source == STORED:
            where = f" under {prompts_folder}/objects/" if prompts_folder else ""
            out.append(f"Prompt: the stored copy{where} (sha256 {', '.join(d[:16] for d in u.digests)})")
        elif u.prompt_source == RERENDERED:
            out.append(
                "Prompt: RE-RENDERED from the current inputs. No stored copy: the answer came from a seed "
                "cache, or was written before prompts were stored. Its cache key is the hash of these "
                "messages, so they are what its first attempt was sent; retries, if any, are not shown."
            )
        else:
            out.append("Prompt: what the next `p4r reason` would send (no answer in the cache yet)")
        previous: list[dict[str, str]] = []
        for n, conversation in enumerate(u.conversations, 1):
            if n == 1:
                new = conversation
            else:
                same = len(previous) <= len(conversation) and conversation[: len(previous)] == previous
                new = conversation[len(previous) :] if same else conversation
                changed = "" if same else " (the whole conversation: the reviews were re-shown with ″ for quotes)"
                out += ["", f"### attempt {n} adds{changed}"]
            for message in new:
                out += ["", f"**{message['role']}**", "", "```text", message["content"], "```"]
            previous = conversation
        out += ["", "### answer" if u.status == "ok" else "### last answer", ""]
        if u.error:
            out.append(f"rejected: {u.error}")
            out.append("")
        if u.answer is not None:
            out += ["```json", json.dumps(u.answer, ensure_ascii=False, indent=2), "```"]
        if u.screened:
            out += ["", "The persona screen flags (dropped from the published output):"]
            out += [f"- {note.removeprefix('screened: ')}" for note in u.screened]
    return "\n".join(out) + "\n"

"""The reasoning stage: prepared items and review samples in; summaries, personas and their status out.

Modes (``reason.mode``):
- ``efficient``: one LLM call per item writes its summary and 2-7 personas, each citing the sampled
  reviews it rests on (those citations later give training labels without a judge);
- ``paper``: the paper's chain: a summary call per item, an aspect call per sampled review, then a persona
  call over the kept aspect tuples.

Every LLM answer is stored in a content-addressed cache (``<artifacts>/<dataset>/reason/cache``) as
soon as its batch finishes: a rerun skips what is done, a killed run resumes, an item whose reviews,
prompt or model changed is redone and nothing else. The published version holds only the tables. Beside
the cache, ``reason/prompts`` keeps what each answer was asked with (``p4r prompts ITEM`` shows both).

Defences against orders planted in reviews (``reason.defences``, ``reasoning/screen.py``): sampled reviews
that read as orders to the model are kept out of the prompts (noted ``quarantined:``), and every persona,
cached or new, that took such orders is dropped (noted ``screened:``); both are counted in the manifest.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from persona4rec import schemas
from persona4rec.artifacts import StageResult
from persona4rec.config import Config, stable_hash
from persona4rec.errors import Persona4RecError
from persona4rec.jobs.reason.stage import QUALITY_REPORT, ReasonSummary, cache_dir, prompts_dir
from persona4rec.ray_actors.pool import Ledger, LLMWork, pool_factory
from persona4rec.reasoning import quality, screen
from persona4rec.reasoning.cache import PromptStore, ResultCache
from persona4rec.reasoning.prompts import PromptSet, load_prompts
from persona4rec.reasoning.units import Unit, aspects_unit, persona_unit, personas_from_aspects_unit, summary_unit
from persona4rec.stage import Build

TABLES = ("summaries", "personas", "item_status", "aspects")


def build(b: Build, *, retry_failed: bool, engine: Any, embed: Any) -> ReasonSummary:
    """Reason over every prepared item (or ``reason.limit_items``), reusing every cached answer."""
    cfg, upstream = b.cfg, b.inputs["prepare"]
    prompts = load_prompts(cfg.reason.prompts)
    seeds = [Path(folder).expanduser() for folder in cfg.reason.seed_caches]
    ledger = Ledger(ResultCache(cache_dir(cfg), seeds=seeds), retry_failed, PromptStore(prompts_dir(cfg)))
    work = LLMWork(cfg, ledger, pool_factory(cfg, engine, embed), b.progress)
    timer = b.timer
    try:
        with timer("read"):
            items, samples = _read(upstream, cfg.reason.limit_items)
            samples, quarantined = screen.screen_samples(samples, enabled=cfg.reason.defences.screen_reviews)
        if not items:
            raise Persona4RecError(
                f"reason: the prepared corpus {upstream.folder} has no items, so there is nothing to reason on. "
                "Nothing was published; run `p4r prepare --force` to rebuild it"
            )
        with timer("llm"):
            tables, counts = (_efficient if cfg.reason.mode == "efficient" else _paper)(
                cfg, prompts, items, samples, work
            )
        counts.update(_defence_counts(tables["item_status"], quarantined))
    finally:
        work.close()
    b.environment(**work.info)
    if not tables["personas"]:
        failures = ", ".join(f"{why} {n}" for why, n in sorted(counts["failures_by_reason"].items()))
        raise Persona4RecError(
            f"reason: none of the {counts['items']} items got a persona ({failures}). Nothing was published; "
            "every answer is cached, so after fixing the cause (the model, reason.max_tokens, the prompts) "
            "`p4r reason --retry-failed` redoes only the failed ones"
        )
    with timer("write"):
        for name, rows in tables.items():
            schema = getattr(schemas, name.upper())
            b.add_table(pa.Table.from_pylist(rows, schema=schema.arrow()), schema)
    ledger.cache.compact()
    if ledger.prompts is not None:
        ledger.prompts.compact()
    measured = None
    if cfg.reason.quality:
        with timer("quality"):
            measured = _quality(b, tables, samples, embed)
    return ReasonSummary(**counts, spent_this_run={k: dict(v) for k, v in ledger.spent.items()}, quality=measured)


def _quality(b: Build, tables: dict[str, list[dict]], samples: dict[str, list[dict]], embed: Any) -> dict:
    """Persona quality of the whole output against the reviews the prompts showed (quarantined ones were
    not), on the de-duplication embedder: into the manifest, and as quality.md beside the tables."""
    from persona4rec.ray_actors.embedder import load_embedder

    cfg = b.cfg
    if b.progress:
        print(f"reason: measuring persona quality of {len(tables['personas']):,} personas", flush=True)
    measured = quality.measure(
        tables["personas"],
        [r for rows in samples.values() for r in rows],
        embed if embed is not None else load_embedder(cfg.reason.dedup.embedder),
        summaries={r["item_id"]: r["summary"] for r in tables["summaries"]},
        reviews_per_item=cfg.reason.reviews_per_item,
    )
    title = f"Persona quality: {cfg.dataset}, prompts {cfg.reason.prompts}, {cfg.reason.mode} mode, {cfg.llm.model}"
    (b.folder / QUALITY_REPORT).write_text(measured.markdown(title) + "\n")
    return measured.to_dict()


def _read(upstream: StageResult, limit: int | None) -> tuple[list[dict], dict[str, list[dict]]]:
    items = pq.read_table(upstream.table("items")).sort_by("item_id").to_pylist()
    if limit is not None:
        items = items[:limit]
    wanted = {i["item_id"] for i in items}
    samples: dict[str, list[dict]] = defaultdict(list)
    for row in pq.read_table(upstream.table("review_samples")).to_pylist():
        if row["item_id"] in wanted:
            samples[row["item_id"]].append(row)
    return items, samples


def _status(item_id: str, **values: Any) -> dict[str, Any]:
    row = {
        "item_id": item_id,
        "status": "ok",
        "reason": None,
        "n_reviews": 0,
        "n_personas": 0,
        "attempts": 0,
        "calls": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "llm_seconds": 0.0,
        "notes": None,
        "cache_key": "",
    }
    row.update(values)
    return row


def _add_cost(status: dict[str, Any], row: dict[str, Any] | None) -> None:
    if row is not None:
        for k in ("calls", "prompt_tokens", "completion_tokens"):
            status[k] += row[k]
        status["llm_seconds"] += row["seconds"] or 0.0


def _notes(payload: dict) -> str | None:
    return "; ".join(payload.get("notes", [])) or None


def _screened(payload: dict, prompts: PromptSet, cfg: Config) -> tuple[dict, str | None]:
    """A cached persona answer with the personas that took injected orders dropped (noted), and why the
    whole answer is unusable (a flagged summary, or no persona left), or None. Answers written with the
    screen on pass unchanged; this catches those from seed caches, older runs or a run without it."""
    if not cfg.reason.defences.screen_personas:
        return payload, None
    kept, notes, bad_summary = screen.screen_answer(payload["personas"], payload.get("summary"), prompts.system)
    payload = {**payload, "personas": kept, "notes": [*payload.get("notes", []), *notes]}
    if bad_summary or not kept:
        return payload, "injection: " + (bad_summary or "; ".join(n.removeprefix("screened: ") for n in notes))
    return payload, None


def _defence_counts(status: list[dict[str, Any]], quarantined: dict[str, list]) -> dict[str, Any]:
    """What the defences held back: reviews kept out of prompts and personas dropped, by reason; the notes
    of each item say which."""
    by_item = {s["item_id"]: s for s in status}
    reviews: dict[str, int] = defaultdict(int)
    for iid, flagged in quarantined.items():
        if iid not in by_item:
            continue
        st = by_item[iid]
        note = "; ".join(f"quarantined: review {rid} {flag}" for rid, flag in flagged)
        st["notes"] = f"{st['notes']}; {note}" if st["notes"] else note
        if st["status"] != "ok" and str(st["reason"]).startswith("no_reviews"):
            st["reason"] = "no_reviews: every sampled review was quarantined as orders to the model"
        for _, flag in flagged:
            reviews[flag.code] += 1
    personas: dict[str, int] = defaultdict(int)
    for s in status:
        for code in screen.screened_codes(s["notes"]):
            personas[code] += 1
    return {
        "reviews_quarantined": sum(reviews.values()),
        "reviews_quarantined_by_reason": dict(reviews),
        "personas_screened": sum(personas.values()),
        "personas_screened_by_reason": dict(personas),
    }


def _persona_rows(item_id: str, key: str, payload: dict, prompts: PromptSet, model: str) -> list[dict[str, Any]]:
    return [
        {
            "persona_id": f"{stable_hash([item_id, key])[:16]}-{n}",  # two items with equal inputs stay apart
            "item_id": item_id,
            "persona_index": n,
            "name": p["name"],
            "description": p["description"],
            "rationale": p["rationale"],
            "evidence": p["evidence"],
            "merged_from": p["merged_from"],
            "prompt_version": prompts.version,
            "model": model,
        }
        for n, p in enumerate(payload["personas"], 1)
    ]


def _efficient(cfg: Config, prompts: PromptSet, items: list[dict], samples: dict[str, list[dict]], work: LLMWork):
    rc, llm = cfg.reason, cfg.llm
    units = {
        i["item_id"]: persona_unit(i, samples[i["item_id"]], prompts, llm, rc) for i in items if samples[i["item_id"]]
    }
    results = work.run("personas", list(units.values()))
    summaries, personas, status = [], [], []
    for item in items:
        iid = item["item_id"]
        source = "metadata" if item["has_metadata"] else "reviews"
        if iid not in units:
            status.append(
                _status(iid, status="failed", reason="no_reviews: the item has no sampled review to reason on")
            )
            summaries.append({"item_id": iid, "summary": None, "source": source})
            continue
        unit = units[iid]
        row = results[unit.key]
        st = _status(iid, n_reviews=unit.spec["n_reviews"], attempts=row["attempts"], cache_key=unit.key)
        _add_cost(st, row)
        payload, unusable = _screened(json.loads(row["payload"]), prompts, cfg) if row["status"] == "ok" else ({}, None)
        if row["status"] == "ok" and not unusable:
            rows = _persona_rows(iid, unit.key, payload, prompts, row["model"])
            personas += rows
            st.update(n_personas=len(rows), notes=_notes(payload))
            summaries.append({"item_id": iid, "summary": payload["summary"], "source": source})
        else:
            st.update(status="failed", reason=unusable or row["error"], notes=_notes(payload))
            summaries.append({"item_id": iid, "summary": None, "source": source})
        status.append(st)
    tables = {"summaries": summaries, "personas": personas, "item_status": status, "aspects": []}
    return tables, _counts(status, personas)


def _paper(cfg: Config, prompts: PromptSet, items: list[dict], samples: dict[str, list[dict]], work: LLMWork):
    rc, llm = cfg.reason, cfg.llm
    with_reviews = [i for i in items if samples[i["item_id"]]]
    s_units = {i["item_id"]: summary_unit(i, samples[i["item_id"]], prompts, llm, rc) for i in with_reviews}
    s_rows = work.run("summary", list(s_units.values()))
    summary_of, bad_summaries = {}, {}
    for iid, u in s_units.items():
        if s_rows[u.key]["status"] == "ok":
            text = json.loads(s_rows[u.key]["payload"])["summary"]
            flag = screen.screen_summary(text, prompts.system) if rc.defences.screen_personas else None
            if flag:  # a cached summary that took orders (the screen on retries new ones)
                bad_summaries[iid] = f"injection: summary {flag}"
            else:
                summary_of[iid] = text
    a_units: dict[str, list[tuple[dict, Unit]]] = {}
    for iid, text in summary_of.items():
        shown = sorted(samples[iid], key=lambda r: r["sample_rank"])[: rc.reviews_per_item]
        a_units[iid] = [(r, aspects_unit(r, text, prompts, llm, rc)) for r in shown]
    a_rows = work.run("aspects", [u for pairs in a_units.values() for _, u in pairs])
    aspects_table, kept_of = [], {}
    for iid, pairs in a_units.items():
        kept_of[iid] = []
        for review, unit in pairs:
            row = a_rows[unit.key]
            ok = row["status"] == "ok"
            payload = json.loads(row["payload"]) if ok else None
            aspects_table.append(
                {
                    "review_id": review["review_id"],
                    "item_id": iid,
                    "status": row["status"],
                    "kept": bool(ok and payload["kept"]),
                    "aspects_json": json.dumps(payload["aspects"], ensure_ascii=False) if ok else None,
                    "reason": row["error"] if not ok else _notes(payload),
                }
            )
            if ok and payload["kept"]:
                kept_of[iid].append((review, payload["aspects"]))
    p_units = {
        iid: personas_from_aspects_unit(iid, summary_of[iid], kept, prompts, llm, rc)
        for iid, kept in kept_of.items()
        if kept
    }
    p_rows = work.run("personas_from_aspects", list(p_units.values()))

    summaries, personas, status = [], [], []
    for item in items:
        iid = item["item_id"]
        source = "metadata" if item["has_metadata"] else "reviews"
        summaries.append({"item_id": iid, "summary": summary_of.get(iid), "source": source})
        st = _status(iid, n_reviews=len(a_units.get(iid, [])))
        if iid in s_units:
            _add_cost(st, s_rows[s_units[iid].key])
        for _, unit in a_units.get(iid, []):
            _add_cost(st, a_rows[unit.key])
        if iid not in s_units:
            st.update(status="failed", reason="no_reviews: the item has no sampled review to reason on")
        elif iid not in summary_of:
            why = bad_summaries.get(iid) or str(s_rows[s_units[iid].key]["error"])
            st.update(status="failed", reason="summary failed: " + why)
        elif iid not in p_units:
            st.update(status="failed", reason="no_aspects: every aspect tuple of the item failed or was empty")
        else:
            unit = p_units[iid]
            row = p_rows[unit.key]
            _add_cost(st, row)
            st.update(attempts=row["attempts"], cache_key=unit.key)
            ok = row["status"] == "ok"
            payload, unusable = _screened(json.loads(row["payload"]), prompts, cfg) if ok else ({}, None)
            if ok and not unusable:
                rows = _persona_rows(iid, unit.key, payload, prompts, row["model"])
                personas += rows
                st.update(n_personas=len(rows), notes=_notes(payload))
            else:
                st.update(status="failed", reason=unusable or row["error"], notes=_notes(payload))
        status.append(st)
    tables = {"summaries": summaries, "personas": personas, "item_status": status, "aspects": aspects_table}
    counts = _counts(status, personas)
    counts["aspects"] = {
        "tuples": len(aspects_table),
        "failed": sum(a["status"] != "ok" for a in aspects_table),
        "kept": sum(a["kept"] for a in aspects_table),
    }
    return tables, counts


def _counts(status: list[dict[str, Any]], personas: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [s for s in status if s["status"] == "ok"]
    failures: dict[str, int] = defaultdict(int)
    for s in status:
        if s["status"] != "ok":
            failures[str(s["reason"]).split(":", 1)[0]] += 1
    n = max(len(status), 1)
    return {
        "items": len(status),
        "items_ok": len(ok),
        "items_failed": len(status) - len(ok),
        "failures_by_reason": dict(failures),
        "personas": len(personas),
        "personas_per_ok_item": round(len(personas) / max(len(ok), 1), 3),
        "llm_calls": sum(s["calls"] for s in status),
        "llm_calls_per_item": round(sum(s["calls"] for s in status) / n, 3),
        "prompt_tokens": sum(s["prompt_tokens"] for s in status),
        "completion_tokens": sum(s["completion_tokens"] for s in status),
        "tokens_per_item": round(sum(s["prompt_tokens"] + s["completion_tokens"] for s in status) / n, 1),
        "personas_dropped_cut": sum(str(s["notes"]).count("dropped:") for s in status if s["notes"]),
        "items_short": sum("short:" in str(s["notes"]) for s in status if s["notes"]),
        "llm_seconds": round(sum(s["llm_seconds"] for s in status), 1),
        "llm_seconds_per_item": round(sum(s["llm_seconds"] for s in status) / n, 2),
    }

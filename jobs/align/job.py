"""The alignment stage: (user, item, positive persona) labels for training interactions only.

- efficient mode: free labels from the personas' own evidence: the user's review of the item is cited
  by a persona of that item, so that persona is the positive (the first citing one when several do);
- paper mode: an LLM judge reads the user's earlier history (strictly before the interaction) and picks
  the persona of the target item that fits it best; answers are validated, retried a bounded number of
  times, and failures are counted, never turned into labels.

Valid and test interactions are never labelled: they are what the evaluation holds out.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona4rec import schemas
from persona4rec.jobs.align.stage import AlignSummary
from persona4rec.ray_actors.pool import Ledger, LLMWork, pool_factory
from persona4rec.reasoning.cache import ResultCache
from persona4rec.reasoning.prompts import fence_text, load_prompts
from persona4rec.reasoning.units import judge_unit
from persona4rec.stage import Build


def build(b: Build, *, retry_failed: bool, engine: Any, embed: Any) -> AlignSummary:
    cfg, prepared, reasoned = b.cfg, b.inputs["prepare"], b.inputs["reason"]
    timer = b.timer
    with timer("read"):
        train = pq.read_table(prepared.table("interactions"))
        train = train.filter(pc.equal(train["split"], "train")).sort_by(
            [("user_id", "ascending"), ("position", "ascending")]
        )
        personas = pq.read_table(reasoned.table("personas")).to_pylist()
    by_item: dict[str, list[dict]] = defaultdict(list)
    for p in sorted(personas, key=lambda p: (p["item_id"], p["persona_index"])):
        by_item[p["item_id"]].append(p)

    spent: dict[str, Any] = {}
    with timer("label"):
        if cfg.reason.mode == "efficient":
            labels, counts = _from_evidence(train.to_pylist(), by_item)
        else:
            labels, counts, info, spent = _judge(
                cfg, prepared, reasoned, train, by_item, engine, embed, b.progress, retry_failed
            )
            b.environment(**info)
    b.add_table(pa.Table.from_pylist(labels, schema=schemas.LABELS.arrow()), schemas.LABELS)
    return AlignSummary(**counts, spent_this_run=spent)


def _from_evidence(train: list[dict], by_item: dict[str, list[dict]]) -> tuple[list[dict], dict[str, Any]]:
    """Label a training interaction with the first persona of its item that cites the user's review."""
    cited: dict[tuple[str, str], str] = {}
    for item_id, personas in by_item.items():
        for p in personas:
            for review_id in p["evidence"]:
                cited.setdefault((item_id, review_id), p["persona_id"])
    labels = []
    for row in train:
        persona_id = cited.get((row["item_id"], row["review_id"]))
        if persona_id is not None:
            labels.append(_label(row, persona_id, "evidence", None))
    return labels, _counts(len(train), labels, {"not_cited": len(train) - len(labels)})


def _judge(cfg, prepared, reasoned, train: pa.Table, by_item, engine, embed, progress, retry_failed):
    prompts = load_prompts(cfg.reason.prompts)
    summaries = {r["item_id"]: r["summary"] for r in pq.read_table(reasoned.table("summaries")).to_pylist()}
    reviews = pq.read_table(prepared.table("reviews"), columns=["review_id", "title", "text"])
    review_of = {r["review_id"]: r for r in reviews.to_pylist()}
    rows = train.to_pylist()
    history_of: dict[str, list[dict]] = defaultdict(list)
    skipped: dict[str, int] = defaultdict(int)
    units, subjects = [], {}
    for row in rows:
        earlier = history_of[row["user_id"]]
        options = by_item.get(row["item_id"], [])
        if not options:
            skipped["item_without_personas"] += 1
        elif not earlier:
            skipped["no_earlier_history"] += 1
        else:
            lines = [_history_line(h, summaries, review_of) for h in reversed(earlier[-cfg.align.history :])]
            target = summaries.get(row["item_id"]) or f"item {row['item_id']}"
            unit = judge_unit(
                f"{row['user_id']}|{row['position']}",
                lines,
                target,
                options,
                prompts,
                cfg.llm,
                cfg.align.judge_max_tokens,
            )
            units.append(unit)
            subjects[unit.key] = row
        earlier.append(row)
    if cfg.align.limit_interactions is not None:
        units = units[: cfg.align.limit_interactions]
    ledger = Ledger(ResultCache(cfg.artifacts_root / "align" / "cache"), retry_failed)
    rc = cfg.reason.model_copy(update={"max_attempts": cfg.align.max_attempts})
    work = LLMWork(cfg.model_copy(update={"reason": rc}), ledger, pool_factory(cfg, engine, embed), progress)
    try:
        results = work.run("judge", units)
    finally:
        work.close()
    labels, failed = [], 0
    for unit in units:
        result = results[unit.key]
        if result["status"] == "ok":
            payload = json.loads(result["payload"])
            labels.append(_label(subjects[unit.key], payload["persona_id"], "judge", payload["reasoning"]))
        else:
            failed += 1
    cost: dict[str, float] = {
        k: sum(results[u.key][k] for u in units) for k in ("calls", "prompt_tokens", "completion_tokens")
    }
    cost["llm_seconds"] = round(sum(results[u.key]["seconds"] or 0.0 for u in units), 1)
    counts = _counts(len(rows), labels, {**skipped, "judge_failed": failed, "judged": len(units)})
    counts["llm"] = cost
    spent = {k: dict(v) for k, v in ledger.spent.items()}
    return labels, counts, {k: str(v) for k, v in work.info.items()}, spent


def _history_line(row: dict, summaries: dict[str, str | None], review_of: dict[str, dict]) -> str:
    liked = "Liked" if row["rating"] >= 3 else "Disliked"
    review = review_of.get(row["review_id"], {})
    said = review.get("title") or review.get("text") or ""
    about = summaries.get(row["item_id"]) or f"item {row['item_id']}"
    return f"- {liked} ({row['rating']:g}★): {fence_text(about, 240)} | review: {fence_text(said, 160)}"


def _label(row: dict, persona_id: str, source: str, justification: str | None) -> dict[str, Any]:
    return {
        "user_id": row["user_id"],
        "item_id": row["item_id"],
        "review_id": row["review_id"],
        "position": row["position"],
        "persona_id": persona_id,
        "source": source,
        "justification": justification,
    }


def _counts(n_train: int, labels: list[dict], unlabelled: dict[str, int]) -> dict[str, Any]:
    return {
        "train_interactions": n_train,
        "labels": len(labels),
        "coverage": round(len(labels) / max(n_train, 1), 4),
        "unlabelled_by_reason": dict(unlabelled),
    }

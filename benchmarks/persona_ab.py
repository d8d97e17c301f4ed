"""Persona quality A/B (issue #29): prompt versions (and modes) on the same items, measured and ranked.

    python benchmarks/persona_ab.py -d amazon2014-musical-instruments \\
        -c conf/experiments/headline-musical-instruments.yaml \\
        data.local_dir=../shared/data/amazon2014_musical_instruments_5core paths.artifacts=/work/runs/ab/art \\
        --variant "v1=reason.limit_items=96" \\
        --variant "v3=reason.limit_items=96 reason.prompts=v3" \\
        --variant "paper=paths.artifacts=/work/runs/paper reason.mode=paper reason.limit_items=96 \\
                   reason.seed_caches=[benchmarks/headline-musical-instruments/paper-cache]" \\
        --items 96 --out benchmarks/persona-quality

Each ``--variant NAME=OVERRIDES`` is the base configuration plus its overrides; its published ``reason``
output (and the ``prepare`` output it read) are located exactly as the stages locate them, so run
``p4r reason`` with the same arguments first. On the first ``--items`` items (item id order, what
``reason.limit_items`` reasons over) it writes into ``--out``:

- ``report.md``: per variant, cost (LLM calls, tokens, attempts), persona quality
  (:func:`persona4rec.reasoning.quality.measure`, on the reason stage's dedup embedder) and the untrained
  ranking check of the headline's paper-mode comparison (each test user whose held-out item is one of
  the items ranks it among them by max over personas of cos(profile, persona), the off-the-shelf
  ``embed.model``; paired randomization test against the first variant);
- ``side-by-side.md``: ``--side-by-side`` items drawn at random (seed 0), the first two variants'
  persona sets one after the other, unedited;
- ``quality.json``: every measure of every variant.

Nothing here calls an LLM: it reads, embeds and scores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from persona4rec.config import load_config
from persona4rec.evaluation import metrics
from persona4rec.reasoning import quality

K = 10
REASON_TABLES = ("personas", "summaries", "item_status")


def _variant(spec: str) -> tuple[str, list[str]]:
    name, _, overrides = spec.partition("=")
    if not name or not overrides:
        raise SystemExit(f"--variant wants NAME=OVERRIDES, got {spec!r}")
    return name, shlex.split(overrides)


def _load(args: argparse.Namespace, overrides: list[str]):
    return load_config([*args.overrides, *overrides], experiment=args.config, dataset=args.dataset).config


def _stages(cfg, reason: bool = True) -> dict[str, Any]:
    from persona4rec.jobs import locate

    return {"prepare": locate("prepare", cfg), **({"reason": locate("reason", cfg)} if reason else {})}


def _rows(stage, table: str, items: set[str] | None = None, columns: list[str] | None = None) -> list[dict]:
    rows = pq.read_table(stage.table(table), columns=columns).to_pylist()
    return [r for r in rows if items is None or r.get("item_id") in items]


def from_cache(folder: Path, since: str) -> tuple[list[dict], dict[str, str], list[dict]]:
    """(persona rows, summaries, status rows) of the persona answers a run still in progress has cached in
    ``folder`` since ``since`` (ISO time): what ``--cache-variant`` compares before the run publishes."""
    rows = []
    for part in sorted(folder.glob("*.parquet")):
        rows += [r for r in pq.read_table(part).to_pylist() if r["created_at"] >= since]
    personas, summaries, status = [], {}, []
    for r in rows:
        payload = json.loads(r["payload"]) if r["status"] == "ok" else {}
        if r["status"] == "ok" and "personas" not in payload:
            continue  # another kind of answer (the cache has no kind column)
        status.append({"item_id": r["subject"], "status": r["status"], "calls": r["calls"],
                       "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"],
                       "llm_seconds": r["seconds"], "notes": "; ".join(payload.get("notes", []))})  # fmt: skip
        if r["status"] == "ok":
            summaries[r["subject"]] = payload.get("summary")
            for n, p in enumerate(payload["personas"], 1):
                personas.append({**p, "item_id": r["subject"], "persona_index": n, "prompt_version": "(cache)"})
    return personas, summaries, status


def cost(status: list[dict[str, Any]]) -> dict[str, Any]:
    n = max(len(status), 1)
    notes = [s.get("notes") or "" for s in status]
    return {
        "items": len(status),
        "ok": sum(s["status"] == "ok" for s in status),
        "calls": sum(s["calls"] for s in status) / n,
        "prompt_tokens": sum(s["prompt_tokens"] for s in status) / n,
        "completion_tokens": sum(s["completion_tokens"] for s in status) / n,
        "llm_seconds_median": float(np.median([s["llm_seconds"] for s in status])) if status else float("nan"),
        "retried": sum(s["calls"] > 1 for s in status),
        "not_distinct": sum("not distinct:" in t for t in notes),
        "dropped_cut": sum("dropped:" in t for t in notes),
    }


def ranking_check(variants: dict[str, dict[str, Any]], items: list[str], cfg, seed: int = 0) -> dict[str, Any]:
    """The untrained ranking check (:mod:`persona4rec.evaluation.persona_check`, as the headline's
    comparison of modes) for any number of variants on the same users, each against the first."""
    from persona4rec.evaluation import persona_check
    from persona4rec.ray_actors.embedder import load_embedder

    prepared = next(iter(variants.values()))["stages"]["prepare"]
    p = cfg.encoder.profile
    embed = load_embedder(cfg.embed.model, max_length=cfg.embed.max_length)
    users = persona_check.check_users(prepared, set(items), embed, p.history, p.gamma)
    if users is None:
        raise SystemExit(f"no test user's held-out item is one of these {len(items)} items: no ranking check")
    titles = persona_check.titles(prepared)
    checked = {
        name: persona_check.rank(
            users, v["personas"], embed(persona_check.passages(v["personas"], v["summaries"], titles)), K
        )
        for name, v in variants.items()
    }
    ev = cfg.evaluate
    resamples = metrics.bootstrap_indices(len(users.targets), ev.bootstrap, seed)
    base = checked[next(iter(variants))]
    table = {}
    for name, c in checked.items():
        rec = {"hr@10": float(c.hits.mean()), "ndcg@10": float(c.ndcgs.mean())}
        rec["hr_ci"] = metrics.bootstrap_ci(c.hits, resamples, ev.confidence)
        rec["ndcg_ci"] = metrics.bootstrap_ci(c.ndcgs, resamples, ev.confidence)
        if c is not base:
            rec["p_hr"] = metrics.paired_p_value(c.hits, base.hits, ev.permutations, seed)
            rec["p_ndcg"] = metrics.paired_p_value(c.ndcgs, base.ndcgs, ev.permutations, seed)
        table[name] = rec
    return {
        "users": len(users.targets),
        "items": len(users.items),
        "per_user": {name: (c.hits, c.ndcgs) for name, c in checked.items()},
        "within": {name: c.within for name, c in checked.items()},
        "table": table,
        "confidence": ev.confidence,
    }


def side_by_side(variants: dict[str, dict[str, Any]], items: list[str], n: int, seed: int = 0) -> list[str]:
    names = list(variants)[:2]
    have = [i for i in items if all(any(r["item_id"] == i for r in variants[v]["personas"]) for v in names)]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(have), size=min(n, len(have)), replace=False))
    out = [
        f"{len(chosen)} items drawn at random (seed {seed}) among the first {len(items)} items that have personas "
        f"under both {names[0]} and {names[1]}; every persona exactly as written. Evidence shows the review numbers "
        "as the prompt showed them (R1 = first sampled review).",
        "",
    ]
    for k, idx in enumerate(chosen, 1):
        item = have[idx]
        out += [f"## {k}. `{item}`", ""]
        shown = variants[names[0]]["shown"].get(item, [])
        number = {r["review_id"]: f"R{j}" for j, r in enumerate(shown, 1)}
        out += ["Reviews shown:", ""]
        for j, r in enumerate(shown, 1):
            text = " ".join((r.get("text") or "").split())
            out.append(f"- R{j} ({r['rating']:g}★) {text[:220]}{'…' if len(text) > 220 else ''}")
        out.append("")
        for name in names:
            out += [f"**{name}** ({variants[name]['summaries'].get(item) or 'no summary'})", ""]
            for r in sorted((r for r in variants[name]["personas"] if r["item_id"] == item),
                            key=lambda r: r["persona_index"]):  # fmt: skip
                ev = ", ".join(number.get(e, e) for e in r["evidence"])
                out.append(f"- **{r['name']}** [{ev}]: {r['description']} *Why:* {r['rationale']}")
            out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("-c", "--config", help="experiment file, as for p4r")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDES (the first variant is the baseline)")
    ap.add_argument(
        "--cache-variant", action="append", default=[],
        help="'NAME=CACHE_DIR@ISO_TIME OVERRIDES': persona answers cached since ISO_TIME by a run still in progress "
        "(configuration: the base plus OVERRIDES); every variant is then compared on the items it has",
    )  # fmt: skip
    ap.add_argument(
        "--dir-variant", action="append", default=[],
        help="'NAME=REASON_VERSION_DIR OVERRIDES': a published reason output read from its folder (e.g. one "
        "made before a change of the stage's configuration keys), on the base variant's prepared data",
    )  # fmt: skip
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--side-by-side", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    from persona4rec.ray_actors.embedder import load_embedder

    variants: dict[str, dict[str, Any]] = {}
    items: list[str] | None = None
    base_cfg = None

    def add(name: str, cfg, stages: dict[str, Any], tables: dict[str, list[dict]] | None = None) -> None:
        """A variant: its configuration, the prepared data it read and its reason tables (located, or given)."""
        nonlocal items, base_cfg
        if items is None:
            items = sorted(r["item_id"] for r in _rows(stages["prepare"], "items", columns=["item_id"]))[: args.items]
            base_cfg = cfg
        wanted = set(items)
        if tables is None:
            tables = {t: _rows(stages["reason"], t) for t in REASON_TABLES}
        tables = {t: [r for r in rows if r["item_id"] in wanted] for t, rows in tables.items()}
        reviews = _rows(stages["prepare"], "review_samples", wanted)
        variants[name] = {
            "cfg": cfg,
            "stages": stages,
            "personas": tables["personas"],
            "summaries": {r["item_id"]: r["summary"] for r in tables["summaries"]},
            "status": tables["item_status"],
            "reviews": reviews,
            "shown": quality.shown_reviews(reviews, cfg.reason.reviews_per_item),
        }

    for spec in args.variant:
        name, overrides = _variant(spec)
        cfg = _load(args, overrides)
        add(name, cfg, _stages(cfg))
    for spec in args.dir_variant:
        name, _, rest = spec.partition("=")
        folder, _, overrides = rest.strip().partition(" ")
        cfg = _load(args, shlex.split(overrides))
        stages = next(iter(variants.values()))["stages"] if variants else _stages(cfg, reason=False)
        add(name, cfg, stages, {t: pq.read_table(Path(folder) / t).to_pylist() for t in REASON_TABLES})
    if items is None:
        raise SystemExit("give at least one --variant or --dir-variant")
    for spec in args.cache_variant:
        name, _, rest = spec.partition("=")
        where, _, overrides = rest.strip().partition(" ")
        folder, _, since = where.partition("@")
        personas, summaries, status = from_cache(Path(folder), since)
        first = next(iter(variants.values()))
        variants[name] = {**first, "cfg": _load(args, shlex.split(overrides)), "personas": personas,
                          "summaries": summaries, "status": status}  # fmt: skip
    if args.cache_variant:  # compare on the items every variant has answered
        done = set.intersection(*({s["item_id"] for s in v["status"]} for v in variants.values()))
        items = [i for i in items if i in done]
        for v in variants.values():
            for key in ("personas", "status", "reviews"):
                v[key] = [r for r in v[key] if r["item_id"] in done]
            v["summaries"] = {k: t for k, t in v["summaries"].items() if k in done}
            v["shown"] = quality.shown_reviews(v["reviews"], v["cfg"].reason.reviews_per_item)
    embed = load_embedder(base_cfg.reason.dedup.embedder)
    results: dict[str, Any] = {}
    for name, v in variants.items():
        per_item = v["cfg"].reason.reviews_per_item
        q = quality.measure(v["personas"], v["reviews"], embed, summaries=v["summaries"], reviews_per_item=per_item)
        v["quality"] = q
        v["cost"] = cost(v["status"])
        prompt_versions = sorted({r["prompt_version"] for r in v["personas"]})
        results[name] = {"quality": q.to_dict(), "cost": v["cost"], "prompt_versions": prompt_versions,
                         "mode": v["cfg"].reason.mode}  # fmt: skip
        print(f"{name}: {q.personas} personas, coverage {q.coverage:.3f}, diversity {q.diversity_mean:.3f}",
              file=sys.stderr)  # fmt: skip
    rank = ranking_check(variants, items, base_cfg)
    for name in variants:
        results[name]["ranking"] = rank["table"][name]
        results[name]["ranking"]["mean_within_item_cosine_indexed_128"] = rank["within"][name]

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    title = f"# {' vs '.join(list(variants)[:2])}: persona sets side by side"
    pairs = side_by_side(variants, items, args.side_by_side)
    (args.out / "side-by-side.md").write_text("\n".join([title, "", *pairs]) + "\n")
    lines = [f"# Measured on the first {len(items)} items", ""]
    lines += _cost_table(variants) + [""] + _quality_table(variants) + [""] + _rank_table(rank, list(variants))
    (args.out / "measured.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _cost_table(variants) -> list[str]:
    out = [
        "| variant | mode | prompts | items | ok | personas an item | LLM calls an item | items retried "
        "| kept not distinct | prompt tokens | generated tokens | median LLM s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in variants.items():
        c, q = v["cost"], v["quality"]
        out.append(
            f"| {name} | {v['cfg'].reason.mode} | {v['cfg'].reason.prompts} | {c['items']} | {c['ok']} | "
            f"{q.personas_per_item:.2f} | {c['calls']:.2f} | {c['retried']} | {c['not_distinct']} | "
            f"{c['prompt_tokens']:,.0f} | {c['completion_tokens']:,.0f} | {c['llm_seconds_median']:.1f} |"
        )
    return out


def _quality_table(variants) -> list[str]:
    names = list(variants)
    qs = [variants[n]["quality"] for n in names]

    def row(label, fn):
        return f"| {label} | " + " | ".join(fn(q) for q in qs) + " |"

    pct = lambda x: "n/a" if np.isnan(x) else f"{x:.1%}"  # noqa: E731
    num = lambda x: "n/a" if np.isnan(x) else f"{x:.3f}"  # noqa: E731
    return [
        "| measure (target) | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        row("personas", lambda q: str(q.personas)),
        row("valid evidence (≥ 95%)", lambda q: pct(q.valid_evidence)),
        row("review coverage (≥ 80%)", lambda q: pct(q.coverage)),
        row("mean intra-item cosine, indexed passage (≤ 0.80)", lambda q: num(q.diversity_mean)),
        row("max intra-item cosine (mean over items)", lambda q: num(q.diversity_max)),
        row("items that are one audience renamed", lambda q: pct(q.near_duplicate_items)),
        row("rationale ≠ description (≥ 95%)", lambda q: pct(q.rationale_differs_from_description)),
        row("rationale ≈ a sibling's rationale", lambda q: pct(q.rationale_is_sibling)),
        row("rationale restated (either)", lambda q: pct(q.rationale_restated)),
        row("sibling evidence overlap (mean Jaccard)", lambda q: num(q.evidence_overlap)),
        row("sibling pairs citing mostly the same reviews", lambda q: pct(q.evidence_shared_pairs)),
        row("empty / cut fields (0 cut)", lambda q: f"{q.empty_fields} / {q.cut_fields}"),
        row("groundedness margin (cited − other items' reviews)", lambda q: num(q.grounded_margin)),
        row("personas closer to their cited reviews", lambda q: pct(q.grounded_share)),
    ]


def _rank_table(rank, names) -> list[str]:
    conf = rank["confidence"]
    out = [
        f"Ranking check without training: {rank['users']} test users whose held-out item is one of these "
        f"{rank['items']} items, ranked among them (earlier items left out); "
        f"chance HR@{K} ≈ {min(1.0, K / rank['items']):.3f}.",
        "",
        f"| variant | HR@{K} [{conf:.0%} CI] | NDCG@{K} [{conf:.0%} CI] | p vs {names[0]} (HR, NDCG) "
        "| mean intra-item cosine (passage at 128 tokens, as the headline) |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        r = rank["table"][name]
        p = f"{r['p_hr']:.3f}, {r['p_ndcg']:.3f}" if "p_hr" in r else ""
        out.append(
            f"| {name} | {r['hr@10']:.4f} [{r['hr_ci'][0]:.4f}, {r['hr_ci'][1]:.4f}] | {r['ndcg@10']:.4f} "
            f"[{r['ndcg_ci'][0]:.4f}, {r['ndcg_ci'][1]:.4f}] | {p} | {rank['within'][name]:.3f} |"
        )
    return out


if __name__ == "__main__":
    sys.exit(main())

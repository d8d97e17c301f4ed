"""The evaluation report: one Markdown file with its tables, PNG plots beside it, and where it came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

PLOTS = ("metrics_at_k.png", "latency_quality.png", "segment_gains.png")
SEGMENT_TITLES = {
    "warm_users": "warm users",
    "cold_users": "cold users",
    "head_items": "head items",
    "tail_items": "tail items",
}


def write_report(folder: Path, ev: Any, cfg: Any, manifest: Any, found: dict[str, Any]) -> Path:
    """report.md and plots/ under ``folder``."""
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    rows = ev.rows
    generators = list(dict.fromkeys(r["generator"] for r in rows))
    rerankers = list(dict.fromkeys(r["reranker"] for r in rows if r["segment"] == "all"))
    ks = cfg.evaluate.ks
    _plot_metrics(rows, generators, rerankers, ks, plots / PLOTS[0])
    _plot_latency(ev, rows, plots / PLOTS[1])
    _plot_segments(rows, generators, rerankers, plots / PLOTS[2])

    e = cfg.evaluate
    lines = [f"# Evaluation: {cfg.dataset}", ""]
    lines += [
        f"Stage version `{manifest.fingerprint[:16]}`, created {manifest.created_at}. Candidates: top "
        f"{cfg.candidates.top_n} per user with training and validation items left out. Every test user counts; "
        "a user whose held-out item the generator missed scores 0 for every reranker. "
        f"`*`: paired randomization test against the first-stage order on the same users, p < {e.alpha:g}. "
        f"Intervals: {e.confidence:.0%} percentile bootstrap over users ({e.bootstrap} resamples).",
        "",
    ]
    lines += _sources(found, manifest)
    for gen in generators:
        c = ev.counts.get(gen, {})
        lines += [f"## Generator: {gen}", ""]
        if c:
            lines += [
                f"{c['test_users']:,} test users; the held-out item is among the candidates for "
                f"{c['target_in_candidates']:,} ({c['target_in_candidates'] / max(c['test_users'], 1):.2%}).",
                "",
            ]
        lines += _main_table(rows, gen, rerankers, ks, e.alpha)
        lines += ["", f"{e.confidence:.0%} intervals and p-values at K = 10:", ""]
        lines += _ci_table(rows, gen, rerankers, 10 if 10 in ks else ks[-1])
        lines += ["", "Segments (NDCG@10 and HR@10; in brackets the change against the first-stage order):", ""]
        lines += _segment_table(rows, gen, rerankers, c.get("segments", {}))
        if gen in ev.fusion:
            f = ev.fusion[gen]
            grid = ", ".join(f"w={w}: {v:.4f}" for w, v in f["valid_ndcg@10"].items())
            lines += [
                "",
                f"persona_fused: weight {f['weight']:g}, tuned on validation NDCG@10 over the users whose item "
                f"was generated ({grid}).",
            ]
        for name, model in ev.learned.get(gen, {}).items():
            lines += [
                "",
                f"{name}: LambdaRank over {', '.join(model.features)}; fitted on {model.groups} validation lists "
                f"(base {model.base[0]:g} x first-stage z + {model.base[1]:g} x persona z, leaves "
                f"{model.params['num_leaves']}, min leaf "
                f"{model.params['min_data_in_leaf']}, {model.rounds} rounds, chosen by "
                f"{cfg.evaluate.learned.folds}-fold cross-validation over users: NDCG@10 "
                f"{max(model.cv.values()):.4f}).",
            ]
        for name, why in ev.learned_skipped.get(gen, {}).items():
            lines += ["", f"{name}: not fitted: {why}."]
        if gen in ev.persona_features:
            p = ev.persona_features[gen]
            lines += [
                "",
                f"What the persona features add to the learned reranker (paired test, learned against "
                f"learned_no_persona): HR@10 p = {p['hr@10']:.3f}, NDCG@10 p = {p['ndcg@10']:.3f}.",
            ]
        lines.append("")
    lines += _llm_section(ev, rows, e.alpha)
    lines += ["## Plots", ""] + [f"![{p}](plots/{p})" for p in PLOTS] + [""]
    lines += ["## Configuration", "", "```yaml"]
    lines += yaml.safe_dump(
        {"candidates": cfg.candidates.model_dump(mode="json"), "evaluate": cfg.evaluate.model_dump(mode="json"),
         "score": cfg.score.model_dump(mode="json"), "llm": cfg.llm.model_dump(mode="json")},
        sort_keys=False,
    ).splitlines()  # fmt: skip
    lines += ["```", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _value(rows, gen, reranker, metric, segment="all") -> dict[str, Any] | None:
    for r in rows:
        if (r["generator"], r["reranker"], r["metric"], r["segment"]) == (gen, reranker, metric, segment):
            return r
    return None


def _fmt(r: dict[str, Any] | None, alpha: float) -> str:
    if r is None or r["value"] is None:
        return "n/a"
    star = "*" if r["p_value"] is not None and r["p_value"] < alpha else ""
    return f"{r['value']:.4f}{star}"


def _main_table(rows, gen, rerankers, ks, alpha) -> list[str]:
    metrics = [f"{m}@{k}" for k in ks for m in ("hr", "mrr", "ndcg")]
    out = ["| reranker | " + " | ".join(m.upper().replace("@", "@") for m in metrics) + " |"]
    out.append("|---" * (len(metrics) + 1) + "|")
    for name in rerankers:
        if _value(rows, gen, name, metrics[0]) is None:
            continue
        out.append(f"| {name} | " + " | ".join(_fmt(_value(rows, gen, name, m), alpha) for m in metrics) + " |")
    return out


def _ci_table(rows, gen, rerankers, k) -> list[str]:
    out = ["| reranker | HR | interval | p | NDCG | interval | p |", "|---|---|---|---|---|---|---|"]
    for name in rerankers:
        cells = []
        for m in ("hr", "ndcg"):
            r = _value(rows, gen, name, f"{m}@{k}")
            if r is None or r["value"] is None:
                cells += ["n/a", "", ""]
                continue
            p = "" if r["p_value"] is None else f"{r['p_value']:.3f}"
            cells += [f"{r['value']:.4f}", f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]", p]
        if cells[0] != "n/a" or cells[3] != "n/a":
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _segment_table(rows, gen, rerankers, sizes) -> list[str]:
    segs = list(SEGMENT_TITLES)
    head = " | ".join(f"{SEGMENT_TITLES[s]} ({sizes.get(s, 0):,}) NDCG | HR" for s in segs)
    out = [f"| reranker | {head} |", "|---" * (1 + 2 * len(segs)) + "|"]
    for name in rerankers:
        cells = []
        for s in segs:
            for m in ("ndcg@10", "hr@10"):
                r, base = _value(rows, gen, name, m, s), _value(rows, gen, "first_stage", m, s)
                if r is None or r["value"] is None:
                    cells.append("n/a")
                    continue
                change = ""
                if name != "first_stage" and base and base["value"]:
                    change = f" ({(r['value'] / base['value'] - 1):+.1%})"
                cells.append(f"{r['value']:.4f}{change}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _llm_section(ev, rows, alpha) -> list[str]:
    lat = {k: v for k, v in ev.latency_ms.items() if v}
    out = []
    if ev.llm:
        l = ev.llm  # noqa: E741
        out += [
            "## Zero-shot LLM listwise reranker",
            "",
            f"{l['users']} test users of `{l['generator']}` whose held-out item is among the candidates (so these "
            "figures are conditional on a first-stage hit and higher than the ones above), sampled at random; "
            f"every reranker on the same users. LLM: `{l['model']}` on {l['engine']}, one request per user. "
            f"Candidates were shown in a random order per user. Answers: {l['ok']} valid ({l['echoed']} "
            f"returned the shown order unchanged, {l['completed']} had unranked candidates appended in "
            f"first-stage order, {l['cached']} from the cache), {l['failed']} failed (first-stage order kept)"
            + (f": {json.dumps(l['failures'])}" if l["failures"] else "")
            + f". Tokens: {l['tokens']['prompt']:,} prompt, {l['tokens']['completion']:,} generated.",
            "",
            "| reranker | HR@5 | NDCG@5 | NDCG@10 | MRR@10 |",
            "|---|---|---|---|---|",
        ]
        names = list(dict.fromkeys(r["reranker"] for r in rows if r["segment"] == "llm_sample"))
        for name in names:
            cells = [_fmt(_value(rows, l["generator"], name, m, "llm_sample"), alpha)
                     for m in ("hr@5", "ndcg@5", "ndcg@10", "mrr@10")]  # fmt: skip
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    if lat:
        out += [
            "## Latency per request",
            "",
            "| reranker | requests | p50 ms | p95 ms | mean ms |",
            "|---|---|---|---|---|",
        ]
        import numpy as np

        for name, ms in lat.items():
            a = np.asarray(ms)
            out.append(f"| {name} | {len(a)} | {np.median(a):.3f} | {np.quantile(a, 0.95):.3f} | {a.mean():.3f} |")
        out += [
            "",
            "persona: the service's in-memory rerank call (profile lookup, max-over-personas scoring, ordering) "
            "on this machine; llm_listwise: wall time of the LLM request(s) for one user, retries included.",
            "",
        ]
    return out


def _sources(found, manifest) -> list[str]:
    out = ["Inputs:", ""]
    for i in manifest.inputs:
        out.append(f"- {i['stage']}: `{i['path']}` (`{i['sha256'][:16]}`)")
    reason = found.get("reason")
    if reason is not None:
        mode = reason.manifest.stage_config.get("reason", {}).get("mode")
        env, made = reason.manifest.environment, reason.summary
        source = "extractive baseline, no LLM" if env.get("engine") == "extractive" else "LLM"
        out.append(
            f"- personas ({source}): {mode} mode, `{env.get('model')}` on {env.get('engine')}, "
            f"{made.items_ok} of {made.items} items with personas, {made.personas} personas"
        )
    enc = manifest.stage_config.get("encoder")
    if enc:
        out.append(f"- encoder: {enc['model']} version {enc['version']} (run `{enc['run_id']}`)")
    return out + [""]


# ------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_metrics(rows, generators, rerankers, ks, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(generators), figsize=(4.5 * len(generators), 7), squeeze=False)
    for col, gen in enumerate(generators):
        for row, metric in enumerate(("hr", "ndcg")):
            ax = axes[row][col]
            for i, name in enumerate(rerankers):
                pts = [_value(rows, gen, name, f"{metric}@{k}") for k in ks]
                if any(p is None or p["value"] is None for p in pts):
                    continue
                x = [k + (i - len(rerankers) / 2) * 0.15 for k in ks]
                y = [p["value"] for p in pts]
                err = [[p["value"] - p["ci_low"] for p in pts], [p["ci_high"] - p["value"] for p in pts]]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
            ax.set_title(f"{gen}: {metric.upper()}@K")
            ax.set_xticks(ks)
            ax.set_xlabel("K")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_latency(ev, rows, path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    gen = ev.llm.get("generator") if ev.llm else None
    segment = "llm_sample" if gen else "all"
    for name, ms in ev.latency_ms.items():
        if not ms:
            continue
        same_path = (
            [name]
            if name == "llm_listwise"
            else [n for n in ("persona", "persona_vanilla", "persona_fused", "summary")]
        )
        for n in same_path:
            r = (
                _value(rows, gen, n, "ndcg@10", segment)
                if gen
                else next(
                    (x for x in rows if x["reranker"] == n and x["metric"] == "ndcg@10" and x["segment"] == "all"), None
                )
            )
            if r is None or r["value"] is None:
                continue
            ax.errorbar([np.median(ms)], [r["value"]], yerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]],
                        marker="o", capsize=3, label=n)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("median latency per request (ms, log scale)")
    ax.set_ylabel("NDCG@10" + (" (LLM sample)" if gen else ""))
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_segments(rows, generators, rerankers, path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    segs = list(SEGMENT_TITLES)
    others = [r for r in rerankers if r != "first_stage"]
    fig, axes = plt.subplots(1, len(generators), figsize=(5 * len(generators), 4), squeeze=False)
    for col, gen in enumerate(generators):
        ax = axes[0][col]
        width = 0.8 / max(len(others), 1)
        for i, name in enumerate(others):
            gains = []
            for s in segs:
                r, b = _value(rows, gen, name, "ndcg@10", s), _value(rows, gen, "first_stage", "ndcg@10", s)
                ok = r and b and r["value"] is not None and b["value"]
                gains.append(100 * (r["value"] / b["value"] - 1) if ok else 0.0)
            ax.bar(np.arange(len(segs)) + i * width - 0.4 + width / 2, gains, width, label=name)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(segs)), [SEGMENT_TITLES[s] for s in segs])
        ax.set_ylabel("NDCG@10 change vs first stage (%)")
        ax.set_title(gen)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

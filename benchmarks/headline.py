"""The headline report (issue #8): one finished run against the paper's claims, cost, speed and explanations.

    python benchmarks/headline.py -d amazon2014-musical-instruments \\
        -c conf/experiments/headline-musical-instruments.yaml \\
        data.local_dir=../shared/data/amazon2014_musical_instruments_5core paths.artifacts=/work/runs/headline \\
        --paper-artifacts /work/runs/paper --paper-items 96 --out benchmarks/headline-musical-instruments

Reads only published stage versions, each located by the same configuration the run used (so a report
never mixes runs), and writes into ``--out``:

- ``report.md``: quality of every reranker over BPR-MF and LightGCN candidates next to the paper's gains,
  the cost of every stage (wall time, peak memory, LLM calls and tokens per item), the online latency
  against the zero-shot LLM reranker, and, with ``--paper-artifacts``, the efficient and the paper mode
  side by side on the items both reasoned over (the paper mode's cost with its align judge, from the
  ``--paper-judged`` sample, when that run's align is published);
- ``evaluation.md`` and ``plots/``: the evaluate stage's own report and plots, copied;
- ``explanations.md``: ``--explanations`` test users' top recommendation with its winning persona, as
  the evaluated reranker produced them (profiles from the history before the test item), unedited.

Prints the headline table. Nothing here trains or calls an LLM; it reads, scores and formats.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from persona4rec.artifacts import StageResult
from persona4rec.config import Config, load_config
from persona4rec.evaluation import metrics
from persona4rec.jobs import runner
from persona4rec.jobs.align.stage import AlignSummary
from persona4rec.scoring import rerank

STAGES = ("prepare", "reason", "align", "embed", "train", "index", "candidates", "evaluate")
GENERATORS = ("bpr", "lightgcn")
K = 10

# The paper's relative gains of Persona4Rec (fine-tuned) over the candidate order, Amazon-Books (Tables 5-7).
PAPER = {
    "lightgcn": {"hr@10": 0.075, "ndcg@10": 0.109, "tail hr@10": 0.188},
    "bpr": {"hr@10": 0.081, "ndcg@10": 0.102, "tail hr@10": 0.161},
}
PAPER_SPEEDUP = "~1,300× over TALLRec (979 ms vs 0.75 ms on an A6000); ZS-LLM API 5,537 ms vs 0.52 ms on a CPU"


@dataclass(frozen=True)
class Run:
    cfg: Config
    stages: dict[str, StageResult]

    def manifest(self, stage: str):
        return self.stages[stage].manifest

    def summary(self, stage: str):
        return self.stages[stage].summary


REQUIRED = ("prepare", "reason", "embed", "candidates", "evaluate")


def locate_run(cfg: Config, wanted: tuple[str, ...] = tuple(STAGES)) -> Run:
    """The stage versions this configuration reads (what ``p4r run`` with it made). A missing required
    stage is an error naming the command to run; align, train and index are reported when present."""
    from persona4rec.errors import StageUnavailable

    found, located = {}, runner(cfg, progress=False)
    for name in wanted:
        try:
            found[name] = located.locate(name)
        except StageUnavailable:
            if name in REQUIRED:
                raise
    return Run(cfg, found)


# ------------------------------------------------------------------------------------------ quality


def _metric_rows(run: Run) -> list[dict[str, Any]]:
    return pq.read_table(run.stages["evaluate"].table("eval_metrics")).to_pylist()


def _get(rows, gen: str, reranker: str, metric: str, segment: str = "all") -> dict[str, Any] | None:
    for r in rows:
        if (r["generator"], r["reranker"], r["segment"], r["metric"]) == (gen, reranker, segment, metric):
            return r
    return None


def _gain(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base - 1.0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def quality(run: Run) -> tuple[list[str], list[dict[str, Any]]]:
    """The headline table: HR@10 and NDCG@10 with intervals, p-values and gains, tail items, the paper's gains."""
    rows = _metric_rows(run)
    rerankers = [r for r in run.cfg.evaluate.rerankers if r != "llm_listwise"]
    alpha, ci = run.cfg.evaluate.alpha, f"{run.cfg.evaluate.confidence:.0%} CI"
    lines = [
        f"| generator | reranker | HR@{K} [{ci}] | gain | p | NDCG@{K} [{ci}] | gain | p | tail-item HR@{K} | gain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = []
    for gen in GENERATORS:
        base = {m: _get(rows, gen, "first_stage", m) for m in (f"hr@{K}", f"ndcg@{K}")}
        base_tail = _get(rows, gen, "first_stage", f"hr@{K}", "tail_items")
        if base[f"hr@{K}"] is None:
            continue
        for name in rerankers:
            cells, rec = [], {"generator": gen, "reranker": name}
            for m in (f"hr@{K}", f"ndcg@{K}"):
                r = _get(rows, gen, name, m)
                gain = _gain(r["value"], base[m]["value"]) if r else None
                star = "*" if r and r["p_value"] is not None and r["p_value"] < alpha else ""
                p = "" if name == "first_stage" or not r or r["p_value"] is None else f"{r['p_value']:.3f}"
                ci = f"{r['value']:.4f}{star} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]" if r else "n/a"
                cells += [ci, "" if name == "first_stage" else _pct(gain), p]
                rec[m], rec[f"{m} gain"], rec[f"{m} p"] = (r["value"] if r else None), gain, r and r["p_value"]
            tail = _get(rows, gen, name, f"hr@{K}", "tail_items")
            tail_gain = _gain(tail["value"], base_tail["value"]) if tail and base_tail else None
            cells += [f"{tail['value']:.4f}" if tail else "n/a", "" if name == "first_stage" else _pct(tail_gain)]
            rec["tail hr@10"], rec["tail hr@10 gain"] = (tail["value"] if tail else None), tail_gain
            lines.append(f"| {gen} | {name} | " + " | ".join(cells) + " |")
            table.append(rec)
        paper = PAPER[gen]
        lines.append(
            f"| {gen} | *paper: P4R on Amazon-Books* | | {_pct(paper['hr@10'])} | | | {_pct(paper['ndcg@10'])} | | "
            f"| {_pct(paper['tail hr@10'])} |"
        )
    return lines, table


def plot_gains(table: list[dict[str, Any]], path: Path) -> None:
    """Relative gains over the candidate order, ours per reranker beside the paper's, per generator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_ = [f"hr@{K}", f"ndcg@{K}", "tail hr@10"]
    fig, axes = plt.subplots(1, len(GENERATORS), figsize=(11, 4), sharey=True)
    for ax, gen in zip(np.atleast_1d(axes), GENERATORS, strict=True):
        recs = [r for r in table if r["generator"] == gen and r["reranker"] != "first_stage"]
        bars = [(r["reranker"], [r.get(f"{m} gain") for m in metrics_]) for r in recs]
        bars.append(("paper (Books)", [PAPER[gen][m] for m in metrics_]))
        width = 0.8 / max(len(bars), 1)
        x = np.arange(len(metrics_))
        for i, (label, values) in enumerate(bars):
            ys = [np.nan if v is None else 100 * v for v in values]
            ax.bar(x + i * width, ys, width, label=label, hatch="//" if label.startswith("paper") else None)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x + width * (len(bars) - 1) / 2, metrics_)
        ax.set_title(f"{gen} candidates")
        ax.set_ylabel("change vs candidate order (%)")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ cost


def _wall(m) -> float:
    return float(sum(m.timings_s.values()))


def _peak(m) -> str:
    return f"{max(m.peak_rss_mb.values()) / 1024:.1f}" if m.peak_rss_mb else "not recorded"


def stage_costs(run: Run) -> list[str]:
    lines = ["| stage | wall time (s) | steps | peak memory (GiB) |", "|---|---|---|---|"]
    for name, res in run.stages.items():
        m = res.manifest
        steps = ", ".join(f"{k} {v:.1f}" for k, v in m.timings_s.items())
        lines.append(f"| {name} | {_wall(m):.1f} | {steps} | {_peak(m)} |")
    llm_s = run.summary("reason").llm_seconds if "reason" in run.stages else None
    if llm_s:
        lines += [
            "",
            f"A stage's wall time is that of the invocation that published it. For `reason` that is the last "
            f"run of a resumed generation, which read every earlier run's answers from the cache; the engine "
            f"calls of every run together took {llm_s:,.0f} s ({llm_s / 3600:.1f} h, the sum of "
            "`item_status.llm_seconds`).",
        ]
    return lines


def _status(res: StageResult, items: set[str] | None = None) -> list[dict[str, Any]]:
    rows = pq.read_table(res.table("item_status")).to_pylist()
    return [r for r in rows if items is None or r["item_id"] in items]


def _persona_rows(res: StageResult, items: set[str] | None = None) -> list[dict[str, Any]]:
    rows = pq.read_table(res.table("personas")).to_pylist()
    return [r for r in rows if items is None or r["item_id"] in items]


_COST = ("calls", "prompt_tokens", "completion_tokens", "llm_seconds")


def _per_item(status: list[dict[str, Any]]) -> list[float]:
    """Mean calls, prompt tokens, generated tokens and LLM seconds per reasoned item."""
    n = max(len(status), 1)
    return [sum(s[k] for s in status) / n for k in _COST]


def mode_cost(label: str, status: list[dict[str, Any]], personas: int) -> str:
    n = max(len(status), 1)
    ok = sum(s["status"] == "ok" for s in status)
    calls, prompt, gen, secs = _per_item(status)
    median = f"{np.median([s['llm_seconds'] for s in status]):.1f}" if status else "n/a"
    return (
        f"| {label} | {len(status)} | {ok} ({ok / n:.0%}) | {personas / max(ok, 1):.2f} | {calls:.2f} | "
        f"{prompt:,.0f} | {gen:,.0f} | {secs:.1f} | {median} |"
    )


def judge_cost(counts: AlignSummary, status: list[dict[str, Any]]) -> tuple[list[str], str] | None:
    """The paper mode's second LLM step, the align judge (one call per training interaction of an item with
    personas): per-item rows to put under ``mode_cost``'s, judge alone and reason plus judge, and a note.
    Measured on the judged sample and scaled to every judgeable interaction; None when no judge ran."""
    llm, why = counts.llm or {}, counts.unlabelled_by_reason
    judged = why.get("judged", 0)
    if not judged or not status or "llm_seconds" not in llm:
        return None
    judgeable = counts.train_interactions - why.get("item_without_personas", 0) - why.get("no_earlier_history", 0)
    n = len(status)
    per_item = judgeable / n  # per item reasoned, as mode_cost counts
    calls, prompt, gen, secs = (llm[k] / judged * per_item for k in _COST)
    r_calls, r_prompt, r_gen, r_secs = _per_item(status)
    rows = [
        f"| paper (align judge) | {n} | | | {calls:.2f} | {prompt:,.0f} | {gen:,.0f} | {secs:.1f} | |",
        f"| **paper (reason + judge)** | {n} | | | {r_calls + calls:.2f} | {r_prompt + prompt:,.0f} "
        f"| {r_gen + gen:,.0f} | {r_secs + secs:.1f} | |",
    ]
    note = (
        f"The judge's row is measured on {judged} judgements ({llm['calls']} calls, "
        f"{llm['llm_seconds'] / judged:.1f} LLM seconds each, {why.get('judge_failed', 0)} failed) and scaled "
        f"to {per_item:.1f} judgeable training interactions per item ({judgeable:,} interactions on these "
        f"items with an earlier history, over {n} items): the paper judges every one of them."
    )
    return rows, note


MODE_HEADER = [
    "| mode | items | ok | personas per ok item | LLM calls per item | prompt tokens per item "
    "| generated tokens per item | LLM seconds per item | median |",
    "|---|---|---|---|---|---|---|---|---|",
]
MODE_NOTE = (
    "LLM seconds are measured (`item_status.llm_seconds`: each batch's wall time shared among its answers, "
    "summed over the item's calls). Batches that ran beside other work on the machine were slower, "
    "so the median item is closer to the quiet pace than the mean."
)


# ------------------------------------------------------------------------------------------ modes


def compare_modes(run: Run, paper: Run, items: set[str], seed: int = 0) -> list[str]:
    """The efficient and the paper mode on the same items: cost, persona statistics, and the untrained
    ranking check (:mod:`persona4rec.evaluation.persona_check`) with the off-the-shelf embedder."""
    from persona4rec.evaluation import persona_check
    from persona4rec.ray_actors.embedder import load_embedder

    eff_status = _status(run.stages["reason"], items)
    pap_status = _status(paper.stages["reason"], items)
    eff_rows = _persona_rows(run.stages["reason"], items)
    pap_rows = _persona_rows(paper.stages["reason"], items)
    lines = [*MODE_HEADER]
    lines.append(mode_cost("efficient", eff_status, len(eff_rows)))
    lines.append(mode_cost("paper (reason only)", pap_status, len(pap_rows)))
    judge = judge_cost(paper.summary("align"), pap_status) if "align" in paper.stages else None
    lines += [*(judge[0] if judge else []), "", MODE_NOTE, *(["", judge[1]] if judge else []), ""]

    cfg, p = run.cfg, run.cfg.encoder.profile
    embed = load_embedder(cfg.embed.model, max_length=cfg.embed.max_length)
    prepared = run.stages["prepare"]
    users = persona_check.check_users(prepared, items, embed, p.history, p.gamma)
    if users is None:
        return [*lines, f"No test user's held-out item is one of these {len(items)} items: no ranking check."]
    titles = persona_check.titles(prepared)
    checked = {}
    for label, reasoned, rows in (
        ("efficient", run.stages["reason"], eff_rows),
        ("paper", paper.stages["reason"], pap_rows),
    ):
        summary = {r["item_id"]: r["summary"] for r in pq.read_table(reasoned.table("summaries")).to_pylist()}
        checked[label] = persona_check.rank(users, rows, embed(persona_check.passages(rows, summary, titles)), K)
    ev = cfg.evaluate  # the evaluation's own interval and test settings
    resamples = metrics.bootstrap_indices(len(users.targets), ev.bootstrap, seed)
    lines += [
        f"Ranking check: {len(users.targets)} test users whose held-out item is one of these {len(users.items)} "
        f"items, ranked among them (earlier items left out); chance HR@{K} ≈ {K / len(users.items):.3f}. An item "
        "without personas ranks last.",
        "",
        f"| mode | personas | mean cosine between an item's personas | HR@{K} [{ev.confidence:.0%} CI] "
        f"| NDCG@{K} [{ev.confidence:.0%} CI] |",
        "|---|---|---|---|---|",
    ]
    for label, c in checked.items():
        lo, hi = metrics.bootstrap_ci(c.hits, resamples, ev.confidence)
        nlo, nhi = metrics.bootstrap_ci(c.ndcgs, resamples, ev.confidence)
        lines.append(
            f"| {label} | {c.personas} | {c.within:.3f} | {c.hits.mean():.4f} [{lo:.4f}, {hi:.4f}] "
            f"| {c.ndcgs.mean():.4f} [{nlo:.4f}, {nhi:.4f}] |"
        )
    eff, pap = checked["efficient"], checked["paper"]
    p_hr = metrics.paired_p_value(pap.hits, eff.hits, ev.permutations, seed)
    p_nd = metrics.paired_p_value(pap.ndcgs, eff.ndcgs, ev.permutations, seed)
    lines += ["", f"Paired randomization test, paper vs efficient: HR@{K} p = {p_hr:.3f}, NDCG@{K} p = {p_nd:.3f}."]
    return lines


# ------------------------------------------------------------------------------------------ explanations


def explanations(run: Run, n: int, seed: int, generator: str = "lightgcn") -> list[str]:
    """``n`` test users (held-out item among the candidates) and their top recommendation, unedited."""
    from persona4rec.jobs.evaluate.job import persona_scorers

    ref = run.summary("evaluate").encoder
    found = {"embed": run.stages["embed"], "reason": run.stages["reason"]}
    only = run.cfg.model_copy(update={"evaluate": run.cfg.evaluate.model_copy(update={"rerankers": ["persona"]})})
    scorer = persona_scorers(only, found, ref, progress=False)["persona"]
    prepared = run.stages["prepare"]
    items = {r["item_id"]: r for r in pq.read_table(prepared.table("items"), columns=["item_id", "title"]).to_pylist()}
    reviews = pq.read_table(prepared.table("reviews"), columns=["review_id", "user_id", "item_id", "text", "rating"])
    review = {r["review_id"]: r for r in reviews.to_pylist()}
    inter = pq.read_table(prepared.table("interactions")).sort_by([("user_id", "ascending"), ("position", "ascending")])
    history: dict[str, list[dict[str, Any]]] = {}
    for r in inter.to_pylist():
        history.setdefault(r["user_id"], []).append(r)
    cand = pq.read_table(run.stages["candidates"].table("candidates")).to_pylist()
    lists = [c for c in cand if c["generator"] == generator and c["split"] == "test" and c["target"] in c["items"]]
    rng = np.random.default_rng(seed)
    chosen = [lists[i] for i in sorted(rng.choice(len(lists), size=min(n, len(lists)), replace=False))]

    def title(item: str) -> str:
        return (items.get(item, {}).get("title") or item).replace("|", "/")

    out = [
        f"{len(chosen)} test users drawn at random (seed {seed}) among those whose held-out item is in their "
        f"{generator} candidates; each user's top recommendation after reranking with the `persona` reranker, "
        "with the winning persona exactly as the LLM wrote it. The profile is built from the history before "
        "the held-out item, as in the evaluation.",
        "",
    ]
    indexed = set(scorer.table.item_ids.tolist())
    for k, c in enumerate(chosen, 1):
        user = c["user_id"]
        known = [i for i in c["items"] if i in indexed]
        ranked = rerank(scorer.table, scorer.profiles_test[user], known)
        top = ranked[0]
        e = top.explanation
        target_rank = (
            ranked.item_ids.index(c["target"]) + 1 if c["target"] in ranked.item_ids else "unranked (not indexed)"
        )
        earlier = [h for h in history[user] if h["split"] != "test"][-3:]
        out += [f"### {k}. user `{user}`", "", "Latest earlier reviews:", ""]
        for h in earlier:
            text = review.get(h["review_id"], {}).get("text", "")
            out.append(f"- {title(h['item_id'])} ({h['rating']:.0f}★): “{' '.join(text.split())[:220]}”")
        hit = "**the held-out item**" if top.item_id == c["target"] else "not the held-out item"
        out += [
            "",
            f"Recommended first: **{title(top.item_id)}** (`{top.item_id}`), {hit}; candidate-order position "
            f"{c['items'].index(top.item_id) + 1}, similarity {top.persona_score:.3f}. The held-out item, "
            f"{title(c['target'])}, ranks {target_rank} after reranking (was {c['items'].index(c['target']) + 1}).",
            "",
            *(["> *(the item has no personas: its summary stands in)*", ">"] if e.kind == "summary" else []),
            f"> **{e.name}**: {e.description}",
            ">",
            f"> *Why*: {e.rationale}",
            "",
        ]
    return out


# ------------------------------------------------------------------------------------------ report


def model_label(ref: str) -> str:
    """A model reference as a reader knows it: the folder name of a local copy (not its ``hf`` subfolder)."""
    parts = [p for p in Path(ref).parts if p not in ("hf", "/")]
    return parts[-1] if parts else ref


def speed(run: Run, gpu: dict[str, Any] | None = None) -> list[str]:
    """Online latency table; ``gpu`` (``benchmarks/llm_gpu.py --json``) adds the listwise request timed on a GPU."""
    lat = run.summary("evaluate").latency_ms
    llm, persona = lat.get("llm_listwise"), lat.get("persona")
    if not llm or not persona:
        return ["No listwise LLM latency was measured (the `llm_listwise` reranker was not run)."]
    ratio = llm["p50"] / persona["p50"]
    model = run.summary("evaluate").llm.get("model", "?")
    lines = [
        "| reranker | requests | p50 ms | p95 ms |",
        "|---|---|---|---|",
        f"| persona (in-memory rerank of {run.cfg.candidates.top_n} candidates) | {persona['requests']} "
        f"| {persona['p50']:.3f} | {persona['p95']:.3f} |",
        f"| zero-shot listwise LLM (`{model_label(model)}`, same CPU) | {llm['requests']} "
        f"| {llm['p50']:,.0f} | {llm['p95']:,.0f} |",
    ]
    notes = [f"Ratio of medians: **{ratio:,.0f}×** on the same CPU (paper: {PAPER_SPEEDUP})."]
    listwise = next((r for r in (gpu or {}).get("rows", []) if r["workload"] == "listwise request"), None)
    if listwise:
        ms = 1000 * listwise["seconds"]
        lines.append(
            f"| the same request's token shape on one {gpu['meta']['device']} ({listwise['prompt']} prompt + "
            f"{listwise['new']} generated tokens; `benchmarks/llm_gpu.py`) | {len(listwise['all_seconds'])} "
            f"| {ms:,.0f} | {1000 * max(listwise['all_seconds']):,.0f} (max) |"
        )
        notes.append(
            f"Against the GPU figure the ratio is **{ms / persona['p50']:,.0f}×**: the LLM on a GPU, the persona "
            "rerank on this CPU. That figure is the model's architecture with random weights under Hugging Face "
            "`generate` (the weights cannot reach the lent GPU machine), an upper bound on what vLLM would take."
        )
    return [*lines, "", *notes]


def gpu_reason_cost(gpu: dict[str, Any], items: int) -> list[str]:
    """What the reason stage's token shape costs on the GPU that ``benchmarks/llm_gpu.py`` timed."""
    rows = [r for r in gpu.get("rows", []) if r["workload"] == "reason batch"]
    if not rows:
        return []
    best = max(rows, key=lambda r: r["items_per_s"])
    per_batch = ", ".join(f"{r['batch']}: {r['items_per_s']:.2f}" for r in rows)
    return [
        f"On one {gpu['meta']['device']} the efficient mode's token shape ({best['prompt']} prompt + {best['new']} "
        f"generated tokens per item) ran at {per_batch} items/s by batch size (`benchmarks/llm_gpu.py`: random "
        f"weights of the same architecture, Hugging Face `generate`), so the {items} items would take about "
        f"{items / best['items_per_s'] / 60:.1f} minutes at batch {best['batch']}, retries aside.",
    ]


def _paper_run(args: argparse.Namespace) -> Run:
    """The paper-mode reasoning over the first ``--paper-items`` items, under ``--paper-artifacts``."""
    seeds = f"[{args.paper_seed_cache}]" if args.paper_seed_cache else "[]"
    overrides = [*args.overrides, f"paths.artifacts={args.paper_artifacts}", "reason.mode=paper",
                 f"reason.limit_items={args.paper_items}", f"reason.seed_caches={seeds}"]  # fmt: skip
    overrides.append(f"align.limit_interactions={args.paper_judged}")
    pcfg = load_config(overrides, experiment=args.config, dataset=args.dataset).config
    return locate_run(pcfg, ("prepare", "reason", "align"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The run's configuration is given exactly as to `p4r run` (dataset, experiment, KEY=VALUE).",
    )  # fmt: skip
    ap.add_argument("-d", "--dataset", required=True, help="dataset layer, as for p4r")
    ap.add_argument("-c", "--config", help="experiment file, as for p4r")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE overrides, as for p4r")
    ap.add_argument("--paper-artifacts", help="paths.artifacts of the paper-mode run over the first --paper-items")
    ap.add_argument("--paper-items", type=int, default=96, help="reason.limit_items of that run (default %(default)s)")
    ap.add_argument("--paper-judged", type=int, default=64,
                    help="align.limit_interactions of that run: the judge's sample (default %(default)s)")  # fmt: skip
    ap.add_argument("--paper-seed-cache", help="reason.seed_caches of that run (its committed answers), if any")
    ap.add_argument("--explanations", type=int, default=10, help="users shown with their explanation (default 10)")
    ap.add_argument(
        "--modes-only", action="store_true",
        help="write only modes.md, the efficient/paper comparison, from the two reason stages run with "
        "reason.limit_items=--paper-items (before the whole catalogue is reasoned)",
    )  # fmt: skip
    ap.add_argument("--gpu-llm", type=Path, help="benchmarks/llm_gpu.py --json output: GPU rows for cost and speed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, type=Path, help="folder for report.md, evaluation.md, plots/")
    args = ap.parse_args(argv)

    cfg = load_config(args.overrides, experiment=args.config, dataset=args.dataset).config
    out: Path = args.out
    if args.modes_only:
        if not args.paper_artifacts:
            ap.error("--modes-only compares with the paper-mode run: give --paper-artifacts")
        subset = load_config([*args.overrides, f"reason.limit_items={args.paper_items}"], experiment=args.config,
                             dataset=args.dataset).config  # fmt: skip
        run, paper = locate_run(subset, ("prepare", "reason")), _paper_run(args)
        out.mkdir(parents=True, exist_ok=True)
        items = {s["item_id"] for s in _status(paper.stages["reason"])}
        lines = [f"# Efficient vs paper mode on the first {len(items)} items", "", *compare_modes(run, paper, items)]
        (out / "modes.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print("\n".join(lines))
        return
    run = locate_run(cfg)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    ev = run.stages["evaluate"]
    shutil.copyfile(ev.folder / "report.md", out / "evaluation.md")
    for png in sorted((ev.folder / "plots").glob("*.png")):
        shutil.copyfile(png, out / "plots" / png.name)

    qlines, qtable = quality(run)
    plot_gains(qtable, out / "plots" / "gains_vs_paper.png")
    reason = run.summary("reason")
    status = _status(run.stages["reason"])
    cost = [*MODE_HEADER, mode_cost(f"{cfg.reason.mode} (whole catalogue)", status, reason.personas), "", MODE_NOTE]
    gpu = json.loads(args.gpu_llm.read_text()) if args.gpu_llm else None
    if gpu:
        cost += ["", *gpu_reason_cost(gpu, len(status))]
    report = [
        f"# Headline: Persona4Rec on `{cfg.dataset}` with `{model_label(cfg.llm.model)}` personas",
        "",
        "Reproduce (from the repository root):",
        "",
        "```bash",
        "p4r run -d " + args.dataset + (f" -c {args.config}" if args.config else "") + " " + " ".join(args.overrides),
        "python benchmarks/headline.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "```",
        "",
        f"## Quality @{K} (test users; `*`: p < {cfg.evaluate.alpha} against the candidate order)",
        "",
        *qlines,
        "",
        "![gains](plots/gains_vs_paper.png)",
        "",
        "Every metric at 5/10/20, the warm/cold/head/tail segments and the LLM-listwise sample are in "
        "[evaluation.md](evaluation.md).",
        "",
        "## Cost",
        "",
        *cost,
        "",
        *stage_costs(run),
        "",
        "## Speed: online rerank against the zero-shot LLM reranker",
        "",
        *speed(run, gpu),
        "",
    ]
    if args.paper_artifacts:
        paper = _paper_run(args)
        subset = {s["item_id"] for s in _status(paper.stages["reason"])}
        report += [f"## Efficient vs paper mode on the first {len(subset)} items", ""]
        report += compare_modes(run, paper, subset, args.seed)
        report.append("")
    report += ["## Explanations", "", "See [explanations.md](explanations.md).", ""]
    (out / "report.md").write_text("\n".join(report), encoding="utf-8")
    expl = explanations(run, args.explanations, args.seed)
    (out / "explanations.md").write_text("# Explanations, unedited\n\n" + "\n".join(expl), encoding="utf-8")
    print("\n".join(qlines))
    print(f"\nwrote {out / 'report.md'}, {out / 'explanations.md'}, {out / 'evaluation.md'}")


if __name__ == "__main__":
    main()

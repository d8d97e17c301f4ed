"""What each step of the method buys over a first stage: the ablation table of the headline (issue #24).

    python benchmarks/ablation.py -d amazon2014-musical-instruments \\
        -c conf/experiments/headline-musical-instruments.yaml \\
        data.local_dir=../shared/data/amazon2014_musical_instruments_5core paths.artifacts=/work/runs/headline \\
        --out benchmarks/headline-musical-instruments

Reads a finished ``p4r run`` of the same configuration (prepare, reason, align, embed, candidates), then
trains one encoder per variant through the real ``train`` stage (registered in MLflow, reused when
already trained) and evaluates each through the real ``evaluate`` stage with that version
(``index.encoder_version``; the zero-shot LLM baseline left out), over every first stage. Prints, and
writes to ``--out/ablation.md``: HR@10 and NDCG@10 with 95% intervals and paired tests against the
candidate order for the candidate order, popularity, the untuned encoder, each training variant, linear
fusion and the learned reranker (with and without persona features); user and item segments; paired
tests between steps (from the per-user ranks, ``eval_ranks``); and the minimum detectable effect of a
paired test at this number of test users.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from persona4rec import jobs
from persona4rec.config import Config, load_config
from persona4rec.evaluation import metrics as M
from persona4rec.jobs.train.stage import TrainSummary
from persona4rec.ranking import metrics_at

GENERATORS = ("bpr", "lightgcn")
K = 10
Z_ALPHA, Z_POWER = 1.959964, 0.841621  # two-sided 5%, 80% power


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    overrides: tuple[str, ...]


#: Training variants, in the order the table shows them; ``DEFAULT`` is what conf/defaults.yaml trains.
VARIANTS = (
    Variant("persona_labels", "persona-level labels (evidence), selected on catalogue HR@10 (before #24)",
            ("encoder.objective.target=persona", "train.metric=hr@10")),
    Variant("item", "item-level InfoNCE, in-batch negatives",
            ("encoder.objective.target=item", "encoder.objective.negatives=batch",
             "encoder.objective.aggregation=max")),
    Variant("item_hard", "item-level, in-batch + 10 first-stage (LightGCN) hard negatives",
            ("encoder.objective.target=item", "encoder.objective.negatives=batch", "encoder.objective.aggregation=max",
             "encoder.objective.hard_negatives=10")),
    Variant("item_catalogue", "item-level, whole-catalogue negatives",
            ("encoder.objective.target=item", "encoder.objective.negatives=catalogue",
             "encoder.objective.aggregation=max")),
    Variant("item_prior", "item-level, whole catalogue + popularity prior (logit adjustment)",
            ("encoder.objective.target=item", "encoder.objective.negatives=catalogue",
             "encoder.objective.aggregation=max", "encoder.objective.popularity_prior=true")),
    Variant("item_catalogue_lse", "item-level, whole catalogue, smooth max (logsumexp) over an item's personas",
            ("encoder.objective.target=item", "encoder.objective.negatives=catalogue",
             "encoder.objective.aggregation=logsumexp")),
)  # fmt: skip
RERANKERS = (
    "first_stage", "popularity", "persona_vanilla", "persona", "persona_fused", "learned", "learned_no_persona",
)  # fmt: skip
EVAL = ("evaluate.listwise.users=0", "evaluate.log_to_mlflow=false", f"evaluate.rerankers=[{','.join(RERANKERS)}]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("-c", "--config", dest="experiment")
    ap.add_argument("--out", type=Path, help="folder for ablation.md (printed only when absent)")
    ap.add_argument("--default", default=None, help="the variant whose fusion and learned rows are shown "
                    "(default: the one conf/defaults.yaml trains)")  # fmt: skip
    ap.add_argument("--only", nargs="*", help="variant keys to run (default: all)")
    ap.add_argument("overrides", nargs="*", help="key=value, as for p4r")
    args = ap.parse_args(argv)

    base = _config(args, ())
    results = {}
    for v in VARIANTS:
        if args.only and v.key not in args.only:
            continue
        trained = jobs.run("train", _config(args, v.overrides), progress=True)
        version = trained.summary.mlflow["version"]
        ev_cfg = _config(args, (*v.overrides, f"index.encoder_version={version}", *EVAL))
        evaluated = jobs.run("evaluate", ev_cfg, progress=True)
        results[v.key] = _Result(v, trained.summary, evaluated)
        print(f"ablation: {v.key}: encoder version {version}, {evaluated.folder}", flush=True)
    default = args.default or _default_key(base)
    text = report(results, default, base)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ablation.md").write_text(text, encoding="utf-8")
    return 0


def _config(args, overrides: tuple[str, ...]) -> Config:
    return load_config([*args.overrides, *overrides], experiment=args.experiment, dataset=args.dataset).config


def _default_key(cfg: Config) -> str:
    o = cfg.encoder.objective
    if o.target == "persona":
        return "persona_labels"
    if o.negatives == "catalogue":
        if o.popularity_prior:
            return "item_prior"
        return "item_catalogue_lse" if o.aggregation == "logsumexp" else "item_catalogue"
    return "item_hard" if o.hard_negatives else "item"


@dataclass
class _Result:
    variant: Variant
    train: TrainSummary
    evaluated: Any

    @property
    def rows(self) -> list[dict[str, Any]]:
        return pq.read_table(self.evaluated.table("eval_metrics")).to_pylist()

    def ranks(self, gen: str, reranker: str) -> np.ndarray:
        t = pq.read_table(self.evaluated.table("eval_ranks")).to_pandas()
        t = t[(t.generator == gen) & (t.reranker == reranker)].sort_values("user_id")
        return t["rank"].to_numpy()


def _row(rows, gen, reranker, metric, segment="all"):
    return next((r for r in rows if (r["generator"], r["reranker"], r["metric"], r["segment"]) ==
                 (gen, reranker, metric, segment)), None)  # fmt: skip


def _cell(r, base) -> list[str]:
    if r is None or r["value"] is None:
        return ["n/a", ""]
    star = "\\*" if r["p_value"] is not None and r["p_value"] < 0.05 else ""
    gain = "" if base is None or r is base or not base["value"] else f"{r['value'] / base['value'] - 1:+.1%}"
    p = "" if r["p_value"] is None else f"p = {r['p_value']:.3f}"
    return [f"{r['value']:.4f}{star} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]", " ".join(x for x in (gain, p) if x)]


def _paired(a: np.ndarray, b: np.ndarray, cfg: Config) -> tuple[float, float]:
    """Mean NDCG@10 difference of a over b on the same users, and its paired randomization p."""
    va, vb = metrics_at(a, [K])[f"ndcg@{K}"], metrics_at(b, [K])[f"ndcg@{K}"]
    return float(va.mean() - vb.mean()), M.paired_p_value(va, vb, cfg.evaluate.permutations, cfg.evaluate.seed)


def report(results: dict[str, _Result], default: str, cfg: Config) -> str:
    if default not in results:
        default = next(iter(results))
    d = results[default]
    lines = [
        "# Ablation over the first stages (issue #24)", "",
        "Reproduce: `python benchmarks/ablation.py " + " ".join(sys.argv[1:]) + "`", "",
        "HR@10 and NDCG@10 over every test user (a user whose item the first stage missed scores 0), 95% bootstrap "
        "intervals, and in the second column of each the change against the candidate order and the paired "
        "randomization test against it (`*`: p < 0.05). Each training variant is its own encoder version, "
        "trained by `p4r train` and evaluated by `p4r evaluate` on the same lists. "
        f"Fusion and the learned reranker are shown for the default variant (`{default}`).", "",
    ]  # fmt: skip
    for gen in GENERATORS:
        rows_d = d.rows
        base = {m: _row(rows_d, gen, "first_stage", f"{m}@{K}") for m in ("hr", "ndcg")}
        if base["hr"] is None:
            continue
        lines += [f"## {gen}", "", "| reranker | HR@10 [95% CI] | vs candidate order | NDCG@10 [95% CI] | vs candidate "
                  "order |", "|---|---|---|---|---|"]  # fmt: skip
        shown = [("candidate order", rows_d, "first_stage"), ("popularity", rows_d, "popularity"),
                 ("persona score, untuned encoder", rows_d, "persona_vanilla"),
                 *((f"persona score, {r.variant.label}", r.rows, "persona") for r in results.values()),
                 (f"linear fusion ({default})", rows_d, "persona_fused"),
                 (f"learned reranker without persona features ({default})", rows_d, "learned_no_persona"),
                 (f"**learned reranker** ({default})", rows_d, "learned")]  # fmt: skip
        for label, rows, name in shown:
            cells = [c for m in ("hr", "ndcg") for c in _cell(_row(rows, gen, name, f"{m}@{K}"), base[m])]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")

        comparisons = [
            ("fine-tuned (default) vs untuned encoder", d.ranks(gen, "persona"), d.ranks(gen, "persona_vanilla")),
            (
                "learned vs learned without persona features",
                d.ranks(gen, "learned"),
                d.ranks(gen, "learned_no_persona"),
            ),
            ("learned vs linear fusion", d.ranks(gen, "learned"), d.ranks(gen, "persona_fused")),
        ]
        if "persona_labels" in results and default != "persona_labels":
            comparisons.insert(1, (f"{default} vs persona-level labels (persona score)", d.ranks(gen, "persona"),
                                   results["persona_labels"].ranks(gen, "persona")))  # fmt: skip
        lines += ["| paired comparison (NDCG@10) | difference | p |", "|---|---|---|"]
        for label, a, b in comparisons:
            if len(a) and len(a) == len(b):
                diff, p = _paired(a, b, cfg)
                lines.append(f"| {label} | {diff:+.4f} | {p:.3f} |")
        first = d.ranks(gen, "first_stage")
        learned = d.ranks(gen, "learned")
        if len(first) and len(learned) == len(first):
            va, vb = metrics_at(learned, [K])[f"ndcg@{K}"], metrics_at(first, [K])[f"ndcg@{K}"]
            sd = float(np.std(va - vb, ddof=1))
            mde = (Z_ALPHA + Z_POWER) * sd / np.sqrt(len(va))
            hits = int((first > 0).sum())
            lines += ["", f"Minimum detectable effect (paired, 5% two-sided, 80% power) for the learned reranker "
                          f"against the candidate order: {mde:.4f} NDCG@10 = {mde / vb.mean():+.1%} of the "
                          f"candidate order's {vb.mean():.4f}, over {len(va):,} test users of whom {hits:,} have "
                          "their item among the candidates (the only ones any reranker can move)."]  # fmt: skip
        seg = ["all", "warm_users", "cold_users", "head_items", "tail_items"]
        lines += ["", "Segments, NDCG@10 (default variant):", "",
                  "| reranker | " + " | ".join(seg) + " |", "|---" * (len(seg) + 1) + "|"]  # fmt: skip
        for name in ("first_stage", "persona_vanilla", "persona", "persona_fused", "learned_no_persona", "learned"):
            vals = []
            for s in seg:
                r = _row(rows_d, gen, name, f"ndcg@{K}", s)
                vals.append("n/a" if r is None or r["value"] is None else f"{r['value']:.4f}")
            lines.append(f"| {name} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += ["## Training variants", "", "| variant | overrides | encoder version | epochs run | best epoch | "
              "validation list NDCG@10 | chance |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results.values():
        t = r.train
        val = t.validation.get(f"list_ndcg@{K}")
        ch = t.chance.get(f"list_ndcg@{K}")
        lines.append(
            f"| {r.variant.key} | `{' '.join(r.variant.overrides)}` | {t.mlflow['version']} | {t.epochs_run} | "
            f"{t.best_epoch + 1} | {'n/a' if val is None else f'{val:.4f}'} | "
            f"{'n/a' if ch is None else f'{ch:.4f}'} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""The evaluate stage: every reranker on the same first-stage candidates, metrics with intervals, a report.

For each generator's test lists (``p4r candidates``) it ranks the held-out item under each reranker of
``evaluate.rerankers`` and reports HR, MRR and NDCG at ``evaluate.ks`` over all test users (a user whose
item the generator missed scores 0), with bootstrap intervals, a paired randomization test against the
first-stage order, and the warm/cold user and head/tail item segments. Persona rerankers build user
profiles from the interactions before the held-out one (train + valid for test, train for valid) and
score with :class:`~persona4rec.scoring.PersonaTable`, the service's code. The fused variant's weight is
tuned on the validation lists (:func:`~persona4rec.scoring.tune_fusion`). The zero-shot LLM reranker runs
the configured LLM online on a sample of users, one request at a time, and its latency is recorded next
to the persona reranker's. The report (Markdown and PNG plots) is written beside the metrics table and
logged to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona4rec import ranking, schemas
from persona4rec.artifacts import StageResult
from persona4rec.config import Config
from persona4rec.encoder.encode import encode_fn, histories, persona_rows
from persona4rec.encoder.profile import profiles
from persona4rec.errors import StageUnavailable
from persona4rec.evaluation import metrics as M
from persona4rec.evaluation.rerankers import Lists, PersonaScorer, first_stage, popularity
from persona4rec.jobs.evaluate.stage import LEARNED, EvaluateSummary, listwise_llm, needs_personas, runs_listwise
from persona4rec.scoring import PersonaTable, fuse, tune_fusion
from persona4rec.stage import Build
from persona4rec.texts import TEXTS_VERSION

SEGMENTS = ("all", "warm_users", "cold_users", "head_items", "tail_items")
#: The profile of a user for a split's item reads the interactions of these splits.
BEFORE = {"test": ("train", "valid"), "valid": ("train",)}


@dataclass
class Evaluation:
    """What the report is made of."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # EVAL_METRICS rows
    ranks: dict[str, list] = field(default_factory=lambda: {c: [] for c in schemas.EVAL_RANKS.names})
    latency_ms: dict[str, list[float]] = field(default_factory=dict)  # reranker -> per-request times
    fusion: dict[str, dict[str, Any]] = field(default_factory=dict)  # generator -> tuned weight, grid scores
    learned: dict[str, dict[str, Any]] = field(default_factory=dict)  # generator -> reranker -> LearnedReranker
    learned_skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # generator -> reranker -> why
    persona_features: dict[str, dict[str, float]] = field(default_factory=dict)  # generator -> metric -> p, learned
    # against learned_no_persona on the same users
    llm: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)


def build(b: Build, engine: Any) -> EvaluateSummary:
    cfg, found, timer, progress = b.cfg, b.inputs, b.timer, b.progress
    ref = b.manifest.stage_config["encoder"]
    ev = Evaluation()
    with timer("load"):
        cand = pq.read_table(found["candidates"].table("candidates"))
        inter = pq.read_table(
            found["prepare"].table("interactions"), columns=["user_id", "item_id", "split", "position", "rating"]
        )
    made = sorted(set(cand["generator"].to_pylist()), key=cfg.candidates.generators.index)
    generators = cfg.evaluate.generators or made
    missing = [g for g in generators if g not in made]
    if missing:
        raise StageUnavailable(f"evaluate.generators {missing}: `p4r candidates` made only {made}")
    llm_gen = cfg.evaluate.listwise.generator or generators[-1]
    if runs_listwise(cfg) and llm_gen not in generators:
        raise StageUnavailable(f"evaluate.listwise.generator {llm_gen!r} is not among the evaluated {generators}")
    user_count, item_count, train_pop = _counts(inter)
    known = _known(inter)

    scorers: dict[str, _Scorer] = {}
    if needs_personas(cfg):
        with timer("personas"):
            scorers = persona_scorers(cfg, found, ref, progress)

    rng_seed = cfg.evaluate.seed
    for gen in generators:
        with timer(f"rerank_{gen}"):
            test = _lists(cand, gen, "test")
            valid = _lists(cand, gen, "valid")
            scored: dict[str, np.ndarray] = {}
            persona_test = None  # the persona scores of the test lists, shared by persona and persona_fused
            if "persona" in scorers:
                s = scorers["persona"]
                persona_test = PersonaScorer(s.table, s.profiles_test).persona_scores(test)
            for name in cfg.evaluate.rerankers:
                if name == "first_stage":
                    scored[name] = first_stage(test)
                elif name == "popularity":
                    scored[name] = popularity(test, train_pop)
                elif name == "persona_fused":
                    scorer = scorers["persona"]
                    weight, grid = _tune(scorer, valid, cfg)
                    ev.fusion[gen] = {"weight": weight, "valid_ndcg@10": grid}
                    scored[name] = fuse(persona_test, np.where(test.valid, test.first_stage, -np.inf), weight)
                elif name == "persona":
                    scored[name] = persona_test
                elif name in LEARNED:
                    try:
                        model = _fit_learned(name, gen, scorers["persona"], valid, known, cfg, progress)
                    except StageUnavailable as exc:  # too few validation lists to learn from: said, not fatal
                        ev.learned_skipped.setdefault(gen, {})[name] = str(exc)
                        continue
                    ev.learned.setdefault(gen, {})[name] = model
                    scored[name] = model.score(_learned_features(scorers["persona"], test, "test", known))
                elif name in scorers:
                    s = scorers[name]
                    scored[name] = PersonaScorer(s.table, s.profiles_test)(test)
            ranks = {name: ranking.target_ranks(s, test.target_col, test.tie_break) for name, s in scored.items()}
            if set(LEARNED) <= set(ranks):  # what the persona features add to the same learned reranker
                with_p, without = (ranking.metrics_at(ranks[n], [10]) for n in LEARNED)
                ev.persona_features[gen] = {
                    m: M.paired_p_value(with_p[m], without[m], cfg.evaluate.permutations, rng_seed)
                    for m in ("hr@10", "ndcg@10")
                }
            for name, r in ranks.items():
                ev.ranks["generator"] += [gen] * len(r)
                ev.ranks["reranker"] += [name] * len(r)
                ev.ranks["user_id"] += list(test.user_ids)
                ev.ranks["rank"] += r.tolist()
            masks = _segment_masks(test, user_count, item_count, cfg.evaluate.segment_share)
            ev.rows += metric_rows(gen, ranks, masks, cfg, rng_seed)
            ev.counts[gen] = {
                "test_users": len(test.user_ids),
                "target_in_candidates": int((test.target_col >= 0).sum()),
                "segments": {k: int(v.sum()) for k, v in masks.items()},
            }
    if runs_listwise(cfg):
        with timer("llm_listwise"):
            ev.rows += llm_rows(cfg, found, llm_gen, _lists(cand, llm_gen, "test"), scorers, train_pop, known, ev,
                                engine, progress)  # fmt: skip
    if "persona" in scorers:
        s = scorers["persona"]
        ev.latency_ms["persona"] = PersonaScorer(s.table, s.profiles_test).latency_ms(
            _lists(cand, llm_gen, "test"), cfg.evaluate.latency_users, rng_seed
        )

    b.add_table(pa.Table.from_pylist(ev.rows, schema=schemas.EVAL_METRICS.arrow()), schemas.EVAL_METRICS)
    b.add_table(pa.Table.from_pydict(ev.ranks, schema=schemas.EVAL_RANKS.arrow()), schemas.EVAL_RANKS)
    for gen, models in ev.learned.items():
        for name, model in models.items():
            model.save(b.folder / "rerankers" / gen / name)
    from persona4rec.evaluation.report import write_report

    with timer("report"):
        write_report(b.folder, ev, cfg, b.manifest, found)
    return EvaluateSummary(
        generators=ev.counts,
        fusion=ev.fusion,
        llm=ev.llm,
        encoder=ref,
        latency_ms={k: _summary(v) for k, v in ev.latency_ms.items()},
        learned={g: {n: _learned_summary(m) for n, m in ms.items()} for g, ms in ev.learned.items()},
        learned_skipped=ev.learned_skipped,
        persona_features_p=ev.persona_features,
    )


def log(cfg: Config, result: StageResult) -> None:
    """The evaluation into MLflow (evaluate.log_to_mlflow), and each generator's learned reranker into the
    encoder version's run: what the service loads with that encoder."""
    s: EvaluateSummary = result.summary
    if not (cfg.evaluate.log_to_mlflow or s.learned):
        return
    from persona4rec.infra import mlflow as registry

    if cfg.evaluate.log_to_mlflow:
        rows = pq.read_table(result.table("eval_metrics")).to_pylist()
        registry.log_evaluation(cfg, result.folder, rows, result.manifest)
    for gen, models in s.learned.items():
        if "learned" in models and s.encoder is not None:
            path = result.folder / "rerankers" / gen / "learned"
            registry.log_reranker(cfg, s.encoder["version"], path, gen, result.manifest.fingerprint)


def headline(cfg: Config, result: StageResult) -> list[str]:
    """NDCG@10 of every reranker per generator with its interval (* significant against the first stage),
    and the latency of one request."""
    rows = [r for r in pq.read_table(result.table("eval_metrics")).to_pylist() if r["segment"] == "all"]
    out = [f"  report {result.folder / 'report.md'}, plots in {result.folder / 'plots'}"]
    for gen in dict.fromkeys(r["generator"] for r in rows):
        out.append(f"  {gen}:")
        for r in rows:
            if r["generator"] == gen and r["metric"] == "ndcg@10" and r["value"] is not None:
                star = "*" if r["p_value"] is not None and r["p_value"] < cfg.evaluate.alpha else " "
                out.append(
                    f"    {r['reranker']:<16} NDCG@10 {r['value']:.4f}{star} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
                )
    lat = result.summary.latency_ms
    if lat:
        out.append("  latency p50: " + ", ".join(f"{k} {v['p50']:.3g} ms" for k, v in lat.items() if v))
    return out


# ------------------------------------------------------------------------------------------- inputs


def _counts(inter: pa.Table) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Reviews per user and per item (all splits: the paper's segment counts) and training popularity."""

    def count(column: pa.ChunkedArray) -> dict[str, int]:
        vc = pc.value_counts(column)
        return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))

    train = inter.filter(pc.equal(inter["split"], "train"))
    return count(inter["user_id"]), count(inter["item_id"]), count(train["item_id"])


@dataclass(frozen=True)
class _Known:
    """Interactions known when a split's lists are scored: before 'valid' (train) and before 'test' (+ valid)."""

    item: dict[str, dict[str, int]]  # split -> item -> count
    user: dict[str, dict[str, int]]  # split -> user -> count


def _known(inter: pa.Table) -> _Known:
    item: dict[str, dict[str, int]] = {"valid": {}, "test": {}}
    user: dict[str, dict[str, int]] = {"valid": {}, "test": {}}
    for u, i, s in zip(*(inter[c].to_pylist() for c in ("user_id", "item_id", "split")), strict=True):
        for split, before in (("valid", ("train",)), ("test", ("train", "valid"))):
            if s in before:
                item[split][i] = item[split].get(i, 0) + 1
                user[split][u] = user[split].get(u, 0) + 1
    return _Known(item, user)


def _learned_features(scorer: _Scorer, lists: Lists, split: str, known: _Known) -> np.ndarray:
    """The learned reranker's features of ``lists`` (profiles and counts as known before ``split``'s item)."""
    from persona4rec.learned import features

    profiles_ = scorer.profiles_valid if split == "valid" else scorer.profiles_test
    stats = PersonaScorer(scorer.table, profiles_).persona_stats(lists)
    get = known.item[split].get
    pop = np.array([[get(i, 0) for i in row] for row in lists.items], dtype=np.float64).reshape(lists.items.shape)
    history = np.array([known.user[split].get(u, 0) for u in lists.user_ids], dtype=np.float64)
    return features(stats, np.where(lists.valid, lists.first_stage, -np.inf), pop, history)


def _fit_learned(name: str, gen: str, scorer: _Scorer, valid: Lists, known: _Known, cfg: Config, progress: bool):
    """LambdaRank on the validation lists of users whose item was generated (persona4rec.learned)."""
    from persona4rec.learned import FEATURES, PERSONA_FEATURES, fit

    hit = np.flatnonzero(valid.target_col >= 0)
    hit = hit[[u in scorer.profiles_valid for u in valid.user_ids[hit]]] if len(hit) else hit
    sub = valid.take(hit)
    names = FEATURES if name == "learned" else tuple(f for f in FEATURES if f not in PERSONA_FEATURES)
    g = cfg.evaluate.learned
    return fit(_learned_features(scorer, sub, "valid", known), sub.target_col, names=names, folds=g.folds,
               base=[tuple(b) for b in g.base], leaves=g.leaves, min_leaf=g.min_leaf, rounds=g.rounds,
               learning_rate=g.learning_rate, seed=cfg.evaluate.seed, generator=gen,
               progress=f"evaluate: {gen} {name}" if progress else None)  # fmt: skip


def _learned_summary(model) -> dict[str, Any]:
    best = max(model.cv.values()) if model.cv else None
    return {"features": list(model.features), "rounds": model.rounds, "base": list(model.base),
            "num_leaves": model.params["num_leaves"],
            "min_data_in_leaf": model.params["min_data_in_leaf"], "validation_lists": model.groups,
            "cv_ndcg@10": best}  # fmt: skip


def _lists(cand: pa.Table, generator: str, split: str) -> Lists:
    sub = cand.filter(pc.and_(pc.equal(cand["generator"], generator), pc.equal(cand["split"], split)))
    sub = sub.sort_by("user_id")
    return Lists.build(
        sub["user_id"].to_pylist(), sub["items"].to_pylist(), sub["scores"].to_pylist(), sub["target"].to_pylist()
    )


def _segment_masks(test: Lists, users: dict[str, int], items: dict[str, int], share: float) -> dict[str, np.ndarray]:
    u = np.array([users.get(x, 0) for x in test.user_ids])
    i = np.array([items.get(x, 0) for x in test.target])
    cold, warm = M.segments(u, share)
    tail, head = M.segments(i, share)
    return {"all": np.ones(len(u), bool), "warm_users": warm, "cold_users": cold, "head_items": head,
            "tail_items": tail}  # fmt: skip


@dataclass
class _Scorer:
    table: PersonaTable
    profiles_test: dict[str, np.ndarray]
    profiles_valid: dict[str, np.ndarray]


def persona_scorers(cfg: Config, found: dict[str, StageResult], ref, progress: bool) -> dict[str, _Scorer]:
    """Persona tables and user profiles (before test, before valid) for each persona reranker asked for."""
    from persona4rec.encoder.model import Encoder

    embedded, reasoned = found["embed"], found["reason"]
    inter = pq.read_table(embedded.table("interaction_vectors")).sort_by(
        [("user_id", "ascending"), ("position", "ascending")]
    )
    rows, persona_base = persona_rows(embedded, reasoned)
    items = pq.read_table(embedded.table("item_vectors"))
    wanted = set(cfg.evaluate.rerankers)
    encoders = {}
    if "persona_vanilla" in wanted:
        dim = persona_base.shape[1]
        p = cfg.encoder.profile
        encoders["persona_vanilla"] = Encoder.vanilla(
            cfg.embed.model, dim=dim, max_length=cfg.embed.max_length, history=p.history, gamma=p.gamma,
            texts_version=TEXTS_VERSION,
        )  # fmt: skip
    if wanted & {"persona", "persona_fused", "summary", *LEARNED}:
        from persona4rec.infra import mlflow as registry

        tuned = registry.load_encoder(cfg, ref["version"])
        encoders["persona"] = tuned
        if "summary" in wanted:
            encoders["summary"] = tuned

    width = cfg.encoder.profile.history
    history = {split: histories(inter, before, width)[:3] for split, before in BEFORE.items()}
    inter_texts = inter["text"].to_pylist()
    inter_base = schemas.arrow_to_vectors(inter["vector"])
    out: dict[str, _Scorer] = {}
    for name, enc in encoders.items():
        if name == "summary":
            texts = items["text"].to_pylist()
            encode = encode_fn(cfg, enc, texts, schemas.arrow_to_vectors(items["vector"]), progress,
                                "evaluate: summaries")  # fmt: skip
            ids = items["item_id"].to_pylist()
            table = PersonaTable(
                persona_ids=["s-" + i for i in ids], item_of=ids, vectors=encode(np.arange(len(ids))),
                names=ids, descriptions=texts, rationales=[""] * len(ids), evidence=[[] for _ in ids],
                kinds=["summary"] * len(ids),
            )  # fmt: skip
            base = out.get("persona")
            if base is not None:  # same encoder, same profiles
                out[name] = _Scorer(table, base.profiles_test, base.profiles_valid)
                continue
        else:
            texts = rows["text"].to_pylist()
            encode = encode_fn(cfg, enc, texts, persona_base, progress, f"evaluate: {name} personas")
            table = PersonaTable(
                persona_ids=rows["persona_id"].to_pylist(), item_of=rows["item_id"].to_pylist(),
                vectors=encode(np.arange(len(texts))), names=rows["name"].to_pylist(),
                descriptions=rows["description"].to_pylist(), rationales=rows["rationale"].to_pylist(),
                evidence=rows["evidence"].to_pylist(), kinds=rows["kind"].to_pylist(),
            )  # fmt: skip
        encode_inter = encode_fn(cfg, enc, inter_texts, inter_base, progress, f"evaluate: {name} interactions")
        prof = {}
        for split, (users, hist, lengths) in history.items():
            needed = np.unique(hist[hist >= 0])
            vectors = np.zeros((len(inter_texts), enc.spec.dim), dtype=np.float32)
            if len(needed):
                vectors[needed] = encode_inter(needed)
            vecs = profiles(vectors, hist, lengths, enc.spec.gamma) if len(users) else vectors[:0]
            prof[split] = dict(zip(users, vecs, strict=True))
        out[name] = _Scorer(table, prof["test"], prof["valid"])
    if "persona_fused" in wanted and "persona" not in out:
        raise StageUnavailable("persona_fused needs the persona reranker's encoder")
    return out


def _tune(scorer: _Scorer, valid: Lists, cfg: Config) -> tuple[float, dict[str, float]]:
    """The fusion weight with the best validation NDCG@10 among users whose item was generated."""
    hit = np.flatnonzero(valid.target_col >= 0)
    hit = hit[[u in scorer.profiles_valid for u in valid.user_ids[hit]]] if len(hit) else hit
    if not len(hit):
        return cfg.score.fusion_weight, {}
    sub = valid.take(hit)
    persona = PersonaScorer(scorer.table, scorer.profiles_valid).persona_scores(sub)
    fs = np.where(sub.valid, sub.first_stage, -np.inf)
    weight, grid = tune_fusion(persona, fs, sub.target_col, cfg.score.fusion_grid, k=10)
    return weight, {f"{w:g}": v for w, v in grid.items()}


# ------------------------------------------------------------------------------------------- metrics


def metric_rows(
    generator: str, ranks: dict[str, np.ndarray], masks: dict[str, np.ndarray], cfg: Config, seed: int,
    segment_names: tuple[str, ...] = SEGMENTS,
) -> list[dict[str, Any]]:  # fmt: skip
    """EVAL_METRICS rows for every reranker, segment and metric (paired against first_stage when present)."""
    e = cfg.evaluate
    values = {name: ranking.metrics_at(r, e.ks) for name, r in ranks.items()}
    out = []
    for segment in segment_names:
        mask = masks[segment]
        resamples = M.bootstrap_indices(int(mask.sum()), e.bootstrap, seed)
        for name, per in values.items():
            for metric, v in per.items():
                v = v[mask]
                lo, hi = M.bootstrap_ci(v, resamples, e.confidence)
                p = None
                if name != "first_stage" and "first_stage" in values:
                    p = M.paired_p_value(v, values["first_stage"][metric][mask], e.permutations, seed)
                out.append({"generator": generator, "reranker": name, "segment": segment, "metric": metric,
                            "users": int(mask.sum()), "value": _finite(M.mean(v)), "ci_low": _finite(lo),
                            "ci_high": _finite(hi), "p_value": p})  # fmt: skip
    return out


def _finite(x: float) -> float | None:
    return None if x != x else x


def _summary(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    a = np.asarray(ms)
    return {"requests": len(a), "mean": float(a.mean()), "p50": float(np.median(a)), "p95": float(np.quantile(a, 0.95)),
            "std": float(a.std())}  # fmt: skip


# ------------------------------------------------------------------------------------------- LLM


def llm_rows(cfg, found, generator, test: Lists, scorers, train_pop, known, ev: Evaluation, engine, progress):
    """The listwise LLM on a sample of test users whose item was generated, beside the other rerankers
    on the same users (segment 'llm_sample')."""
    from persona4rec.evaluation.llm_listwise import rerank_users, scores_from
    from persona4rec.reasoning.cache import ResultCache

    e = cfg.evaluate
    pool = np.flatnonzero(test.target_col >= 0)
    rng = np.random.default_rng(e.seed)
    rows = np.sort(rng.choice(pool, min(e.listwise.users, len(pool)), replace=False)) if len(pool) else pool
    sample = test.take(rows)
    texts, history = _llm_inputs(found, sample, e.listwise.history)
    owned = engine is None
    if owned:
        from persona4rec.ray_actors.engines import build_engine

        engine = build_engine(listwise_llm(cfg))
    try:
        cache = ResultCache(cfg.artifacts_root / "evaluate" / "llm_cache")
        candidates = {u: [i for i in its if i] for u, its in zip(sample.user_ids, sample.items, strict=True)}
        res = rerank_users(
            engine, list(sample.user_ids), history, candidates, texts, cache,
            max_tokens=e.listwise.max_tokens, max_attempts=e.listwise.max_attempts, progress=progress,
        )  # fmt: skip
    finally:
        if owned:
            engine.close()
    width = sample.items.shape[1]
    scored = {"first_stage": first_stage(sample)}
    if "popularity" in e.rerankers:
        scored["popularity"] = popularity(sample, train_pop)
    for name, s in scorers.items():
        if name in e.rerankers:
            scored[name] = PersonaScorer(s.table, s.profiles_test)(sample)
    if "persona_fused" in e.rerankers:
        weight = ev.fusion.get(generator, {}).get("weight", cfg.score.fusion_weight)
        scored["persona_fused"] = PersonaScorer(scorers["persona"].table, scorers["persona"].profiles_test, weight)(
            sample
        )
    for name, model in ev.learned.get(generator, {}).items():
        scored[name] = model.score(_learned_features(scorers["persona"], sample, "test", known))
    scored["llm_listwise"] = np.stack([scores_from(res.ranking[u], width) for u in sample.user_ids]) if len(rows) else \
        np.zeros((0, width), np.float32)  # fmt: skip
    ranks = {n: ranking.target_ranks(s, sample.target_col, sample.tie_break) for n, s in scored.items()}
    ev.latency_ms["llm_listwise"] = [res.latency_ms[u] for u in sample.user_ids]
    ev.llm = {"generator": generator, "users": len(rows), "model": engine.model_id, "engine": engine.name,
              **res.counts, "failures": res.failures, "tokens": res.tokens}  # fmt: skip
    mask = {"llm_sample": np.ones(len(rows), bool)}
    return metric_rows(generator, ranks, mask, cfg, e.seed, ("llm_sample",))


def _llm_inputs(found, sample: Lists, width: int):
    """Item texts (summary, else title, else id) and each sampled user's latest items with ratings."""
    prepared = found["prepare"]
    items = pq.read_table(prepared.table("items"), columns=["item_id", "title"])
    titles = dict(zip(items["item_id"].to_pylist(), items["title"].to_pylist(), strict=True))
    summaries: dict[str, str] = {}
    if "reason" in found:
        s = pq.read_table(found["reason"].table("summaries"), columns=["item_id", "summary"])
        summaries = dict(zip(s["item_id"].to_pylist(), s["summary"].to_pylist(), strict=True))
    from persona4rec.texts import item_text

    inter = pq.read_table(prepared.table("interactions"), columns=["user_id", "item_id", "split", "position", "rating"])
    wanted = set(sample.user_ids)
    inter = inter.filter(pc.is_in(inter["user_id"], pa.array(sorted(wanted)))).sort_by(
        [("user_id", "ascending"), ("position", "ascending")]
    )
    history: dict[str, list[tuple[str, float]]] = {u: [] for u in wanted}
    for u, i, s, r in zip(*(inter[c].to_pylist() for c in ("user_id", "item_id", "split", "rating")), strict=True):
        if s != "test":
            history[u].append((i, r))
    history = {u: ranking.window(h, width) for u, h in history.items()}
    needed = {i for h in history.values() for i, _ in h} | {i for row in sample.items for i in row if i}
    texts = {i: item_text(i, summaries.get(i), titles.get(i)) for i in needed}
    return texts, history

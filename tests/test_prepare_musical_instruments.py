"""`prepare` on the real Amazon 2014 Musical Instruments 5-core file, on real Spark."""

from __future__ import annotations

import pandas as pd
import pytest

from persona4rec import jobs, schemas
from persona4rec.artifacts import StageStore
from persona4rec.config import load_config
from persona4rec.jobs.prepare import job
from tests.conftest import MUSICAL_INSTRUMENTS

DATASET = "amazon2014-musical-instruments"


def _config(root, *overrides):
    return load_config(
        [f"paths.artifacts={root}", f"data.local_dir={MUSICAL_INSTRUMENTS}", *overrides], dataset=DATASET
    ).config


@pytest.fixture(scope="module")
def prepared(prepared_mi):
    cfg, result = prepared_mi
    tables = {t.name: pd.read_parquet(result.folder / t.name) for t in job.TABLES}
    return cfg, result, tables


def test_counts_after_five_core(prepared):
    _, result, t = prepared
    assert not result.skipped
    assert len(t["reviews"]) == 10_261
    assert t["reviews"].user_id.nunique() == 1_429
    assert t["reviews"].item_id.nunique() == 900
    assert len(t["items"]) == 900
    assert len(t["quarantine"]) == 0
    counts = result.summary
    assert counts.input_lines == 10_261
    assert counts.empty_text_reviews == 7 == int(t["reviews"].empty_text.sum())
    assert counts.k_core["passes"] == 1  # the file is already 5-core


def test_every_table_matches_its_contract(prepared):
    _, result, t = prepared
    for table in job.TABLES:
        assert schemas.validate_parquet(result.folder / table.name, table) == len(t[table.name])
        assert list(t[table.name].columns) == table.names
        assert not t[table.name].duplicated(subset=list(table.key)).any(), table.name


def test_exactly_one_test_and_one_valid_per_user_and_they_are_last(prepared):
    _, _, t = prepared
    inter = t["interactions"]
    per_user = inter.groupby("user_id").split.value_counts().unstack(fill_value=0)
    assert (per_user["test"] == 1).all() and (per_user["valid"] == 1).all()
    assert (per_user["train"] >= 3).all()
    last = inter.sort_values(["user_id", "timestamp", "review_id"]).groupby("user_id").tail(2)
    assert set(last.split) == {"valid", "test"}
    test_rows = inter[inter.split == "test"].set_index("user_id")
    valid_rows = inter[inter.split == "valid"].set_index("user_id")
    assert (test_rows.timestamp >= valid_rows.timestamp.loc[test_rows.index]).all()
    assert (inter.groupby("user_id").timestamp.max() == test_rows.timestamp.sort_index()).all()


def test_ties_are_counted(prepared):
    _, result, t = prepared
    ties = result.summary.ties
    assert ties["tie_broken_interactions"] == int(t["interactions"].tie_broken.sum()) > 0
    test = t["interactions"][t["interactions"].split == "test"]
    assert ties["users_test_tie_broken"] == int(test.tie_broken.sum())


def test_no_held_out_review_in_any_sample(prepared):
    cfg, _, t = prepared
    held_out = set(t["interactions"].loc[t["interactions"].split != "train", "review_id"])
    samples = t["review_samples"]
    assert held_out.isdisjoint(samples.review_id)
    assert (samples.text.str.strip().str.len() > 0).all()
    assert samples.groupby("item_id").size().max() <= cfg.prepare.samples.max_per_item
    # every item with training text gets min(cap, available) samples
    items = t["items"].set_index("item_id")
    assert (items.n_samples == items.n_train_reviews.clip(upper=cfg.prepare.samples.max_per_item)).all()


def test_samples_spread_over_ratings(prepared):
    _, _, t = prepared
    samples, reviews = t["review_samples"], t["reviews"]
    # an item whose training reviews carry several ratings gets each of them in its first picks
    train = reviews.merge(t["interactions"][["review_id", "split"]], on="review_id")
    train = train[(train.split == "train") & ~train.empty_text]
    ratings_per_item = train.groupby("item_id").rating.nunique()
    for item in ratings_per_item[ratings_per_item >= 3].index[:50]:
        picked = samples[samples.item_id == item].sort_values("sample_rank")
        k = ratings_per_item[item]
        assert picked.head(k).rating.nunique() == k


def test_rerun_with_same_inputs_does_no_work(prepared, spark):
    cfg, result, _ = prepared
    again = jobs.run("prepare", cfg, spark=spark, progress=False)
    assert again.skipped and again.folder == result.folder
    assert StageStore(cfg.artifacts_root / "prepare").current() == result.folder


def test_deterministic_across_runs(prepared, spark, tmp_path):
    _, _, first = prepared
    cfg = _config(tmp_path)
    second = jobs.run("prepare", cfg, spark=spark, force=True, progress=False)
    for table in job.TABLES:
        a = first[table.name]
        b = pd.read_parquet(second.folder / table.name)
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), obj=table.name)


def test_changed_config_builds_a_new_version(prepared, spark):
    cfg, result, _ = prepared
    smaller = load_config(
        [
            f"paths.artifacts={cfg.paths.artifacts}",
            f"data.local_dir={MUSICAL_INSTRUMENTS}",
            "prepare.samples.max_per_item=3",
        ],
        dataset=DATASET,
    ).config
    new = jobs.run("prepare", smaller, spark=spark, progress=False)
    assert not new.skipped and new.folder != result.folder
    assert new.manifest.tables["review_samples"]["rows"] <= 3 * 900
    assert new.manifest.tables["reviews"]["rows"] == 10_261
    store = StageStore(cfg.artifacts_root / "prepare")
    assert store.current() == new.folder
    assert store.complete(result.manifest.fingerprint) == result.folder  # the old version is kept


def test_crash_mid_stage_publishes_nothing_and_rerun_recovers(prepared, spark, monkeypatch):
    cfg, result, _ = prepared
    crashing = load_config(
        [
            f"paths.artifacts={cfg.paths.artifacts}",
            f"data.local_dir={MUSICAL_INSTRUMENTS}",
            "prepare.samples.max_per_item=5",
        ],
        dataset=DATASET,
    ).config
    store = StageStore(cfg.artifacts_root / "prepare")
    before = store.current()

    def boom(*args, **kwargs):
        raise RuntimeError("worker lost")

    with monkeypatch.context() as m:
        m.setattr(job, "review_samples", boom)
        with pytest.raises(RuntimeError, match="worker lost"):
            jobs.run("prepare", crashing, spark=spark, progress=False)
    assert store.current() == before  # readers still see the last good version
    assert not list(store.root.glob(".tmp-*"))  # nothing half-written left behind
    fresh = jobs.run("prepare", crashing, spark=spark, progress=False)
    assert not fresh.skipped and store.current() == fresh.folder

"""benchmarks/seed_cache.py: a run's answers go into a committed seed folder once, whatever its part files."""

from __future__ import annotations

import pyarrow.parquet as pq

from persona4rec.reasoning.cache import ResultCache
from tests.conftest import benchmark_script

seed_cache = benchmark_script("seed_cache")


def _row(key: str, status: str = "ok") -> dict:
    return {"key": key, "subject": f"item-{key}", "status": status, "payload": "{}" if status == "ok" else None,
            "error": None if status == "ok" else "cut_field: x", "attempts": 1, "calls": 1, "prompt_tokens": 10,
            "completion_tokens": 5, "seconds": 1.5, "model": "m", "engine": "e"}  # fmt: skip


def test_only_new_answers_are_added_once_even_after_the_run_compacts(tmp_path, capsys):
    run, seed = ResultCache(tmp_path / "run"), tmp_path / "seed"
    run.append([_row("a"), _row("b", "failed")])
    seed_cache.main([str(run.folder), str(seed)])
    assert "added 2 answers" in capsys.readouterr().out
    run.append([_row("c")])
    run.compact(min_parts=1)  # the run folds its parts into one new part holding a, b and c again
    assert len(run.parts()) == 1
    assert seed_cache.export(run.folder, seed)[0] == 1
    assert seed_cache.export(run.folder, seed)[0] == 0
    rows = ResultCache(seed).load()
    assert sorted(rows) == ["a", "b", "c"] and rows["b"]["status"] == "failed"
    assert sum(pq.read_metadata(p).num_rows for p in ResultCache(seed).parts()) == 3  # no duplicates on disk


def test_since_leaves_out_older_answers(tmp_path):
    run = ResultCache(tmp_path / "run")
    run.append([{**_row("old"), "created_at": "2026-01-01T00:00:00+00:00"}])
    run.append([{**_row("new"), "created_at": "2026-02-01T00:00:00+00:00"}])
    assert seed_cache.export(run.folder, tmp_path / "seed", since="2026-01-15")[0] == 1
    assert list(ResultCache(tmp_path / "seed").load()) == ["new"]


def test_a_retried_failure_replaces_the_committed_one(tmp_path):
    run, seed = ResultCache(tmp_path / "run"), ResultCache(tmp_path / "seed")
    seed.append([{**_row("a", "failed"), "created_at": "2026-01-01T00:00:00+00:00"}, _row("b")])
    run.append([{**_row("a"), "created_at": "2026-02-01T00:00:00+00:00"}])  # --retry-failed answered it
    run.append([{**_row("b", "failed"), "created_at": "2026-02-01T00:00:00+00:00"}])  # an ok answer stays
    assert seed_cache.export(run.folder, seed.folder)[0] == 1
    rows = seed.load()
    assert rows["a"]["status"] == "ok" and rows["b"]["status"] == "ok"
    assert seed_cache.export(run.folder, seed.folder)[0] == 0

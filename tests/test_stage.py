"""The stage contract and its runner: reuse, crash-publishes-nothing, typed summaries, and the registry."""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from persona4rec import jobs
from persona4rec.artifacts import Manifest
from persona4rec.config import load_config
from persona4rec.errors import StageUnavailable
from persona4rec.schemas import Column, TableSchema
from persona4rec.stage import Build, Runner, Stage, Summary
from tests.conftest import REPO

NUMBERS = TableSchema("numbers", "A toy table.", ("n",), (Column("n", pa.int64(), False, "A number."),))


@dataclass(frozen=True)
class CountSummary(Summary):
    rows: int
    by_parity: dict[str, int]
    note: str | None = None


class Source(Stage):
    """A toy first stage: the numbers 0..prepare.k_core-1 (a config key its output depends on)."""

    name, version, summary = "source", 1, CountSummary

    def __init__(self) -> None:
        self.builds = 0

    def config(self, cfg):
        return {"k": cfg.prepare.k_core}

    def build(self, b: Build, *, fail: bool = False) -> CountSummary:
        self.builds += 1
        with b.timer("numbers"):
            b.add_table(pa.table({"n": pa.array(range(b.cfg.prepare.k_core), pa.int64())}), NUMBERS)
        if fail:
            raise RuntimeError("crashed mid-build")
        k = b.cfg.prepare.k_core
        return CountSummary(k, {"even": (k + 1) // 2, "odd": k // 2})


class Doubled(Stage):
    """A toy second stage that reads the first."""

    name, version, upstream, summary = "doubled", 1, ("source",), CountSummary

    def config(self, cfg):
        return {}

    def build(self, b: Build) -> CountSummary:
        rows = b.inputs["source"].summary.rows
        return CountSummary(rows * 2, {}, note=f"from {b.inputs['source'].folder.name}")


@pytest.fixture
def toy(tmp_path: Path):
    def runner(k: int = 3) -> Runner:
        cfg = load_config([f"paths.artifacts={tmp_path}", f"prepare.k_core={k}"]).config
        return Runner(cfg, registry, progress=False)

    registry = {"source": Source(), "doubled": Doubled()}
    return runner, registry


def test_a_build_is_published_with_its_summary_and_reused_unchanged(toy):
    runner, registry = toy
    first = runner().run("source")
    assert not first.skipped and first.summary == CountSummary(3, {"even": 2, "odd": 1})
    manifest = Manifest.read(first.folder)
    assert manifest.summary == {"rows": 3, "by_parity": {"even": 2, "odd": 1}, "note": None}
    assert manifest.tables == {"numbers": {"rows": 3}} and "numbers" in manifest.timings_s

    again = runner().run("source")
    assert again.skipped and again.folder == first.folder and registry["source"].builds == 1
    assert again.summary == first.summary and type(again.summary) is CountSummary  # read back typed
    assert runner().locate("source").summary == first.summary

    other = runner(k=4).run("source")  # a config key the stage depends on: a new version
    assert not other.skipped and other.folder != first.folder and other.summary.rows == 4
    assert runner().run("source", force=True).folder == first.folder and registry["source"].builds == 3


def test_a_crash_publishes_nothing_and_the_next_run_builds(toy, tmp_path):
    runner, registry = toy
    with pytest.raises(RuntimeError, match="crashed mid-build"):
        runner().run("source", fail=True)
    stage_dir = tmp_path / "amazon2014-musical-instruments" / "source"
    assert not [p for p in stage_dir.iterdir() if p.name != "CURRENT"]  # no version, no temporary folder
    with pytest.raises(StageUnavailable, match="run `p4r source`"):
        runner().locate("source")
    assert not runner().run("source").skipped


def test_results_are_handed_on_and_inputs_are_part_of_the_identity(toy):
    runner, _ = toy
    with pytest.raises(StageUnavailable, match="source"):  # its input is missing: it says which stage to run
        runner().run("doubled")
    pipeline = runner()
    src = pipeline.run("source")
    out = pipeline.run("doubled")
    assert out.summary == CountSummary(6, {}, note=f"from {src.folder.name}")
    assert out.manifest.inputs == [{"stage": "source", "path": str(src.folder), "sha256": src.manifest.fingerprint}]
    runner(k=5).run("source")
    assert not runner(k=5).run("doubled").skipped  # a new input version: a new version downstream


def test_an_older_manifest_without_the_summary_fields_is_rebuilt(toy):
    runner, registry = toy
    first = runner().run("source")
    manifest = Manifest.read(first.folder)
    manifest.summary = {"rows": 3}  # written by an older version of the stage
    manifest.write(first.folder)
    assert not runner().run("source").skipped and registry["source"].builds == 2


def test_every_stage_is_registered_with_a_complete_contract():
    registry = jobs.registry()
    assert tuple(registry) == jobs.PIPELINE
    for name, stage in registry.items():
        assert stage.name == name and isinstance(stage.version, int)
        assert all(jobs.PIPELINE.index(u) < jobs.PIPELINE.index(name) for u in stage.upstream), name
        assert dataclasses.is_dataclass(stage.summary) and stage.summary.__dataclass_params__.frozen, name
        assert issubclass(stage.summary, Summary) and inspect.getdoc(stage), name
        keywords = set(inspect.signature(stage.build).parameters)
        assert all(o.override or o.action or o.keyword in keywords for o in stage.options), name


@pytest.mark.parametrize("name", jobs.PIPELINE)
def test_a_crash_inside_any_registered_stage_leaves_no_partial_version(name, tmp_path, monkeypatch):
    """Every stage runs through the one runner: a build that fails after writing publishes nothing."""
    stage = jobs.registry()[name]
    cfg = load_config([f"paths.artifacts={tmp_path}"]).config
    inputs = {up: _fake_result(tmp_path / up) for up in stage.needs(cfg)}

    def seeded():  # stand-in inputs, handed over as `p4r run` hands results on
        pipeline = jobs.runner(cfg, progress=False)
        pipeline.results.update(inputs)
        return pipeline

    monkeypatch.setattr(type(stage), "config", lambda self, cfg: {"stage": name})
    monkeypatch.setattr(type(stage), "sources", lambda self, cfg, progress: [])

    def crash(self, b: Build, **options: Any):
        (b.folder / "partial.parquet").write_bytes(b"half a table")
        raise KeyboardInterrupt  # the harshest: an interrupt, not an exception

    monkeypatch.setattr(type(stage), "build", crash)
    with pytest.raises(KeyboardInterrupt):
        seeded().run(name)
    root = cfg.artifacts_root / name
    assert not root.exists() or not any(root.iterdir())
    with pytest.raises(StageUnavailable):
        seeded().locate(name)


def _fake_result(folder: Path):
    from persona4rec.artifacts import StageResult

    folder.mkdir(parents=True)
    return StageResult(folder, Manifest.start("fake", folder.name * 8, "c", {}, []), skipped=True)


def test_architecture_doc_lists_the_registered_stages_and_their_inputs():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `(\w+)` \| ([^|]*) \|", text, re.M))
    registry = jobs.registry()
    assert list(table) == list(registry), "docs/architecture.md: the stage table is out of step with the registry"
    for name, stage in registry.items():
        named = re.findall(r"`(\w+)`", table[name])
        assert named == list(stage.upstream), f"docs/architecture.md: {name} reads {stage.upstream}"

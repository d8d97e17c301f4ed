"""Shared test fixtures: one real local Spark session for the whole test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona4rec.config import Config, SparkConfig, load_config

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"
MUSICAL_INSTRUMENTS = SHARED_DATA / "amazon2014_musical_instruments_5core"


@pytest.fixture(scope="session")
def spark():
    """A real local SparkSession (2 cores), started once and shared by every test."""
    from persona4rec.infra.spark import spark_session

    session = spark_session(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="2g"))
    yield session
    session.stop()


@pytest.fixture
def make_config(tmp_path: Path):
    """Build a validated config for a dataset, with artifacts under the test's tmp folder."""

    def build(dataset: str, *overrides: str, local_dir: Path | str | None = None) -> Config:
        args = [f"paths.artifacts={tmp_path / 'artifacts'}", *overrides]
        if local_dir is not None:
            args.append(f"data.local_dir={local_dir}")
        return load_config(args, dataset=dataset).config

    return build

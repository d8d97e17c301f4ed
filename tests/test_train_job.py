"""embed -> train -> promote on the real Musical Instruments corpus, with real Ray, Ray Train and MLflow.

Personas come from a scripted engine (named as such) that restates the item's own sampled reviews, so
the whole catalogue's reasoning takes seconds; the LLM engines themselves are tested elsewhere.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner

from persona4rec import jobs, schemas
from persona4rec.cli import main
from persona4rec.jobs.train import job as train_job
from tests.conftest import FAST


def test_embed_writes_every_text_once_and_a_rerun_embeds_nothing(mi_pipeline):
    config, result = mi_pipeline
    c, tables = result.summary, result.manifest.tables
    assert tables["interaction_vectors"]["rows"] == 544 and tables["item_vectors"]["rows"] == 62
    for name, schema in (("persona_vectors", schemas.PERSONA_VECTORS), ("item_vectors", schemas.ITEM_VECTORS)):
        assert schemas.validate_parquet(result.table(name), schema) == tables[name]["rows"]
    assert c.embedded_this_run == c.unique_texts and c.dim == 384
    vectors = schemas.arrow_to_vectors(pq.read_table(result.table("persona_vectors"))["vector"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    again = jobs.run("embed", config(), force=True, progress=False)
    assert again.summary.embedded_this_run == 0  # every vector came from the cache


def test_train_registers_in_mlflow_and_the_champion_loads_back_identical(mi_pipeline, tmp_path):
    config, _ = mi_pipeline
    cfg = config()
    result = jobs.run("train", cfg, progress=False)
    c = result.summary
    assert c.data["train_examples"] > 100 and c.data["valid_examples"] > 20
    assert [row["epoch"] for row in c.history] == [0, 1, 2]
    assert c.validation["hr@10"] > c.chance["hr@10"]
    version = c.mlflow["version"]

    from persona4rec.encoder.model import Encoder
    from persona4rec.infra import mlflow as registry

    first = jobs.run("promote", cfg).summary
    assert first.promoted and first.reason == "no champion yet" and registry.champion(cfg) == version
    trained = Encoder.load(result.folder / "encoder")
    champion = registry.load_encoder(cfg)  # by alias, through MLflow
    texts = ["Persona: gigging guitarist", "Item: a capo\nUser said: holds tension well"]
    np.testing.assert_allclose(champion.encode(texts), trained.encode(texts), atol=1e-5)
    assert champion.spec == trained.spec

    # the untuned base model, registered as its own version, takes the alias only if it scores higher
    vanilla = jobs.run("train", config("encoder.mode=vanilla"), progress=False)
    challenger = vanilla.summary.mlflow["version"]
    decision = jobs.run("promote", config(f"promote.version={challenger}")).summary
    assert decision.champion == version and decision.candidate == challenger
    assert decision.promoted == (decision.candidate_score > decision.champion_score)
    assert registry.champion(cfg) == (challenger if decision.promoted else version)
    tags = registry.client(cfg).get_model_version(cfg.registered_model, challenger).tags
    assert json.loads(tags["promotion"])["promoted"] == decision.promoted

    registry.record_index(cfg, version, "p4r_personas_v1")  # what the index stage notes on the version it used
    assert "index.p4r_personas_v1" in registry.client(cfg).get_model_version(cfg.registered_model, version).tags

    out = CliRunner().invoke(main, ["promote", "--version", registry.champion(cfg), *_overrides(cfg)])
    assert out.exit_code == 0, out.output
    assert "is already the champion" in out.output


def _overrides(cfg):
    return [f"paths.artifacts={cfg.paths.artifacts}", f"data.local_dir={cfg.data.local_dir}", "-d", cfg.dataset, *FAST]


def test_a_new_tracking_server_gets_the_saved_encoder_once_without_retraining(mi_pipeline, tmp_path):
    from persona4rec.infra import mlflow as registry

    config, _ = mi_pipeline
    first = jobs.run("train", config(), progress=False)
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    cfg = config(f"mlflow.tracking_uri={uri}")
    moved = jobs.run("train", cfg, progress=False)
    assert moved.skipped and moved.folder == first.folder
    entry = moved.summary.mlflow
    assert entry["tracking_uri"] == uri and entry["registered_on_reuse"]
    there = registry.client(cfg).get_model_version(cfg.registered_model, entry["version"])
    assert there.tags["train_fingerprint"] == first.manifest.fingerprint

    assert jobs.run("train", cfg, progress=False).summary.mlflow == entry  # once only
    assert len(registry.client(cfg).search_model_versions(f"name='{cfg.registered_model}'")) == 1
    home = jobs.run("train", config(), progress=False).summary.mlflow
    assert home == first.summary.mlflow  # the original server keeps its own registration
    assert [r["tracking_uri"] for r in train_job.registrations(moved)] == [home["tracking_uri"], uri]

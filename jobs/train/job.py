"""The train stage: fit the alignment encoder on Ray Train, log it to MLflow and register it.

Inputs are the embed stage (texts and base vectors), the align stage (positive personas of training
interactions) and the candidates stage (the first stage's validation lists: model selection reranks
them, and hard negatives come from them; its test lists are never read). The output version holds the
encoder folder and a manifest with the validation metrics (against chance and the untrained start), the
per-epoch history and the registry version. The Ray Train
run is named by the stage fingerprint, so a `p4r train` that crashed resumes from its last checkpoint
when run again. ``encoder.mode=vanilla`` skips training and registers the untuned base model, so that
it can be compared and promoted like any other version.

An up-to-date version is registered wherever the configuration now tracks models: pointing
``mlflow.tracking_uri`` (or ``mlflow.registered_model``) somewhere new registers the saved encoder
there, once, instead of retraining it or leaving the new registry empty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from persona4rec.artifacts import Manifest, StageResult, atomic_write
from persona4rec.config import Config
from persona4rec.encoder import data as alignment
from persona4rec.encoder.fit import fit, spec_from
from persona4rec.jobs.train.stage import TrainSummary
from persona4rec.stage import Build
from persona4rec.texts import TEXTS_VERSION

REGISTRATIONS = "registrations.json"  # registrations made after publishing, beside the manifest


def build(b: Build) -> TrainSummary:
    cfg, timer, fp = b.cfg, b.timer, b.fingerprint
    with timer("load"):
        data = alignment.load(cfg, b.inputs["embed"], b.inputs["align"], b.inputs["candidates"])
    spec = spec_from(cfg, data.dim, TEXTS_VERSION)
    if cfg.encoder.mode != "vanilla":
        from persona4rec.infra.ray import ensure_ray

        ensure_ray(cfg.ray)
    with timer("fit"):
        storage = (cfg.artifacts_root / "train" / "ray").resolve()
        result = fit(data, spec, cfg.train, cfg.encoder, storage=storage, name=fp[:16], progress=b.progress)
    encoder_dir = result.encoder.save(b.folder / "encoder")
    m = b.manifest
    with timer("mlflow"):
        ref = _register(cfg, encoder_dir, m.stage_config, fp, m.inputs, result.history, result.metrics)
    return TrainSummary(
        data=data.counts,
        metric=cfg.train.metric,
        validation=result.metrics,
        chance=result.chance,
        gamma=result.encoder.spec.gamma,
        gamma_scores=result.gamma_scores,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        history=result.history,
        mlflow=_registration(cfg, ref),
        target=cfg.encoder.objective.target,
    )


def _register(cfg: Config, encoder_dir: Path, scfg: dict, fp: str, inputs: list[dict], history, metrics):
    from persona4rec.infra import mlflow as registry

    return registry.log_training(
        cfg,
        encoder_dir=encoder_dir,
        params={"stage": scfg, "fingerprint": fp},
        tags={
            "run_name": f"{cfg.encoder.mode}-{fp[:8]}",
            "dataset": cfg.dataset,
            "mode": cfg.encoder.mode,
            "texts_version": TEXTS_VERSION,
            "train_fingerprint": fp,
            **{f"input.{i['stage']}": i["sha256"] for i in inputs},
        },
        history=history,
        metrics=metrics,
    )


def _registration(cfg: Config, ref: Any) -> dict[str, str]:
    return {"model": ref.name, "version": ref.version, "run_id": ref.run_id, "tracking_uri": cfg.tracking_uri}


def registrations(result: StageResult) -> list[dict[str, str]]:
    """Where this version is registered: the first registration, then any made when it was reused."""
    path = result.folder / REGISTRATIONS
    later = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    first = TrainSummary.from_dict(Manifest.read(result.folder).summary).mlflow
    return [first, *later]


def ensure_registered(cfg: Config, result: StageResult) -> dict[str, str]:
    """This version's registration at the configured tracking server and model name, made if missing
    (the stage reports the version that the current registry holds)."""
    known = registrations(result)
    for entry in known:
        if entry.get("tracking_uri") == cfg.tracking_uri and entry.get("model") == cfg.registered_model:
            return entry
    m, s = result.manifest, result.summary
    ref = _register(cfg, result.folder / "encoder", m.stage_config, m.fingerprint, m.inputs, s.history, s.validation)
    entry = {**_registration(cfg, ref), "registered_on_reuse": True}
    atomic_write(result.folder / REGISTRATIONS, json.dumps([*known[1:], entry], indent=2) + "\n")
    return entry

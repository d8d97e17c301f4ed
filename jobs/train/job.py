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
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona4rec.artifacts import Manifest, StageResult, StageStore, Timer, atomic_write, fingerprint, upstream
from persona4rec.config import Config
from persona4rec.encoder import data as alignment
from persona4rec.encoder.fit import fit, settings_from, spec_from
from persona4rec.errors import StageUnavailable
from persona4rec.jobs.align import job as align_job
from persona4rec.jobs.candidates import job as candidates_job
from persona4rec.jobs.embed import job as embed_job
from persona4rec.texts import TEXTS_VERSION

STAGE = "train"
VERSION = 2  # 2: item-level objective, first-stage negatives, selection on validation lists
REGISTRATIONS = "registrations.json"  # registrations made after publishing, beside the manifest

TrainResult = StageResult


def stage_config(cfg: Config) -> dict[str, Any]:
    return {
        "encoder": cfg.encoder.model_dump(mode="json"),
        "train": {**cfg.train.model_dump(mode="json"), "lists": cfg.train_lists},
        "embed": embed_job.stage_config(cfg),
    }


def _inputs(cfg: Config):
    embedded, aligned, listed = embed_job.locate(cfg), align_job.locate(cfg), candidates_job.locate(cfg)
    return (embedded, aligned, listed), [upstream("embed", embedded), upstream("align", aligned),
                                         upstream("candidates", listed)]  # fmt: skip


def locate(cfg: Config) -> TrainResult:
    _, inputs = _inputs(cfg)
    fp = fingerprint(STAGE, VERSION, stage_config(cfg), inputs)
    return StageStore(cfg.artifacts_root / STAGE).locate(fp, f"no trained encoder for {cfg.dataset}: run `p4r train`")


def load_data(
    cfg: Config, embedded: StageResult, aligned: StageResult, listed: StageResult
) -> alignment.AlignmentData:
    """The encoder's training and validation data; only the 'valid' lists of train.lists (and of the hard
    negatives' generator) are read from the candidates."""
    o = cfg.encoder.objective
    wanted = sorted(set(cfg.train_lists) | ({o.hard_negatives_from} if o.hard_negatives else set()))
    lists = pq.read_table(listed.table("candidates"), filters=[("split", "=", "valid")])
    lists = lists.filter(pc.is_in(lists["generator"], pa.array(wanted, pa.string())))
    made = set(lists["generator"].to_pylist())
    if missing := [g for g in wanted if g not in made]:
        raise StageUnavailable(
            f"train reads the validation lists of {missing}, which `p4r candidates` did not make "
            f"(candidates.generators: {cfg.candidates.generators}); set train.lists or candidates.generators"
        )
    return alignment.build(
        pq.read_table(embedded.table("interaction_vectors")),
        pq.read_table(embedded.table("persona_vectors")),
        pq.read_table(aligned.table("labels")),
        history=cfg.encoder.profile.history,
        holdout_users=cfg.train.holdout_users,
        candidates=lists,
        hard_negatives=o.hard_negatives if o.target == "item" else 0,
        hard_negatives_from=o.hard_negatives_from,
    )


def run(cfg: Config, *, force: bool = False, progress: bool = True) -> TrainResult:
    (embedded, aligned, listed), inputs = _inputs(cfg)
    scfg = stage_config(cfg)
    fp = fingerprint(STAGE, VERSION, scfg, inputs)
    store = StageStore(cfg.artifacts_root / STAGE)
    if not force and (reused := store.reuse(fp)) is not None:
        ensure_registered(cfg, reused)
        return reused

    timer = Timer()
    with timer("load"):
        data = load_data(cfg, embedded, aligned, listed)
    spec = spec_from(cfg, data.dim, TEXTS_VERSION)
    settings = settings_from(cfg)
    if cfg.encoder.mode != "vanilla":
        from persona4rec.infra.ray import ensure_ray

        ensure_ray(cfg.ray)
    with timer("fit"):
        result = fit(
            data,
            spec,
            settings,
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            cpus_per_worker=cfg.train.cpus_per_worker,
            max_failures=cfg.train.max_failures,
            storage=(cfg.artifacts_root / STAGE / "ray").resolve(),
            name=fp[:16],
            gamma_grid=cfg.encoder.profile.gamma_grid,
            progress=progress,
        )
    tmp = store.begin(fp)
    manifest = Manifest.start(STAGE, fp, cfg.hash(), scfg, inputs)
    try:
        encoder_dir = result.encoder.save(tmp / "encoder")
        manifest.counts = {
            "data": data.counts,
            "metric": cfg.train.metric,
            "validation": result.metrics,
            "chance": result.chance,
            "gamma": result.encoder.spec.gamma,
            "gamma_scores": result.gamma_scores,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "history": result.history,
        }
        with timer("mlflow"):
            ref = _register(cfg, encoder_dir, scfg, fp, inputs, result.history, result.metrics)
        manifest.counts["mlflow"] = _registration(cfg, ref)
        manifest.record(timer)
        manifest.write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainResult(store.publish(tmp, fp), manifest, skipped=False)


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


def registrations(result: TrainResult) -> list[dict[str, str]]:
    """Where this version is registered: the first registration, then any made when it was reused."""
    path = result.folder / REGISTRATIONS
    later = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    return [Manifest.read(result.folder).counts["mlflow"], *later]


def ensure_registered(cfg: Config, result: TrainResult) -> dict[str, str]:
    """This version's registration at the configured tracking server and model name, made if missing.

    The reused result's ``counts["mlflow"]`` is set to it (in memory), so callers report the version
    that the current registry holds.
    """
    known = registrations(result)
    for entry in known:
        if entry.get("tracking_uri") == cfg.tracking_uri and entry.get("model") == cfg.registered_model:
            result.manifest.counts["mlflow"] = entry
            return entry
    m = result.manifest
    ref = _register(cfg, result.folder / "encoder", m.stage_config, m.fingerprint, m.inputs,
                    m.counts["history"], m.counts["validation"])  # fmt: skip
    entry = {**_registration(cfg, ref), "registered_on_reuse": True}
    atomic_write(result.folder / REGISTRATIONS, json.dumps([*known[1:], entry], indent=2) + "\n")
    m.counts["mlflow"] = entry
    return entry

"""Driver side of training: run the loop on Ray Train, pick the best state, tune gamma, return an Encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from persona4rec.config import Config, EncoderConfig, TrainConfig
from persona4rec.encoder.data import AlignmentData
from persona4rec.encoder.model import Encoder, EncoderSpec, build_tower, load_trainable
from persona4rec.encoder.train_loop import encoder_vectors, train_loop
from persona4rec.encoder.validate import chance, evaluate
from persona4rec.errors import StageUnavailable
from persona4rec.infra.train_session import EarlyStopping


@dataclass
class FitResult:
    encoder: Encoder
    metrics: dict[str, float]  # validation metrics of the returned encoder, at its tuned gamma
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch, across restarts
    gamma_scores: dict[str, float] = field(default_factory=dict)
    best_epoch: int = -1
    chance: dict[str, float] = field(default_factory=dict)


def spec_from(cfg: Config, dim: int, texts_version: str) -> EncoderSpec:
    return EncoderSpec(
        mode=cfg.encoder.mode,
        base=cfg.embed.model,
        dim=dim,
        max_length=cfg.embed.max_length,
        history=cfg.encoder.profile.history,
        gamma=cfg.encoder.profile.gamma,
        texts_version=texts_version,
        lora=cfg.encoder.lora.model_dump() if cfg.encoder.mode == "lora" else {},
    )


def fit(
    data: AlignmentData,
    spec: EncoderSpec,
    train: TrainConfig,
    encoder: EncoderConfig,
    *,
    storage: Path,
    name: str,
    progress: bool = False,
) -> FitResult:
    """Train on Ray Train with the ``train`` and ``encoder`` config sections, shipped to the workers as
    they are (a run named ``name`` under ``storage`` resumes from its last checkpoint); then tune gamma
    over ``encoder.profile.gamma_grid``."""
    metric, target, grid = train.metric, encoder.objective.target, encoder.profile.gamma_grid
    baseline = chance(data)
    if metric not in baseline:
        raise ValueError(
            f"validation metric {metric!r} has no data: {data.counts} "
            "(hr@10 needs valid-split users whose item has personas; list_ndcg@10 needs the candidates stage's "
            "validation lists too; persona_recall@10 needs held-out labels)"
        )
    if spec.mode == "vanilla":
        return _tune(Encoder(spec, torch.nn.Identity()), data, grid, metric, [], -1, baseline)
    examples = data.items if target == "item" else data.train
    if examples is None or len(examples) == 0:
        raise ValueError(f"no training examples for the {target} target: {data.counts}")
    try:
        from persona4rec.infra.train_session import run_on_ray
    except ImportError:
        raise StageUnavailable("training runs on Ray Train: pip install 'persona4rec[ray]'") from None

    config = {"data": data, "spec": spec, "train": train, "encoder": encoder, "progress": progress}
    state = run_on_ray(
        train_loop, config, name=name, storage=storage, workers=train.num_workers, use_gpu=train.use_gpu,
        cpus_per_worker=train.cpus_per_worker, max_failures=train.max_failures,
    )  # fmt: skip
    stopping = EarlyStopping.from_state(state["stopping"])
    tower = build_tower(spec)
    load_trainable(tower, stopping.best_state)
    return _tune(Encoder(spec, tower), data, grid, metric, stopping.history, stopping.best_epoch, baseline)


def _tune(encoder, data, grid, metric, history, best_epoch, baseline) -> FitResult:
    """Pick gamma on validation: profiles are re-weighted, never re-encoded."""
    personas, interactions = encoder_vectors(encoder.tower, encoder.spec, data)
    scores, results = {}, {}
    for gamma in grid or [encoder.spec.gamma]:
        results[gamma] = evaluate(data, personas, interactions, gamma)
        scores[f"{gamma:g}"] = results[gamma][metric]
    best = max(results, key=lambda g: (results[g][metric], g == encoder.spec.gamma))
    encoder.spec = encoder.spec.with_gamma(best)
    return FitResult(encoder, results[best], history, scores, best_epoch, baseline)

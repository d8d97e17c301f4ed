"""Driver side of training: run the loop on Ray Train, pick the best state, tune gamma, return an Encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from persona4rec.config import Config
from persona4rec.encoder.data import AlignmentData
from persona4rec.encoder.model import Encoder, EncoderSpec, build_tower, load_trainable
from persona4rec.encoder.train_loop import STATE_FILE, encoder_vectors, train_loop_per_worker
from persona4rec.encoder.validate import chance, evaluate
from persona4rec.errors import StageUnavailable

DEFAULT_LR = {"head": 1e-3, "lora": 1e-4, "full": 2e-5}


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


def settings_from(cfg: Config) -> dict[str, Any]:
    t, e = cfg.train, cfg.encoder
    return {
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "lr": t.lr or DEFAULT_LR.get(e.mode, 1e-3),
        "weight_decay": t.weight_decay,
        "warmup_ratio": t.warmup_ratio,
        "temperature": e.temperature,
        "label_smoothing": e.label_smoothing,
        "mask": list(e.mask),
        "target": e.objective.target,
        "aggregation": e.objective.aggregation,
        "smoothing": e.objective.smoothing,
        "negatives": e.objective.negatives,
        "popularity_prior": e.objective.popularity_prior,
        "persona_weight": e.objective.persona_weight,
        "patience": t.patience,
        "metric": t.metric,
        "seed": t.seed,
    }


def fit(
    data: AlignmentData,
    spec: EncoderSpec,
    settings: dict[str, Any],
    *,
    num_workers: int,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 2,
    storage: Path,
    name: str,
    gamma_grid: list[float] | None = None,
    progress: bool = False,
) -> FitResult:
    """Train on Ray Train (a run named ``name`` under ``storage`` resumes from its last checkpoint)."""
    metric = settings["metric"]
    baseline = chance(data)
    if metric not in baseline:
        raise ValueError(
            f"validation metric {metric!r} has no data: {data.counts} "
            "(hr@10 needs valid-split users whose item has personas; list_ndcg@10 needs the candidates stage's "
            "validation lists too; persona_recall@10 needs held-out labels)"
        )
    if spec.mode == "vanilla":
        encoder = Encoder(spec, torch.nn.Identity())
        return _tune(encoder, data, gamma_grid, metric, [], -1, baseline)
    examples = data.items if settings["target"] == "item" else data.train
    if examples is None or len(examples) == 0:
        raise ValueError(f"no training examples for the {settings['target']} target: {data.counts}")
    try:
        from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError:
        raise StageUnavailable("training runs on Ray Train: pip install 'persona4rec[ray]'") from None

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"data": data, "spec": spec, "settings": settings, "progress": progress},
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),  # one line per epoch from rank 0 instead
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, weights_only=False)
    tower = build_tower(spec)
    load_trainable(tower, state["best_state"])
    return _tune(Encoder(spec, tower), data, gamma_grid, metric, state["history"], state["best_epoch"], baseline)


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

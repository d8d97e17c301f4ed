"""MLflow: experiment tracking and the encoder's model registry.

A SQLite store under ``paths.artifacts`` by default (with run artifacts beside it), any tracking server
by ``mlflow.tracking_uri``. Each training run logs its configuration, input manifest hashes, metrics per
epoch and the encoder as a pyfunc model (texts in, unit vectors out) registered under
``mlflow.registered_model``; the ``champion`` alias marks the version serving should use. The learned
reranker fitted with an encoder (`p4r evaluate`) is logged into that encoder's run (``reranker/<generator>``)
and named on its model version (tag ``reranker.<generator>``), so the service finds it from the version.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from persona4rec.config import Config
from persona4rec.errors import StageUnavailable
from persona4rec.infra.secrets import apply_mlflow_credentials

try:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
except ImportError as exc:  # pragma: no cover - the extra is part of every install that trains
    raise StageUnavailable("tracking and the registry need MLflow: pip install 'persona4rec[mlflow]'") from exc

from persona4rec.encoder.model import Encoder

ARTIFACT = "encoder"
RERANKER = "reranker"


class EncoderModel(mlflow.pyfunc.PythonModel):
    """The registered form of an encoder: a list (or a ``text`` column) of strings in, vectors out."""

    def load_context(self, context: Any) -> None:
        self.encoder = Encoder.load(Path(context.artifacts[ARTIFACT]))

    def predict(self, context: Any, model_input: Any, params: dict | None = None) -> Any:
        texts = list(model_input["text"]) if hasattr(model_input, "columns") else [str(t) for t in model_input]
        return self.encoder.encode(texts)


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str


def client(cfg: Config) -> MlflowClient:
    """A client on the configured store, with the experiment created (artifacts beside a SQLite store)."""
    uri = cfg.tracking_uri
    apply_mlflow_credentials(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    c = MlflowClient(uri, uri)
    if c.get_experiment_by_name(cfg.mlflow.experiment) is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
        c.create_experiment(cfg.mlflow.experiment, artifact_location=location)
    return c


def log_training(
    cfg: Config,
    *,
    encoder_dir: Path,
    params: dict[str, Any],
    tags: dict[str, str],
    history: list[dict[str, Any]],
    metrics: dict[str, float],
) -> ModelRef:
    """One MLflow run for one training: parameters, per-epoch metrics, the model, a registry version."""
    c = client(cfg)
    experiment = c.get_experiment_by_name(cfg.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=tags.get("run_name")) as run:
        mlflow.log_params({k: _short(v) for k, v in _flatten(params).items()})
        mlflow.set_tags(tags)
        for row in history:
            values = {_name(k): float(v) for k, v in row.items() if isinstance(v, int | float) and k != "epoch"}
            mlflow.log_metrics(values, step=int(row["epoch"]))
        mlflow.log_metrics({f"final_{_name(k)}": v for k, v in metrics.items()})
        mlflow.log_dict(params, "config.json")
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT,
            python_model=EncoderModel(),
            artifacts={ARTIFACT: str(encoder_dir)},
            registered_model_name=cfg.registered_model,
            pip_requirements=["persona4rec", "sentence-transformers", "torch"],
        )
    version = str(info.registered_model_version)
    for key, value in tags.items():
        c.set_model_version_tag(cfg.registered_model, version, key, value)
    for key, value in metrics.items():
        c.set_model_version_tag(cfg.registered_model, version, f"val.{_name(key)}", f"{value:.6f}")
    return ModelRef(cfg.registered_model, version, run.info.run_id)


def champion(cfg: Config) -> str | None:
    """The version the champion alias points at, or None when there is none yet."""
    try:
        return str(client(cfg).get_model_version_by_alias(cfg.registered_model, cfg.mlflow.champion_alias).version)
    except MlflowException:
        return None


def latest_version(cfg: Config) -> str:
    versions = client(cfg).search_model_versions(f"name='{cfg.registered_model}'")
    if not versions:
        raise StageUnavailable(f"no registered encoder {cfg.registered_model!r}: run `p4r train` first")
    return str(max(int(v.version) for v in versions))


def resolve_version(cfg: Config, version: str | None = None) -> ModelRef:
    """A registered version (the champion when ``version`` is None), with the run that logged it."""
    c = client(cfg)
    try:
        if version is None:
            mv = c.get_model_version_by_alias(cfg.registered_model, cfg.mlflow.champion_alias)
        else:
            mv = c.get_model_version(cfg.registered_model, version)
    except MlflowException:
        which = f"version {version}" if version else f"a {cfg.mlflow.champion_alias!r} alias"
        raise StageUnavailable(
            f"{cfg.registered_model} has no {which}: run `p4r train` and `p4r promote` first"
        ) from None
    return ModelRef(cfg.registered_model, str(mv.version), mv.run_id or "")


def load_encoder(cfg: Config, version: str | None = None) -> Encoder:
    """A registered encoder by version, or the champion (by alias) when no version is given."""
    client(cfg)
    ref = f"@{cfg.mlflow.champion_alias}" if version is None else f"/{version}"
    try:
        model = mlflow.pyfunc.load_model(f"models:/{cfg.registered_model}{ref}")
    except MlflowException as exc:
        raise StageUnavailable(f"cannot load encoder models:/{cfg.registered_model}{ref}: {exc}") from None
    return model.unwrap_python_model().encoder


def set_champion(cfg: Config, version: str, record: dict[str, Any]) -> None:
    """Move the alias and write down why, on the model version and in its run."""
    c = client(cfg)
    c.set_registered_model_alias(cfg.registered_model, cfg.mlflow.champion_alias, version)
    _record_promotion(c, cfg, version, record)


def record_decision(cfg: Config, version: str, record: dict[str, Any]) -> None:
    _record_promotion(client(cfg), cfg, version, record)


def record_index(cfg: Config, version: str, index: str) -> None:
    """Note on a model version that an index version was built with it (read by the index stage's users)."""
    c = client(cfg)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    c.set_model_version_tag(cfg.registered_model, version, f"index.{index}", now)


def log_reranker(cfg: Config, version: str, folder: Path, generator: str, fingerprint: str) -> None:
    """Log a learned reranker into the run of the encoder version it was fitted with (latest wins)."""
    c = client(cfg)
    run_id = c.get_model_version(cfg.registered_model, version).run_id
    if not run_id:
        return
    c.log_artifacts(run_id, str(folder), f"{RERANKER}/{generator}")
    c.set_model_version_tag(cfg.registered_model, version, f"{RERANKER}.{generator}", fingerprint[:16])


def load_reranker(cfg: Config, version: str, generator: str) -> Path | None:
    """A local copy of the learned reranker logged with an encoder version, or None when it has none."""
    c = client(cfg)
    mv = c.get_model_version(cfg.registered_model, version)
    if f"{RERANKER}.{generator}" not in (mv.tags or {}) or not mv.run_id:
        return None
    return Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=f"{RERANKER}/{generator}",
                                                    tracking_uri=cfg.tracking_uri))  # fmt: skip


def _record_promotion(c: MlflowClient, cfg: Config, version: str, record: dict[str, Any]) -> None:
    text = json.dumps(record, sort_keys=True)
    c.set_model_version_tag(cfg.registered_model, version, "promotion", text)
    run_id = c.get_model_version(cfg.registered_model, version).run_id
    if run_id:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"promotion-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
            path.write_text(text + "\n", encoding="utf-8")
            c.log_artifact(run_id, str(path), "promotions")


def log_evaluation(cfg: Config, folder: Path, rows: list[dict[str, Any]], manifest: Any) -> str:
    """One MLflow run per evaluation: every figure over all users as a metric, the report, plots and table."""
    c = client(cfg)
    experiment = c.get_experiment_by_name(cfg.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=f"evaluate-{cfg.dataset}") as run:
        mlflow.set_tags({"stage": "evaluate", "dataset": cfg.dataset, "fingerprint": manifest.fingerprint[:16]})
        mlflow.log_params({k: _short(v) for k, v in _flatten({"evaluate": cfg.evaluate.model_dump()}).items()})
        values = {
            _name(f"{r['generator']}.{r['reranker']}.{r['metric']}"): r["value"]
            for r in rows
            if r["segment"] == "all" and r["value"] is not None
        }
        mlflow.log_metrics(values)
        mlflow.log_artifacts(str(folder), artifact_path="evaluation")
    return run.info.run_id


def _name(metric: str) -> str:
    """MLflow metric names allow no '@': hr@10 is logged as hr_at_10."""
    return metric.replace("@", "_at_")


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 500 else text[:497] + "..."

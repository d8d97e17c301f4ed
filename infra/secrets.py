"""Credentials of remote services, read from the environment or from files, never from configuration.

Configuration only names where a secret lives (``index.token_env``, ``index.token_file``,
``mlflow.credentials_file``), so configs, manifests, job metadata and logs never hold one.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from persona4rec.config import Config
from persona4rec.errors import ConfigError

#: MLflow's own variables for a tracking server's credentials, and their keys in its INI format.
MLFLOW_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def read_secret_file(path: str, what: str) -> str:
    """The stripped content of a secret file; a clear error when it is missing or empty."""
    file = Path(path).expanduser()
    try:
        value = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {file}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{what}: {file} is empty")
    return value


def token(env: str | None, file: str | None, section: str) -> str:
    """A token from the variable ``env`` or the file ``file`` (``<section>.token_env/token_file``); "" if neither."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{section}.token_env: the environment variable {env} is not set")
        return value
    if file:
        return read_secret_file(file, f"{section}.token_file")
    return ""


def milvus_token(cfg: Config) -> str:
    """The Milvus token (``index.token_env`` or ``index.token_file``)."""
    return token(cfg.index.token_env, cfg.index.token_file, "index")


def ray_token(cfg: Config) -> str:
    """The Ray cluster's auth token (``submit.token_env`` or ``submit.token_file``)."""
    return token(cfg.submit.token_env, cfg.submit.token_file, "submit")


def mlflow_credentials(cfg: Config) -> dict[str, str]:
    """MLflow's credential variables read from ``mlflow.credentials_file`` (section ``[mlflow]``)."""
    if not cfg.mlflow.credentials_file:
        return {}
    path = Path(cfg.mlflow.credentials_file).expanduser()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfigError(f"mlflow.credentials_file: cannot read {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise ConfigError(f"mlflow.credentials_file: {path} is not an INI file: {exc.message}") from None
    if not parser.has_section("mlflow"):
        raise ConfigError(f"mlflow.credentials_file: {path} has no [mlflow] section")
    section = parser["mlflow"]
    found = {name: section[name.lower()].strip() for name in MLFLOW_VARIABLES if section.get(name.lower(), "").strip()}
    unknown = sorted(set(section) - {name.lower() for name in MLFLOW_VARIABLES})
    if unknown:
        raise ConfigError(
            f"mlflow.credentials_file: unknown keys {', '.join(unknown)} in [mlflow]; "
            f"allowed: {', '.join(n.lower() for n in MLFLOW_VARIABLES)}"
        )
    if not found:
        raise ConfigError(f"mlflow.credentials_file: {path} sets no credential")
    return found


def apply_mlflow_credentials(cfg: Config) -> None:
    """Hand the file's credentials to MLflow's client (it reads them from the environment per request).

    A variable already set in the environment wins, as it does in MLflow itself.
    """
    for name, value in mlflow_credentials(cfg).items():
        os.environ.setdefault(name, value)

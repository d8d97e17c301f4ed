"""Training and promotion against a real MLflow tracking server on loopback, with basic authentication.

The server runs with MLflow's own `basic-auth` app (users in its own SQLite store, artifacts proxied
through the server), so the credentials path is exercised for real: p4r reads them from a file named
by `mlflow.credentials_file`, the environment wins over the file, and a wrong password is refused.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from persona4rec import jobs
from tests.conftest import _stop_group, free_port, wait_for_http

pytestmark = pytest.mark.slow

MI = "amazon2014-musical-instruments"
MLFLOW_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class Server(NamedTuple):
    uri: str
    password: str


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server --app-name basic-auth` on a free loopback port, admin password chosen here."""
    root = tmp_path_factory.mktemp("mlflow-server")
    password = secrets.token_urlsafe(12)
    auth = root / "auth.ini"
    auth.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'users.db'}\n"
        f"admin_username = admin\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(root),
        "MLFLOW_AUTH_CONFIG_PATH": str(auth),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts")]  # fmt: skip
    log = root / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", alive=lambda: proc.poll() is None, what="the MLflow server", log=log)
        yield Server(uri, password)
    finally:
        _stop_group(proc, grace_s=3)


@pytest.fixture
def clean_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow reads credentials from the environment: leave none behind for later tests."""
    for name in MLFLOW_VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _credentials(path: Path, password: str) -> Path:
    path.write_text(f"[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = {password}\n")
    return path


def test_train_and_promote_against_an_authenticated_tracking_server(
    mlflow_server, clean_mlflow_env, mi_pipeline, tmp_path: Path
):
    from persona4rec.encoder.model import Encoder
    from persona4rec.infra import mlflow as registry

    config, _ = mi_pipeline
    remote = (f"mlflow.tracking_uri={mlflow_server.uri}",
              f"mlflow.credentials_file={_credentials(tmp_path / 'creds.ini', mlflow_server.password)}")  # fmt: skip
    # Settings of its own, so that this session trains (and registers) an encoder of its own.
    cfg = config(*remote, "train.epochs=1", "train.seed=11", "train.num_workers=1", "encoder.profile.gamma_grid=[0.65]")
    result = jobs.run("train", cfg, progress=False)
    version = result.summary.mlflow["version"]
    assert result.summary.mlflow["tracking_uri"] == mlflow_server.uri

    decision = jobs.run("promote", cfg).summary
    assert decision.promoted and registry.champion(cfg) == version
    champion = registry.load_encoder(cfg)  # the model's files come back through the server
    texts = ["Persona: a drummer on a budget"]
    np.testing.assert_allclose(champion.encode(texts), Encoder.load(result.folder / "encoder").encode(texts), atol=1e-5)

    # The credentials never reach the manifest.
    assert mlflow_server.password not in (result.folder / "manifest.json").read_text()


def test_a_wrong_password_is_refused_and_the_environment_wins_over_the_file(
    mlflow_server, clean_mlflow_env, make_config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    from mlflow.exceptions import MlflowException

    from persona4rec.infra import mlflow as registry

    good = _credentials(tmp_path / "good.ini", mlflow_server.password)
    cfg = make_config(MI, f"mlflow.tracking_uri={mlflow_server.uri}", f"mlflow.credentials_file={good}")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")  # the environment wins
    with pytest.raises(MlflowException, match="401|nauthorized|credentials"):
        registry.client(cfg)

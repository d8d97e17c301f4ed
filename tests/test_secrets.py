"""Credentials of remote services: read from the environment or files, named (never held) by configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona4rec.errors import ConfigError
from persona4rec.infra.secrets import milvus_token, mlflow_credentials, ray_token

MI = "amazon2014-musical-instruments"


def test_tokens_come_from_the_named_variable_or_file(make_config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    assert milvus_token(make_config(MI)) == "" and ray_token(make_config(MI)) == ""  # Lite / Ray's own lookup
    monkeypatch.setenv("P4R_TEST_MILVUS", "root:s3cret")
    assert milvus_token(make_config(MI, "index.token_env=P4R_TEST_MILVUS")) == "root:s3cret"
    secret = tmp_path / "ray-token"
    secret.write_text("abc123\n")  # a mounted secret ends with a newline
    assert ray_token(make_config(MI, f"submit.token_file={secret}")) == "abc123"

    with pytest.raises(ConfigError, match="P4R_TEST_UNSET is not set"):
        milvus_token(make_config(MI, "index.token_env=P4R_TEST_UNSET"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        ray_token(make_config(MI, f"submit.token_file={tmp_path / 'empty'}"))
    with pytest.raises(ConfigError, match="not both"):
        make_config(MI, "index.token_env=A", f"index.token_file={secret}")


def test_secrets_in_values_are_refused_without_being_echoed(make_config):
    for args, secret in (
        (["index.uri=http://root:Milvus123@milvus:19530"], "Milvus123"),
        (["mlflow.tracking_uri=https://me:pw42@mlflow.example.com"], "pw42"),
        (["submit.env_vars={HF_TOKEN: hf_xyz}"], "hf_xyz"),
    ):
        with pytest.raises(ConfigError) as err:
            make_config(MI, *args)
        assert secret not in str(err.value)
    assert make_config(MI, "index.uri=http://milvus:19530").index.uri == "http://milvus:19530"


def test_mlflow_credentials_file_in_mlflows_format(make_config, tmp_path: Path):
    creds = tmp_path / "credentials"
    creds.write_text("[mlflow]\nmlflow_tracking_token = t0k\n")
    assert mlflow_credentials(make_config(MI, f"mlflow.credentials_file={creds}")) == {"MLFLOW_TRACKING_TOKEN": "t0k"}
    creds.write_text("[other]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"no \[mlflow\] section"):
        mlflow_credentials(make_config(MI, f"mlflow.credentials_file={creds}"))
    creds.write_text("[mlflow]\nmlflow_tracking_pasword = x\n")
    with pytest.raises(ConfigError, match="unknown keys mlflow_tracking_pasword"):
        mlflow_credentials(make_config(MI, f"mlflow.credentials_file={creds}"))
    with pytest.raises(ConfigError, match="cannot read"):
        mlflow_credentials(make_config(MI, f"mlflow.credentials_file={tmp_path / 'none.ini'}"))

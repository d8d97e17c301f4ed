"""Stages as jobs on a Ray cluster, through Ray's Job Submission API (the dashboard's HTTP port).

A submission is checked here before anything travels: the configuration is validated, and paths the
cluster must see (``paths.artifacts``, ``data.local_dir``) must be absolute, since a job runs in a
temporary copy of its working directory. The job's working directory holds the *effective*
configuration (every key, with ``ray.address: auto`` so the job joins the cluster's Ray instead of
starting its own); this installation's persona4rec code travels beside it as a ``py_modules`` entry,
so the cluster runs exactly the code that validated the configuration, over the dependencies the
cluster's image provides. Secrets never travel: configuration only names where they live on the cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import persona4rec
from persona4rec.config import Config
from persona4rec.errors import ConfigError, Persona4RecError, StageUnavailable

#: The effective configuration's file name in the job's working directory.
JOB_CONFIG = "p4r-job.yaml"
#: Job states after which nothing more happens.
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
#: Ray's own variables that silently override the address a client is given.
_RAY_ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class JobError(Persona4RecError):
    """The cluster refused a request, or a job ended in failure."""


@dataclass
class Submission:
    """Everything one job needs, built and checked locally; ``staging`` is removed by :meth:`cleanup`."""

    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    staging: Path
    notes: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def prepare(cfg: Config, stage: str, stage_args: list[str]) -> Submission:
    """Stage the job of ``p4r <stage> <stage_args>`` under ``cfg`` (nothing is sent yet)."""
    _check_paths(cfg)
    staging = Path(tempfile.mkdtemp(prefix="p4r-submit-"))
    try:
        work = staging / "work"
        work.mkdir()
        doc = job_config(cfg)
        dataset = Path(cfg.dataset).expanduser()
        if cfg.dataset.endswith((".yaml", ".yml")) and dataset.is_file():
            shutil.copy2(dataset, work / dataset.name)  # the layer travels; its name keeps the artifacts' folder
            doc["dataset"] = dataset.name
        (work / JOB_CONFIG).write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")

        runtime_env: dict[str, Any] = {"working_dir": str(work)}
        code_hash = "cluster"
        if cfg.submit.ship_code:
            package = package_code(staging / "code")
            runtime_env["py_modules"] = [str(package)]
            code_hash = tree_hash(package)
        if cfg.submit.pip:
            runtime_env["pip"] = list(cfg.submit.pip)
        if cfg.submit.env_vars:
            runtime_env["env_vars"] = dict(cfg.submit.env_vars)

        command = [cfg.submit.python, "-m", "persona4rec", stage, "-c", JOB_CONFIG, *stage_args]
        submission_id = f"p4r-{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        metadata = {
            "p4r_stage": stage,
            "p4r_version": persona4rec.__version__,
            "dataset": cfg.dataset,
            "config_sha256": cfg.hash(),
            "code_sha256": code_hash,
        }
        notes = []
        if cfg.spark.master.startswith("local"):
            notes.append(f"spark.master is {cfg.spark.master}: `prepare` runs Spark inside the job's driver process")
        return Submission(submission_id, shlex.join(command), runtime_env, metadata, staging, notes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def job_config(cfg: Config) -> dict[str, Any]:
    """The effective configuration the job runs with: every key, joined to the cluster's Ray."""
    doc = cfg.to_dict()
    doc["ray"]["address"] = doc["ray"]["address"] or "auto"
    return doc


def _check_paths(cfg: Config) -> None:
    relative = {
        key: value
        for key, value in (("paths.artifacts", cfg.paths.artifacts), ("data.local_dir", cfg.data.local_dir))
        if value is not None and not Path(value).expanduser().is_absolute()
    }
    if relative:
        named = ", ".join(f"{k}={v}" for k, v in relative.items())
        raise ConfigError(
            f"{named}: a submitted job runs in a temporary copy of its working directory, so these must be "
            "absolute paths on storage every node of the cluster sees (a shared volume)"
        )


def package_code(dest: Path) -> Path:
    """This installation's ``persona4rec`` package as a folder under ``dest`` (a py_modules entry).

    A regular install is copied as it is. A source checkout (an editable install, whose package folders
    live apart, see pyproject.toml) is built into a wheel from a clean copy of its sources, so nothing
    stale from an earlier build travels.
    """
    dest.mkdir(parents=True, exist_ok=True)
    installed = Path(persona4rec.__file__).parent
    root = installed.parent
    if (installed / "jobs").is_dir() or not (root / "pyproject.toml").is_file():
        shutil.copytree(installed, dest / "persona4rec", ignore=shutil.ignore_patterns("__pycache__"))
        return dest / "persona4rec"
    with tempfile.TemporaryDirectory(prefix="p4r-wheel-") as tmp:
        source = Path(tmp) / "src"
        _copy_sources(root, source)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp, str(source)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("persona4rec-*.whl"))
        if done.returncode != 0 or not wheels:
            raise JobError(f"could not build the code to ship from {root}:\n{done.stderr.strip()[-2000:]}")
        with zipfile.ZipFile(wheels[0]) as whl:
            whl.extractall(dest, members=[n for n in whl.namelist() if n.startswith("persona4rec/")])
    return dest / "persona4rec"


def _copy_sources(root: Path, dest: Path) -> None:
    """pyproject.toml, the README it names and the package folders it maps, nothing else."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", project["project"].get("readme", "README.md")):
        shutil.copy2(root / name, dest / name)
    for folder in sorted(folders):
        shutil.copytree(root / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def tree_hash(folder: Path) -> str:
    """sha256 over the relative paths and bytes of a folder's files (what the job's code is)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------- the cluster


def client(address: str | None, token: str = "") -> Any:
    """A Job Submission client on ``address`` (http://<head>:8265), sending ``token`` when one is given
    (otherwise Ray's own token lookup applies)."""
    if not address:
        raise ConfigError("submit.address: name the cluster's job API, e.g. --address http://<head>:8265")
    for name in _RAY_ADDRESS_VARIABLES:
        value = os.environ.get(name)
        if value and value.rstrip("/") != address.rstrip("/"):
            raise ConfigError(
                f"{name}={value} is set and Ray's client would use it instead of {address}; unset it or make them agree"
            )
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise StageUnavailable("submitting jobs needs Ray: pip install 'persona4rec[ray]'") from None
    from ray.exceptions import AuthenticationError

    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError:
        refused = "refused the auth token (see submit.token_env, submit.token_file)"
        raise JobError(f"the Ray cluster at {address} {refused}") from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise JobError(f"no Ray job API answers at {address}: {exc}") from None


def submit(jobs: Any, sub: Submission, cfg: Config) -> str:
    """Send a staged submission; returns its id."""
    return jobs.submit_job(
        entrypoint=sub.entrypoint,
        submission_id=sub.submission_id,
        runtime_env=sub.runtime_env,
        metadata=sub.metadata,
        entrypoint_num_cpus=cfg.submit.entrypoint_num_cpus or None,
        entrypoint_num_gpus=cfg.submit.entrypoint_num_gpus or None,
    )


def follow(jobs: Any, job_id: str, write: Callable[[str], None]) -> str:
    """Stream a job's logs until it ends; returns its final status."""

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the log stream broke off: the job itself may still be running
        write(f"[p4r: the log stream ended early: {exc}]\n")
    return wait(jobs, job_id)


def wait(jobs: Any, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    """Poll a job until it is in a terminal state (or ``timeout_s`` passes); returns the last status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(jobs.get_job_status(job_id).value)
        if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(poll_s)


def describe(info: Any) -> dict[str, Any]:
    """The fields of a job worth showing (Ray's JobDetails or JobInfo)."""

    def when(ms: int | None) -> str | None:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else None

    return {
        "id": getattr(info, "submission_id", None) or getattr(info, "job_id", None),
        "status": str(info.status.value),
        "message": info.message,
        "entrypoint": info.entrypoint,
        "start": when(info.start_time),
        "end": when(info.end_time),
        "metadata": dict(info.metadata or {}),
    }

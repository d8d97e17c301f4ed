"""Real clusters on loopback, one of each kind per test session (issue #28).

- :func:`spark_standalone`: a Spark standalone master and one worker (``spark-class`` from pyspark), so that
  `p4r prepare` runs with ``spark.master=spark://...`` and its executors live in another JVM;
- :func:`ray_multinode`: a Ray head that runs no tasks (``--num-cpus=0``, as in the Compose file and the
  RayJobs) and worker nodes started with ``ray start --address=HEAD``, each with a custom resource of its own
  (``p4r_node_N``); stage actors can only land on a worker, and a test can kill one (SIGKILL to its process
  group: a crashed machine) and start another;
- :func:`milvus_server`: the Milvus 2.3.5 standalone server (``milvus-server`` from the ``milvus`` package,
  embedded etcd and local storage), a real server with shards and aliases and without grouping search.

Every port is chosen free, every address is 127.0.0.1 where the engine lets us say so, each cluster lives in
its own temporary folder and is stopped (process group by process group) at the end of the session. A
cluster that cannot start where its engine is present fails the tests that use it; only a missing engine
(no Java for Spark, no ``milvus-server``) skips them, with the reason.

Registered from tests/conftest.py (``pytest_plugins``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _stop_group, _tail, free_port, wait_for_http

BIN = Path(sys.executable).parent

#: The flags the tests' Ray head and workers share with infra/deploy (Compose and the RayJobs): the head runs
#: no actors, the workers join it by address. tests/test_deploy_manifests.py checks the manifests keep them.
RAY_HEAD_FLAGS = ("--head", "--num-cpus=0")
RAY_WORKER_FLAGS = ("--address",)


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment for a cluster process or a `p4r` that joins one: no other Ray's address, and Ray's token
    authentication off (Ray >= 2.52 turns it on by itself when a token file exists, in some processes and not in
    others; this cluster listens on loopback only)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"
    env.update(extra)
    return env


def _spawn(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )  # fmt: skip


def _json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait(what: str, ready, *, alive, timeout_s: float, log: Path, poll_s: float = 0.3) -> None:
    """Poll ``ready()`` (exceptions count as not yet) until true; fail with the log's tail otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if ready():
                return
        if not alive() or time.monotonic() > deadline:
            why = "stopped" if not alive() else f"was not ready within {timeout_s:.0f} s"
            pytest.fail(f"{what} {why}:\n{_tail(log)}", pytrace=False)
        time.sleep(poll_s)


# -------------------------------------------------------------------------------------------- Spark


@dataclass
class SparkCluster:
    master: str  # spark://127.0.0.1:PORT
    web: str  # the master's web UI (its /json/ says which workers and applications it has)
    work_dir: Path  # the worker's work dir: one folder per application that ran executors here

    def overrides(self) -> list[str]:
        """The `p4r` key=value that point a stage's Spark at this cluster, with the driver on loopback."""
        conf = {
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.executor.memory": "1g",
            "spark.cores.max": "2",
        }
        return [
            f"spark.master={self.master}",
            "spark.driver_memory=1g",
            "spark.shuffle_partitions=4",
            f"spark.conf={json.dumps(conf)}",
        ]

    def state(self) -> dict[str, Any]:
        return _json(f"{self.web}/json/")


@pytest.fixture(scope="session")
def spark_standalone() -> Iterator[SparkCluster]:
    """A Spark standalone master and one worker (2 cores, 1.5 GB) on 127.0.0.1, from pyspark's own jars."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark standalone needs a Java runtime (apt-get install openjdk-17-jre-headless)")
    import pyspark

    home = Path(pyspark.__file__).parent
    temp = Path(tempfile.mkdtemp(prefix="p4r-spark-", dir="/tmp"))
    work = temp / "work"
    work.mkdir()
    env = _clean_env(
        SPARK_HOME=str(home), SPARK_LOCAL_IP="127.0.0.1", SPARK_LOCAL_DIRS=str(temp / "local"),
        SPARK_LOG_DIR=str(temp / "logs"), SPARK_DAEMON_MEMORY="256m", PYSPARK_PYTHON=sys.executable,
    )  # fmt: skip
    port, web_port, worker_port, worker_web = free_port(), free_port(), free_port(), free_port()
    spark_class = str(home / "bin" / "spark-class")
    master_log, worker_log = temp / "master.log", temp / "worker.log"
    master = _spawn(
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(web_port)], master_log, env, cwd=temp,
    )  # fmt: skip
    worker = None
    cluster = SparkCluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{web_port}", work)
    try:
        wait_for_http(f"{cluster.web}/json/", alive=lambda: master.poll() is None, what="the Spark master",
                      timeout_s=120, log=master_log)  # fmt: skip
        worker = _spawn(
            [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", str(worker_port),
             "--webui-port", str(worker_web), "--cores", "2", "--memory", "1536m", "--work-dir", str(work),
             cluster.master], worker_log, env, cwd=temp,
        )  # fmt: skip
        _wait("the Spark worker", lambda: cluster.state()["aliveworkers"] >= 1,
              alive=lambda: worker.poll() is None, timeout_s=120, log=worker_log)  # fmt: skip
        yield cluster
    finally:
        for proc in (worker, master):
            if proc is not None:
                _stop_group(proc, grace_s=15)
        shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- Ray


@dataclass
class RayNode:
    name: str  # its custom resource, p4r_node_N
    proc: subprocess.Popen
    log: Path
    node_id: str = ""


@dataclass
class RayCluster:
    """A head (no CPUs) and worker nodes on loopback; `p4r` joins it with ``ray.address=<gcs>``."""

    gcs: str  # 127.0.0.1:PORT
    dashboard: str  # http://127.0.0.1:PORT (state API, job submission)
    temp: Path
    head: subprocess.Popen
    workers: list[RayNode] = field(default_factory=list)
    started: int = 0

    def overrides(self) -> list[str]:
        return [f"ray.address={self.gcs}"]

    def nodes(self) -> list[Any]:
        from ray.util.state import list_nodes

        return list_nodes(address=self.dashboard, limit=1000, detail=True, raise_on_missing_output=False)

    def actors(self, class_name: str) -> list[Any]:
        """Every actor of that class the cluster has had (dead ones included)."""
        from ray.util.state import list_actors

        found = list_actors(address=self.dashboard, filters=[("class_name", "=", class_name)], limit=10_000,
                            detail=True, raise_on_missing_output=False)  # fmt: skip
        return list(found)

    def alive_workers(self) -> list[RayNode]:
        return [w for w in self.workers if w.proc.poll() is None]

    def add_worker(self, num_cpus: int = 1) -> RayNode:
        """Start a worker node (its own temp dir and ports, a custom resource ``p4r_node_N``) and wait for it."""
        self.started += 1
        name = f"p4r_node_{self.started}"
        temp = self.temp / name
        temp.mkdir()
        ports = {name: free_port() for name in ("node-manager-port", "object-manager-port", "metrics-export-port",
                                                  "runtime-env-agent-port", "dashboard-agent-grpc-port",
                                                  "dashboard-agent-listen-port")}  # fmt: skip
        log = self.temp / f"{name}.log"
        cmd = [str(BIN / "ray"), "start", f"--address={self.gcs}", "--block", "--node-ip-address=127.0.0.1",
               f"--num-cpus={num_cpus}", "--num-gpus=0", f"--resources={json.dumps({name: 1})}",
               "--object-store-memory=150000000", "--disable-usage-stats", f"--temp-dir={temp}",
               *(f"--{k}={v}" for k, v in ports.items())]  # fmt: skip
        proc = _spawn(cmd, log, _clean_env(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0"))
        node = RayNode(name, proc, log)

        def joined() -> bool:
            for n in self.nodes():
                if n.state == "ALIVE" and n.resources_total.get(name):
                    node.node_id = n.node_id
                    return True
            return False

        _wait(f"the Ray worker node {name}", joined, alive=lambda: proc.poll() is None, timeout_s=120, log=log)
        self.workers.append(node)
        return node

    def kill(self, node: RayNode) -> None:
        """SIGKILL the node's whole process group (raylet, agents, workers): a machine that died."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=30)

    def ensure_worker(self) -> RayNode:
        live = self.alive_workers()
        return live[0] if live else self.add_worker()


@pytest.fixture(scope="session")
def ray_multinode() -> Iterator[RayCluster]:
    """A Ray head with no CPUs (dashboard on, every port free, 127.0.0.1) and one worker node (1 CPU)."""
    temp = Path(tempfile.mkdtemp(prefix="p4r-rc-", dir="/tmp"))  # short: Ray's socket paths are length-capped
    ports = {name: free_port() for name in ("port", "dashboard-port", "ray-client-server-port",
                                              "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                              "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
                                              "object-manager-port")}  # fmt: skip
    log = temp / "head.log"
    cmd = [str(BIN / "ray"), "start", *RAY_HEAD_FLAGS, "--block", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--object-store-memory=100000000",
           "--disable-usage-stats", f"--temp-dir={temp / 'head'}",
           *(f"--{k}={v}" for k, v in ports.items())]  # fmt: skip
    head = _spawn(cmd, log, _clean_env(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0"))
    cluster = RayCluster(f"127.0.0.1:{ports['port']}", f"http://127.0.0.1:{ports['dashboard-port']}", temp, head)
    try:
        wait_for_http(f"{cluster.dashboard}/api/gcs_healthz", alive=lambda: head.poll() is None, what="the Ray head",
                      timeout_s=120, log=log)  # fmt: skip
        cluster.add_worker()
        yield cluster
    finally:
        for node in cluster.workers:
            if node.proc.poll() is None:
                _stop_group(node.proc, grace_s=10)
        _stop_group(head, grace_s=15)
        shutil.rmtree(temp, ignore_errors=True)


# ------------------------------------------------------------------------------------------- Milvus

#: The ports milvus-server takes as options (the rest of its settings are --extra-config).
_MILVUS_PORTS = (
    "proxy-port", "etcd-port", "root-coord-port", "proxy-internal-port", "query-coord-port", "query-node-port",
    "index-coord-port", "index-node-port", "data-coord-port", "data-node-port",
)  # fmt: skip
_MILVUS_ROLES = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


@dataclass
class MilvusServer:
    uri: str  # http://127.0.0.1:PORT
    data: Path
    log: Path


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[MilvusServer]:
    """The Milvus 2.3.5 standalone server (`milvus-server` of the ``milvus`` package) on 127.0.0.1.

    Every port is given free (but its metrics and health port, which `milvus-server` itself takes as the first
    free one from 9091). Its embedded etcd listens on 127.0.0.1 (an etcd config file, named by the
    ``ETCD_CONFIG_PATH`` variable Milvus reads), every component announces 127.0.0.1 (``<role>.ip``); Milvus
    2.3's gRPC servers themselves take no listen address and bind every interface.
    """
    exe = BIN / "milvus-server"
    if not exe.exists():
        pytest.skip("no milvus-server: pip install milvus==2.3.5 (the dev extra installs it)")
    temp = Path(tempfile.mkdtemp(prefix="p4r-milvus-", dir="/tmp"))
    ports = {name: free_port() for name in _MILVUS_PORTS}
    peer = free_port()
    etcd = temp / "etcd.yaml"
    client_url, peer_url = f"http://127.0.0.1:{ports['etcd-port']}", f"http://127.0.0.1:{peer}"
    etcd.write_text(
        f"name: p4r-test\nlisten-client-urls: {client_url}\nadvertise-client-urls: {client_url}\n"
        f"listen-peer-urls: {peer_url}\ninitial-advertise-peer-urls: {peer_url}\ninitial-cluster: p4r-test={peer_url}\n"
    )
    cmd = [str(exe), "--data", str(temp / "data"), *(f"--{k}={v}" for k, v in ports.items())]
    for role in _MILVUS_ROLES:
        cmd += ["--extra-config", f"{role}.ip=127.0.0.1"]
    log = temp / "server.log"
    proc = _spawn(cmd, log, _clean_env(ETCD_CONFIG_PATH=str(etcd)), cwd=temp)
    server = MilvusServer(f"http://127.0.0.1:{ports['proxy-port']}", temp / "data", log)

    def answers() -> bool:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=server.uri, timeout=5)
        try:
            return bool(client.get_server_version())
        finally:
            client.close()

    try:
        _wait("the Milvus server", answers, alive=lambda: proc.poll() is None, timeout_s=120, log=log, poll_s=1)
        yield server
    finally:
        _stop_group(proc, grace_s=30)
        shutil.rmtree(temp, ignore_errors=True)


# ------------------------------------------------------------------------------- stages on the clusters

DATASET = "amazon2014-musical-instruments"
#: Reviews from 2013 on (544 interactions, 92 users, 62 items): conftest's FAST corpus, small enough for a cluster.
SMALL = ("prepare.min_timestamp=1356998400",)


def p4r(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`p4r ARGS` as its own process (the way a user runs a stage), output captured."""
    return subprocess.run([str(BIN / "p4r"), *args], capture_output=True, text=True, timeout=timeout,
                          env=env or _clean_env(HF_HUB_OFFLINE="1"), check=False)  # fmt: skip


def current(root: Path, stage: str) -> Path:
    """The version folder a stage's ``CURRENT`` names."""
    base = root / DATASET / stage
    return base / (base / "CURRENT").read_text().strip()


def manifest(folder: Path) -> dict[str, Any]:
    """A stage version's manifest.json; its summary under ``summary`` (older manifests called it ``counts``)."""
    doc = json.loads((folder / "manifest.json").read_text())
    if "counts" in doc and "summary" not in doc:
        doc["summary"] = doc.pop("counts")
    return doc


@dataclass
class Prepared:
    root: Path  # artifacts root holding the prepared corpus
    args: list[str]  # -d/paths/data key=value every later stage repeats
    folder: Path  # the prepare version
    output: str  # what `p4r prepare` printed


@pytest.fixture(scope="session")
def cluster_prepared(spark_standalone: SparkCluster, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """`p4r prepare` (the small Musical Instruments corpus) with its Spark on the standalone cluster."""
    from tests.conftest import MUSICAL_INSTRUMENTS

    root = tmp_path_factory.mktemp("cluster-artifacts")
    args = ["-d", DATASET, f"paths.artifacts={root}", f"data.local_dir={MUSICAL_INSTRUMENTS}", *SMALL]
    done = p4r("prepare", "-q", *args, *spark_standalone.overrides(), env=_clean_env(SPARK_LOCAL_IP="127.0.0.1"))
    assert done.returncode == 0, done.stdout + done.stderr
    return Prepared(root, args, current(root, "prepare"), done.stdout + done.stderr)

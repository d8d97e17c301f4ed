"""benchmarks/capacity.py: the capacity table is the arithmetic docs/capacity.md describes."""

from __future__ import annotations

import pytest

from tests.conftest import benchmark_script

capacity = benchmark_script("capacity")


def table(*argv: str) -> dict[str, str]:
    return {q: v for q, v, _ in capacity.rows(capacity.parse(list(argv)))}


def test_index_size_is_personas_times_dim_times_four_bytes():
    t = table("--items", "1000000", "--personas-per-item", "2.8", "--dim", "384")
    assert t["persona vectors"] == "2,800,000"
    assert t["raw vectors (GB)"] == "4.30"  # 2.8e6 x 384 x 4 B = 4.30 GB
    assert t["HNSW links (GB)"] == "0.36"  # 2.8e6 x 2 x 16 x 4 B
    assert t["LLM wall time (h)"] == "-"  # no GPU throughput given: none is guessed


def test_wall_time_divides_tokens_by_engine_throughput():
    t = table(
        "--items", "1000", "--tokens-per-item", "1800", "--tokens-per-s", "100", "--gpus", "4", "--gpus-per-engine", "2"
    )
    assert t["LLM engines"] == "2"
    assert t["LLM wall time (h)"] == "2.5"  # 1.8e6 tokens / (100 tok/s x 2 engines) = 9,000 s


def test_paper_mode_counts_the_judge_calls():
    t = table("--items", "900", "--mode", "paper", "--interactions-per-item", "8", "--judge-tokens-per-call", "500")
    assert t["LLM calls (reason)"] == "5,760"  # 6.4 calls per item, measured
    assert t["LLM calls (align judge)"] == "7,200"
    assert t["LLM tokens (align judge)"] == "3,600,000"
    assert table("--items", "900")["LLM calls (align judge)"] == "0"


def test_measured_defaults_are_cited_and_inputs_win():
    rows = capacity.rows(capacity.parse(["--items", "10"]))
    basis = dict((q, b) for q, _, b in rows)
    assert "RESULTS.md" in basis["LLM tokens per item (reason)"]
    rows = capacity.rows(capacity.parse(["--items", "10", "--tokens-per-item", "99"]))
    assert dict((q, b) for q, _, b in rows)["LLM tokens per item (reason)"] == "input"


def test_prints_a_markdown_table(capsys):
    capacity.main(["--items", "5"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["| quantity | value | basis |", "|---|---|---|"]
    assert len(lines) > 10 and all(line.startswith("| ") and line.endswith(" |") for line in lines[2:])


@pytest.mark.parametrize(
    "argv", [["--items", "0"], ["--items", "5", "--gpus-per-engine", "0"], ["--items", "5", "--mode", "x"]]
)
def test_rejects_impossible_inputs(argv):
    with pytest.raises(SystemExit):
        capacity.parse(argv)

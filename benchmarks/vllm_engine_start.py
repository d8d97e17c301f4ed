"""vLLM engine start-up and batch throughput on this CPU, by how the engine core is run and its dtype.

    python benchmarks/vllm_engine_start.py ~/.cache/p4r-offline-models/qwen2.5-0.5b/hf
    python benchmarks/vllm_engine_start.py ~/.cache/p4r-offline-models/qwen2.5-1.5b/hf --configs dtype

Each configuration runs in a fresh child process (vLLM reads its settings when the engine is built):
an engine is built through the project's own ``VLLMEngine`` and 8 chat prompts with a JSON schema are
answered in one batch (200 generated tokens each at most). ``--configs process`` compares where the engine
core runs, ``--configs dtype`` bfloat16 against float32 (what ``llm.vllm.dtype: auto`` picks on a CPU
without native bf16). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = {  # label: llm.vllm options
    "process": {
        "engine core in its own process (vLLM's default)": {"engine_process": True},
        "engine core in-process (llm.vllm.engine_process: false)": {"engine_process": False},
    },
    "dtype": {
        "in-process, dtype bfloat16": {"engine_process": False, "dtype": "bfloat16"},
        "in-process, dtype float32": {"engine_process": False, "dtype": "float32"},
    },
}


def child(model: str, options: dict) -> None:
    from persona4rec.config import LLMConfig, VLLMOptions
    from persona4rec.ray_actors.engines import ChatRequest, build_engine

    t0 = time.perf_counter()
    cfg = LLMConfig(model=model, max_model_len=2048, vllm=VLLMOptions(**{"cpu_kv_cache_gib": 1, **options}))
    engine = build_engine(cfg)
    start = time.perf_counter() - t0
    schema = {"type": "object", "properties": {"story": {"type": "string", "maxLength": 600}}, "required": ["story"]}
    requests = [
        ChatRequest(
            str(i), ({"role": "user", "content": f"Tell a long story about guitar {i}, in JSON."},), schema, 200
        )
        for i in range(8)
    ]
    t0 = time.perf_counter()
    out = engine.complete(requests)
    wall = time.perf_counter() - t0
    engine.close()
    tokens = sum(c.completion_tokens for c in out)
    print(json.dumps({"start_s": round(start, 1), "tok_s": round(tokens / wall, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="Hugging Face folder or hub id")
    ap.add_argument("--configs", choices=sorted(CONFIGS), default="process", help="which rows (default: process)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # one configuration's llm.vllm options, as JSON
    args = ap.parse_args()
    if args.child is not None:
        child(os.path.expanduser(args.model), json.loads(args.child))
        return
    print("| vLLM configuration | engine start (s) | generated tok/s (batch of 8) |\n|---|---|---|")
    for label, options in CONFIGS[args.configs].items():
        cmd = [sys.executable, __file__, args.model, "--child", json.dumps(options)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"| {label} | {row['start_s']} | {row['tok_s']} |")


if __name__ == "__main__":
    main()

"""vLLM engine start-up and batch throughput on this CPU, by how the engine core is run.

    python benchmarks/vllm_engine_start.py ~/.cache/p4r-offline-models/qwen2.5-0.5b/hf

Each configuration runs in a fresh child process (vLLM reads its settings when the engine is built):
an engine is built through the project's own ``VLLMEngine`` and 8 chat prompts with a JSON schema are
answered in one batch (200 generated tokens each at most). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = {
    "engine core in its own process (vLLM's default)": True,
    "engine core in-process (llm.vllm.engine_process: false)": False,
}


def child(model: str, engine_process: bool) -> None:
    from persona4rec.config import LLMConfig, VLLMOptions
    from persona4rec.ray_actors.engines import ChatRequest, build_engine

    t0 = time.perf_counter()
    cfg = LLMConfig(
        model=model, max_model_len=2048, vllm=VLLMOptions(cpu_kv_cache_gib=1, engine_process=engine_process)
    )
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
    ap.add_argument("--child", choices=["0", "1"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(os.path.expanduser(args.model), args.child == "1")
        return
    print("| vLLM configuration | engine start (s) | generated tok/s (batch of 8) |\n|---|---|---|")
    for label, separate in CONFIGS.items():
        cmd = [sys.executable, __file__, args.model, "--child", "1" if separate else "0"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"| {label} | {row['start_s']} | {row['tok_s']} |")


if __name__ == "__main__":
    main()

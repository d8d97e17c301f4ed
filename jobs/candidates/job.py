"""The candidates stage: first-stage generators trained on the training split, top-N lists per user.

For each generator in ``candidates.generators``, every combination of its ``grid`` is trained (BPR-MF and
LightGCN stop early on validation NDCG@top_n) and the best on validation is kept. It then lists, for
every user, the top-N unseen items: for 'valid' without the training items (what rerankers tune on),
for 'test' without the validation item as well (what the evaluation scores). Lists are never padded.
"""

from __future__ import annotations

import itertools
import shutil
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from persona4rec import schemas
from persona4rec.artifacts import StageResult
from persona4rec.cf.base import Generator, full_ranking, recommend
from persona4rec.cf.data import Interactions
from persona4rec.config import Config, stable_hash
from persona4rec.jobs.candidates.stage import CandidatesSummary
from persona4rec.stage import Build


def load_interactions(prepared: StageResult) -> Interactions:
    table = pq.read_table(prepared.table("interactions"), columns=["user_id", "item_id", "split"])
    return Interactions.from_table(table)


def grid(section: Any) -> list[dict[str, Any]]:
    """Every parameter combination of a generator section (its own values, overridden by the grid)."""
    base = section.model_dump(exclude={"grid"})
    keys = sorted(section.grid)
    combos = itertools.product(*(section.grid[k] for k in keys))
    return [{**base, **{k: type(base[k])(v) for k, v in zip(keys, values, strict=True)}} for values in combos]


def make(name: str, params: dict[str, Any], cfg: Config, storage: str, progress: bool) -> Generator:
    from persona4rec.cf.popularity import Popularity
    from persona4rec.cf.train import EmbeddingGenerator

    if name == "popularity":
        return Popularity()
    run_name = f"{name}-{stable_hash(params)[:12]}"
    return EmbeddingGenerator(name, params, cfg.candidates, storage=storage, run_name=run_name, progress=progress)


def build(b: Build) -> CandidatesSummary:
    cfg, timer = b.cfg, b.timer
    if cfg.candidates.num_workers:
        from persona4rec.infra.ray import ensure_ray

        ensure_ray(cfg.ray)
    with timer("load"):
        data = load_interactions(b.inputs["prepare"])
    storage = str((b.folder / "ray").resolve())
    tables, report = [], {}
    for name in cfg.candidates.generators:
        with timer(name):
            gen, tried = fit_best(name, data, cfg, storage, b.progress)
            tables.append(lists(gen, data, cfg.candidates.top_n, b.progress))
        test = full_ranking(gen, data, "test", (10, cfg.candidates.top_n))
        report[name] = {"params": gen.params, "tried": tried, "test_full_ranking": test}
    shutil.rmtree(b.folder / "ray", ignore_errors=True)
    table = pa.concat_tables(tables)
    b.add_table(table, schemas.CANDIDATES)
    return CandidatesSummary(
        users=data.n_users, items=data.n_items, train_interactions=data.nnz, top_n=cfg.candidates.top_n,
        generators=report, hit_rate=hit_rates(table),
    )  # fmt: skip


def fit_best(name: str, data: Interactions, cfg: Config, storage: str, progress: bool):
    """The generator with the best validation NDCG@top_n over its grid, and what every setting scored."""
    key = f"ndcg@{cfg.candidates.top_n}"
    section = getattr(cfg.candidates, name, None)
    settings = grid(section) if section is not None else [{}]
    best, best_score, tried = None, -1.0, []
    for params in settings:
        gen = make(name, params, cfg, storage, progress).fit(data)
        score = full_ranking(gen, data, "valid", (cfg.candidates.top_n,))[key]
        changed = {k: params[k] for k in (section.grid if section is not None else {})}
        tried.append({**changed, f"valid_{key}": score, "checks": len(gen.history)})
        if progress:
            print(f"candidates {name} {changed or ''}: valid {key} {score:.4f}", flush=True)
        if best is None or score > best_score:
            best, best_score = gen, score
    return best, tried


def lists(gen: Generator, data: Interactions, n: int, progress: bool) -> pa.Table:
    """Top-n lists of every user with a held-out item, for 'valid' and 'test'."""
    cols: dict[str, list] = {k: [] for k in schemas.CANDIDATES.names}
    for split, target in (("valid", data.valid), ("test", data.test)):
        users = np.flatnonzero(target >= 0)
        items, scores = recommend(gen, data, users, n, split)
        for row in tqdm(range(len(users)), desc=f"candidates: {gen.name} {split}", disable=not progress):
            keep = items[row] >= 0
            cols["items"].append(data.item_ids[items[row][keep]].tolist())
            cols["scores"].append(scores[row][keep].astype(np.float64).tolist())
        cols["generator"] += [gen.name] * len(users)
        cols["split"] += [split] * len(users)
        cols["user_id"] += data.user_ids[users].tolist()
        cols["target"] += data.item_ids[target[users]].tolist()
    return pa.Table.from_pydict(cols, schema=schemas.CANDIDATES.arrow())


def hit_rates(table: pa.Table) -> dict[str, dict[str, float]]:
    """Share of users whose held-out item is in their list (HR@N), per generator and split."""
    hits: dict[tuple[str, str], list[bool]] = {}
    cols = (table[c].to_pylist() for c in ("generator", "split", "target", "items"))
    for gen, split, target, items in zip(*cols, strict=True):
        hits.setdefault((gen, split), []).append(target in items)
    out: dict[str, dict[str, float]] = {}
    for (gen, split), h in hits.items():
        out.setdefault(gen, {})[split] = float(np.mean(h))
    return out

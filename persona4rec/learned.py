"""The learned reranker: LightGBM LambdaRank over persona and first-stage features of each candidate.

Where a first stage is strong, this is how the persona signal reaches the user: a learning-to-rank model
that knows when to trust the first stage and when the personas. Every feature is available online from a
``/rerank`` request that carries first-stage scores, plus the served snapshot:

==================  ======================================================================================
``persona_max``     max over the item's personas of cos(user, persona): the persona score (Eq. 10)
``persona_second``  the second best persona's cosine (the best again for an item with one persona)
``persona_mean``    the mean cosine over the item's personas
``persona_count``   how many personas the item has (1 for an item indexed by its summary row)
``persona_z``       the persona score z-scored within the list (how this item stands among the candidates)
``persona_rank``    its 0-based position by persona score within the list
``first_z``         the first-stage score, z-scored within the list (scale-free across generators)
``first_rank``      the first-stage position, 0-based (by score; ties keep the given order)
``first_gap``       (the list's best first-stage score - this one) / the list's score spread
``log_popularity``  log(1 + interactions known for the item when scoring)
``log_history``     log(1 + interactions known for the user when scoring)
==================  ======================================================================================

Not used, because the service holds neither: the untuned encoder's cosines and the summary's cosine.

Training reads validation lists only (one group per user whose held-out item is in the list, label 1 on
it). The trees start from a linear base score ``a * first_z + b * persona_z`` (LightGBM's init score)
rather than from nothing, so that with a few hundred lists they learn a correction to a strong first
stage instead of re-learning it; with 0 rounds the model is that linear z-score fusion alone.
Hyper-parameters (the base's weights, leaves, minimum leaf size, boosting rounds) are chosen by K-fold
cross-validation over users on NDCG@10 (:mod:`persona4rec.ranking`'s tie policy), then the model is refit
on every list. A model without the persona features only tries bases with ``b = 0``. The arg-max persona
stays the explanation.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from persona4rec.errors import StageUnavailable
from persona4rec.ranking import ndcg, target_ranks
from persona4rec.scoring import PersonaTable, Reranking

FEATURES: tuple[str, ...] = (
    "persona_max", "persona_second", "persona_mean", "persona_count", "persona_z", "persona_rank",
    "first_z", "first_rank", "first_gap", "log_popularity", "log_history",
)  # fmt: skip
PERSONA_FEATURES = frozenset(f for f in FEATURES if f.startswith("persona_"))
MODEL_FILE = "model.txt"
META_FILE = "reranker.json"
K = 10


def features(
    stats: dict[str, np.ndarray], first_stage: np.ndarray, popularity: np.ndarray, history: np.ndarray
) -> np.ndarray:
    """(n, c, len(FEATURES)) float32 features of n lists of c candidates; NaN on padding.

    ``stats``: :meth:`~persona4rec.scoring.PersonaTable.persona_stats` of the candidates; ``first_stage``
    (n, c) first-stage scores, -inf on padding; ``popularity`` (n, c) interactions known per candidate;
    ``history`` (n,) interactions known per user.
    """
    fs = np.asarray(first_stage, dtype=np.float64)
    valid = np.isfinite(fs)
    n, c = fs.shape
    cnt = np.maximum(valid.sum(1, keepdims=True), 1)
    filled = np.where(valid, fs, 0.0)
    mean = filled.sum(1, keepdims=True) / cnt
    std = np.sqrt((np.where(valid, fs - mean, 0.0) ** 2).sum(1, keepdims=True) / cnt)
    spread = np.where(std > 0, std, 1.0)
    top = np.where(valid, fs, -np.inf).max(1, keepdims=True) if c else np.zeros((n, 1))
    pm = np.asarray(stats["max"], dtype=np.float64)
    scored = valid & np.isfinite(pm)
    p_cnt = np.maximum(scored.sum(1, keepdims=True), 1)
    p_mean = np.where(scored, pm, 0.0).sum(1, keepdims=True) / p_cnt
    p_std = np.sqrt((np.where(scored, pm - p_mean, 0.0) ** 2).sum(1, keepdims=True) / p_cnt)
    cols = {
        "persona_max": stats["max"],
        "persona_second": stats["second"],
        "persona_mean": stats["mean"],
        "persona_count": stats["count"],
        "persona_z": np.where(scored, (pm - p_mean) / np.where(p_std > 0, p_std, 1.0), np.nan),
        "persona_rank": _positions(np.where(scored, pm, -np.inf)),
        "first_z": (fs - mean) / spread,
        "first_rank": _positions(np.where(valid, fs, -np.inf)),
        "first_gap": (top - fs) / spread,
        "log_popularity": np.log1p(np.asarray(popularity, dtype=np.float64)),
        "log_history": np.broadcast_to(np.log1p(np.asarray(history, dtype=np.float64))[:, None], (n, c)),
    }
    out = np.stack([np.asarray(cols[f], dtype=np.float64) for f in FEATURES], axis=2)
    out[~valid] = np.nan
    out[~np.isfinite(out)] = np.nan  # an item without personas has -inf persona cosines: missing, not huge
    return out.astype(np.float32)


def _positions(scores: np.ndarray) -> np.ndarray:
    """0-based position of each column when its row is sorted by score, best first (ties: column order)."""
    n, c = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.arange(c)[None, :].repeat(n, 0), axis=1)
    return out


@dataclass
class LearnedReranker:
    """A fitted LambdaRank model over a subset of :data:`FEATURES` (serialisable: text model + JSON)."""

    features: tuple[str, ...]
    params: dict[str, Any]
    rounds: int
    base: tuple[float, float] = (0.0, 0.0)  # the trees add to base[0] * first_z + base[1] * persona_z
    generator: str = ""
    cv: dict[str, float] = field(default_factory=dict)  # every tried setting's mean validation NDCG@10
    groups: int = 0  # validation lists it was fitted on
    booster: Any = field(default=None, repr=False)

    def score(self, x: np.ndarray) -> np.ndarray:
        """(n, c) scores of candidates with full-feature rows ``x`` (n, c, len(FEATURES)); padding -inf."""
        n, c, _ = x.shape
        valid = ~np.isnan(x[..., FEATURES.index("first_rank")])
        out = np.full((n, c), -np.inf, dtype=np.float32)
        if valid.any():
            out[valid] = _predict(self.booster, x, self.features, self.rounds, self.base)[valid]
        return out

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / MODEL_FILE), num_iteration=self.rounds)
        meta = {k: v for k, v in asdict(self).items() if k != "booster"}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: Path) -> LearnedReranker:
        lgb = _lightgbm()
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        unknown = [f for f in meta["features"] if f not in FEATURES]
        if unknown:
            raise ValueError(f"{folder}: the reranker reads features this code does not make: {unknown}")
        meta["features"], meta["base"] = tuple(meta["features"]), tuple(meta["base"])
        return cls(**meta, booster=lgb.Booster(model_file=str(folder / MODEL_FILE)))


def fit(
    x: np.ndarray,
    target_col: np.ndarray,
    *,
    names: Sequence[str] = FEATURES,
    folds: int = 5,
    base: Sequence[tuple[float, float]] = ((0.0, 0.0), (1.0, 0.0), (1.0, 0.5), (1.0, 1.0), (1.0, 2.0)),
    leaves: Sequence[int] = (3, 7, 15),
    min_leaf: Sequence[int] = (50, 200),
    rounds: Sequence[int] = (0, 10, 25, 50, 100, 200, 400),
    learning_rate: float = 0.03,
    seed: int = 0,
    generator: str = "",
    progress: str | None = None,
) -> LearnedReranker:
    """LambdaRank on validation lists ``x`` (n, c, len(FEATURES)) whose held-out item sits at ``target_col``
    (lists that missed it, -1, teach nothing and are left out); settings chosen by cross-validation over users.
    Bases read ``first_z`` and ``persona_z`` from ``x`` whatever ``names`` holds; without the persona features
    among ``names`` only bases with no persona weight are tried. 0 rounds: the base alone. ``progress``: the
    label of a progress bar over the cross-validation's fits (None: no bar)."""
    lgb = _lightgbm()
    keep = np.flatnonzero(np.asarray(target_col) >= 0)
    if len(keep) < 2 * folds:
        raise StageUnavailable(f"the learned reranker needs at least {2 * folds} validation lists with a hit, "
                               f"not {len(keep)}")  # fmt: skip
    x, target_col = x[keep], np.asarray(target_col)[keep]
    if not PERSONA_FEATURES & set(names):
        base = list(dict.fromkeys((a, 0.0) for a, _ in base))
    fold_of = np.random.default_rng(seed).permutation(len(x)) % folds
    order = np.arange(x.shape[1])
    scores: dict[tuple[tuple[float, float], int, int, int], list[float]] = {}
    settings = list(itertools.product(base, leaves, min_leaf))
    bar = tqdm(total=len(settings) * folds, desc=progress, unit="fit", disable=progress is None, leave=False)
    for b, leaf, minimum in settings:
        params = _params(leaf, minimum, learning_rate, seed)
        for f in range(folds):
            train, held = fold_of != f, fold_of == f
            data = _dataset(lgb, x[train], target_col[train], names, b)
            booster = lgb.train(params, data, num_boost_round=max(max(rounds), 1))
            for r in rounds:
                ranks = target_ranks(_predict(booster, x[held], names, r, b), target_col[held], order)
                scores.setdefault((b, leaf, minimum, r), []).append(ndcg(ranks, K))
            bar.update()
    bar.close()
    cv = {key: float(np.mean(v)) for key, v in scores.items()}
    # ties: the simpler model (fewer rounds, fewer leaves, larger leaves)
    b, leaf, minimum, best_rounds = max(cv, key=lambda k: (round(cv[k], 10), -k[3], -k[1], k[2]))
    params = _params(leaf, minimum, learning_rate, seed)
    booster = lgb.train(params, _dataset(lgb, x, target_col, names, b), num_boost_round=max(best_rounds, 1))
    return LearnedReranker(
        features=tuple(names), params=params, rounds=best_rounds, base=tuple(b), generator=generator,
        cv={f"base={a[0]:g}/{a[1]:g},leaves={c},min_leaf={d},rounds={e}": v for (a, c, d, e), v in cv.items()},
        groups=len(x), booster=booster,
    )  # fmt: skip


def _params(leaves: int, min_leaf: int, learning_rate: float, seed: int) -> dict[str, Any]:
    return {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [K], "num_leaves": leaves,
        "min_data_in_leaf": min_leaf, "learning_rate": learning_rate, "feature_fraction": 0.9,
        "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "seed": seed, "deterministic": True,
        "force_row_wise": True, "num_threads": 1, "verbose": -1,
    }  # fmt: skip


def _select(rows: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return rows[..., [FEATURES.index(n) for n in names]]


def _base(x: np.ndarray, base: tuple[float, float]) -> np.ndarray:
    """The score the trees start from: ``a * first_z + b * persona_z`` (a missing z counts 0)."""
    a, b = base
    first, persona = (np.nan_to_num(x[..., FEATURES.index(f)]) for f in ("first_z", "persona_z"))
    return a * first + b * persona


def _dataset(lgb: Any, x: np.ndarray, target_col: np.ndarray, names: Sequence[str], base: tuple[float, float]) -> Any:
    valid = ~np.isnan(x[..., FEATURES.index("first_rank")])
    labels = np.zeros(valid.shape, dtype=np.float32)
    labels[np.arange(len(x)), target_col] = 1.0
    return lgb.Dataset(
        _select(x[valid], names), label=labels[valid], group=valid.sum(1), init_score=_base(x, base)[valid],
        feature_name=list(names), free_raw_data=False,
    )  # fmt: skip


def _predict(booster: Any, x: np.ndarray, names: Sequence[str], rounds: int, base: tuple[float, float]) -> np.ndarray:
    """(n, c) scores: the base plus the trees (LightGBM's predict leaves the init score out); padding -inf."""
    valid = ~np.isnan(x[..., FEATURES.index("first_rank")])
    out = np.full(valid.shape, -np.inf)
    trees = booster.predict(_select(x[valid], names), num_iteration=rounds) if rounds > 0 else 0.0
    out[valid] = trees + _base(x, base)[valid]
    return out


def _lightgbm() -> Any:
    try:
        import lightgbm
    except ImportError:
        raise StageUnavailable("the learned reranker runs LightGBM: pip install 'persona4rec[rank]'") from None
    return lightgbm


def rerank(
    table: PersonaTable,
    user: np.ndarray,
    candidates: Sequence[str],
    first_stage: Sequence[float],
    model: LearnedReranker,
    popularity: Sequence[float],
    history: int,
) -> Reranking:
    """The service's learned rerank of one request: candidates best first, each explained by its best persona.

    ``first_stage``: one finite score per candidate (the request's); ``popularity``: interactions known per
    candidate; ``history``: interactions known for the user. The features are :func:`features`, as in training.
    """
    if len(first_stage) != len(candidates) or len(popularity) != len(candidates):
        raise ValueError(f"{len(first_stage)} first-stage scores for {len(candidates)} candidates")
    rows = table.rows(candidates)
    stats = table.persona_stats(np.asarray(user, dtype=np.float32)[None, :], rows[None, :])
    fs = np.asarray(first_stage, dtype=np.float64)[None, :]
    x = features(stats, fs, np.asarray(popularity, dtype=np.float64)[None, :], np.array([history]))
    final = model.score(x)[0]
    order = np.argsort(-final, kind="stable")
    return Reranking(
        table=table,
        item_ids=[candidates[i] for i in order.tolist()],
        scores=final[order].astype(float).tolist(),
        persona_scores=stats["max"][0, order].astype(float).tolist(),
        first_stage=fs[0, order].tolist(),
        best=stats["best"][0, order].tolist(),
    )

"""The learned reranker: its features by hand, LambdaRank finding a planted signal, a saved model that scores
the same, and training that never reads what is known only at test time."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from persona4rec import learned
from persona4rec.learned import FEATURES, LearnedReranker, features, fit
from persona4rec.ranking import ndcg, target_ranks


def _stats(n: int, c: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    top = rng.random((n, c)).astype(np.float32)
    return {"max": top, "second": top - 0.1, "mean": top - 0.2, "count": np.full((n, c), 3), "best": np.zeros((n, c))}


def test_features_by_hand_and_padding_is_missing():
    stats = {
        "max": np.array([[0.5, -np.inf, 0.2]]),
        "second": np.array([[0.4, -np.inf, 0.2]]),
        "mean": np.array([[0.3, -np.inf, 0.2]]),
        "count": np.array([[2, 0, 1]]),
        "best": np.zeros((1, 3)),
    }
    fs = np.array([[1.0, 3.0, -np.inf]])  # the third candidate is padding
    x = features(stats, fs, np.array([[0, 9, 5]]), np.array([3]))
    col = {f: x[0, :, k] for k, f in enumerate(FEATURES)}
    assert col["first_z"][:2].tolist() == pytest.approx([-1.0, 1.0])  # mean 2, std 1
    assert col["first_rank"][:2].tolist() == [1, 0]
    assert col["first_gap"][:2].tolist() == pytest.approx([2.0, 0.0])
    assert col["log_popularity"][:2].tolist() == pytest.approx([0.0, math.log(10)])
    assert col["log_history"][:2].tolist() == pytest.approx([math.log(4)] * 2)
    assert math.isnan(col["persona_max"][1])  # an item without a persona row: missing, not -inf
    assert np.isnan(x[0, 2]).all()


def test_lambdarank_finds_a_planted_signal_and_round_trips(tmp_path: Path):
    rng = np.random.default_rng(0)
    n, c = 400, 20
    fs = np.sort(rng.random((n, c)), axis=1)[:, ::-1].copy()
    target = rng.integers(0, c, n)
    stats = _stats(n, c, rng)
    stats["max"][np.arange(n), target] += 0.6  # the persona score points at the held-out item
    x = features(stats, fs, rng.integers(0, 50, (n, c)), rng.integers(1, 20, n))
    train, test = slice(0, 300), slice(300, None)
    small = {"folds": 3, "base": ((0.0, 0.0),), "leaves": (7,), "min_leaf": (20,), "rounds": (25, 100)}
    model = fit(x[train], target[train], seed=0, **small)
    ranks = target_ranks(model.score(x[test]), target[test], np.arange(c))
    assert ndcg(ranks, 10) > 0.9  # the first stage's order alone is at chance here
    assert ndcg(target_ranks(-np.arange(c)[None].repeat(100, 0), target[test], np.arange(c)), 10) < 0.5
    # without the persona features the signal is gone
    blind = fit(x[train], target[train], names=[f for f in FEATURES if not f.startswith("persona_")], seed=0, **small)
    assert ndcg(target_ranks(blind.score(x[test]), target[test], np.arange(c)), 10) < 0.5
    back = LearnedReranker.load(model.save(tmp_path / "m"))
    np.testing.assert_allclose(back.score(x[test]), model.score(x[test]), rtol=1e-6)
    assert back.features == model.features and back.rounds == model.rounds and back.cv == model.cv


def test_learned_reranker_is_fitted_on_validation_knowledge_only(monkeypatch):
    """A signal planted only in what is known at test time (a test item seen 10^6 times) never reaches training."""
    from persona4rec.evaluation.rerankers import Lists
    from persona4rec.jobs.evaluate import job as evaluate_job
    from persona4rec.scoring import PersonaTable

    rng = np.random.default_rng(1)
    items = [f"i{k}" for k in range(30)]
    table = PersonaTable.of_vectors(np.array(items, dtype=object), rng.normal(size=(30, 8)).astype(np.float32))
    users = [f"u{k}" for k in range(40)]
    lists = [list(rng.choice(items, 20, replace=False)) for _ in users]
    valid = Lists.build(users, lists, [list(np.linspace(1, 0, 20)) for _ in users], [row[3] for row in lists])
    profiles = {u: rng.normal(size=8).astype(np.float32) for u in users}
    scorer = evaluate_job._Scorer(table, profiles_test=profiles, profiles_valid=profiles)
    known = evaluate_job._Known(
        item={"valid": {i: 5 for i in items}, "test": {**{i: 5 for i in items}, "i7": 10**6}},
        user={"valid": {u: 4 for u in users}, "test": {u: 10**6 for u in users}},
    )
    seen = {}

    def spy(x, target_col, **kwargs):
        seen["x"] = x
        return "model"

    monkeypatch.setattr(learned, "fit", spy)
    from persona4rec.config import load_config

    cfg = load_config(["data.local_dir=/nonexistent"], dataset="amazon2014-musical-instruments").config
    assert evaluate_job._fit_learned("learned", "lightgcn", scorer, valid, known, cfg, False) == "model"
    x = seen["x"]
    assert np.nanmax(x[..., FEATURES.index("log_popularity")]) == pytest.approx(math.log(6))
    assert np.nanmax(x[..., FEATURES.index("log_history")]) == pytest.approx(math.log(5))

"""Scoring against brute force: max over an item's personas of the cosine, the arg-max as explanation."""

from __future__ import annotations

import numpy as np
import pytest

from persona4rec.scoring import PersonaTable, UnknownItems, fuse, minmax, rerank, tune_fusion


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_table(rng: np.random.Generator, n_items: int = 40, dim: int = 16) -> PersonaTable:
    per_item = rng.integers(1, 8, size=n_items)  # 1..7 personas, like the reasoning stage writes
    items = np.repeat([f"item-{i:03d}" for i in range(n_items)], per_item)
    order = rng.permutation(len(items))  # rows arrive in no particular order
    items = items[order]
    n = len(items)
    return PersonaTable(
        persona_ids=np.array([f"p{i}" for i in range(n)], dtype=object),
        item_of=items,
        vectors=unit(rng.normal(size=(n, dim))),
        names=[f"name {i}" for i in range(n)],
        descriptions=[f"description {i}" for i in range(n)],
        rationales=[f"rationale {i}" for i in range(n)],
        evidence=[[f"r{i}"] for i in range(n)],
        kinds=["persona"] * n,
    )


def brute_force(table: PersonaTable, user: np.ndarray, item: str) -> tuple[float, int]:
    rows = [i for i, it in enumerate(table.item_of) if it == item]
    sims = table.vectors[rows] @ user
    return float(sims.max()), rows[int(sims.argmax())]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rerank_equals_brute_force_max_over_personas(seed):
    rng = np.random.default_rng(seed)
    table = random_table(rng)
    user = unit(rng.normal(size=16))
    candidates = list(rng.choice(table.item_ids, size=20, replace=False))
    ranked = rerank(table, user, candidates)
    expected = {c: brute_force(table, user, c) for c in candidates}
    assert [r.item_id for r in ranked] == sorted(candidates, key=lambda c: -expected[c][0])
    for r in ranked:
        score, row = expected[r.item_id]
        assert r.score == pytest.approx(score, abs=1e-5) and r.persona_score == pytest.approx(score, abs=1e-5)
        assert r.explanation.persona_id == table.persona_ids[row]  # the arg-max persona explains the score
        assert r.explanation.name == table.names[row] and r.explanation.evidence == table.evidence[row]
        assert r.explanation.similarity == pytest.approx(score, abs=1e-5)


def test_batched_scores_equal_per_user_scores_and_padding_is_minus_infinity():
    rng = np.random.default_rng(3)
    table = random_table(rng)
    users = unit(rng.normal(size=(7, 16)))
    cands = rng.integers(0, len(table.item_ids), size=(7, 5))
    cands[2, 3:] = -1
    scores, best = table.scores(users, cands)
    for u in range(7):
        for c in range(5):
            if cands[u, c] < 0:
                assert scores[u, c] == -np.inf and best[u, c] == -1
                continue
            s, row = brute_force(table, users[u], table.item_ids[cands[u, c]])
            assert scores[u, c] == pytest.approx(s, abs=1e-5) and best[u, c] == row


def test_an_analytic_case():
    """Two items; the user points exactly at item b's second persona."""
    e = np.eye(3, dtype=np.float32)
    table = PersonaTable(
        persona_ids=np.array(["a1", "b1", "b2"], dtype=object),
        item_of=np.array(["a", "b", "b"], dtype=object),
        vectors=np.stack([e[0], e[1], e[2]]),
        names=["A1", "B1", "B2"], descriptions=["", "", ""], rationales=["", "", ""],
        evidence=[[], [], ["r9"]], kinds=["persona"] * 3,
    )  # fmt: skip
    ranked = rerank(table, unit(np.array([0.6, 0.0, 0.8])), ["a", "b"])
    assert [r.item_id for r in ranked] == ["b", "a"]
    assert ranked[0].score == pytest.approx(0.8) and ranked[0].explanation.persona_id == "b2"
    assert ranked[1].score == pytest.approx(0.6) and ranked[1].explanation.evidence == []


def test_unknown_candidates_are_named():
    table = random_table(np.random.default_rng(4))
    with pytest.raises(UnknownItems) as err:
        rerank(table, unit(np.ones(16)), ["item-000", "nope", "gone"])
    assert err.value.ids == ["nope", "gone"] and "2 item id(s)" in str(err.value)


def test_fusion_mixes_min_max_scaled_first_stage_scores():
    persona = np.array([[0.2, 0.4, 0.3]], dtype=np.float32)
    first = np.array([[10.0, 0.0, 5.0]], dtype=np.float32)
    np.testing.assert_allclose(minmax(first), [[1.0, 0.0, 0.5]])
    np.testing.assert_allclose(fuse(persona, first, 0.5), [[0.6, 0.2, 0.4]], atol=1e-6)
    assert fuse(persona, first, 0.0) is persona and fuse(persona, None, 0.7) is persona
    table = random_table(np.random.default_rng(5))
    cands = list(table.item_ids[:4])
    order = [r.item_id for r in rerank(table, unit(np.ones(16)), cands, [4.0, 3.0, 2.0, 1.0], weight=1.0)]
    assert order == cands  # all weight on the first stage: its order comes back
    with pytest.raises(ValueError, match="first-stage scores"):
        rerank(table, unit(np.ones(16)), cands, weight=0.5)


def test_tune_fusion_picks_the_weight_that_ranks_targets_best():
    # persona scores put the target last; the first stage puts it first: any weight > 0.5 wins
    persona = np.tile(np.array([0.9, 0.8, 0.1], dtype=np.float32), (4, 1))
    first = np.tile(np.array([0.0, 0.1, 1.0], dtype=np.float32), (4, 1))
    best, scores = tune_fusion(persona, first, np.full(4, 2), grid=[0.0, 0.3, 0.7, 1.0], k=1)
    assert best == 0.7 and scores[0.0] == 0.0 and scores[0.7] == 1.0 and scores[1.0] == 1.0

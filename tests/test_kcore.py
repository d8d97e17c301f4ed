"""The iterative k-core: an analytically known case, and both algorithms against brute force."""

from __future__ import annotations

import numpy as np

from persona4rec.jobs.prepare.kcore import k_core, k_core_mask


def brute_force(pairs: set[tuple[str, str]], k: int) -> set[tuple[str, str]]:
    while True:
        users, items = {}, {}
        for u, i in pairs:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        kept = {(u, i) for u, i in pairs if users[u] >= k and items[i] >= k}
        if kept == pairs:
            return kept
        pairs = kept


def test_cascade_unravels_completely():
    # a 3x3 grid (a 3-core) plus a "staircase" whose removal cascades: u3 has 2 items, which then
    # leaves i3 with 2 users, which leaves u4 with 2 items...
    grid = [(u, i) for u in range(3) for i in range(3)]
    stairs = [(3, 0), (3, 3), (4, 3), (4, 4), (4, 0), (5, 4), (5, 3)]
    users, items = np.array([p[0] for p in grid + stairs]), np.array([p[1] for p in grid + stairs])
    keep, passes = k_core_mask(users, items, 3)
    assert keep.tolist() == [True] * len(grid) + [False] * len(stairs)
    assert passes >= 3


def test_driver_and_spark_agree_with_brute_force(spark):
    rng = np.random.default_rng(7)
    raw = {(f"u{rng.zipf(1.6) % 60}", f"i{rng.zipf(1.4) % 40}") for _ in range(900)}
    df = spark.createDataFrame(sorted(raw), ["user_id", "item_id"])
    expected = brute_force(raw, 4)
    assert 0 < len(expected) < len(raw)
    for limit in (10**9, 0):  # driver, then Spark
        users, items, passes = k_core(df, 4, n_pairs=len(raw), driver_max_pairs=limit)
        core_u = {r.user_id for r in users.collect()}
        core_i = {r.item_id for r in items.collect()}
        assert {(u, i) for u, i in raw if u in core_u and i in core_i} == expected
        assert passes >= 2

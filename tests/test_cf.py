"""First-stage generators: one contract every generator honours, analytic cases, and a planted structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from persona4rec.cf.base import Generator, full_ranking, recommend
from persona4rec.cf.data import Interactions
from persona4rec.cf.models import normalized_adjacency
from persona4rec.cf.popularity import Popularity
from persona4rec.cf.train import EmbeddingGenerator
from persona4rec.config import CandidatesConfig

SETTINGS = CandidatesConfig(seed=0, eval_every=10, patience=3, top_n=5, eval_users=None, num_workers=0)
PARAMS = {"dim": 16, "lr": 0.05, "l2": 1e-4, "epochs": 80, "batch_size": 64, "layers": 2}


def planted(seed: int = 0) -> Interactions:
    """Two communities: users 0-19 take only items 0-9, users 20-39 only items 10-19; 6 interactions each
    (4 train, then valid, then test)."""
    rng = np.random.default_rng(seed)
    users, items, splits = [], [], []
    for u in range(40):
        block = np.arange(10) + (10 if u >= 20 else 0)
        for k, i in enumerate(rng.choice(block, 6, replace=False)):
            users.append(f"u{u:02d}")
            items.append(f"i{i:02d}")
            splits.append("train" if k < 4 else ("valid" if k == 4 else "test"))
    return Interactions.from_arrays(np.array(users), np.array(items), np.array(splits))


class GeneratorContract:
    """What every generator must do; subclasses provide ``make``."""

    def make(self) -> Generator:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls):
        data = planted()
        return data, cls().make().fit(data)

    def test_scores_every_item_for_every_user(self, fitted):
        data, gen = fitted
        s = gen.scores(np.arange(data.n_users))
        assert s.shape == (data.n_users, data.n_items) and np.isfinite(s).all()

    def test_lists_leave_out_seen_items_and_are_sorted(self, fitted):
        data, gen = fitted
        users = np.arange(data.n_users)
        for split in ("valid", "test"):
            items, scores = recommend(gen, data, users, 5, split)
            for u in users:
                seen = set(data.seen(np.array([u]), split)[0].tolist())
                assert not seen & set(items[u].tolist()) and (items[u] >= 0).all()
                assert (np.diff(scores[u]) <= 0).all()
            assert all(data.valid[u] not in items[u] for u in users) if split == "test" else True

    def test_a_list_is_short_rather_than_padded_when_the_catalogue_runs_out(self, fitted):
        data, gen = fitted
        items, scores = recommend(gen, data, np.arange(data.n_users), 30, "test")
        left = data.n_items - 5  # 4 training items and the validation item are seen
        assert items.shape[1] == data.n_items
        assert ((items >= 0).sum(1) == left).all() and np.isnan(scores[items < 0]).all()


class PersonalisedContract(GeneratorContract):
    """What a collaborative (per-user) generator must also do."""

    def test_learns_the_planted_communities(self, fitted):
        data, gen = fitted
        # 5 unseen items are in the user's community, the test item among them: a perfect model has HR@5 = 1
        assert full_ranking(gen, data, "test", (5,))["hr@5"] >= 0.8


class TestPopularity(GeneratorContract):
    def make(self) -> Generator:
        return Popularity()

    def test_orders_by_training_count(self):
        data = Interactions.from_arrays(
            np.array(["a", "a", "b", "b", "c", "c", "c"]),
            np.array(["x", "y", "x", "z", "x", "y", "w"]),
            np.array(["train"] * 6 + ["test"]),
        )
        gen = Popularity().fit(data)
        items, scores = recommend(gen, data, np.array([2]), 3, "test")  # user c has x, y
        assert data.item_ids[items[0][items[0] >= 0]].tolist() == ["z", "w"] and scores[0][:2].tolist() == [1, 0]
        assert gen.scores(np.array([0]))[0].tolist() == [0, 3, 2, 1]  # w, x, y, z


class TestBPRMF(PersonalisedContract):
    def make(self) -> Generator:
        return EmbeddingGenerator("bpr", PARAMS, SETTINGS)


class TestLightGCN(PersonalisedContract):
    def make(self) -> Generator:
        return EmbeddingGenerator("lightgcn", PARAMS, SETTINGS)

    def test_keeps_the_best_checked_state_and_logs_every_check(self, fitted):
        _, gen = fitted
        checks = gen.history
        assert [c["epoch"] for c in checks][:2] == [9, 19]
        assert max(c["ndcg@5"] for c in checks) == checks[-1]["best"]


def test_normalized_adjacency_is_d_half_a_d_half():
    # users a (items x, y), b (item x): degrees a 2, b 1, x 2, y 1
    data = Interactions.from_arrays(np.array(["a", "a", "b"]), np.array(["x", "y", "x"]), np.array(["train"] * 3))
    adj = normalized_adjacency(data).to_dense().numpy()
    a, b, x, y = 0, 1, 2, 3
    assert adj[a, x] == pytest.approx(1 / np.sqrt(2 * 2)) and adj[x, a] == adj[a, x]
    assert adj[a, y] == pytest.approx(1 / np.sqrt(2 * 1)) and adj[b, x] == pytest.approx(1 / np.sqrt(1 * 2))
    assert adj[a, b] == 0 and adj[x, y] == 0 and np.allclose(adj, adj.T)


def test_interactions_hold_the_split_and_membership():
    data = planted()
    assert data.n_users == 40 and data.n_items == 20 and data.nnz == 160
    u, i = data.pairs()
    assert data.contains(u, i).all()
    assert not data.contains(np.array([0]), np.array([15])).any()  # user 0 never takes community B
    assert (data.valid >= 0).all() and (data.test >= 0).all() and (data.valid != data.test).all()


def test_bpr_loss_decreases_on_one_batch():
    from persona4rec.cf.models import build

    data = planted()
    torch.manual_seed(0)
    model = build("bpr", data, {"dim": 8})
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    u, i = (torch.from_numpy(a) for a in data.pairs())
    j = torch.from_numpy((data.pairs()[1] + 10) % 20)  # the other community: never a training item
    losses = []
    for _ in range(20):
        pos, neg, _ = model(u, i, j)
        loss = -torch.nn.functional.logsigmoid(pos - neg).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
@pytest.mark.disruptive  # Ray Train leaves state behind in the shared Ray: actor creation after it can hang
def test_lightgcn_trains_data_parallel_on_ray_train(ray_cluster, tmp_path):
    section = SETTINGS.model_copy(update={"num_workers": 2})
    gen = EmbeddingGenerator("lightgcn", PARAMS, section, storage=str(tmp_path), run_name="lightgcn-ddp").fit(planted())
    assert full_ranking(gen, planted(), "test", (5,))["hr@5"] >= 0.8
    assert gen.history and gen.history[-1]["best"] > 0


def random_interactions(n_users: int = 3000, n_items: int = 400, per_user: int = 8, seed: int = 0) -> Interactions:
    """Users with ``per_user`` distinct items each, popularity-skewed (the last two held out)."""
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, n_items + 1)
    users, items, splits = [], [], []
    for u in range(n_users):
        for k, i in enumerate(rng.choice(n_items, per_user, replace=False, p=weights / weights.sum())):
            users.append(f"u{u:05d}")
            items.append(f"i{i:04d}")
            splits.append("train" if k < per_user - 2 else ("valid" if k == per_user - 2 else "test"))
    return Interactions.from_arrays(np.array(users), np.array(items), np.array(splits))


@pytest.mark.parametrize("name", ["bpr", "lightgcn"])
def test_training_is_bit_reproducible_on_several_threads(name):
    # Popular items recur within a batch, so the gradient sums many rows into one: an accumulation whose
    # order varies between runs on several threads would show here (it moved the headline's learned row).
    data = random_interactions()
    params = {**PARAMS, "epochs": 2, "batch_size": 2048, "lr": 0.01}
    settings = SETTINGS.model_copy(update={"eval_every": 2})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fits = [EmbeddingGenerator(name, params, settings).fit(data) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    for other in fits[1:]:
        assert np.array_equal(fits[0].users, other.users) and np.array_equal(fits[0].items, other.items)

"""BPR training of the embedding generators, in this process or data-parallel on Ray Train.

One loop serves both: each epoch every worker takes an equal shard of a seeded permutation of the
training interactions, draws one unseen negative item per interaction, and steps Adam on the BPR loss
``-log σ(s(u,i) - s(u,j)) + l2 · ||ego||² / 2``. Every ``eval_every`` epochs rank 0 measures full-ranking
NDCG@N on the validation items; the best state is kept and training stops after ``patience`` checks
without improvement. On Ray Train, each check reports a checkpoint, so a restarted worker group resumes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from persona4rec.cf.base import Generator, full_ranking
from persona4rec.cf.data import Interactions
from persona4rec.cf.models import build
from persona4rec.infra.train_session import EarlyStopping, Session, run_on_ray

if TYPE_CHECKING:
    from persona4rec.config import CandidatesConfig

NEGATIVE_DRAWS = 20  # redraws of a negative that is a training item, before accepting it


class EmbeddingGenerator(Generator):
    """BPR-MF or LightGCN: embeddings learnt with BPR, scores are dot products.

    ``params`` are the model's (one point of its grid); ``section`` is the ``candidates`` config section,
    shipped to Ray Train workers as it is. With ``candidates.num_workers`` > 0 training runs on Ray Train,
    as a run named ``run_name`` under ``storage`` (a crashed run resumes).
    """

    def __init__(
        self, name: str, params: dict[str, Any], section: CandidatesConfig, *, storage: str | None = None,
        run_name: str | None = None, progress: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.name, self.params, self.section = name, dict(params), section
        self.storage, self.run_name, self.progress = storage, run_name or name, progress

    def fit(self, data: Interactions) -> EmbeddingGenerator:
        c = self.section
        config = {"name": self.name, "params": self.params, "section": c, "data": data, "progress": self.progress}
        if c.num_workers:
            if self.storage is None:
                raise ValueError("training on Ray Train needs a storage folder for its checkpoints")
            state = run_on_ray(
                train_loop, config, name=self.run_name, storage=self.storage, workers=c.num_workers,
                cpus_per_worker=c.cpus_per_worker, max_failures=c.max_failures,
            )  # fmt: skip
        else:
            state = train_loop(config, Session())
        stopping = EarlyStopping.from_state(state["stopping"])
        self.users, self.items = stopping.best_state
        self.history, self.best_epoch = stopping.history, stopping.best_epoch
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.users[np.asarray(users)] @ self.items.T


class _Frozen(Generator):
    """Embeddings as a generator, for validation inside the loop."""

    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        super().__init__()
        self.users, self.items = users, items

    def fit(self, data: Interactions) -> _Frozen:
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.users[users] @ self.items.T


def sample_negatives(data: Interactions, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly drawn item per user that is not among the user's training items (when possible)."""
    neg = rng.integers(0, data.n_items, size=len(users))
    for _ in range(NEGATIVE_DRAWS):
        bad = np.flatnonzero(data.contains(users, neg))
        if not len(bad):
            break
        neg[bad] = rng.integers(0, data.n_items, size=len(bad))
    return neg


def train_loop(config: dict[str, Any], session: Session) -> dict[str, Any]:
    """The loop (see the module docstring). Returns the early-stopping record, whose best state is the
    embeddings; on Ray Train it also goes into every checkpoint reported."""
    data: Interactions = config["data"]
    p, c = config["params"], config["section"]
    torch.manual_seed(c.seed)
    model = build(config["name"], data, p)
    restored = session.restore()
    if restored is not None:
        model.load_state_dict(restored["model"])
    model = session.prepare(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    users, items = data.pairs()
    per_worker = max(len(users) // session.world, 1)
    rng_valid = np.random.default_rng(c.seed)
    valid_pool = np.flatnonzero(data.valid >= 0)
    if c.eval_users and len(valid_pool) > c.eval_users:
        valid_pool = np.sort(rng_valid.choice(valid_pool, c.eval_users, replace=False))
    key = f"ndcg@{c.top_n}"
    start, stopping = 0, EarlyStopping(c.patience)
    if restored is not None:
        optimizer.load_state_dict(restored["optimizer"])
        start, stopping = restored["epoch"] + 1, EarlyStopping.from_state(restored["stopping"])

    for epoch in range(start, p["epochs"]):
        t0 = time.perf_counter()
        model.train()
        rng = np.random.default_rng([c.seed, epoch])
        perm = rng.permutation(len(users))
        shard = perm[session.rank * per_worker :][:per_worker]
        neg = sample_negatives(data, users[shard], np.random.default_rng([c.seed, epoch, session.rank]))
        losses = []
        for lo in range(0, len(shard), p["batch_size"]):
            b = shard[lo : lo + p["batch_size"]]
            u, i, j = (torch.from_numpy(a) for a in (users[b], items[b], neg[lo : lo + len(b)]))
            pos, negs, reg = model(u, i, j)
            loss = -torch.nn.functional.logsigmoid(pos - negs).mean() + p["l2"] * reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        last = epoch + 1 == p["epochs"]
        if (epoch + 1) % c.eval_every and not last:
            continue
        emb = _embeddings(model)
        metrics = full_ranking(_Frozen(*emb), data, "valid", (c.top_n,), valid_pool) if session.rank == 0 else {}
        metrics = session.broadcast(metrics)
        score = metrics.get(key, float("nan"))
        stopping.check(epoch, score, lambda emb=emb: emb)
        row = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"), **metrics,
               "best": stopping.best, "epoch_s": time.perf_counter() - t0}  # fmt: skip
        stopping.history.append(row)
        if session.rank == 0 and config["progress"]:
            print(
                f"candidates {config['name']} epoch {epoch + 1}/{p['epochs']}: loss {row['loss']:.4f}  "
                f"valid {key} {score:.4f} (best {stopping.best:.4f} at epoch {stopping.best_epoch + 1})",
                flush=True,
            )
        state = {"epoch": epoch, "model": _module(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "stopping": stopping.to_state()}  # fmt: skip
        session.report(row, state, epoch)
        if stopping.stop:
            break
    return {"stopping": stopping.to_state()}


def _module(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _embeddings(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        u, i = _module(model).embeddings()
    return u.detach().numpy().copy(), i.detach().numpy().copy()

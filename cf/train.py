"""BPR training of the embedding generators, in this process or data-parallel on Ray Train.

One loop serves both: each epoch every worker takes an equal shard of a seeded permutation of the
training interactions, draws one unseen negative item per interaction, and steps Adam on the BPR loss
``-log σ(s(u,i) - s(u,j)) + l2 · ||ego||² / 2``. Every ``eval_every`` epochs rank 0 measures full-ranking
NDCG@N on the validation items; the best state is kept and training stops after ``patience`` checks
without improvement. On Ray Train, each check reports a checkpoint, so a restarted worker group resumes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from persona4rec.cf.base import Generator, full_ranking
from persona4rec.cf.data import Interactions
from persona4rec.cf.models import build

STATE_FILE = "state.pt"
NEGATIVE_DRAWS = 20  # redraws of a negative that is a training item, before accepting it


class EmbeddingGenerator(Generator):
    """BPR-MF or LightGCN: embeddings learnt with BPR, scores are dot products."""

    def __init__(self, name: str, params: dict[str, Any], settings: dict[str, Any]) -> None:
        super().__init__()
        self.name, self.params, self.settings = name, dict(params), dict(settings)

    def fit(self, data: Interactions) -> EmbeddingGenerator:
        config = {"name": self.name, "params": self.params, "settings": self.settings, "data": data}
        workers = self.settings.get("num_workers", 0)
        state = _fit_on_ray(config, workers) if workers else train_loop(config)
        self.users, self.items = state["users"], state["items"]
        self.history, self.best_epoch = state["history"], state["best_epoch"]
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


def train_loop(config: dict[str, Any], session: _Session | None = None) -> dict[str, Any]:
    """The loop (see the module docstring). Returns the best embeddings; on Ray Train they also go into
    every checkpoint it reports."""
    data: Interactions = config["data"]
    p, s = config["params"], config["settings"]
    session = session or _Session()
    torch.manual_seed(s["seed"])
    model = build(config["name"], data, p)
    restored = session.restore()
    if restored is not None:
        model.load_state_dict(restored["model"])
    model = session.prepare(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    users, items = data.pairs()
    per_worker = max(len(users) // session.world, 1)
    rng_valid = np.random.default_rng(s["seed"])
    valid_pool = np.flatnonzero(data.valid >= 0)
    if s["eval_users"] and len(valid_pool) > s["eval_users"]:
        valid_pool = np.sort(rng_valid.choice(valid_pool, s["eval_users"], replace=False))
    key = f"ndcg@{s['top_n']}"
    start, best, best_emb, best_epoch, bad, history = 0, -1.0, None, -1, 0, []
    if restored is not None:
        optimizer.load_state_dict(restored["optimizer"])
        start, best, best_emb, best_epoch, bad, history = (
            restored["epoch"] + 1, restored["best"], restored["best_emb"], restored["best_epoch"], restored["bad"],
            restored["history"],
        )  # fmt: skip

    for epoch in range(start, p["epochs"]):
        t0 = time.perf_counter()
        model.train()
        rng = np.random.default_rng([s["seed"], epoch])
        perm = rng.permutation(len(users))
        shard = perm[session.rank * per_worker :][:per_worker]
        neg = sample_negatives(data, users[shard], np.random.default_rng([s["seed"], epoch, session.rank]))
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
        if (epoch + 1) % s["eval_every"] and not last:
            continue
        emb = _embeddings(model)
        metrics = full_ranking(_Frozen(*emb), data, "valid", (s["top_n"],), valid_pool) if session.rank == 0 else {}
        metrics = session.broadcast(metrics)
        score = metrics.get(key, float("nan"))
        if score > best or best_emb is None:
            best, best_emb, best_epoch, bad = score, emb, epoch, 0
        else:
            bad += 1
        row = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"), **metrics,
               "best": best, "epoch_s": time.perf_counter() - t0}  # fmt: skip
        history.append(row)
        if session.rank == 0 and s.get("progress"):
            print(
                f"candidates {config['name']} epoch {epoch + 1}/{p['epochs']}: loss {row['loss']:.4f}  "
                f"valid {key} {score:.4f} (best {best:.4f} at epoch {best_epoch + 1})",
                flush=True,
            )
        stop = bad >= s["patience"]
        session.report(
            row,
            {
                "epoch": epoch, "model": _module(model).state_dict(), "optimizer": optimizer.state_dict(),
                "best": best, "best_emb": best_emb, "best_epoch": best_epoch, "bad": bad, "history": history,
            },
        )  # fmt: skip
        if stop:
            break
    return {"users": best_emb[0], "items": best_emb[1], "history": history, "best_epoch": best_epoch}


def _module(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _embeddings(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        u, i = _module(model).embeddings()
    return u.detach().numpy().copy(), i.detach().numpy().copy()


class _Session:
    """Where the loop runs: this process (world of one), or a Ray Train worker."""

    rank, world = 0, 1

    def restore(self) -> dict[str, Any] | None:
        return None

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def broadcast(self, obj: Any) -> Any:
        return obj

    def report(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        return None


class _RaySession(_Session):
    def __init__(self, ctx: Any) -> None:
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def restore(self) -> dict[str, Any] | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / STATE_FILE, weights_only=False)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model, parallel_strategy="ddp" if self.world > 1 else None)

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def report(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                torch.save(state, Path(tmp) / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch-{state['epoch']:04d}")


def _fit_on_ray(config: dict[str, Any], workers: int) -> dict[str, Any]:
    """Data-parallel training on Ray Train; returns the best embeddings of the last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    s = config["settings"]
    trainer = TorchTrainer(
        _ray_entry,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": s.get("cpus_per_worker", 1.0)}),
        run_config=RunConfig(
            name=s["run_name"],
            storage_path=str(s["storage"]),
            failure_config=FailureConfig(max_failures=s.get("max_failures", 2)),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, weights_only=False)
    users, items = state["best_emb"]
    return {"users": users, "items": items, "history": state["history"], "best_epoch": state["best_epoch"]}


def _ray_entry(config: dict[str, Any]) -> None:
    import ray.train

    train_loop(config, _RaySession(ray.train.get_context()))

"""One training session for every training loop (the alignment encoder's, the CF generators'): where the
loop runs (this process, or one worker of a Ray Train group), checkpoints and resuming, early stopping.

A loop is written once against :class:`Session` and runs in this process (a world of one, nothing saved)
or on Ray Train (:func:`run_on_ray`), where every report carries rank 0's state as a checkpoint, so a
restarted worker group resumes from the last one. :class:`EarlyStopping` keeps the best state and the
history, and travels in that checkpoint.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"


@dataclass
class EarlyStopping:
    """The best validation score so far, the state that scored it, and the checks since it improved."""

    patience: int
    best: float = -math.inf
    best_state: Any = None
    best_epoch: int = -1
    bad: int = 0  # checks without improvement
    history: list[dict[str, Any]] = field(default_factory=list)

    def check(self, epoch: int, score: float, state: Callable[[], Any]) -> bool:
        """Record one validation; ``state()`` is taken only when it improved (True)."""
        if score > self.best or self.best_state is None:
            self.best, self.best_state, self.best_epoch, self.bad = score, state(), epoch, 0
            return True
        self.bad += 1
        return False

    @property
    def stop(self) -> bool:
        return self.bad >= self.patience

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        return cls(**state)


class Session:
    """This process: a world of one, nothing to restore, reports kept nowhere."""

    rank, world = 0, 1

    def device(self) -> torch.device:
        return torch.device("cpu")

    def restore(self) -> dict[str, Any] | None:
        """The state of the last checkpoint of this run (None on a fresh start)."""
        return None

    def prepare(self, model: torch.nn.Module, **ddp: Any) -> torch.nn.Module:
        return model

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every worker (validation runs on rank 0 only)."""
        return obj

    def report(self, metrics: dict[str, Any], state: dict[str, Any], epoch: int) -> None:
        """One epoch's metrics, with rank 0's ``state`` as the checkpoint to resume from."""
        return None


class RaySession(Session):
    """A worker of a Ray Train group (call inside ``train_loop_per_worker``)."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def restore(self) -> dict[str, Any] | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / STATE_FILE, weights_only=False)

    def prepare(self, model: torch.nn.Module, **ddp: Any) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(
            model, parallel_strategy="ddp" if self.world > 1 else None, parallel_strategy_kwargs=ddp or None
        )

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def report(self, metrics: dict[str, Any], state: dict[str, Any], epoch: int) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                torch.save(state, Path(tmp) / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch-{epoch:04d}")


Loop = Callable[[dict[str, Any], Session], Any]


def run_on_ray(
    loop: Loop,
    config: dict[str, Any],
    *,
    name: str,
    storage: str | Path,
    workers: int,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 2,
) -> dict[str, Any]:
    """Run ``loop(config, session)`` on ``workers`` Ray Train workers; the state of the last checkpoint.

    The run is named ``name`` under ``storage``: the same name again resumes a crashed run.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _on_worker,
        train_loop_config={"loop": loop, "config": config},
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),  # the loops print one line per check instead
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, weights_only=False)


def _on_worker(train_loop_config: dict[str, Any]) -> None:
    train_loop_config["loop"](train_loop_config["config"], RaySession())

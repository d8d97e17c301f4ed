"""Pipeline stages, one package each: ``stage.py`` states the contract, ``job.py`` does the work.

Each stage reads the versioned output of the stages before it and writes its own versioned output with a
manifest (see :mod:`persona4rec.stage` and :mod:`persona4rec.artifacts`); an up-to-date output is reused.
This module is the registry: the stages in pipeline order, and the calls that run or locate one.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from persona4rec.artifacts import StageResult
    from persona4rec.config import Config
    from persona4rec.stage import Runner, Stage

#: Stages in pipeline order (each after the stages it reads).
PIPELINE: tuple[str, ...] = (
    "prepare", "reason", "align", "embed", "candidates", "train", "promote", "index", "evaluate",
)  # fmt: skip


def registry() -> dict[str, Stage]:
    """Every stage by name, in pipeline order (importing only the light contracts, never the engines)."""
    return {name: import_module(f"persona4rec.jobs.{name}.stage").STAGE for name in PIPELINE}


def runner(cfg: Config, *, progress: bool = True) -> Runner:
    from persona4rec.stage import Runner

    return Runner(cfg, registry(), progress=progress)


def run(name: str, cfg: Config, *, force: bool = False, progress: bool = True, **options: Any) -> StageResult:
    """Run one stage (reusing its output when up to date); its inputs must exist."""
    return runner(cfg, progress=progress).run(name, force=force, **options)


def locate(name: str, cfg: Config) -> StageResult:
    """The finished output of one stage for this configuration (StageUnavailable when there is none)."""
    return runner(cfg, progress=False).locate(name)

"""The stage contract and the one runner that executes every stage.

A stage says what it is (``name``, ``version``), which stages it reads (``upstream``), which
configuration its output depends on (``config``), and how to build that output (``build``), returning a
frozen :class:`Summary` of what it made. Everything else is the :class:`Runner`'s, the same for every
stage: locate the inputs, fingerprint (code version + config + input identities), reuse a finished
version, build in a temporary folder that is removed if the build fails, time each step and its peak
memory, write the manifest with the summary, and publish atomically.

How to add a stage: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from persona4rec.artifacts import Manifest, StageResult, StageStore, Timer, fingerprint, upstream
from persona4rec.errors import StageUnavailable

if TYPE_CHECKING:
    import pyarrow as pa

    from persona4rec.config import Config
    from persona4rec.schemas import TableSchema


@dataclass(frozen=True)
class Summary:
    """What a stage made, stored in its manifest and read back as the same type.

    Subclasses are frozen dataclasses of JSON values (numbers, strings, lists, string-keyed dicts), so
    a summary read back from the manifest equals the one written.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Self:
        """The summary a manifest holds; a field it lacks (an older manifest) raises ``TypeError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def lines(self) -> Iterable[str]:
        """What ``p4r <stage>`` prints about a fresh build, after its folder and cost."""
        return ()


@dataclass
class Build:
    """What a stage's :meth:`Stage.build` works with: its inputs, a private folder, a timer."""

    cfg: Config
    inputs: dict[str, StageResult]
    folder: Path  # temporary; published only if the build returns
    target: Path  # where the version will be published
    manifest: Manifest
    timer: Timer
    progress: bool

    def add_table(self, table: pa.Table, schema: TableSchema) -> int:
        """Write a contracted table into the version, validate it, and record its rows."""
        return self.manifest.add_table(self.folder, table, schema)

    def environment(self, **values: Any) -> None:
        """Record where the stage ran (engine versions, addresses) in the manifest."""
        self.manifest.environment.update({k: str(v) for k, v in values.items()})

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint


@dataclass(frozen=True)
class Option:
    """An option of a stage's command beyond the shared ones (-d, -c, KEY=VALUE, --force, -q)."""

    flag: str  # "--retry-failed"; its keyword is the flag without dashes, "-" as "_"
    help: str
    metavar: str | None = None  # None: a boolean flag
    override: str | None = None  # the config key its value sets (then it is not passed to build)
    rebuild: bool = False  # when set, an up-to-date version is rebuilt (as --force does)
    action: bool = False  # handled by Stage.act instead of a build (e.g. `p4r index --list`)

    @property
    def keyword(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


class Stage(ABC):
    """One pipeline stage. Subclasses set the class attributes and implement :meth:`config` and :meth:`build`."""

    name: ClassVar[str]
    version: ClassVar[int]  # bump when the same inputs and config give a different output
    upstream: ClassVar[tuple[str, ...]] = ()  # the stages it reads, in fingerprint order
    summary: ClassVar[type[Summary]]
    options: ClassVar[tuple[Option, ...]] = ()  # the stage command's own options

    def needs(self, cfg: Config) -> tuple[str, ...]:
        """The upstream stages this configuration reads (default: all of :attr:`upstream`)."""
        return self.upstream

    @abstractmethod
    def config(self, cfg: Config) -> dict[str, Any]:
        """The configuration (and registry state) the output depends on: part of the fingerprint."""

    def sources(self, cfg: Config, progress: bool) -> list[dict[str, Any]]:
        """Inputs from outside the pipeline (raw files), each with a ``sha256``: part of the fingerprint."""
        return []

    @abstractmethod
    def build(self, b: Build, **flags: Any) -> Summary:
        """Write the output's tables into ``b.folder`` and return what was made."""

    def reusable(self, cfg: Config, result: StageResult) -> bool:
        """Whether a finished version can be reused as it is (e.g. its Milvus collection still exists)."""
        return True

    def activate(self, cfg: Config, result: StageResult) -> StageResult:
        """Make a published or reused version the live one outside the artifacts (alias, registry)."""
        return result

    def missing(self, cfg: Config) -> str:
        return f"no {self.name} output for this configuration of {cfg.dataset}: run `p4r {self.name}` (or `p4r run`)"

    def discard(self, cfg: Config, summary: Summary) -> None:
        """Undo what a build did outside its folder (e.g. a Milvus collection) when it is not published."""
        return None

    def act(self, cfg: Config, **options: Any) -> Iterable[str] | None:
        """Handle a command option that is not a build (e.g. ``p4r index --list``): lines to print, or None."""
        return None

    def written(self, result: StageResult) -> str:
        """What ``p4r <stage>`` says it wrote: the version's folder."""
        return str(result.folder)

    def report(self, cfg: Config, result: StageResult) -> Iterable[str]:
        """Lines ``p4r <stage>`` prints under its first line (by default, nothing for a reused version)."""
        return () if result.skipped else result.summary.lines()

    def store(self, cfg: Config) -> StageStore:
        return StageStore(cfg.artifacts_root / self.name)


class Runner:
    """Runs and locates stages for one configuration, remembering every result it has seen.

    ``p4r run`` uses one runner for the whole pipeline, so each stage's result is passed on to the stages
    that read it instead of being located again.
    """

    def __init__(self, cfg: Config, registry: Mapping[str, Stage], *, progress: bool = True) -> None:
        self.cfg, self.registry, self.progress = cfg, registry, progress
        self.results: dict[str, StageResult] = {}

    def stage(self, name: str) -> Stage:
        try:
            return self.registry[name]
        except KeyError:
            raise StageUnavailable(f"no stage named {name!r}; the stages: {', '.join(self.registry)}") from None

    def _identity(self, stage: Stage) -> tuple[dict[str, StageResult], dict[str, Any], list[dict[str, Any]], str]:
        inputs = {name: self.locate(name) for name in stage.needs(self.cfg)}
        scfg = stage.config(self.cfg)
        ids = [*stage.sources(self.cfg, self.progress), *(upstream(n, r) for n, r in inputs.items())]
        return inputs, scfg, ids, fingerprint(stage.name, stage.version, scfg, ids)

    def locate(self, name: str) -> StageResult:
        """The finished version of a stage for this configuration, without running it."""
        if name in self.results:
            return self.results[name]
        stage = self.stage(name)
        *_, fp = self._identity(stage)
        done = stage.store(self.cfg).complete(fp)
        result = _read(stage, done) if done is not None else None
        if result is None:
            raise StageUnavailable(stage.missing(self.cfg))
        self.results[name] = result
        return result

    def run(self, name: str, *, force: bool = False, **flags: Any) -> StageResult:
        """The stage's output for this configuration: reused when finished and up to date, else built."""
        stage = self.stage(name)
        cfg = self.cfg
        inputs, scfg, ids, fp = self._identity(stage)
        store = stage.store(cfg)
        rebuild = force or any(flags.get(o.keyword) for o in stage.options if o.rebuild)
        done = None if rebuild else store.complete(fp)
        reused = _read(stage, done) if done is not None else None
        if reused is not None and stage.reusable(cfg, reused):
            store.point_current(reused.folder)
            result = stage.activate(cfg, reused)
        else:
            timer = Timer()
            with store.building(fp) as tmp:
                manifest = Manifest.start(stage.name, fp, cfg.hash(), scfg, ids)
                build = Build(cfg, inputs, tmp, store.version_dir(fp), manifest, timer, self.progress)
                summary = stage.build(build, **flags)
                try:
                    if not isinstance(summary, stage.summary):
                        made, wanted = type(summary).__name__, stage.summary.__name__
                        raise TypeError(f"{stage.name}.build returned a {made}, not a {wanted}")
                    manifest.summary = summary.to_dict()
                    manifest.record(timer)
                    manifest.write(tmp)
                    folder = store.publish(tmp, fp)
                except BaseException:
                    stage.discard(cfg, summary)
                    raise
            result = stage.activate(cfg, StageResult(folder, manifest, skipped=False, summary=summary))
        self.results[name] = result
        return result


def _read(stage: Stage, folder: Path) -> StageResult | None:
    """A finished version with its typed summary; None when its manifest predates the summary's fields."""
    manifest = Manifest.read(folder)
    try:
        summary = stage.summary.from_dict(manifest.summary)
    except TypeError:
        return None
    return StageResult(folder, manifest, skipped=True, summary=summary)

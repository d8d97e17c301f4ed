"""``p4r``: one command, a subcommand per pipeline stage.

Every stage command takes the same configuration arguments: ``-d DATASET``, ``-c EXPERIMENT.yaml`` and
any number of ``key=value`` overrides (see ``p4r config show --help``). Engines are imported only by the
command that needs them, so ``p4r --help`` is instant.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

import persona4rec
from persona4rec.config import LoadedConfig, dataset_names, load_config
from persona4rec.doctor import doctor
from persona4rec.errors import Persona4RecError, StageUnavailable
from persona4rec.jobs import PIPELINE, registry

if TYPE_CHECKING:
    from persona4rec.artifacts import StageResult
    from persona4rec.config import Config
    from persona4rec.stage import Stage


class P4RGroup(click.Group):
    """Lists commands in pipeline order; turns the project's own errors into one line and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        first = {name: i for i, name in enumerate(("run", *PIPELINE))}
        return sorted(self.commands, key=lambda name: first.get(name, len(first)))  # the rest as defined

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Persona4RecError as exc:
            click.secho(f"p4r: error: {exc}", fg="red", err=True)
            sys.exit(2)


def config_options(
    func: Callable[..., Any], settings: Callable[[dict[str, Any]], list[str]] = lambda _: []
) -> Callable[..., Any]:
    """-d/-c/key=value, loaded into a validated config passed as ``loaded``. ``settings`` turns options of the
    command into more key=value overrides (taking them out of the keyword arguments)."""

    @click.option(
        "-d", "--dataset", metavar="NAME|FILE", help="Dataset layer: a name from `p4r data list` or a YAML file."
    )
    @click.option(
        "-c",
        "--config",
        "experiment",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Experiment file, layered over the defaults and the dataset.",
    )
    @click.option("--print-config", is_flag=True, help="Print the effective configuration and exit.")
    @click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
    @functools.wraps(func)
    def wrapper(
        dataset: str | None, experiment: str | None, print_config: bool, overrides: tuple[str, ...], **kwargs: Any
    ) -> Any:
        loaded = load_config([*overrides, *settings(kwargs)], experiment=experiment, dataset=dataset)
        if print_config:
            click.echo(loaded.config.to_yaml(), nl=False)
            click.echo(f"# config hash: {loaded.config.hash()}")
            return None
        return func(loaded=loaded, **kwargs)

    return wrapper


@click.group(cls=P4RGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(persona4rec.__version__, prog_name="p4r")
def main() -> None:
    """Persona4Rec: LLM-built personas in an item index, explainable reranking in a millisecond.

    \b
    The pipeline, stage by stage (each writes versioned tables under paths.artifacts):
      prepare     Spark: raw reviews -> cleaned corpus, leave-one-out split, LLM review samples
      reason      Ray + LLM: item summaries and personas, cached by content hash
      align       positive-persona labels for training interactions (evidence or LLM judge)
      embed       Ray actors: base embeddings of persona, interaction and item texts
      candidates  PyTorch (or Ray Train): popularity, BPR-MF, LightGCN top-N lists, tuned on validation
      train       Ray Train: the alignment encoder (hard negatives from the candidates), into MLflow
      promote     MLflow: the champion alias moves only to a better encoder
      index       Milvus: persona index versions behind an alias (incremental, checked)
      evaluate    every reranker on the same candidates: HR/MRR/NDCG, CIs, tests, segments, report
      serve       HTTP rerank / recommend with explanations (in-memory scoring, hot reload)
    `p4r run` runs every available stage in order.

    \b
    Configuration (every stage command takes the same arguments):
      p4r prepare -d amazon2014-musical-instruments data.local_dir=/path/to/data prepare.k_core=10
      p4r config show --explain -d yelp data.local_dir=~/yelp     # effective config, and who set each key
    Precedence: conf/defaults.yaml < dataset layer (-d) < experiment file (-c) < key=value.
    """


# ------------------------------------------------------------------------------------ run and stages


@main.command()
@config_options
@click.option("--force", is_flag=True, help="Rebuild every stage even when its output is up to date.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--from", "first", type=click.Choice(PIPELINE), help="Start at this stage (its inputs must exist).")
@click.option("--until", "last", type=click.Choice(PIPELINE), help="Stop after this stage.")
def run(loaded: LoadedConfig, force: bool, quiet: bool, first: str | None, last: str | None) -> None:
    """Run the pipeline: every stage in order (or --from/--until), skipping up-to-date ones.

    \b
    Each stage's result is handed to the stages that read it. A second run with the same inputs and
    configuration rebuilds nothing and says so per stage.
    Example:
      p4r run -c conf/experiments/offline-cpu.yaml --until reason
    """
    from persona4rec.jobs import runner

    start = PIPELINE.index(first) if first else 0
    stop = PIPELINE.index(last) + 1 if last else len(PIPELINE)
    if start >= stop:
        raise click.UsageError(f"--from {first} comes after --until {last} in the pipeline")
    pipeline = runner(loaded.config, progress=not quiet)
    t0, built = time.perf_counter(), []
    for name in PIPELINE[start:stop]:
        result = pipeline.run(name, force=force)
        _report(pipeline.stage(name), loaded.config, result)
        if not result.skipped:
            built.append(name)
    spent = f"{time.perf_counter() - t0:.1f}s"
    click.echo(f"run: rebuilt {', '.join(built)} in {spent}" if built else f"run: everything up to date ({spent})")


def _report(stage: Stage, cfg: Config, result: StageResult) -> None:
    """A stage's first line (built or up to date, and where), its cost, and what it says of its output."""
    if result.skipped:
        click.echo(f"{stage.name}: up to date, nothing to do ({result.folder})")
    else:
        m = result.manifest
        steps = "  ".join(f"{k} {v:.1f}s" for k, v in m.timings_s.items())
        peak = max(m.peak_rss_mb.values(), default=0.0)
        click.echo(f"{stage.name}: wrote {stage.written(result)}")
        click.echo(f"  time {sum(m.timings_s.values()):.1f}s ({steps})  peak memory {peak / 1024:.1f} GiB")
        width = max((len(name) for name in m.tables), default=0)
        for name, info in m.tables.items():
            click.echo(f"  {name:<{width}}  {info['rows']:>10,} rows")
    for line in stage.report(cfg, result):
        click.echo(line)


def stage_command(stage: Stage) -> click.Command:
    """``p4r <stage>``: the shared options, the stage's own (:attr:`Stage.options`), its docstring as help."""

    def settings(options: dict[str, Any]) -> list[str]:
        """The stage's options that are shortcuts for a config key, as key=value (when given)."""
        given = {o.override: options.pop(o.keyword) for o in stage.options if o.override}
        return [f"{key}={value}" for key, value in given.items() if value is not None]

    def command(loaded: LoadedConfig, force: bool, quiet: bool, **options: Any) -> None:
        cfg = loaded.config
        actions = {o.keyword: options.pop(o.keyword) for o in stage.options if o.action}
        if actions and (lines := stage.act(cfg, **actions)) is not None:
            for line in lines:
                click.echo(line)
            return
        from persona4rec.jobs import runner

        _report(stage, cfg, runner(cfg, progress=not quiet).run(stage.name, force=force, **options))

    for option in reversed(stage.options):
        if option.metavar is None:
            command = click.option(option.flag, option.keyword, is_flag=True, help=option.help)(command)
        else:
            command = click.option(option.flag, option.keyword, metavar=option.metavar, help=option.help)(command)
    command = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(command)
    command = click.option(
        "--force", is_flag=True, help="Rebuild even when the output for these inputs and config exists."
    )(command)
    return click.command(stage.name, help=inspect.getdoc(stage))(config_options(command, settings))


for _stage in registry().values():
    main.add_command(stage_command(_stage))
main.add_command(doctor)


# ------------------------------------------------------------------------------------------- serve


@main.command()
@config_options
@click.option("--host", help="Interface to listen on (default: serve.host).")
@click.option("--port", type=int, help="Port (default: serve.port).")
def serve(loaded: LoadedConfig, host: str | None, port: int | None) -> None:
    """Serve recommendations over HTTP from the index behind the alias (FastAPI on uvicorn).

    \b
    POST /rerank {"user_id", "candidates", "first_stage_scores"?}, POST /recommend {"user_id", "k"},
    GET /items/{id}/personas, /health, /ready, /metrics (Prometheus), /docs (OpenAPI), and /ui: the persona
    explorer (items with their personas and evidence, users with explained recommendations, the index).
    A moved alias is loaded in the background and swapped in (checked every serve.reload_interval_s).
    Milvus Lite serves one process: to rebuild the index while serving, run `milvus-lite server` and set
    index.uri to it for both.
    """
    try:
        import uvicorn

        from persona4rec.serve.app import build
    except ImportError:
        raise StageUnavailable("the service needs FastAPI and uvicorn: pip install 'persona4rec[serve]'") from None
    cfg = loaded.config
    app, _ = build(cfg)
    host, port = host or cfg.serve.host, port or cfg.serve.port
    click.echo(f"p4r serve: API http://{host}:{port}/docs, persona explorer http://{host}:{port}/ui", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


# ------------------------------------------------------------------------------------ submit, jobs


@main.command()
@click.argument("stage", type=click.Choice(["run", *PIPELINE]), metavar="STAGE|run")
@config_options
@click.option("--address", metavar="URL", help="The cluster's job API, http://<head>:8265 (default: submit.address).")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Stream the job's logs until it ends.")
@click.option("--force", is_flag=True, help="Pass --force to the stage: rebuild even when up to date.")
@click.option("--from", "first", type=click.Choice(PIPELINE), help="With `run`: start at this stage.")
@click.option("--until", "last", type=click.Choice(PIPELINE), help="With `run`: stop after this stage.")
@click.option(
    "--dry-run", is_flag=True, help="Stage the job, print it (entrypoint, runtime environment) and send nothing."
)
def submit(
    loaded: LoadedConfig,
    stage: str,
    address: str | None,
    follow: bool,
    force: bool,
    first: str | None,
    last: str | None,
    dry_run: bool,
) -> None:
    """Run a stage, or the whole pipeline, as a job on a Ray cluster (Ray's Job Submission API).

    \b
    The configuration is validated here. The job's working directory carries the effective configuration
    (every key; ray.address=auto, so the job joins the cluster's Ray); this installation's persona4rec
    code travels with it (submit.ship_code) over the dependencies the cluster's image provides. The job
    id is printed, then its logs stream until it ends (Ctrl-C detaches; the job goes on). Exit status:
    0 when the job succeeded, 1 when it failed or was stopped.
    paths.artifacts and data.local_dir must be absolute paths every node sees; Spark runs on
    spark.master (a cluster master such as spark://host:7077, or local inside the job). Secrets never
    travel: the cluster's environment or files hold them (mlflow.credentials_file, index.token_env,
    index.token_file); see docs/operations.md.
    Examples:
      p4r submit run --address http://head:8265 -c conf/experiments/cluster.yaml paths.artifacts=/shared/p4r
      p4r submit reason --no-follow submit.address=http://head:8265 paths.artifacts=/shared/p4r
      p4r jobs logs p4r-reason-20261126-101500-a1b2c3 --follow
    """
    from persona4rec.infra import ray_jobs
    from persona4rec.infra.secrets import ray_token

    if (first or last) and stage != "run":
        raise click.UsageError("--from/--until go with `p4r submit run`")
    cfg = loaded.config
    stage_args = ["-q", *(["--force"] if force else [])]
    stage_args += [*(["--from", first] if first else []), *(["--until", last] if last else [])]
    sub = ray_jobs.prepare(cfg, stage, stage_args)
    if dry_run:  # the staged folders are left in place for inspection; nothing is sent
        job = {"submission_id": sub.submission_id, "entrypoint": sub.entrypoint}
        click.echo(json.dumps({**job, "runtime_env": sub.runtime_env, "metadata": sub.metadata}, indent=2))
        click.echo(f"dry run: nothing sent; what would travel is staged in {sub.staging}", err=True)
        return
    try:
        jobs = ray_jobs.client(address or cfg.submit.address, ray_token(cfg))
        for note in sub.notes:
            click.echo(f"note: {note}", err=True)
        job_id = ray_jobs.submit(jobs, sub, cfg)
    finally:
        sub.cleanup()
    click.echo(f"submitted {job_id}")
    if not follow:
        click.echo(f"  p4r jobs status {job_id}   p4r jobs logs {job_id} --follow   p4r jobs stop {job_id}")
        return
    _follow_job(jobs, job_id)


def _follow_job(jobs: Any, job_id: str) -> None:
    from persona4rec.infra import ray_jobs

    try:
        status = ray_jobs.follow(jobs, job_id, lambda text: click.echo(text, nl=False))
    except KeyboardInterrupt:
        click.echo(f"\ndetached; {job_id} goes on (p4r jobs logs {job_id} --follow, p4r jobs stop {job_id})")
        sys.exit(130)
    info = ray_jobs.describe(jobs.get_job_info(job_id))
    click.echo(f"{job_id}: {status}" + (f" ({info['message']})" if info["message"] else ""))
    if status != "SUCCEEDED":
        sys.exit(1)


@main.group()
def jobs() -> None:
    """Jobs on a Ray cluster: list, status, logs, stop (the address as for `p4r submit`).

    \b
    Examples:
      p4r jobs list --address http://head:8265
      p4r jobs logs p4r-run-20261126-101500-a1b2c3 --follow -c conf/experiments/cluster.yaml
    """


def _job_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """A `p4r jobs` subcommand: --address, or submit.address from the usual configuration arguments."""

    @config_options
    @click.option("--address", metavar="URL", help="The cluster's job API (default: submit.address).")
    @functools.wraps(func)
    def wrapper(loaded: LoadedConfig, address: str | None, **kwargs: Any) -> Any:
        from persona4rec.infra import ray_jobs
        from persona4rec.infra.secrets import ray_token

        cfg = loaded.config
        return func(jobs=ray_jobs.client(address or cfg.submit.address, ray_token(cfg)), **kwargs)

    return wrapper


@jobs.command("list")
@_job_command
def jobs_list(jobs: Any) -> None:
    """Every job the cluster knows, newest first."""
    from persona4rec.infra import ray_jobs

    rows = sorted((ray_jobs.describe(j) for j in jobs.list_jobs()), key=lambda r: r["start"] or "", reverse=True)
    if not rows:
        click.echo("no jobs")
    for r in rows:
        stage = r["metadata"].get("p4r_stage", "-")
        click.echo(f"{r['id']:<44} {r['status']:<10} {stage:<11} {r['start'] or '':<20} {r['end'] or ''}")


@jobs.command("status")
@click.argument("job_id")
@_job_command
def jobs_status(jobs: Any, job_id: str) -> None:
    """A job's status, message, times, entrypoint and metadata (JSON)."""
    from persona4rec.infra import ray_jobs

    click.echo(json.dumps(ray_jobs.describe(_job_info(jobs, job_id)), indent=2))


@jobs.command("logs")
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends; exit 1 unless it succeeded.")
@_job_command
def jobs_logs(jobs: Any, job_id: str, follow: bool) -> None:
    """A job's logs (driver stdout and stderr)."""
    _job_info(jobs, job_id)
    if follow:
        _follow_job(jobs, job_id)
    else:
        click.echo(jobs.get_job_logs(job_id), nl=False)


@jobs.command("stop")
@click.argument("job_id")
@click.option("--wait", "wait_s", type=float, default=30.0, show_default=True, help="Seconds to wait for it to end.")
@_job_command
def jobs_stop(jobs: Any, job_id: str, wait_s: float) -> None:
    """Ask a job to stop, and wait for it to end."""
    from persona4rec.infra import ray_jobs

    _job_info(jobs, job_id)
    if not jobs.stop_job(job_id):
        click.echo(f"{job_id} had already ended: {jobs.get_job_status(job_id).value}")
        return
    click.echo(f"{job_id}: {ray_jobs.wait(jobs, job_id, timeout_s=wait_s)}")


def _job_info(jobs: Any, job_id: str) -> Any:
    from persona4rec.infra.ray_jobs import JobError

    try:
        return jobs.get_job_info(job_id)
    except RuntimeError as exc:
        raise JobError(f"no job {job_id} on this cluster ({exc})") from None


@main.command()
@config_options
@click.option("-i", "--item", "items", multiple=True, metavar="ITEM_ID", help="An item to show (repeatable).")
@click.option("-n", "--limit", default=5, show_default=True, help="How many items to show when none is named.")
@click.option("--reviews/--no-reviews", default=True, help="Quote the evidence reviews each persona cites.")
def personas(loaded: LoadedConfig, items: tuple[str, ...], limit: int, reviews: bool) -> None:
    """Show items' summaries and personas, with the reviews each persona rests on (Markdown).

    \b
    Reads the reasoning output for this configuration (the same -d/-c/KEY=VALUE as `p4r reason`).
    Example:
      p4r personas -c conf/experiments/offline-cpu.yaml -n 3
      p4r personas -c conf/experiments/offline-cpu.yaml -i B0002E1G5C -i B000068NW5
    """
    import pyarrow.parquet as pq

    from persona4rec.jobs import runner

    located = runner(loaded.config, progress=False)
    result = located.locate("reason")
    status = {r["item_id"]: r for r in pq.read_table(result.table("item_status")).to_pylist()}
    summaries = {r["item_id"]: r["summary"] for r in pq.read_table(result.table("summaries")).to_pylist()}
    by_item: dict[str, list[dict[str, Any]]] = {}
    for p in pq.read_table(result.table("personas")).to_pylist():
        by_item.setdefault(p["item_id"], []).append(p)
    unknown = [i for i in items if i not in status]
    if unknown:
        raise Persona4RecError(f"not in the reasoning output: {', '.join(unknown)}")
    chosen = list(items) or list(status)[:limit]
    texts: dict[str, str] = {}
    if reviews:
        table = pq.read_table(located.locate("prepare").table("reviews"), columns=["review_id", "rating", "text"])
        texts = {r["review_id"]: f"({r['rating']:g}★) {r['text']}" for r in table.to_pylist()}
    for item_id in chosen:
        st = status[item_id]
        click.echo(f"### {item_id}\n")
        if st["status"] != "ok":
            click.echo(f"**failed** after {st['attempts']} attempt(s): {st['reason']}\n")
            continue
        click.echo(f"*Summary:* {summaries.get(item_id)}\n")
        for p in sorted(by_item.get(item_id, []), key=lambda p: p["persona_index"]):
            merged = f" (merged from {p['merged_from']})" if p["merged_from"] > 1 else ""
            click.echo(f"{p['persona_index']}. **{p['name']}**{merged}: {p['description']}")
            click.echo(f"   *Rationale:* {p['rationale']}")
            for review_id in p["evidence"]:
                quote = texts.get(review_id, "")
                quote = quote if len(quote) <= 200 else quote[:200].rsplit(" ", 1)[0] + " …"
                click.echo(f"   - `{review_id}` {quote}".rstrip())
        click.echo()


@main.command()
@click.argument("item_id", metavar="ITEM_ID")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of Markdown.")
def prompts(loaded: LoadedConfig, item_id: str, as_json: bool) -> None:
    """Show what the LLM was sent for an item, and what it answered (an audit of `p4r reason`).

    \b
    Rebuilds the item's units from the prepared reviews and this configuration (the same -d/-c/KEY=VALUE
    as `p4r reason`), finds their answers in the result cache (and reason.seed_caches), and prints per
    unit: the prompt of every attempt (system and user messages, a retry's feedback), the answer or
    the last rejected one, the reviews kept out of the prompt (reason.defences.screen_reviews) and what
    the persona screen flags. Prompts come from the prompt store that `p4r reason` writes beside the
    answer cache (<paths.artifacts>/<dataset>/reason/prompts, content-addressed by sha256). An answer
    without a stored prompt (from a seed cache, or written before prompts were stored) shows the prompt
    re-rendered from the current inputs, and says so. Reads only; runs no LLM.

    \b
    Examples:
      p4r prompts B0002E1G5C -c conf/experiments/headline-musical-instruments.yaml \\
          -d amazon2014-musical-instruments data.local_dir=../shared/data/amazon2014_musical_instruments_5core
      p4r prompts B0002E1G5C --json -c conf/experiments/offline-cpu.yaml > audit.json
    """
    from persona4rec.jobs.reason.stage import prompts_dir
    from persona4rec.reasoning.audit import audit_item, render_markdown

    audit = audit_item(loaded.config, item_id)
    if as_json:
        click.echo(json.dumps(audit.to_json(), ensure_ascii=False, indent=1))
    else:
        click.echo(render_markdown(audit, prompts_dir(loaded.config)), nl=False)


# -------------------------------------------------------------------------------------------- data


@main.group()
def data() -> None:
    """The dataset registry: list datasets, download and verify them."""


@data.command("list")
def data_list() -> None:
    """Registered datasets, their format and where they come from."""
    for name in dataset_names():
        cfg = load_config(dataset=name).config
        how = (
            "manual download"
            if cfg.data.manual_download
            else ("user-supplied" if not cfg.data.reviews.url else "download")
        )
        click.echo(f"{name:<34} {cfg.data.format:<10} {how:<15} {cfg.data.description}")


@data.command("fetch")
@click.argument("name")
@click.option(
    "--dest", type=click.Path(file_okay=False), help="Folder to download into (default: data.cache_dir/NAME)."
)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def data_fetch(name: str, dest: str | None, overrides: tuple[str, ...]) -> None:
    """Download dataset NAME and verify its checksums.

    Files already present are verified, not downloaded again; an interrupted download resumes. To use
    a copy you already have, skip this and set data.local_dir=FOLDER on the stage command instead.
    """
    from pathlib import Path

    from persona4rec.datasets import fetch

    cfg = load_config(overrides, dataset=name).config
    for path in fetch(cfg, dest=Path(dest) if dest else None):
        click.echo(str(path))


@data.command("info")
@click.argument("name")
def data_info(name: str) -> None:
    """A dataset's registry entry: files, addresses, checksums, terms."""
    cfg = load_config(dataset=name).config
    click.echo(json.dumps(cfg.data.model_dump(mode="json", exclude_none=True), indent=2))


# ------------------------------------------------------------------------------------------ config


@main.group()
def config() -> None:
    """Inspect the layered configuration."""


@config.command("show")
@config_options
@click.option("--explain", is_flag=True, help="Annotate every key with the layer that set it.")
def config_show(loaded: LoadedConfig, explain: bool) -> None:
    """Print the effective configuration and its hash.

    \b
    Layers, lowest precedence first:
      1. conf/defaults.yaml                     every key and its default
      2. conf/datasets/<dataset>.yaml (-d)       the dataset's reader and files
      3. experiment file (-c FILE)               your run's settings
      4. key=value arguments                     e.g. prepare.k_core=10 spark.master=spark://h:7077
    Values are YAML: 10 is a number, [a, b] a list, null clears. Unknown keys and wrong types fail.
    """
    click.echo(loaded.explain() if explain else loaded.config.to_yaml(), nl=False)
    click.echo(f"# config hash: {loaded.config.hash()}")


@main.command()
def schemas() -> None:
    """Print the table contracts (columns, types, meaning) as Markdown."""
    from persona4rec.schemas import schemas_markdown

    click.echo(schemas_markdown(), nl=False)

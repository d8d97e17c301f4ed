"""``p4r``: one command, a subcommand per pipeline stage.

Every stage command takes the same configuration arguments: ``-d DATASET``, ``-c EXPERIMENT.yaml`` and
any number of ``key=value`` overrides (see ``p4r config show --help``). Engines are imported only by the
command that needs them, so ``p4r --help`` is instant.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

import persona4rec
from persona4rec.config import LoadedConfig, dataset_names, load_config
from persona4rec.errors import Persona4RecError, StageUnavailable

if TYPE_CHECKING:
    from persona4rec.artifacts import Manifest

#: Stages in pipeline order.
PIPELINE: tuple[str, ...] = (
    "prepare", "reason", "align", "embed", "candidates", "train", "promote", "index", "evaluate",
)  # fmt: skip


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


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-d/-c/key=value, loaded into a validated config passed as ``loaded``."""

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
        loaded = load_config(overrides, experiment=experiment, dataset=dataset)
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


# --------------------------------------------------------------------------------------------- run


@main.command()
@config_options
@click.option("--force", is_flag=True, help="Rebuild every stage even when its output is up to date.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--from", "first", type=click.Choice(PIPELINE), help="Start at this stage (its inputs must exist).")
@click.option("--until", "last", type=click.Choice(PIPELINE), help="Stop after this stage.")
def run(loaded: LoadedConfig, force: bool, quiet: bool, first: str | None, last: str | None) -> None:
    """Run the pipeline: every stage in order (or --from/--until), skipping up-to-date ones.

    \b
    Example:
      p4r run -c conf/experiments/offline-cpu.yaml --until reason
    """
    for name in _stages(first, last):
        STAGES[name](loaded, force=force, quiet=quiet)


def _stages(first: str | None, last: str | None) -> tuple[str, ...]:
    start = PIPELINE.index(first) if first else 0
    stop = PIPELINE.index(last) + 1 if last else len(PIPELINE)
    if start >= stop:
        raise click.UsageError(f"--from {first} comes after --until {last} in the pipeline")
    return PIPELINE[start:stop]


# ----------------------------------------------------------------------------------------- prepare


def _prepare(loaded: LoadedConfig, *, force: bool, quiet: bool) -> None:
    from persona4rec.jobs.prepare.job import run as prepare_run

    result = prepare_run(loaded.config, force=force, progress=not quiet)
    m = result.manifest
    if result.skipped:
        click.echo(f"prepare: up to date, nothing to do ({result.folder})")
        return
    click.echo(f"prepare: wrote {result.folder}")
    _cost_of_stage(result.manifest)
    width = max(len(n) for n in m.tables)
    for name, info in m.tables.items():
        click.echo(f"  {name:<{width}}  {info['rows']:>10,} rows")
    click.echo(f"  {m.counts['accounting']}")
    for reason, n in m.counts["quarantine_by_reason"].items():
        click.echo(f"    quarantined {reason:<28} {n:>10,}")
    split = m.counts["split"]
    click.echo(
        f"  users {m.counts['users']:,}  items {m.counts['items']:,}  "
        f"train/valid/test {split.get('train', 0):,}/{split.get('valid', 0):,}/{split.get('test', 0):,}  "
        f"empty-text reviews {m.counts['empty_text_reviews']:,}"
    )


@main.command()
@config_options
@click.option("--force", is_flag=True, help="Rebuild even when the output for these inputs and config exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def prepare(loaded: LoadedConfig, force: bool, quiet: bool) -> None:
    """Clean, filter and split the review corpus on Spark.

    \b
    Reads the dataset's raw files (data.local_dir, else the download cache), quarantines every bad
    line with its reason, de-duplicates, applies the item filter and the iterative k-core
    (prepare.k_core), splits leave-one-out by time and samples each item's training reviews for the
    LLM. Writes reviews, items, interactions, review_samples and quarantine as Parquet, plus
    manifest.json, under <paths.artifacts>/<dataset>/prepare/<fingerprint>/. A rerun with the same
    inputs and configuration does no work.

    \b
    Example (the real data shipped on this machine):
      p4r prepare -d amazon2014-musical-instruments \\
          data.local_dir=../shared/data/amazon2014_musical_instruments_5core
    """
    _prepare(loaded, force=force, quiet=quiet)


# ------------------------------------------------------------------------------------------ reason


def _llm_stage_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(func)
    func = click.option(
        "--retry-failed", is_flag=True, help="Redo units recorded as failed (by default they are kept as failed)."
    )(func)
    func = click.option("--force", is_flag=True, help="Republish even when the output is up to date (cache reused).")(
        func
    )
    return func


def _cost_of_stage(m: Manifest) -> None:
    """One line: the stage's wall time by step and the peak memory of its process tree."""
    steps = "  ".join(f"{k} {v:.1f}s" for k, v in m.timings_s.items())
    peak = max(m.peak_rss_mb.values(), default=0.0)
    click.echo(f"  time {sum(m.timings_s.values()):.1f}s ({steps})  peak memory {peak / 1024:.1f} GiB")


def _cost_lines(counts: dict[str, Any]) -> None:
    for kind, s in counts.get("spent_this_run", {}).items():
        click.echo(
            f"  this run, {kind}: {s['units']:,} units ({s['failed']:,} failed), {s['calls']:,} LLM calls, "
            f"{s['prompt_tokens']:,} prompt + {s['completion_tokens']:,} generated tokens"
        )
    if not counts.get("spent_this_run"):
        click.echo("  this run: every answer came from the cache (no LLM call)")


def _reason(loaded: LoadedConfig, *, force: bool, quiet: bool, retry_failed: bool = False) -> None:
    from persona4rec.jobs.reason.job import run as reason_run

    result = reason_run(loaded.config, force=force, retry_failed=retry_failed, progress=not quiet)
    if result.skipped:
        click.echo(f"reason: up to date, nothing to do ({result.folder})")
        return
    c = result.manifest.counts
    click.echo(f"reason: wrote {result.folder}")
    _cost_of_stage(result.manifest)
    click.echo(
        f"  items {c['items']:,}: {c['items_ok']:,} ok, {c['items_failed']:,} failed  "
        f"personas {c['personas']:,} ({c['personas_per_ok_item']} per item)"
    )
    for reason, n in c["failures_by_reason"].items():
        click.echo(f"    failed: {reason:<24} {n:>8,}")
    click.echo(f"  whole output: {c['llm_calls_per_item']} LLM calls and {c['tokens_per_item']} tokens per item")
    _cost_lines(c)


@main.command()
@config_options
@_llm_stage_options
def reason(loaded: LoadedConfig, force: bool, retry_failed: bool, quiet: bool) -> None:
    """Write item summaries and personas with an LLM, on a Ray actor pool.

    \b
    Reads prepare's items and review samples. reason.mode=efficient (default) spends one LLM call
    per item: a summary plus 2-7 personas (name, description, rationale), each citing the reviews it
    rests on. reason.mode=paper follows the paper: a summary call, one aspect call per review, then
    a persona call over the aspects. Answers are schema-constrained and validated; an invalid one is
    retried (reason.max_attempts) and then recorded as failed with its reason, never left empty.

    \b
    Every answer is cached by content hash as soon as its batch finishes: a rerun skips done work,
    a killed run resumes, and only items whose reviews, prompts or model changed are redone.

    \b
    Engines (llm.engine): vllm (Ray actors; GPUs via reason.actors.num_gpus), llamacpp (GGUF on a
    CPU), openai (any OpenAI-compatible endpoint at llm.openai.base_url).
    Example on this CPU (offline models, see README):
      p4r reason -c conf/experiments/offline-cpu.yaml reason.limit_items=20
    """
    _reason(loaded, force=force, quiet=quiet, retry_failed=retry_failed)


def _align(loaded: LoadedConfig, *, force: bool, quiet: bool, retry_failed: bool = False) -> None:
    from persona4rec.jobs.align.job import run as align_run

    result = align_run(loaded.config, force=force, retry_failed=retry_failed, progress=not quiet)
    if result.skipped:
        click.echo(f"align: up to date, nothing to do ({result.folder})")
        return
    c = result.manifest.counts
    click.echo(f"align: wrote {result.folder}")
    _cost_of_stage(result.manifest)
    click.echo(
        f"  {c['labels']:,} labels for {c['train_interactions']:,} training interactions (coverage {c['coverage']:.1%})"
    )
    for reason, n in c["unlabelled_by_reason"].items():
        click.echo(f"    {reason:<24} {n:>8,}")
    if "llm" in c:
        _cost_lines(c)


@main.command()
@config_options
@_llm_stage_options
def align(loaded: LoadedConfig, force: bool, retry_failed: bool, quiet: bool) -> None:
    """Label training interactions with their positive persona (the encoder's training data).

    \b
    efficient mode: the persona of the item that cites the user's own review (no LLM call).
    paper mode: an LLM judge reads the user's earlier history (strictly before the interaction) and
    picks the best-fitting persona of the item. Only training interactions are labelled.
    """
    _align(loaded, force=force, quiet=quiet, retry_failed=retry_failed)


# ------------------------------------------------------------------------------------------ encoder


def _embed(loaded: LoadedConfig, *, force: bool, quiet: bool) -> None:
    from persona4rec.jobs.embed.job import run as embed_run

    result = embed_run(loaded.config, force=force, progress=not quiet)
    if result.skipped:
        click.echo(f"embed: up to date, nothing to do ({result.folder})")
        return
    c, t = result.manifest.counts, result.manifest.tables
    click.echo(f"embed: wrote {result.folder}")
    _cost_of_stage(result.manifest)
    click.echo(
        "  " + ", ".join(f"{v['rows']:,} {k.removesuffix('_vectors')}s" for k, v in t.items()) + f"; dim {c['dim']}"
    )
    rate = f" at {c['sentences_per_s']:,} texts/s" if c["sentences_per_s"] else ""
    click.echo(f"  embedded {c['embedded_this_run']:,} new texts{rate}; {c['from_cache']:,} from the cache")


@main.command()
@config_options
@click.option("--force", is_flag=True, help="Rebuild even when the output for these inputs and config exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def embed(loaded: LoadedConfig, force: bool, quiet: bool) -> None:
    """Embed every persona, interaction and item text with the base model (a Ray actor pool).

    \b
    Texts follow one template (persona4rec/texts.py) shared by training, indexing and serving.
    Vectors are cached by content: a rerun, or a catalogue change, embeds only new texts.
    Settings: embed.model (default all-MiniLM-L6-v2), embed.num_actors, embed.num_gpus, embed.batch_size.
    """
    _embed(loaded, force=force, quiet=quiet)


def _train(loaded: LoadedConfig, *, force: bool, quiet: bool) -> None:
    from persona4rec.jobs.train.job import run as train_run

    result = train_run(loaded.config, force=force, progress=not quiet)
    c = result.manifest.counts
    if result.skipped:
        click.echo(f"train: up to date, nothing to do ({result.folder})")
    else:
        click.echo(f"train: wrote {result.folder}")
        _cost_of_stage(result.manifest)
    d = c["data"]
    target = result.manifest.stage_config["encoder"].get("objective", {}).get("target", "persona")
    examples = (
        f"{d.get('item_examples', 0):,} training interactions with a history (item target; "
        f"{d['train_examples']:,} labelled)" if target == "item" else f"{d['train_examples']:,} labelled examples"
    )
    lists = ", ".join(f"{g} {n:,}" for g, n in d.get("valid_lists", {}).items())
    click.echo(
        f"  {examples}, {d['heldout_examples']:,} held out, {d['valid_examples']:,} validation users"
        + (f" (validation lists: {lists})" if lists else "")
    )
    for name, value in c["validation"].items():
        click.echo(f"  {name:<20} {value:.4f}   (chance {c['chance'].get(name, float('nan')):.4f})")
    click.echo(f"  gamma {c['gamma']:g} (tried {', '.join(c['gamma_scores'])}); best epoch {c['best_epoch']}")
    m = c["mlflow"]
    click.echo(f"  registered {m['model']} version {m['version']} at {m['tracking_uri']} (run {m['run_id']})")


@main.command()
@config_options
@click.option("--force", is_flag=True, help="Retrain even when this configuration was trained on these inputs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def train(loaded: LoadedConfig, force: bool, quiet: bool) -> None:
    """Train the alignment encoder on Ray Train and register it in MLflow.

    \b
    encoder.mode: head (frozen base + residual head, fast on a CPU), lora (the paper), full, or vanilla
    (registers the untuned base model). encoder.objective: target item (every training interaction with
    a history, the item scored as the max over its personas, against the whole catalogue or the batch,
    optionally with first-stage hard negatives) or persona (the paper's labels). train.num_workers workers
    (train.use_gpu for GPUs), a checkpoint per epoch, early stopping and gamma on train.metric
    (list_ndcg@10: the first stage's validation lists reordered, so `p4r candidates` runs first). A
    crashed run resumes from its last checkpoint when run again.
    Example:
      p4r train encoder.objective.negatives=batch encoder.objective.hard_negatives=10
    """
    _train(loaded, force=force, quiet=quiet)


def _promote(loaded: LoadedConfig, *, force: bool = False, quiet: bool = False, version: str | None = None) -> None:
    from persona4rec.jobs.promote.job import run as promote_run

    decision = promote_run(loaded.config, version)
    click.echo(f"promote: {decision.model} on {decision.metric} (validation)")
    click.echo("  " + decision.table().replace("\n", "\n  "))


@main.command()
@config_options
@click.option("--version", "version", metavar="N", help="Registered version to consider (default: the latest).")
def promote(loaded: LoadedConfig, version: str | None) -> None:
    """Move the champion alias to a registered encoder if it beats the current champion.

    \b
    Both are scored now, on the same validation data and train.metric; a tie keeps the champion.
    The decision is printed and recorded on the model version (tag `promotion`) and in its MLflow run.
    """
    _promote(loaded, version=version)


def _index(loaded: LoadedConfig, *, force: bool, quiet: bool) -> None:
    from persona4rec.jobs.index.job import run as index_run

    result = index_run(loaded.config, force=force, progress=not quiet)
    c = result.manifest.counts
    if result.skipped:
        click.echo(f"index: up to date, nothing to do; {c['alias']} -> {c['collection']}")
        return
    click.echo(f"index: wrote {c['collection']} ({result.folder})")
    _cost_of_stage(result.manifest)
    click.echo(
        f"  {c['personas']:,} personas + {c['summary_rows']:,} summary rows (items without personas); "
        f"{c['copied']:,} vectors copied from {c['copied_from'] or 'no earlier version'}, {c['encoded']:,} encoded"
    )
    e = c["encoder"]
    click.echo(
        f"  {c['index_type']} index, {c['self_queries_checked']} self-queries checked; encoder {e['model']} "
        f"version {e['version']}; {c['users']:,} user profiles"
    )
    click.echo(f"  alias {c['alias']} -> {c['collection']}" + (f" (was {c['replaced']})" if c.get("replaced") else ""))


@main.command()
@config_options
@click.option("--force", is_flag=True, help="Build a new version even when one exists for these inputs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--list", "list_", is_flag=True, help="List the index versions in Milvus (the live one marked) and exit.")
@click.option("--drop", metavar="COLLECTION", help="Drop an old index version (never the live one) and exit.")
def index(loaded: LoadedConfig, force: bool, quiet: bool, list_: bool, drop: str | None) -> None:
    """Write the persona index: a new Milvus collection version, then move the alias to it.

    \b
    Every persona (and a summary row for each item without personas) is encoded with the champion
    encoder (or index.encoder_version); vectors of unchanged personas are copied from the live version.
    The version is built, indexed (index.index_type), loaded and checked before the alias moves; a
    failed build never touches it, and old versions stay until dropped (--drop).
    Milvus Lite (a local folder) by default; index.uri=http://host:19530 for a Milvus server.
    """
    if not (list_ or drop):
        _index(loaded, force=force, quiet=quiet)
        return
    from persona4rec.infra import milvus

    cfg = loaded.config
    client = milvus.connect(cfg)
    try:
        if drop:
            milvus.drop_version(client, cfg.index_alias, drop)
            click.echo(f"index: dropped {drop}")
            return
        found = milvus.versions(client, cfg.index_alias)
        if not found:
            click.echo(f"index: no versions of {cfg.index_alias} at {cfg.milvus_uri}")
        for v in found:
            enc = v.meta.get("encoder", {})
            click.echo(
                f"{'*' if v.live else ' '} {v.name}  {v.rows:>9,} rows  encoder version {enc.get('version', '?')}"
            )
    finally:
        client.close()


def _candidates(loaded: LoadedConfig, *, force: bool, quiet: bool) -> None:
    from persona4rec.jobs.candidates.job import run as candidates_run

    result = candidates_run(loaded.config, force=force, progress=not quiet)
    c = result.manifest.counts
    if result.skipped:
        click.echo(f"candidates: up to date, nothing to do ({result.folder})")
        return
    n = loaded.config.candidates.top_n
    click.echo(f"candidates: wrote {result.folder}")
    _cost_of_stage(result.manifest)
    click.echo(f"  {c['users']:,} users, {c['items']:,} items, {c['train_interactions']:,} training interactions")
    for name, g in c["generators"].items():
        tuned = ", ".join(f"{k}={v:g}" for k, v in g["params"].items() if not isinstance(v, dict)) or "no parameters"
        t = g["test_full_ranking"]
        click.echo(
            f"  {name:<10} test HR@{n} {c['hit_rate'][name]['test']:.4f}  full-ranking HR@10 {t['hr@10']:.4f} "
            f"NDCG@10 {t['ndcg@10']:.4f}  ({tuned})"
        )


@main.command()
@config_options
@click.option("--force", is_flag=True, help="Retrain even when lists for these inputs and settings exist.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def candidates(loaded: LoadedConfig, force: bool, quiet: bool) -> None:
    """Train the first-stage generators on the training split and list top-N candidates per user.

    \b
    candidates.generators: popularity, BPR-MF and LightGCN (PyTorch; candidates.num_workers=N runs them
    on Ray Train). Every combination of a model's grid (e.g. candidates.bpr.grid.l2=[1e-4,1e-3]) is
    trained, stopping early on validation NDCG@top_n, and the best is kept. Lists leave out the user's
    training items (and, for test, the validation item) and are never padded.
    Example:
      p4r candidates -c conf/experiments/offline-cpu.yaml candidates.top_n=50
    """
    _candidates(loaded, force=force, quiet=quiet)


def _evaluate(loaded: LoadedConfig, *, force: bool, quiet: bool) -> None:
    from persona4rec.jobs.evaluate.job import run as evaluate_run

    result = evaluate_run(loaded.config, force=force, progress=not quiet)
    if result.skipped:
        click.echo(f"evaluate: up to date, nothing to do; report: {result.folder / 'report.md'}")
        return
    click.echo(f"evaluate: wrote {result.folder / 'report.md'} (plots in {result.folder / 'plots'})")
    _cost_of_stage(result.manifest)
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(result.table("eval_metrics")).to_pylist() if r["segment"] == "all"]
    alpha = loaded.config.evaluate.alpha
    for gen in dict.fromkeys(r["generator"] for r in rows):
        click.echo(f"  {gen}:")
        for r in rows:
            if r["generator"] == gen and r["metric"] == "ndcg@10" and r["value"] is not None:
                star = "*" if r["p_value"] is not None and r["p_value"] < alpha else " "
                click.echo(
                    f"    {r['reranker']:<16} NDCG@10 {r['value']:.4f}{star} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
                )
    lat = result.manifest.counts.get("latency_ms", {})
    if lat:
        click.echo("  latency p50: " + ", ".join(f"{k} {v['p50']:.3g} ms" for k, v in lat.items() if v))


@main.command()
@config_options
@click.option("--force", is_flag=True, help="Evaluate again even when a report for these inputs exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def evaluate(loaded: LoadedConfig, force: bool, quiet: bool) -> None:
    """Rerank the same candidates with every reranker; metrics with CIs and tests; a report with plots.

    \b
    Rerankers (evaluate.rerankers): first_stage, popularity, persona_vanilla (untuned base encoder),
    persona (the champion or index.encoder_version), persona_fused (fusion weight tuned on validation),
    summary (one summary vector per item), learned (LambdaRank over persona and first-stage features,
    fitted on the validation lists with evaluate.learned cross-validated over users, and logged with the
    encoder for /rerank), learned_no_persona (the same without persona features) and llm_listwise
    (zero-shot listwise LLM, evaluate.listwise.llm or llm.*, on evaluate.listwise.users sampled users,
    one request at a time, latency recorded). HR/MRR/NDCG at evaluate.ks over every test user, 95%
    bootstrap intervals, paired randomization tests against first_stage, warm/cold users and head/tail
    items (top/bottom 20% by reviews). Writes report.md, plots/*.png, eval_metrics and eval_ranks (each
    test user's rank under each reranker) under <paths.artifacts>/<dataset>/evaluate/<fingerprint>/ and
    logs them to MLflow.
    Example:
      p4r evaluate -c conf/experiments/offline-cpu.yaml evaluate.listwise.users=50
    """
    _evaluate(loaded, force=force, quiet=quiet)


STAGES: dict[str, Callable[..., None]] = {
    "prepare": _prepare,
    "reason": _reason,
    "align": _align,
    "embed": _embed,
    "candidates": _candidates,
    "train": _train,
    "promote": _promote,
    "index": _index,
    "evaluate": _evaluate,
}


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

    from persona4rec.jobs.reason.job import locate

    result = locate(loaded.config)
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
        from persona4rec.jobs.prepare.job import locate as prepare_locate

        table = pq.read_table(prepare_locate(loaded.config).table("reviews"), columns=["review_id", "rating", "text"])
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
    from persona4rec.jobs.reason.job import prompts_dir
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

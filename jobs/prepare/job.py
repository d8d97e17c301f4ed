"""``p4r prepare``: raw reviews (+ item metadata) into the cleaned, split corpus, on Spark.

Steps: read and validate every line -> de-duplicate -> item filter -> iterative k-core ->
leave-one-out split -> per-item LLM review samples -> items. Every input line ends up either in
``reviews`` or in ``quarantine`` with its reason, and the manifest proves the sum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from tqdm import tqdm

from persona4rec import schemas
from persona4rec.artifacts import Timer
from persona4rec.config import Config
from persona4rec.datasets import ResolvedFile, resolve_files
from persona4rec.errors import Persona4RecError
from persona4rec.infra.spark import conform, stage_session
from persona4rec.jobs.prepare import clean, readers
from persona4rec.jobs.prepare.kcore import k_core
from persona4rec.jobs.prepare.samples import review_samples
from persona4rec.jobs.prepare.split import leave_one_out, tie_counts
from persona4rec.jobs.prepare.stage import PrepareSummary
from persona4rec.stage import Build

TABLES = (schemas.REVIEWS, schemas.ITEMS, schemas.INTERACTIONS, schemas.REVIEW_SAMPLES, schemas.QUARANTINE)
_STEPS = ("read", "clean", "k-core", "split", "samples", "items", "write", "validate")


def build(b: Build, spark: SparkSession | None) -> PrepareSummary:
    """Prepare the corpus into ``b.folder`` on ``spark``, or on a session started (and stopped) here.

    A result that keeps too little of the input (``prepare.min_kept_share``, or nothing at all) raises
    :class:`Persona4RecError`, so nothing is published and ``CURRENT`` stays where it was.
    """
    files = resolve_files(b.cfg)
    with stage_session(b.cfg.spark, spark) as session:
        b.environment(spark=session.version, spark_master=session.sparkContext.master)
        try:
            return _build(session, b.cfg, files, b, b.progress)
        finally:
            session.catalog.clearCache()


def _build(spark: SparkSession, cfg: Config, files: list[ResolvedFile], b: Build, progress: bool) -> PrepareSummary:
    timer, out = b.timer, b.folder
    bar = tqdm(total=len(_STEPS), desc="prepare", unit="step", disable=not progress)

    def step(name: str) -> Timer:
        bar.set_postfix_str(name)
        return timer(name)

    paths = {f.role: str(f.path) for f in files if f.path is not None}
    counts: dict[str, Any] = {}

    def enough(**left: int) -> None:
        """Stop here, publishing nothing, when too little of the input is left (see _too_little)."""
        n.update(left)
        if why := _too_little(cfg, counts["input_lines"], n, invalid, paths["reviews"]):
            bar.close()
            raise Persona4RecError(why)

    with step("read"):
        lines = readers.read_reviews(spark, cfg, paths["reviews"])
        # the cache keeps raw text for invalid lines only (valid ones hold it as fields already)
        rows = lines.withColumn("raw", F.when(F.col("reason").isNotNull(), F.col("raw"))).persist()
        counts["input_lines"] = rows.count()
        invalid = rows.filter(F.col("reason").isNotNull())
        valid = rows.filter(F.col("reason").isNull()).drop("reason", "detail", "raw")
        n: dict[str, int] = {"valid": valid.count()}  # lines left after each step, for enough()
        meta = meta_bad = meta_dups = None
        if "metadata" in paths:
            meta_rows = readers.read_metadata(spark, cfg, paths["metadata"]).persist()
            counts["metadata_lines"] = meta_rows.count()
            meta_bad = meta_rows.filter(F.col("reason").isNotNull())
            meta, meta_dups = clean.deduplicate_metadata(meta_rows.filter(F.col("reason").isNull()))
            meta = meta.persist()
    bar.update()

    with step("clean"):
        deduped, dups = clean.deduplicate(valid)
        deduped = deduped.persist()
        n["deduped"] = deduped.count()
        if n["valid"] > n["deduped"]:  # each duplicate keeps its line, read again from the file
            dups = dups.join(lines.select("source_file", "source_line", "raw"), ["source_file", "source_line"], "left")
        else:
            dups = dups.withColumn("raw", F.lit(None).cast("string"))
        kept, item_removed = clean.filter_items(deduped, meta, cfg.prepare.item_filter)
        kept = kept.persist()
        counts["valid_after_clean"] = kept.count()
    bar.update()
    if counts["valid_after_clean"] == 0:  # nothing for the k-core to work on
        enough(clean=0, core=0)

    with step("k-core"):
        core_users, core_items, passes = k_core(
            kept,
            cfg.prepare.k_core,
            n_pairs=counts["valid_after_clean"],
            driver_max_pairs=cfg.prepare.k_core_driver_max_pairs,
        )
        flagged = kept.join(core_users.withColumn("_u", F.lit(True)), "user_id", "left").join(
            core_items.withColumn("_i", F.lit(True)), "item_id", "left"
        )
        in_core = F.col("_u").isNotNull() & F.col("_i").isNotNull()
        final = flagged.filter(in_core).drop("_u", "_i").persist()
        below = _below_k_core(flagged.filter(~in_core), kept, cfg.prepare.k_core)
        counts["k_core"] = {"k": cfg.prepare.k_core, "passes": passes}
        counts["reviews"] = final.count()
    bar.update()
    enough(clean=counts["valid_after_clean"], core=counts["reviews"])

    with step("split"):
        interactions = leave_one_out(final).persist()
        counts["split"] = {r["split"]: r["count"] for r in interactions.groupBy("split").count().collect()}
        counts["ties"] = tie_counts(interactions)
    bar.update()

    with step("samples"):
        # anti-join with the held-out ids (2 per user) rather than a semi-join with the training ids:
        # the small side can be broadcast, so the review texts are not shuffled for it
        held_out = interactions.filter(F.col("split") != "train").select("review_id")
        train_reviews = final.join(held_out, "review_id", "left_anti")
        samples = review_samples(train_reviews, cfg.prepare.samples).persist()
        samples.count()  # materialise here, so the step's timing is its own
    bar.update()

    with step("items"):
        items = _items(interactions, train_reviews, samples, meta).persist()
        items.count()
    bar.update()

    quarantine = _quarantine(invalid, dups, item_removed, below, meta_bad, meta_dups)
    frames: dict[str, DataFrame] = {
        "reviews": final,
        "items": items,
        "interactions": interactions,
        "review_samples": samples,
        "quarantine": quarantine,
    }
    with step("write"):
        for table in TABLES:
            conform(frames[table.name], table).orderBy(*table.key).write.mode("overwrite").parquet(
                str(out / table.name)
            )
    bar.update()

    with step("validate"):
        rows_written = {t.name: schemas.validate_parquet(out / t.name, t) for t in TABLES}
        q = spark.read.parquet(str(out / "quarantine"))
        by_reason = {
            f"{r['source_table']}.{r['reason']}": r["count"]
            for r in q.groupBy("source_table", "reason").count().orderBy("source_table", "reason").collect()
        }
        counts.update(_accounting(counts, rows_written, by_reason, final))
    bar.update()
    bar.close()

    b.manifest.tables = {name: {"path": name, "rows": n} for name, n in rows_written.items()}
    return PrepareSummary(**counts)


def _items(interactions: DataFrame, train_reviews: DataFrame, samples: DataFrame, meta: DataFrame | None) -> DataFrame:
    stats = interactions.groupBy("item_id").agg(F.count("*").alias("n_interactions"))
    train_text = (
        train_reviews.filter(~F.col("empty_text")).groupBy("item_id").agg(F.count("*").alias("n_train_reviews"))
    )
    sampled = samples.groupBy("item_id").agg(F.count("*").alias("n_samples"))
    items = stats.join(train_text, "item_id", "left").join(sampled, "item_id", "left")
    if meta is not None:
        items = items.join(
            meta.select(*readers.METADATA_COLUMNS).withColumn("has_metadata", F.lit(True)), "item_id", "left"
        )
    else:
        for name, kind in [
            ("title", "string"),
            ("description", "string"),
            ("categories", "array<string>"),
            ("brand", "string"),
            ("city", "string"),
            ("metadata_json", "string"),
        ]:
            items = items.withColumn(name, F.lit(None).cast(kind))
        items = items.withColumn("has_metadata", F.lit(False))
    return items.fillna(0, subset=["n_train_reviews", "n_samples"]).fillna(False, subset=["has_metadata"])


def _quarantine(
    invalid: DataFrame,
    dups: DataFrame,
    item_removed: DataFrame,
    below: DataFrame,
    meta_bad: DataFrame | None,
    meta_dups: DataFrame | None,
) -> DataFrame:
    def removed(df: DataFrame, reason: str, detail: Any, raw: Any = None) -> DataFrame:
        return df.select(
            F.lit("reviews").alias("source_table"),
            "source_file",
            "source_line",
            F.lit(reason).alias("reason"),
            detail.alias("detail"),
            (F.lit(None).cast("string") if raw is None else raw).alias("raw"),
            "review_id",
            "user_id",
            "item_id",
        )

    parts = [
        invalid.select(
            F.lit("reviews").alias("source_table"),
            "source_file",
            "source_line",
            "reason",
            "detail",
            "raw",
            "review_id",
            "user_id",
            "item_id",
        ),
        removed(dups, "duplicate", F.col("_detail"), F.col("raw")),
        removed(item_removed, "item_filtered", F.col("_detail")),
        removed(below, "below_k_core", F.col("_detail")),
    ]
    if meta_bad is not None and meta_dups is not None:
        parts.append(
            meta_bad.select(
                F.lit("metadata").alias("source_table"),
                "source_file",
                "source_line",
                "reason",
                "detail",
                "raw",
                F.lit(None).cast("string").alias("review_id"),
                F.lit(None).cast("string").alias("user_id"),
                "item_id",
            )
        )
        parts.append(
            meta_dups.select(
                F.lit("metadata").alias("source_table"),
                "source_file",
                "source_line",
                F.lit("duplicate_metadata").alias("reason"),
                F.lit("a second record for the item").alias("detail"),
                "raw",
                F.lit(None).cast("string").alias("review_id"),
                F.lit(None).cast("string").alias("user_id"),
                "item_id",
            )
        )
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def _below_k_core(removed: DataFrame, pairs: DataFrame, k: int) -> DataFrame:
    """The reviews the k-core removed, each with a ``_detail`` naming the side (user, item or both) that fell
    below k and its interactions before the k-core (fewer than k, or enough until others were removed)."""
    users = pairs.groupBy("user_id").agg(F.count("*").alias("_nu"))
    items = pairs.groupBy("item_id").agg(F.count("*").alias("_ni"))

    def side(name: str, flag: str, count: str) -> Any:
        n = F.col(count)
        noun = F.when(n == 1, F.lit(" interaction")).otherwise(F.lit(" interactions"))
        why = F.when(n < k, F.lit(f", below k={k}")).otherwise(F.lit(f", below k={k} once others were removed"))
        return F.when(F.col(flag).isNull(), F.concat(F.lit(f"{name}: "), n.cast("string"), noun, why))

    detail = F.concat_ws("; ", side("user", "_u", "_nu"), side("item", "_i", "_ni"))
    return (
        removed.join(users, "user_id", "left")
        .join(items, "item_id", "left")
        .withColumn("_detail", detail)
        .drop("_u", "_i", "_nu", "_ni")
    )


def _too_little(cfg: Config, n_input: int, n: dict[str, int], invalid: DataFrame, path: str) -> str | None:
    """Why the corpus must not be published (empty, or under ``prepare.min_kept_share`` of its input), or None.

    ``n``: the lines left after each step (valid, deduped, clean, core). The message says where the lines
    went, with an example of the commonest quarantine reason, and what to check.
    """
    share = cfg.prepare.min_kept_share
    kept = n["core"]
    if kept > 0 and kept >= share * n_input:
        return None
    name = Path(path).name
    if n_input == 0:
        return f"prepare: {name} has no lines. Nothing was published"
    lost = {
        "invalid": n_input - n["valid"],
        "duplicate": n["valid"] - n["deduped"],
        "item_filtered": n["deduped"] - n["clean"],
        "below_k_core": n["clean"] - n["core"],
    }
    parts = []
    if lost["invalid"]:
        by_reason = invalid.groupBy("reason").count().orderBy(F.desc("count"), "reason").collect()
        top = by_reason[0]["reason"]
        example = invalid.filter(F.col("reason") == top).orderBy("source_file", "source_line").first()
        reasons = [f"{r['reason']} {r['count']}" for r in by_reason]
        reasons[0] += f', e.g. line {example["source_line"]}: "{example["detail"]}"'
        parts.append(f"{lost['invalid']} invalid ({', '.join(reasons)})")
    parts += [f"{count} {what}" for what, count in lost.items() if what != "invalid" and count]
    worst = max(lost, key=lambda what: lost[what])
    hint = {
        "invalid": f"check that data.format ({cfg.data.format}) matches the fields of {name}"
        + (" and that data.columns names them" if cfg.data.format == "generic" else ""),
        "duplicate": f"check {name}: most of its lines repeat a (user, item) pair",
        "item_filtered": "check prepare.item_filter against the metadata",
        "below_k_core": f"lower prepare.k_core ({cfg.prepare.k_core})",
    }[worst]
    if kept == 0:
        what = f"prepare kept none of the {n_input} lines of {name}"
    else:
        what = (
            f"prepare kept {kept} of the {n_input} lines of {name} ({kept / n_input:.2%}), "
            f"less than prepare.min_kept_share={share:g}"
        )
        hint += ", or lower prepare.min_kept_share if so little is expected"
    return f"{what}: {', '.join(parts)}. Nothing was published; {hint}"


def _accounting(
    counts: dict[str, Any], rows: dict[str, int], by_reason: dict[str, int], final: DataFrame
) -> dict[str, Any]:
    """Prove that no input line was lost: lines = reviews + quarantined, for each input."""
    review_q = sum(n for k, n in by_reason.items() if k.startswith("reviews."))
    if counts["input_lines"] != rows["reviews"] + review_q:
        raise AssertionError(
            f"prepare lost lines: {counts['input_lines']} read, {rows['reviews']} kept + {review_q} quarantined"
        )
    out: dict[str, Any] = {
        "quarantine_by_reason": by_reason,
        "empty_text_reviews": final.filter("empty_text").count(),
        "users": counts["split"].get("test", 0),  # exactly one test interaction per user
        "items": rows["items"],
        "accounting": f"{counts['input_lines']} lines = {rows['reviews']} reviews + {review_q} quarantined",
    }
    if "metadata_lines" in counts:
        meta_q = sum(n for k, n in by_reason.items() if k.startswith("metadata."))
        out["metadata_records_valid"] = counts["metadata_lines"] - meta_q
    return out

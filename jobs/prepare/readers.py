"""Readers: raw review and metadata files of each format into one canonical, validated shape.

Every reader returns every input row, none dropped: the canonical columns plus ``reason`` (null for a
valid row, else a key of ``schemas.QUARANTINE_REASONS``), ``detail`` and ``raw`` for quarantine.
Scalars are read as strings and converted with ``try_cast``, so a wrong type becomes a reason, never a
crash or a silent null.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from persona4rec.config import Config
from persona4rec.jobs.prepare.lines import numbered, text_lines

TimeUnit = Literal["s", "ms", "iso"]
_CORRUPT = "_corrupt_record"


@dataclass(frozen=True)
class ReviewFields:
    """Where a format keeps each canonical review field (source field names)."""

    user_id: str
    item_id: str
    rating: str
    timestamp: str
    text: str
    timestamp_unit: TimeUnit
    title: str | None = None
    review_id: str | None = None
    item_fallback: str | None = None  # used when item_id is absent (Amazon 2023: asin for parent_asin)

    def source_names(self) -> list[str]:
        names = [self.user_id, self.item_id, self.rating, self.timestamp, self.text]
        names += [n for n in (self.title, self.review_id, self.item_fallback) if n]
        return list(dict.fromkeys(names))


REVIEW_FIELDS: dict[str, ReviewFields] = {
    "amazon2014": ReviewFields(
        user_id="reviewerID",
        item_id="asin",
        rating="overall",
        timestamp="unixReviewTime",
        text="reviewText",
        title="summary",
        timestamp_unit="s",
    ),
    "amazon2023": ReviewFields(
        user_id="user_id",
        item_id="parent_asin",
        item_fallback="asin",
        rating="rating",
        timestamp="timestamp",
        text="text",
        title="title",
        timestamp_unit="ms",
    ),
    "yelp": ReviewFields(
        user_id="user_id",
        item_id="business_id",
        rating="stars",
        timestamp="date",
        text="text",
        review_id="review_id",
        timestamp_unit="iso",
    ),
}


def generic_fields(cfg: Config) -> ReviewFields:
    cols = cfg.data.columns
    assert cols is not None  # validated by DataConfig
    return ReviewFields(
        user_id=cols.user_id,
        item_id=cols.item_id,
        rating=cols.rating,
        timestamp=cols.timestamp,
        text=cols.text,
        title=cols.title,
        review_id=cols.review_id,
        timestamp_unit=cfg.data.timestamp_unit,
    )


# ------------------------------------------------------------------------------------------ reviews


def read_reviews(spark: SparkSession, cfg: Config, path: str) -> DataFrame:
    """All rows of the review file, canonicalised and each marked valid or with its reason."""
    if cfg.data.format == "generic":
        fields = generic_fields(cfg)
        if cfg.data.file_format == "csv":
            rows = _csv_rows(spark, path, fields)
        elif cfg.data.file_format == "parquet":
            rows = _parquet_rows(spark, path, fields)
        else:
            rows = _json_rows(spark, path, fields.source_names())
    else:
        fields = REVIEW_FIELDS[cfg.data.format]
        rows = _json_rows(spark, path, fields.source_names())
    return _canonical_reviews(rows, fields, cfg)


def _json_rows(spark: SparkSession, path: str, names: list[str]) -> DataFrame:
    """Text lines parsed as JSON objects: ``f`` holds each named field as a string (raw JSON text)."""
    return parsed_lines(spark, path, {n: T.StringType() for n in names}, "f")


def parsed_lines(spark: SparkSession, path: str, fields: dict[str, T.DataType], alias: str) -> DataFrame:
    """Numbered lines with ``raw``, ``_utf8``, the parsed struct ``alias`` and ``_malformed``.

    A line is malformed when it is not one JSON object: unparseable, blank, an array, or an object
    followed by anything else (``{..} trailing``, ``{..}{..}``: the parser would silently drop the rest).
    """
    schema = T.StructType([T.StructField(n, t) for n, t in fields.items()] + [T.StructField(_CORRUPT, T.StringType())])
    parsed = text_lines(spark, path).select(
        "source_file",
        "source_line",
        F.make_valid_utf8("value").alias("raw"),
        F.is_valid_utf8("value").alias("_utf8"),
        F.from_json("value", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT}).alias(alias),
    )
    one_object = F.col("raw").rlike(r"^\s*\{.*\}\s*$") & ~F.col("raw").rlike(r"\}\s*\{")
    bad = F.col(alias).isNull() | F.col(f"{alias}.{_CORRUPT}").isNotNull() | ~one_object
    return parsed.withColumn("_malformed", bad)


def _csv_rows(spark: SparkSession, path: str, fields: ReviewFields) -> DataFrame:
    header = spark.read.option("header", True).csv(path).columns
    missing = [n for n in fields.source_names() if n not in header]
    if missing:
        raise ValueError(f"CSV file {path} has no column(s) {missing}; its header is {header}")
    schema = T.StructType(
        [T.StructField(n, T.StringType()) for n in header] + [T.StructField(_CORRUPT, T.StringType())]
    )
    df = (
        spark.read.option("header", True)
        .option("multiLine", True)
        .option("escape", '"')
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", _CORRUPT)
        .schema(schema)
        .csv(path)
    )
    df = numbered(df)
    return df.select(
        "source_file",
        "source_line",
        F.to_json(F.struct(*[F.col(n) for n in header])).alias("raw"),
        F.lit(True).alias("_utf8"),
        F.struct(*[F.col(n) for n in fields.source_names()]).alias("f"),
        F.col(_CORRUPT).isNotNull().alias("_malformed"),
    )


def _parquet_rows(spark: SparkSession, path: str, fields: ReviewFields) -> DataFrame:
    df = spark.read.parquet(path)
    missing = [n for n in fields.source_names() if n not in df.columns]
    if missing:
        raise ValueError(f"Parquet file {path} has no column(s) {missing}; it has {df.columns}")
    df = numbered(df)
    return df.select(
        "source_file",
        "source_line",
        F.to_json(F.struct(*[F.col(n) for n in fields.source_names()])).alias("raw"),
        F.lit(True).alias("_utf8"),
        F.struct(*[F.col(n).cast("string").alias(n) for n in fields.source_names()]).alias("f"),
        F.lit(False).alias("_malformed"),
    )


def _canonical_reviews(rows: DataFrame, fields: ReviewFields, cfg: Config) -> DataFrame:
    p = cfg.prepare
    f = lambda name: F.col(f"f.`{name}`")  # noqa: E731
    item = f(fields.item_id)
    if fields.item_fallback:
        item = F.coalesce(F.nullif(strip(item), F.lit("")), f(fields.item_fallback))
    user_id = strip(f(fields.user_id))
    item_id = strip(item)
    rating = f(fields.rating).try_cast("double")
    timestamp = _unix_seconds(f(fields.timestamp), fields.timestamp_unit)
    text = F.coalesce(f(fields.text), F.lit(""))
    title = f(fields.title) if fields.title else F.lit(None).cast("string")

    named = dict.fromkeys([fields.user_id, fields.item_id, fields.item_fallback, fields.rating, fields.timestamp])
    source = [f(n).alias(f"_src_{n}") for n in named if n]  # for the quarantine detail, as the file has them
    canon = rows.select(
        "source_file",
        "source_line",
        "raw",
        "_utf8",
        "_malformed",
        user_id.alias("user_id"),
        item_id.alias("item_id"),
        rating.alias("rating"),
        timestamp.alias("timestamp"),
        text.alias("text"),
        title.alias("title"),
        (f(fields.review_id) if fields.review_id else F.lit(None).cast("string")).alias("_source_review_id"),
        *source,
    )
    src = lambda name: F.col(f"`_src_{name}`")  # noqa: E731
    item_fields = [fields.item_id, *([fields.item_fallback] if fields.item_fallback else [])]
    checks: list[tuple[Column, str, Column]] = [
        (~F.col("_utf8"), "invalid_utf8", F.lit("the line holds bytes that are not UTF-8")),
        (F.col("_malformed"), "malformed", F.lit("not a parseable JSON object / row")),
        (_bad_id("user_id"), "missing_user_id", _field_values(src, [fields.user_id])),
        (_bad_id("item_id"), "missing_item_id", _field_values(src, item_fields)),
        (
            F.col("rating").isNull()
            | F.isnan("rating")
            | (F.col("rating") < p.min_rating)
            | (F.col("rating") > p.max_rating),
            "invalid_rating",
            _field_values(src, [fields.rating]),
        ),
        (
            F.col("timestamp").isNull() | (F.col("timestamp") < p.min_timestamp),
            "invalid_timestamp",
            _field_values(src, [fields.timestamp]),
        ),
        (_structured("text"), "invalid_text", F.lit(f"{fields.text}: a JSON array or object, not a string")),
    ]
    reason = F.lit(None).cast("string")
    detail = F.lit(None).cast("string")
    for cond, name, why in reversed(checks):  # the first failing check wins
        reason = F.when(cond, F.lit(name)).otherwise(reason)
        detail = F.when(cond, why).otherwise(detail)
    review_id = F.coalesce(
        F.nullif(strip("_source_review_id"), F.lit("")),
        F.concat(
            F.lit("r"),
            F.substring(
                F.sha2(F.concat_ws("\u001f", "user_id", "item_id", F.col("timestamp").cast("string")), 256), 1, 16
            ),
        ),
    )
    return canon.select(
        "source_file",
        "source_line",
        "raw",
        reason.alias("reason"),
        detail.alias("detail"),
        F.when(F.col("user_id").isNotNull() & F.col("item_id").isNotNull(), review_id).alias("review_id"),
        "user_id",
        "item_id",
        "rating",
        "timestamp",
        "title",
        "text",
        (~F.col("text").rlike(r"\S")).alias("empty_text"),
    )


def _field_values(value: Callable[[str], Column], names: list[str]) -> Column:
    """``name: value`` of each source field a check read (``null`` when absent), e.g. ``parent_asin: null;
    asin: null``: the detail names the field the reader expected, so a misnamed field is plain to see."""
    return F.concat_ws("; ", *[F.concat(F.lit(f"{n}: "), F.coalesce(value(n), F.lit("null"))) for n in names])


def strip(col: Column | str) -> Column:
    """Remove leading and trailing whitespace of any kind (Spark's trim() strips spaces only)."""
    return F.regexp_replace(col, r"^\s+|\s+$", "")


def _bad_id(name: str) -> Column:
    c = F.col(name)
    return c.isNull() | (c == "") | c.rlike(r"^[\[{]")


def _structured(name: str) -> Column:
    c = F.col(name)
    return c.rlike(r"^\s*[\[{]") & F.try_parse_json(c).isNotNull()


def _unix_seconds(raw: Column, unit: TimeUnit) -> Column:
    if unit == "iso":
        return F.unix_seconds(F.try_to_timestamp(strip(raw)))
    number = strip(raw).try_cast("double")
    if unit == "ms":
        number = number / 1000.0
    return F.when(F.isnan(number), None).otherwise(F.floor(number)).try_cast("long")


# ----------------------------------------------------------------------------------------- metadata

METADATA_COLUMNS = ["item_id", "title", "description", "categories", "brand", "city", "metadata_json"]


def read_metadata(spark: SparkSession, cfg: Config, path: str) -> DataFrame:
    """All metadata rows: METADATA_COLUMNS plus source_file, source_line, raw, reason, detail."""
    fmt = cfg.data.format
    arr, arr2 = T.ArrayType(T.StringType()), T.ArrayType(T.ArrayType(T.StringType()))
    s = T.StringType()
    if fmt == "amazon2014":  # Python-literal lines: single quotes are accepted by the JSON reader
        fields = {"asin": s, "title": s, "description": s, "categories": arr2, "brand": s, "price": s}
    elif fmt == "amazon2023":
        fields = {
            "parent_asin": s,
            "title": s,
            "description": arr,
            "features": arr,
            "categories": arr,
            "main_category": s,
            "store": s,
            "price": s,
            "details": s,
        }
    elif fmt == "yelp":
        fields = {
            "business_id": s,
            "name": s,
            "city": s,
            "state": s,
            "categories": s,
            "attributes": T.MapType(s, s),
            "stars": s,
            "review_count": s,
        }
    else:
        raise ValueError(f"format {fmt} has no metadata reader")
    id_field = next(iter(fields))  # the item id: asin, parent_asin or business_id
    parsed = parsed_lines(spark, path, fields, "m")
    m = lambda name: F.col(f"m.{name}")  # noqa: E731
    payload = F.to_json(F.struct(*[m(n).alias(n) for n in fields]))
    if fmt == "amazon2014":
        paths = F.array_distinct(F.flatten(m("categories")))  # category paths share their top levels
        cols = [m("asin"), m("title"), m("description"), paths, m("brand"), F.lit(None)]
    elif fmt == "amazon2023":
        desc = F.array_join(
            F.concat(F.coalesce(m("features"), F.array()), F.coalesce(m("description"), F.array())), "\n"
        )
        cols = [m("parent_asin"), m("title"), F.nullif(desc, F.lit("")), m("categories"), m("store"), F.lit(None)]
    else:
        cats = F.transform(F.split(m("categories"), ","), strip)
        cols = [
            m("business_id"),
            m("name"),
            F.lit(None),
            F.when(m("categories").isNotNull(), cats),
            F.lit(None),
            m("city"),
        ]
    named = [
        c.cast(t).alias(n)
        for c, n, t in zip(
            cols,
            METADATA_COLUMNS[:-1],
            ["string", "string", "string", "array<string>", "string", "string"],
            strict=True,
        )
    ]
    out = parsed.select(
        "source_file",
        "source_line",
        "raw",
        "_utf8",
        "_malformed",
        *named,
        payload.alias("metadata_json"),
        m(id_field).alias("_src_id"),
    )
    out = out.withColumn("item_id", strip("item_id"))
    reason = (
        F.when(~F.col("_utf8"), "invalid_utf8")
        .when(F.col("_malformed"), "malformed")
        .when(_bad_id("item_id"), "missing_item_id")
    )
    detail = (
        F.when(~F.col("_utf8"), F.lit("the line holds bytes that are not UTF-8"))
        .when(F.col("_malformed"), F.lit("not a parseable JSON object"))
        .when(_bad_id("item_id"), _field_values(lambda _: F.col("_src_id"), [id_field]))
    )
    return out.select(
        "source_file",
        "source_line",
        "raw",
        reason.alias("reason"),
        detail.alias("detail"),
        *METADATA_COLUMNS,
    )

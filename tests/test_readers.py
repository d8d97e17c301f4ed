"""Readers of every review format, end to end through ``p4r prepare`` on the hand-made fixtures.

Each fixture is a full 3 users x 3 items grid (so the 3-core keeps it) plus, where noted, reviews of a
one-review user or item that the 3-core must quarantine, or of items that the item filter must drop. One
prepare run per format (a run costs seconds of Spark), so filters are exercised in the same run.
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from persona4rec import jobs
from persona4rec.artifacts import StageResult
from persona4rec.config import load_config
from persona4rec.jobs.prepare.stage import PrepareSummary

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass(frozen=True)
class Prepared:
    result: StageResult
    reviews: pd.DataFrame
    items: pd.DataFrame
    quarantine: pd.DataFrame

    @property
    def counts(self) -> PrepareSummary:
        return self.result.summary

    def review(self, line: int) -> dict[str, Any]:
        rows = self.reviews[self.reviews.source_line == line].to_dict("records")
        assert len(rows) == 1, f"line {line} is not exactly once in reviews"
        return rows[0]

    def item(self, item_id: str) -> dict[str, Any]:
        rows = self.items[self.items.item_id == item_id].to_dict("records")
        assert len(rows) == 1, f"item {item_id} is not exactly once in items"
        return rows[0]

    def reasons(self, table: str = "reviews") -> dict[int, str]:
        q = self.quarantine[self.quarantine.source_table == table]
        return dict(zip(q.source_line, q.reason, strict=True))

    def assert_accounted(self, n_rows: int) -> None:
        """Every input row is in reviews or in quarantine, exactly once."""
        q = self.quarantine[self.quarantine.source_table == "reviews"]
        assert self.counts.input_lines == n_rows
        assert len(self.reviews) + len(q) == n_rows
        assert sorted([*self.reviews.source_line, *q.source_line]) == list(range(1, n_rows + 1))


def prepare(spark, root: Path, dataset: str, *overrides: str) -> Prepared:
    cfg = load_config([f"paths.artifacts={root / 'artifacts'}", "prepare.k_core=3", *overrides], dataset=dataset).config
    result = jobs.run("prepare", cfg, spark=spark, progress=False)
    assert not result.skipped

    def read(name: str) -> pd.DataFrame:
        return pd.read_parquet(result.folder / name)

    return Prepared(result, read("reviews"), read("items"), read("quarantine"))


def hash_id(user: str, item: str, ts: int) -> str:
    """The documented review id of a source without ids: a hash of user, item and time."""
    return "r" + hashlib.sha256(f"{user}\x1f{item}\x1f{ts}".encode()).hexdigest()[:16]


def lines_of(path: Path) -> int:
    return len(path.read_bytes().splitlines())


def utc(text: str) -> int:
    return calendar.timegm(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").timetuple())


# ------------------------------------------------------------------------------------------ amazon2014

A14 = FIXTURES / "amazon2014"


@pytest.fixture(scope="module")
def a14_dir(tmp_path_factory) -> Path:
    """The fixtures gzipped under the registry's file names, as the real download is."""
    folder = tmp_path_factory.mktemp("amazon2014-data")
    for src, name in [
        ("reviews.json", "reviews_Musical_Instruments_5.json.gz"),
        ("meta.json", "meta_Musical_Instruments.json.gz"),
    ]:
        with (A14 / src).open("rb") as fin, gzip.open(folder / name, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return folder


@pytest.fixture(scope="module")
def a14(spark, a14_dir, tmp_path_factory) -> Prepared:
    root = tmp_path_factory.mktemp("a14")
    return prepare(
        spark,
        root,
        "amazon2014-musical-instruments",
        f"data.local_dir={a14_dir}",
        "data.reviews.sha256=null",
        "prepare.item_filter.require_metadata=true",
    )


def test_amazon2014_review_fields(a14: Prepared):
    r = a14.review(1)
    assert {k: r[k] for k in ("user_id", "item_id", "rating", "timestamp", "title", "text", "empty_text")} == {
        "user_id": "A2IBPI20UZIR0U",
        "item_id": "1384719342",
        "rating": 5.0,
        "timestamp": 1393545600,
        "title": "good",
        "text": "Not much to write about here, but it does exactly what it's supposed to. filters out the pop "
        "sounds. now my recordings are much more crisp.",
        "empty_text": False,
    }
    assert r["review_id"] == hash_id("A2IBPI20UZIR0U", "1384719342", 1393545600)
    assert r["source_file"] == "reviews_Musical_Instruments_5.json.gz"
    assert a14.review(6)["rating"] == 2.0 and a14.review(6)["title"] == "Meh"


def test_amazon2014_filter_kcore_and_accounting(a14: Prepared):
    a14.assert_accounted(lines_of(A14 / "reviews.json"))
    assert sorted(a14.reviews.source_line) == list(range(1, 10))
    # line 10: the only review of its user; line 11: of item B000068NSX, which has no metadata record,
    # so prepare.item_filter.require_metadata drops it before the k-core
    assert a14.reasons() == {10: "below_k_core", 11: "item_filtered"}
    filtered = a14.quarantine.set_index("source_line").loc[11]
    assert (filtered.item_id, filtered.detail, filtered.raw) == ("B000068NSX", "no metadata record", None)
    assert filtered.review_id == hash_id("A2IBPI20UZIR0U", "B000068NSX", 1405123200)
    assert a14.reasons("metadata") == {}
    assert a14.counts.metadata_records_valid == 4
    assert a14.counts.quarantine_by_reason == {"reviews.below_k_core": 1, "reviews.item_filtered": 1}


def test_amazon2014_items_from_python_literal_metadata(a14: Prepared):
    assert sorted(a14.items.item_id) == ["1384719342", "B00004Y2UT", "B00005ML71"]
    pop = a14.item("1384719342")
    assert pop["has_metadata"] and pop["title"] == "Neewer NW-(8) Auto-Closing Pop Filter"
    assert pop["description"] == "The Neewer pop filter's dual-layer screen stops plosives before they reach the mic."
    # two category paths, flattened in order, their shared top level listed once
    assert list(pop["categories"]) == [
        "Musical Instruments",
        "Microphones & Accessories",
        "Pop Filters",
        "Studio Recording Equipment",
    ]
    assert pop["brand"] == "Neewer" and pop["city"] is None
    assert json.loads(pop["metadata_json"])["price"] == "8.98"
    assert pop["n_interactions"] == 3
    # a Python-literal string with an escaped single quote and a double quote
    assert a14.item("B00004Y2UT")["title"] == "Monster Cable 21' Instrument Cable, 1/4\" Straight"
    polish = a14.item("B00005ML71")
    assert list(polish["categories"]) == ["Musical Instruments"] and polish["description"] is None


# ------------------------------------------------------------------------------------------ amazon2023

A23 = FIXTURES / "amazon2023"


@pytest.fixture(scope="module")
def a23(spark, tmp_path_factory) -> Prepared:
    root = tmp_path_factory.mktemp("a23")
    return prepare(
        spark,
        root,
        "amazon2023-musical-instruments",
        f"data.local_dir={A23}",
        "data.reviews.filename=reviews.jsonl",
        "data.metadata.filename=meta.jsonl",
    )


def test_amazon2023_review_fields(a23: Prepared):
    r = a23.review(1)
    assert {k: r[k] for k in ("review_id", "user_id", "item_id", "rating", "timestamp", "title", "text")} == {
        "review_id": hash_id("AFKZENTNBQ7A7V7UXW5JJI6UGRYQ", "B07GBSB9FW", 1588687728),
        "user_id": "AFKZENTNBQ7A7V7UXW5JJI6UGRYQ",
        "item_id": "B07GBSB9FW",
        "rating": 5.0,
        "timestamp": 1588687728,  # milliseconds 1588687728923, floored to seconds
        "title": "Great strings",
        "text": "Bright tone, stay in tune.",
    }
    assert a23.review(3)["timestamp"] == 1600000000
    assert a23.review(4)["item_id"] == "B07GBSB9FW"  # a variant asin: the item is its parent_asin
    assert a23.review(6)["item_id"] == "B0BSGM6CQ9"  # no parent_asin: the asin stands in
    assert a23.review(5)["text"] == "Sturdy stand.<br />Folds flat."


def test_amazon2023_accounting_and_items(a23: Prepared):
    a23.assert_accounted(lines_of(A23 / "reviews.jsonl"))
    assert a23.reasons() == {10: "below_k_core"}
    assert a23.counts.metadata_records_valid == 3
    assert sorted(a23.items.item_id) == ["B01N1VGXU1", "B07GBSB9FW", "B0BSGM6CQ9"]
    strings = a23.item("B07GBSB9FW")
    assert strings["has_metadata"]
    assert strings["title"] == "Ernie Ball Regular Slinky Nickel Wound Electric Guitar Strings, 10-46"
    assert strings["description"] == "Nickel wound\nMade in USA\nSlinkys are the strings of choice for Slash."
    assert list(strings["categories"]) == [
        "Musical Instruments",
        "Instrument Accessories",
        "Guitar & Bass Accessories",
        "Strings",
    ]
    assert strings["brand"] == "Ernie Ball"
    assert json.loads(strings["metadata_json"])["main_category"] == "Musical Instruments"
    stand = a23.item("B01N1VGXU1")
    assert stand["description"] is None and list(stand["categories"]) == [] and stand["brand"] == "Amazon Basics"
    assert a23.item("B0BSGM6CQ9")["description"] == "Clips on the headstock"


# ------------------------------------------------------------------------------------------------ yelp

YELP = FIXTURES / "yelp"
B = [
    "XQfwVwDr-v0ZS3_CbbE5Xw",
    "7ATYjTIgM3jUlt4UM3IypQ",
    "YjUWPpI6HXG530lwP-fb2A",
    "kxX2SOes4o-D3ZQBkiMRfA",
    "e4Vwtrqf-wpJfwesgvdgxQ",
]


@pytest.fixture(scope="module")
def yelp(spark, tmp_path_factory) -> Prepared:
    return prepare(
        spark,
        tmp_path_factory.mktemp("yelp"),
        "yelp",
        f"data.local_dir={YELP}",
        "prepare.item_filter.cities=[Philadelphia]",
        "prepare.item_filter.categories_any=[Restaurants]",
    )


def test_yelp_review_fields(yelp: Prepared):
    r = yelp.review(2)
    assert {k: r[k] for k in ("review_id", "user_id", "item_id", "rating", "timestamp", "title", "text")} == {
        "review_id": "BiTunyQ73aT9WBnpR9DZGw",  # the source's own id
        "user_id": "mh_-eMZ6K5RLWhZyISBhwA",
        "item_id": B[1],
        "rating": 5.0,
        "timestamp": utc("2015-02-10 11:00:11"),
        "title": None,
        "text": "Crust is thin and crispy.\nSauce is sweet.",
    }
    source = [json.loads(line) for line in (YELP / "yelp_academic_dataset_review.json").open()]
    both = pd.concat([yelp.reviews, yelp.quarantine])  # the filtered reviews keep their source ids too
    assert dict(zip(both.source_line, both.review_id, strict=True)) == {
        i + 1: row["review_id"] for i, row in enumerate(source)
    }


def test_yelp_accounting_filter_and_items(yelp: Prepared):
    yelp.assert_accounted(15)
    # line = 5 * user + business + 1: business 3 is in Tampa, business 4 has no categories
    assert yelp.reasons() == {n: "item_filtered" for n in (4, 5, 9, 10, 14, 15)}
    q = yelp.quarantine.set_index("source_line")
    assert {n: q.detail[n] for n in (4, 5)} == {4: "city not listed", 5: "no listed category"}
    assert set(q.item_id[[4, 9, 14]]) == {B[3]} and set(q.item_id[[5, 10, 15]]) == {B[4]}
    assert sorted(yelp.items.item_id) == sorted(B[:3])
    first = yelp.item(B[0])
    assert first["has_metadata"] and first["title"] == "Turning Point of North Wales"
    assert list(first["categories"]) == ["Restaurants", "Pizza"] and first["city"] == "Philadelphia"
    assert first["brand"] is None and first["description"] is None
    assert json.loads(first["metadata_json"])["attributes"] == {
        "NoiseLevel": "u'average'",
        "RestaurantsTakeOut": "True",
    }
    assert list(yelp.item(B[1])["categories"]) == ["Pizza", "Restaurants", "Italian"]  # split and trimmed
    assert yelp.item(B[2])["n_interactions"] == 3


# --------------------------------------------------------------------------------------------- generic

GEN = FIXTURES / "generic"
MAPPING = [
    "data.columns.user_id=reviewer",
    "data.columns.item_id=product",
    "data.columns.rating=stars",
    "data.columns.text=body",
]
CANON = ["source_line", "user_id", "item_id", "rating", "timestamp", "text", "empty_text"]


@pytest.fixture(scope="module")
def generic_runs(spark, tmp_path_factory) -> dict[str, Prepared]:
    """The same corpus as JSON Lines (seconds), CSV (ISO dates) and Parquet (milliseconds)."""
    parquet_dir = tmp_path_factory.mktemp("generic-parquet-data")
    corpus = pd.read_json(GEN / "reviews.jsonl", lines=True)
    corpus["ts_ms"] = corpus.pop("ts") * 1000 + 999
    corpus.drop(columns=["rid", "headline"]).to_parquet(parquet_dir / "reviews.parquet", index=False)
    runs = {
        "jsonl": [
            f"data.local_dir={GEN}",
            "data.file_format=jsonl",
            "data.reviews.filename=reviews.jsonl",
            "data.columns.timestamp=ts",
            "data.timestamp_unit=s",
            "data.columns.title=headline",
            "data.columns.review_id=rid",
        ],
        "csv": [
            f"data.local_dir={GEN}",
            "data.file_format=csv",
            "data.reviews.filename=reviews.csv",
            "data.columns.timestamp=when",
            "data.timestamp_unit=iso",
            "data.columns.title=headline",
        ],
        "parquet": [f"data.local_dir={parquet_dir}", "data.columns.timestamp=ts_ms", "data.timestamp_unit=ms"],
    }
    return {
        name: prepare(spark, tmp_path_factory.mktemp(f"generic-{name}"), "generic", *MAPPING, *extra)
        for name, extra in runs.items()
    }


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_generic_review_fields_and_accounting(generic_runs, fmt):
    p = generic_runs[fmt]
    p.assert_accounted(10)  # ten rows; the CSV has twelve physical lines (a header, a quoted newline)
    assert p.reasons() == {10: "below_k_core"}  # u-dan's only review
    r = p.review(2)
    assert {k: r[k] for k in CANON} == {
        "source_line": 2,
        "user_id": "u-ana",
        "item_id": "sku-200",
        "rating": 3.0,
        "timestamp": 1614920767,
        "text": 'Fine, but:\n"meh" packaging, slow shipping.',
        "empty_text": False,
    }
    assert p.review(3)["text"] == "Works."
    assert p.review(6)["text"] == "" and p.review(6)["empty_text"]
    assert p.counts.empty_text_reviews == 1
    assert r["title"] == (None if fmt == "parquet" else "Okay")
    assert p.review(3)["title"] is None
    expected_id = "g002" if fmt == "jsonl" else hash_id("u-ana", "sku-200", 1614920767)
    assert r["review_id"] == expected_id
    assert sorted(p.items.item_id) == ["sku-100", "sku-200", "sku-300"]
    assert not p.items.has_metadata.any() and p.items.title.isna().all() and p.items.categories.isna().all()


def test_generic_formats_agree(generic_runs):
    tables = {
        name: p.reviews[CANON].sort_values("source_line").reset_index(drop=True) for name, p in generic_runs.items()
    }
    pd.testing.assert_frame_equal(tables["jsonl"], tables["csv"])
    pd.testing.assert_frame_equal(tables["jsonl"], tables["parquet"])
    # without a source id, the hashed id depends only on user, item and time: the same for any format
    ids = {name: sorted(p.reviews.review_id) for name, p in generic_runs.items()}
    assert ids["csv"] == ids["parquet"]
    assert ids["jsonl"] == [f"g{n:03d}" for n in range(1, 10)]

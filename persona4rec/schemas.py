"""Table contracts: every table that crosses a stage boundary, written down once.

Each :class:`TableSchema` is the single source for a table's columns, types, nullability and meaning.
Stages validate what they write and what they read against it (:func:`validate_parquet`), the docs are
generated from it (``p4r schemas``), and the Spark job derives its output types from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from persona4rec.errors import SchemaError


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    doc: str


@dataclass(frozen=True)
class TableSchema:
    name: str
    doc: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def arrow(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    def __iter__(self) -> Iterator[Column]:
        return iter(self.columns)

    def markdown(self) -> str:
        rows = [f"### `{self.name}`", "", self.doc, "", f"Key: `{', '.join(self.key)}`.", ""]
        rows += ["| column | type | nullable | meaning |", "|---|---|---|---|"]
        rows += [f"| `{c.name}` | {c.type} | {'yes' if c.nullable else 'no'} | {c.doc} |" for c in self.columns]
        return "\n".join(rows) + "\n"


def _c(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> Column:
    return Column(name, type_, nullable, doc)


STR, I64, F64, BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()

REVIEWS = TableSchema(
    name="reviews",
    doc="Every valid review that survived de-duplication, the item filter and the k-core.",
    key=("review_id",),
    columns=(
        _c("review_id", STR, "Stable id: the source's own review id, else a hash of user, item and time."),
        _c("user_id", STR, "User id as in the source."),
        _c("item_id", STR, "Item id as in the source (Amazon 2023: parent_asin; Yelp: business_id)."),
        _c("rating", F64, "Star rating, within [prepare.min_rating, prepare.max_rating]."),
        _c("timestamp", I64, "Review time, unix seconds (UTC)."),
        _c("title", STR, "The review's own title or summary line, when the source has one.", nullable=True),
        _c("text", STR, "Review text; the empty string when the review has none."),
        _c("empty_text", BOOL, "True when the text is empty or blank: an interaction, never an LLM sample."),
        _c("source_file", STR, "Name of the raw file the review came from."),
        _c("source_line", I64, "1-based line (or row) number in that file."),
    ),
)

ITEMS = TableSchema(
    name="items",
    doc="One row per item that has interactions after the k-core, with its metadata when the source has it.",
    key=("item_id",),
    columns=(
        _c("item_id", STR, "Item id."),
        _c("has_metadata", BOOL, "True when a metadata record was found for the item."),
        _c("title", STR, "Item title (Yelp: business name).", nullable=True),
        _c("description", STR, "Item description, paragraphs joined by newlines.", nullable=True),
        _c(
            "categories",
            pa.list_(STR),
            "Category labels, most general first where the source orders them.",
            nullable=True,
        ),
        _c("brand", STR, "Brand or store.", nullable=True),
        _c("city", STR, "City (Yelp businesses).", nullable=True),
        _c("metadata_json", STR, "The whole metadata record as JSON, for summary prompts.", nullable=True),
        _c("n_interactions", I64, "Interactions with the item, all splits."),
        _c("n_train_reviews", I64, "Training interactions whose review has text."),
        _c("n_samples", I64, "Reviews in the item's LLM sample."),
    ),
)

INTERACTIONS = TableSchema(
    name="interactions",
    doc=(
        "Every review as a user-item interaction, ordered per user by (timestamp, review_id), with the "
        "leave-one-out split: last = test, second-to-last = valid, the rest train."
    ),
    key=("user_id", "position"),
    columns=(
        _c("user_id", STR, "User id."),
        _c("item_id", STR, "Item id."),
        _c("review_id", STR, "The review behind the interaction."),
        _c("rating", F64, "Star rating."),
        _c("timestamp", I64, "Unix seconds."),
        _c("position", I64, "0-based index in the user's chronological history."),
        _c("split", STR, "'train', 'valid' or 'test'."),
        _c("tie_broken", BOOL, "True when the timestamp equals a neighbour's, so review_id decided the order."),
    ),
)

REVIEW_SAMPLES = TableSchema(
    name="review_samples",
    doc=(
        "Per-item review samples for the LLM: training reviews with text only (never a valid or test "
        "review), at most prepare.samples.max_per_item per item, spread over ratings and time."
    ),
    key=("item_id", "sample_rank"),
    columns=(
        _c("item_id", STR, "Item id."),
        _c("sample_rank", I64, "0-based pick order: a prefix of the sample is itself a spread sample."),
        _c("review_id", STR, "Sampled review."),
        _c("user_id", STR, "Its author."),
        _c("rating", F64, "Star rating."),
        _c("timestamp", I64, "Unix seconds."),
        _c("title", STR, "Review title.", nullable=True),
        _c("text", STR, "Review text (non-empty)."),
    ),
)

QUARANTINE = TableSchema(
    name="quarantine",
    doc=(
        "Every input line that is not in `reviews`, with the reason. Invalid lines and duplicates keep their raw "
        "line; valid reviews that a filter removed (item filter, k-core) keep their ids instead."
    ),
    key=("source_table", "source_file", "source_line"),
    columns=(
        _c("source_table", STR, "'reviews' or 'metadata': which input the line came from."),
        _c("source_file", STR, "Raw file name."),
        _c("source_line", I64, "1-based line (or row) number."),
        _c("reason", STR, "One of the reasons listed below."),
        _c("detail", STR, "What exactly was wrong, e.g. the offending value.", nullable=True),
        _c("raw", STR, "The raw line (invalid UTF-8 replaced), for invalid lines and duplicates.", nullable=True),
        _c("review_id", STR, "Review id, when the line parsed far enough.", nullable=True),
        _c("user_id", STR, "User id, when known.", nullable=True),
        _c("item_id", STR, "Item id, when known.", nullable=True),
    ),
)

SUMMARIES = TableSchema(
    name="summaries",
    doc="One row per item: the LLM's objective summary (from metadata when present, else from reviews).",
    key=("item_id",),
    columns=(
        _c("item_id", STR, "Item id."),
        _c("summary", STR, "2-3 neutral sentences on what the item is; null when reasoning failed.", nullable=True),
        _c("source", STR, "'metadata' or 'reviews': what the summary was written from."),
    ),
)

PERSONAS = TableSchema(
    name="personas",
    doc=(
        "Every persona of every item whose reasoning succeeded: an independent retrieval unit linked to its "
        "item, grounded in the sampled reviews it cites."
    ),
    key=("persona_id",),
    columns=(
        _c(
            "persona_id", STR, "Deterministic id: hash of the item's reasoning input (reviews, prompts, model) + index."
        ),
        _c("item_id", STR, "The item the persona belongs to."),
        _c("persona_index", I64, "1-based position among the item's personas."),
        _c("name", STR, "Short name of the persona."),
        _c("description", STR, "Motivations, criteria and attitude towards the item."),
        _c("rationale", STR, "Why this persona engages with the item, pointing at the evidence."),
        _c("evidence", pa.list_(STR), "review_ids of the sampled training reviews the persona rests on."),
        _c("merged_from", I64, "How many generated personas were merged into this one as near-duplicates."),
        _c("prompt_version", STR, "Prompt set (conf/prompts/) that produced it."),
        _c("model", STR, "LLM that produced it."),
    ),
)

ITEM_STATUS = TableSchema(
    name="item_status",
    doc="One row per item: whether reasoning succeeded, why not, and what it cost. Failures are never silent.",
    key=("item_id",),
    columns=(
        _c("item_id", STR, "Item id."),
        _c("status", STR, "'ok' or 'failed'."),
        _c("reason", STR, "For failures: the last rejection (reason code and detail).", nullable=True),
        _c("n_reviews", I64, "Reviews shown to the LLM."),
        _c("n_personas", I64, "Personas kept after merging near-duplicates."),
        _c("attempts", I64, "Tries of the persona call (at most reason.max_attempts)."),
        _c("calls", I64, "LLM calls spent on the item, all steps."),
        _c("prompt_tokens", I64, "Prompt tokens spent on the item, all steps."),
        _c("completion_tokens", I64, "Generated tokens spent on the item, all steps."),
        _c(
            "llm_seconds",
            F64,
            "LLM wall seconds spent on the item, all steps and attempts (an engine call's wall shared by its answers).",
        ),
        _c(
            "notes",
            STR,
            "What happened on the way, '; '-separated: sampled reviews kept out of the prompt as orders to the "
            "model ('quarantined:'), personas dropped for echoing orders ('screened:') or because their text was "
            "cut ('dropped:'), fewer sound personas than asked for after the last attempt ('short:'), and a set "
            "kept with the defects of the set check (prompt sets with distinct_personas, 'not distinct:').",
            nullable=True,
        ),
        _c("cache_key", STR, "Content hash of the persona call: same key, same result, no LLM call."),
    ),
)

ASPECTS = TableSchema(
    name="aspects",
    doc="Paper mode only: one aspect tuple per sampled review; tuples with every slot null are not kept.",
    key=("review_id",),
    columns=(
        _c("review_id", STR, "Review id."),
        _c("item_id", STR, "Item id."),
        _c("status", STR, "'ok' or 'failed'."),
        _c("kept", BOOL, "False when more than 75% of the slots are null (the paper's filter)."),
        _c("aspects_json", STR, "The tuple as JSON (slots and reasons, null where the review says nothing).", True),
        _c("reason", STR, "For failures: the last rejection; for ok tuples: the slots nulled as cut.", nullable=True),
    ),
)

LABELS = TableSchema(
    name="labels",
    doc=(
        "Training labels for the encoder: a positive persona for training interactions only (never a valid or "
        "test item), from the personas' own evidence (efficient) or an LLM judge (paper)."
    ),
    key=("user_id", "position"),
    columns=(
        _c("user_id", STR, "User id."),
        _c("item_id", STR, "Item id."),
        _c("review_id", STR, "The interaction's review."),
        _c("position", I64, "The interaction's position in the user's history (interactions.position)."),
        _c("persona_id", STR, "The positive persona."),
        _c("source", STR, "'evidence' or 'judge'."),
        _c("justification", STR, "The judge's reasoning (paper mode).", nullable=True),
    ),
)

VECTOR = pa.list_(pa.float32())


def vectors_to_arrow(x: np.ndarray) -> pa.ListArray:
    """(n, d) float32 rows as a list<float32> column, without a Python loop."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * d)
    return pa.ListArray.from_arrays(offsets, pa.array(x.ravel()), type=VECTOR)


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float32> column of equal-length rows as an (n, d) float32 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], VECTOR)
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), -1)


PERSONA_VECTORS = TableSchema(
    name="persona_vectors",
    doc="Every persona as the text the encoder reads (persona4rec.texts) and its base-embedder vector.",
    key=("persona_id",),
    columns=(
        _c("persona_id", STR, "Persona id (personas table)."),
        _c("item_id", STR, "The persona's item."),
        _c("text", STR, "Persona text: name, description, item summary, rationale (one template everywhere)."),
        _c("vector", VECTOR, "Unit-length base embedding of the text (embed.model)."),
    ),
)

INTERACTION_VECTORS = TableSchema(
    name="interaction_vectors",
    doc=(
        "Every interaction (all splits) as the user-side text the encoder reads (item summary + the user's own "
        "review, or its aspects in paper mode) and its base-embedder vector: what user profiles are made of."
    ),
    key=("user_id", "position"),
    columns=(
        _c("user_id", STR, "User id."),
        _c("position", I64, "0-based index in the user's chronological history."),
        _c("item_id", STR, "Item id."),
        _c("review_id", STR, "The review behind the interaction."),
        _c("split", STR, "'train', 'valid' or 'test'."),
        _c("rating", F64, "Star rating."),
        _c("text", STR, "Interaction text (persona4rec.texts)."),
        _c("vector", VECTOR, "Unit-length base embedding of the text."),
    ),
)

ITEM_VECTORS = TableSchema(
    name="item_vectors",
    doc=(
        "One row per item: its summary text and base embedding (the summary-only index, and the fallback of "
        "items without personas)."
    ),
    key=("item_id",),
    columns=(
        _c("item_id", STR, "Item id."),
        _c("has_personas", BOOL, "True when reasoning produced personas for the item."),
        _c("text", STR, "Item text (persona4rec.texts): the LLM summary, else title, else the id."),
        _c("vector", VECTOR, "Unit-length base embedding of the text."),
    ),
)

INDEX_ROWS = TableSchema(
    name="index_rows",
    doc=(
        "What `p4r index` writes into a Milvus collection version, one row per persona plus one 'summary' row per "
        "item without personas (its summary embedding), so that every item can be scored and explained."
    ),
    key=("persona_id",),
    columns=(
        _c("persona_id", STR, "Persona id (personas table), or 's-' + a hash of the item id for a summary row."),
        _c("item_id", STR, "The item; the grouping key of full-catalogue retrieval."),
        _c("kind", STR, "'persona', or 'summary' for an item without personas."),
        _c("name", STR, "Persona name (the item id for a summary row)."),
        _c("description", STR, "Persona description (the item text for a summary row)."),
        _c("rationale", STR, "Why the persona engages with the item (empty for a summary row)."),
        _c("evidence", pa.list_(STR), "review_ids the persona rests on."),
        _c("text_sha", STR, "Hash of the text that was encoded: an unchanged text is copied from the live version."),
        _c("encoder", STR, "Registered encoder that produced the vector: <model>/<version>/<run id>."),
        _c("vector", VECTOR, "Unit-length encoder vector of the text."),
    ),
)

USER_PROFILES = TableSchema(
    name="user_profiles",
    doc=(
        "One row per known user, beside each index version: the encoder profile of their latest interactions "
        "(paper Eq. 7, the encoder's gamma) and every item they have, which recommendations exclude."
    ),
    key=("user_id",),
    columns=(
        _c("user_id", STR, "User id."),
        _c("vector", VECTOR, "Unit-length profile: recency-weighted mean of the last L interaction vectors."),
        _c("items", pa.list_(STR), "Every item the user interacted with (all splits)."),
        _c("n_interactions", I64, "Interactions known for the user."),
    ),
)

ITEM_POPULARITY = TableSchema(
    name="item_popularity",
    doc="One row per item: how many users interacted with it (all splits); the fallback for unknown users.",
    key=("item_id",),
    columns=(
        _c("item_id", STR, "Item id."),
        _c("interactions", I64, "Number of interactions."),
    ),
)

CANDIDATES = TableSchema(
    name="candidates",
    doc=(
        "First-stage candidate lists (`p4r candidates`): per generator, split and user, the top-N items best first "
        "with the generator's scores. Training items are left out, and for 'test' the validation item too. A list "
        "is shorter than N only when fewer items are left; it is never padded."
    ),
    key=("generator", "split", "user_id"),
    columns=(
        _c("generator", STR, "'popularity', 'bpr' or 'lightgcn'."),
        _c("split", STR, "'valid' (tuning rerankers) or 'test' (the evaluation)."),
        _c("user_id", STR, "User id."),
        _c("target", STR, "The user's held-out item of this split."),
        _c("items", pa.list_(STR), "Candidate item ids, best first."),
        _c("scores", pa.list_(F64), "The generator's score of each candidate."),
    ),
)

EVAL_METRICS = TableSchema(
    name="eval_metrics",
    doc=(
        "Every figure of an evaluation (`p4r evaluate`), one row per generator, reranker, user segment and metric: "
        "the mean over the segment's test users, its bootstrap interval, and the paired test against the first stage."
    ),
    key=("generator", "reranker", "segment", "metric"),
    columns=(
        _c("generator", STR, "Whose candidates were reranked."),
        _c("reranker", STR, "evaluate.rerankers name."),
        _c("segment", STR, "'all', 'warm_users', 'cold_users', 'head_items', 'tail_items' or 'llm_sample'."),
        _c("metric", STR, "hr@K, mrr@K or ndcg@K."),
        _c("users", I64, "Test users in the segment."),
        _c("value", F64, "Mean over those users.", nullable=True),
        _c("ci_low", F64, "Lower bound of the bootstrap interval (evaluate.confidence).", nullable=True),
        _c("ci_high", F64, "Upper bound.", nullable=True),
        _c(
            "p_value",
            F64,
            "Paired randomization test against first_stage on the same users (null for it).",
            nullable=True,
        ),
    ),
)

EVAL_RANKS = TableSchema(
    name="eval_ranks",
    doc=(
        "Every test user's rank of the held-out item under every reranker (`p4r evaluate`): what eval_metrics "
        "summarises, kept so that any two rerankers, of this or another evaluation, can be compared user by user."
    ),
    key=("generator", "reranker", "user_id"),
    columns=(
        _c("generator", STR, "Whose candidates were reranked."),
        _c("reranker", STR, "evaluate.rerankers name."),
        _c("user_id", STR, "Test user."),
        _c("rank", I64, "1-based rank of the held-out item (persona4rec.ranking's tie policy); 0: not a candidate."),
    ),
)

TABLES: dict[str, TableSchema] = {
    t.name: t
    for t in (
        REVIEWS,
        ITEMS,
        INTERACTIONS,
        REVIEW_SAMPLES,
        QUARANTINE,
        SUMMARIES,
        PERSONAS,
        ITEM_STATUS,
        ASPECTS,
        LABELS,
        PERSONA_VECTORS,
        INTERACTION_VECTORS,
        ITEM_VECTORS,
        INDEX_ROWS,
        USER_PROFILES,
        ITEM_POPULARITY,
        CANDIDATES,
        EVAL_METRICS,
        EVAL_RANKS,
    )
}

#: Why a line is in quarantine. Invalid input first, then valid reviews removed by a filter.
QUARANTINE_REASONS: dict[str, str] = {
    "invalid_utf8": "the line is not valid UTF-8",
    "malformed": "not a JSON object (truncated, garbage, an array…) or an unreadable row",
    "missing_user_id": "no user id, or an empty one",
    "missing_item_id": "no item id, or an empty one",
    "invalid_rating": "rating missing, not a number, or outside [min_rating, max_rating]",
    "invalid_timestamp": "time missing, unparseable, or before prepare.min_timestamp",
    "invalid_text": "the text field is not a string",
    "duplicate": "another line has the same user and item; the earliest is kept (detail names it)",
    "duplicate_metadata": "a second metadata record for the same item; the first is kept",
    "item_filtered": "the item failed prepare.item_filter (no metadata, category or city)",
    "below_k_core": "the user or item fell under prepare.k_core interactions",
}

SPLITS = ("train", "valid", "test")


def dataset_of(path: Path) -> pads.Dataset:
    return pads.dataset(str(path), format="parquet")


def validate_parquet(path: Path, schema: TableSchema) -> int:
    """Check a written table against its contract (names, order, types, no nulls where forbidden).

    Reads only Parquet footers (row-group statistics), so it is cheap at any size. Returns the row count.
    """
    if not path.exists():
        raise SchemaError(f"table {schema.name}: {path} does not exist")
    ds = dataset_of(path)
    actual = ds.schema
    expected = schema.arrow()
    if actual.names != expected.names:
        raise SchemaError(f"table {schema.name}: columns {actual.names} != contract {expected.names}")
    for want in expected:
        got = actual.field(want.name)
        if not got.type.equals(want.type) and not _list_equal(got.type, want.type):
            raise SchemaError(f"table {schema.name}: column {want.name} has type {got.type}, contract {want.type}")
    required = [i for i, f in enumerate(expected) if not f.nullable]
    rows = 0
    for fragment in ds.get_fragments():
        meta = fragment.metadata
        rows += meta.num_rows
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for i in range(group.num_columns):
                col = group.column(i)
                name = col.path_in_schema.split(".")[0]
                idx = expected.get_field_index(name)
                stats = col.statistics
                if idx in required and stats is not None and stats.has_null_count and stats.null_count:
                    raise SchemaError(f"table {schema.name}: column {name} holds nulls, contract forbids them")
    return rows


def _list_equal(a: pa.DataType, b: pa.DataType) -> bool:
    return pa.types.is_list(a) and pa.types.is_list(b) and a.value_type.equals(b.value_type)


_DOC_HEADER = """# Table contracts

Generated from `persona4rec/schemas.py` by `p4r schemas > docs/schemas.md`; a test keeps the two in step.
Every stage validates the tables it writes and reads against these contracts: column names and order,
types, and no nulls in non-nullable columns.
"""


def schemas_markdown() -> str:
    """The contracts as a Markdown document (docs/schemas.md)."""
    parts = [_DOC_HEADER] + [t.markdown() for t in TABLES.values()]
    reasons = "\n".join(f"| `{k}` | {v} |" for k, v in QUARANTINE_REASONS.items())
    parts.append("### Quarantine reasons\n\n| reason | meaning |\n|---|---|\n" + reasons + "\n")
    return "\n".join(parts)

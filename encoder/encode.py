"""Encoding stage outputs with a registered encoder: persona rows, user profiles, history windows.

The index stage (what serving reads) and the evaluate stage (what is measured) encode the same rows the
same way through these functions, so an evaluated ranking is the served one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from persona4rec import schemas
from persona4rec.encoder.profile import profiles
from persona4rec.ranking import windows

if TYPE_CHECKING:
    from persona4rec.artifacts import StageResult
    from persona4rec.config import Config
    from persona4rec.encoder.model import Encoder

ENCODE_BATCH = 256


def text_sha(text: str) -> str:
    """A persona text's identity: a vector is copied between index versions only for the same text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def histories(
    inter: pa.Table, before: tuple[str, ...] | None, width: int
) -> tuple[list[str], np.ndarray, np.ndarray, list[list[int]]]:
    """Per user (sorted), the row numbers of their interactions in ``inter`` (sorted by user, then position)
    whose split is in ``before`` (every split when None), and the window of the latest ``width`` of them.

    Returns user ids, the (users, width) -1-padded windows, their lengths, and every kept row per user.
    """
    users = inter["user_id"].to_pylist()
    splits = inter["split"].to_pylist() if before is not None else None
    rows: dict[str, list[int]] = {}
    for r, u in enumerate(users):
        if splits is None or splits[r] in before:
            rows.setdefault(u, []).append(r)
    ids = sorted(rows)
    per_user = [rows[u] for u in ids]
    hist, lengths = windows(per_user, width)
    return ids, hist, lengths, per_user


def persona_rows(embedded: StageResult, reasoned: StageResult) -> tuple[pa.Table, np.ndarray]:
    """Index rows without vectors (personas, then a summary row per item without personas), with their
    texts, and the base vectors of those texts in the same order."""
    pv = pq.read_table(embedded.table("persona_vectors"))
    details = {
        p["persona_id"]: p
        for p in pq.read_table(
            reasoned.table("personas"), columns=["persona_id", "name", "description", "rationale", "evidence"]
        ).to_pylist()
    }
    ids = pv["persona_id"].to_pylist()
    rows = {
        "persona_id": ids,
        "item_id": pv["item_id"].to_pylist(),
        "kind": ["persona"] * len(ids),
        "name": [details[i]["name"] for i in ids],
        "description": [details[i]["description"] for i in ids],
        "rationale": [details[i]["rationale"] for i in ids],
        "evidence": [details[i]["evidence"] or [] for i in ids],
        "text": pv["text"].to_pylist(),
    }
    iv = pq.read_table(embedded.table("item_vectors"))
    bare = iv.filter(pc.invert(iv["has_personas"]))
    for item, text in zip(bare["item_id"].to_pylist(), bare["text"].to_pylist(), strict=True):
        rows["persona_id"].append("s-" + text_sha(item)[:24])
        rows["item_id"].append(item)
        rows["kind"].append("summary")
        rows["name"].append(item)
        rows["description"].append(text)
        rows["rationale"].append("")
        rows["evidence"].append([])
        rows["text"].append(text)
    rows["text_sha"] = [text_sha(t) for t in rows["text"]]
    base = schemas.arrow_to_vectors(pv["vector"])
    if len(bare):
        base = np.concatenate([base, schemas.arrow_to_vectors(bare["vector"])])
    return pa.table(rows), base


def encode_fn(
    cfg: Config, encoder: Encoder, texts: list[str], base: np.ndarray, progress: bool, desc: str
) -> Callable[[np.ndarray], np.ndarray]:
    """Rows -> encoder vectors: a transform of the stored base vectors when the encoder reads them (vanilla,
    head on the same base model), else the texts through the encoder, in batches with a progress bar."""
    same_base = encoder.spec.base == cfg.embed.model and encoder.spec.max_length == cfg.embed.max_length
    if encoder.spec.uses_base_vectors and same_base:
        return lambda rows: encoder.transform(base[rows])

    def encode(rows: np.ndarray) -> np.ndarray:
        out = []
        with tqdm(total=len(rows), desc=desc, unit="text", disable=not progress) as bar:
            for lo in range(0, len(rows), ENCODE_BATCH):
                chunk = rows[lo : lo + ENCODE_BATCH]
                out.append(encoder.encode([texts[i] for i in chunk]))
                bar.update(len(chunk))
        return np.concatenate(out) if out else np.zeros((0, encoder.spec.dim), dtype=np.float32)

    return encode


def user_tables(cfg: Config, embedded: StageResult, encoder: Encoder, progress: bool) -> tuple[pa.Table, pa.Table]:
    """Per user, the encoder profile of their latest L interactions and every item they have; item popularity."""
    inter = pq.read_table(embedded.table("interaction_vectors")).sort_by(
        [("user_id", "ascending"), ("position", "ascending")]
    )
    items = inter["item_id"].to_pylist()
    users, history, lengths, rows = histories(inter, None, encoder.spec.history)
    needed = np.unique(history[history >= 0])
    encode = encode_fn(
        cfg, encoder, inter["text"].to_pylist(), schemas.arrow_to_vectors(inter["vector"]), progress, "index: users"
    )
    vectors = np.zeros((len(inter), encoder.spec.dim), dtype=np.float32)
    if len(needed):
        vectors[needed] = encode(needed)
    profile = profiles(vectors, history, lengths, encoder.spec.gamma) if users else vectors[:0]
    user_table = pa.Table.from_pydict(
        {
            "user_id": users,
            "vector": schemas.vectors_to_arrow(profile.reshape(len(users), encoder.spec.dim)),
            "items": [[items[r] for r in user_rows] for user_rows in rows],
            "n_interactions": np.array([len(r) for r in rows], dtype=np.int64),
        },
        schema=schemas.USER_PROFILES.arrow(),
    )
    counts = pc.value_counts(inter["item_id"])
    pop = pa.Table.from_pydict(
        {"item_id": counts.field("values"), "interactions": counts.field("counts").cast(pa.int64())},
        schema=schemas.ITEM_POPULARITY.arrow(),
    ).sort_by([("interactions", "descending"), ("item_id", "ascending")])
    return user_table, pop

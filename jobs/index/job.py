"""The index stage: every persona, encoded by a registered encoder, in a new Milvus collection version.

Reads the embed stage (persona, interaction and item texts with base vectors) and the reason stage
(persona names, rationales, evidence), and the encoder version ``index.encoder_version`` (the champion
by default). Items without personas get one ``summary`` row. Vectors of personas the live version already
holds (same id, same text, same encoder) are copied; only the rest are encoded. The version is built,
indexed, loaded and checked before the alias moves to it, and the previous version stays until dropped
(`p4r index --drop NAME`). Beside it, the stage output holds what serving needs per user: the encoder profile
of their latest interactions and the items they have, plus item popularity for unknown users.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from persona4rec import schemas
from persona4rec.artifacts import Manifest, StageResult, StageStore, Timer, fingerprint, upstream
from persona4rec.config import Config
from persona4rec.encoder.model import Encoder
from persona4rec.encoder.profile import profiles
from persona4rec.jobs.embed import job as embed_job
from persona4rec.jobs.index.build import assemble, build_version, plan_reuse, text_sha
from persona4rec.jobs.reason import job as reason_job
from persona4rec.ranking import windows
from persona4rec.texts import TEXTS_VERSION

STAGE = "index"
VERSION = 1
ENCODE_BATCH = 256

IndexResult = StageResult


def encoder_ref(cfg: Config) -> dict[str, str]:
    """The registered encoder version the index (and evaluation) uses: index.encoder_version, else the champion."""
    from persona4rec.infra import mlflow as registry

    ref = registry.resolve_version(cfg, cfg.index.encoder_version)
    return {"model": ref.name, "version": ref.version, "run_id": ref.run_id}


def stage_config(cfg: Config, encoder: dict[str, str]) -> dict[str, Any]:
    i = cfg.index
    return {
        "encoder": encoder,
        "alias": cfg.index_alias,
        "index": {"type": i.index_type, "params": i.index_params, "shards": i.shards, "partitions": i.partitions},
        "texts": TEXTS_VERSION,
        "embed": embed_job.stage_config(cfg),
    }


def _inputs(cfg: Config):
    embedded, reasoned = embed_job.locate(cfg), reason_job.locate(cfg)
    return embedded, reasoned, [upstream("embed", embedded), upstream("reason", reasoned)]


def locate(cfg: Config) -> IndexResult:
    """The stage output of the current inputs and encoder (the champion unless index.encoder_version)."""
    _, _, inputs = _inputs(cfg)
    fp = fingerprint(STAGE, VERSION, stage_config(cfg, encoder_ref(cfg)), inputs)
    return StageStore(cfg.artifacts_root / STAGE).locate(fp, f"no persona index for {cfg.dataset}: run `p4r index`")


def encoder_key(ref: dict[str, str]) -> str:
    return f"{ref['model']}/{ref['version']}/{ref['run_id']}"


def run(cfg: Config, *, force: bool = False, progress: bool = True) -> IndexResult:
    from persona4rec.infra import milvus
    from persona4rec.infra import mlflow as registry

    embedded, reasoned, inputs = _inputs(cfg)
    ref = encoder_ref(cfg)
    scfg = stage_config(cfg, ref)
    fp = fingerprint(STAGE, VERSION, scfg, inputs)
    store = StageStore(cfg.artifacts_root / STAGE)
    alias = cfg.index_alias
    client = milvus.connect(cfg)
    try:
        if not force and (done := store.complete(fp)) is not None:
            manifest = Manifest.read(done)
            name = manifest.counts["collection"]
            if client.has_collection(name) and milvus.count(client, name) == manifest.counts["rows"]:
                client.load_collection(name)
                milvus.move_alias(client, alias, name)
                store.point_current(done)
                return IndexResult(done, manifest, skipped=True)

        timer = Timer()
        with timer("load_encoder"):
            encoder = registry.load_encoder(cfg, ref["version"])
        with timer("rows"):
            rows, base = index_rows(embedded, reasoned)
        key = encoder_key(ref)
        rows = rows.append_column("encoder", pa.array([key] * len(rows), pa.string()))
        with timer("reuse"):
            reuse = plan_reuse(client, alias, rows, key)
        with timer("encode"):
            encode = encoder_fn(cfg, encoder, rows.column("text").to_pylist(), base, progress, "index: personas")
            table, encoded = assemble(rows, reuse, encode, encoder.spec.dim)
        with timer("users"):
            users, popularity = user_tables(cfg, embedded, encoder, progress)

        tmp = store.begin(fp)
        name = milvus.version_name(alias, fp) + "_" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        meta = {
            "dataset": cfg.dataset,
            "fingerprint": fp,
            "encoder": ref,
            "gamma": encoder.spec.gamma,
            "texts": TEXTS_VERSION,
            "artifacts": str(store.version_dir(fp).resolve()),
        }
        manifest = Manifest.start(STAGE, fp, cfg.hash(), scfg, inputs, milvus_uri=cfg.milvus_uri)
        built = False
        try:
            manifest.add_table(tmp, users, schemas.USER_PROFILES)
            manifest.add_table(tmp, popularity, schemas.ITEM_POPULARITY)
            with timer("build"):
                checked = build_version(client, name, table, cfg.index, meta, progress=progress)
            built = True
            manifest.counts = {
                "collection": name,
                "alias": alias,
                "rows": len(table),
                "personas": int(pc.sum(pc.equal(table["kind"], "persona")).as_py() or 0),
                "summary_rows": int(pc.sum(pc.equal(table["kind"], "summary")).as_py() or 0),
                "copied": len(reuse.rows),
                "copied_from": reuse.live,
                "encoded": encoded,
                "self_queries_checked": checked,
                "users": len(users),
                "encoder": ref,
                "index_type": cfg.index.index_type,
            }
            manifest.record(timer)
            manifest.write(tmp)
            folder = store.publish(tmp, fp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if built:
                client.drop_collection(name)
            raise
        previous = milvus.move_alias(client, alias, name)  # the one step readers see
        manifest.counts["replaced"] = previous
        registry.record_index(cfg, ref["version"], name)
        return IndexResult(folder, manifest, skipped=False)
    finally:
        client.close()


def index_rows(embedded: StageResult, reasoned: StageResult) -> tuple[pa.Table, np.ndarray]:
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


def encoder_fn(
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
    users = inter["user_id"].to_numpy(zero_copy_only=False)
    items = inter["item_id"].to_pylist()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(users)].astype(np.int64)
    history, lengths = windows([range(lo, hi) for lo, hi in zip(starts, ends, strict=True)], encoder.spec.history)
    needed = np.unique(history[history >= 0])
    encode = encoder_fn(
        cfg, encoder, inter["text"].to_pylist(), schemas.arrow_to_vectors(inter["vector"]), progress, "index: users"
    )
    vectors = np.zeros((len(inter), encoder.spec.dim), dtype=np.float32)
    if len(needed):
        vectors[needed] = encode(needed)
    profile = profiles(vectors, history, lengths, encoder.spec.gamma) if len(starts) else vectors[:0]
    user_table = pa.Table.from_pydict(
        {
            "user_id": [str(users[s]) for s in starts],
            "vector": schemas.vectors_to_arrow(profile.reshape(len(starts), encoder.spec.dim)),
            "items": [items[lo:hi] for lo, hi in zip(starts, ends, strict=True)],
            "n_interactions": (ends - starts).astype(np.int64),
        },
        schema=schemas.USER_PROFILES.arrow(),
    )
    counts = pc.value_counts(inter["item_id"])
    pop = pa.Table.from_pydict(
        {"item_id": counts.field("values"), "interactions": counts.field("counts").cast(pa.int64())},
        schema=schemas.ITEM_POPULARITY.arrow(),
    ).sort_by([("interactions", "descending"), ("item_id", "ascending")])
    return user_table, pop

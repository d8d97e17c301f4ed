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

from contextlib import closing
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from persona4rec import schemas
from persona4rec.encoder.encode import encode_fn, persona_rows, user_tables
from persona4rec.jobs.index.build import assemble, build_version, plan_reuse
from persona4rec.jobs.index.stage import IndexSummary
from persona4rec.stage import Build
from persona4rec.texts import TEXTS_VERSION


def build(b: Build) -> IndexSummary:
    """Encode every row, then build, load and check a new collection version (the stage's ``activate``
    moves the alias once the runner has published; ``discard`` drops the collection if publishing fails)."""
    from persona4rec.infra import milvus
    from persona4rec.infra import mlflow as registry

    cfg, timer, fp = b.cfg, b.timer, b.fingerprint
    ref = b.manifest.stage_config["encoder"]
    embedded, reasoned = b.inputs["embed"], b.inputs["reason"]
    b.environment(milvus_uri=cfg.milvus_uri)
    with timer("load_encoder"):
        encoder = registry.load_encoder(cfg, ref["version"])
    with timer("rows"):
        rows, base = persona_rows(embedded, reasoned)
    key = f"{ref['model']}/{ref['version']}/{ref['run_id']}"
    rows = rows.append_column("encoder", pa.array([key] * len(rows), pa.string()))
    with closing(milvus.connect(cfg)) as client:
        with timer("reuse"):
            reuse = plan_reuse(client, cfg.index_alias, rows, key)
        with timer("encode"):
            encode = encode_fn(cfg, encoder, rows.column("text").to_pylist(), base, b.progress, "index: personas")
            table, encoded = assemble(rows, reuse, encode, encoder.spec.dim)
        with timer("users"):
            users, popularity = user_tables(cfg, embedded, encoder, b.progress)
        b.add_table(users, schemas.USER_PROFILES)
        b.add_table(popularity, schemas.ITEM_POPULARITY)
        name = milvus.version_name(cfg.index_alias, fp) + "_" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        meta = {
            "dataset": cfg.dataset,
            "fingerprint": fp,
            "encoder": ref,
            "gamma": encoder.spec.gamma,
            "texts": TEXTS_VERSION,
            "artifacts": str(b.target.resolve()),
        }
        with timer("build"):
            checked = build_version(client, name, table, cfg.index, meta, progress=b.progress)
    return IndexSummary(
        collection=name,
        alias=cfg.index_alias,
        rows=len(table),
        personas=int(pc.sum(pc.equal(table["kind"], "persona")).as_py() or 0),
        summary_rows=int(pc.sum(pc.equal(table["kind"], "summary")).as_py() or 0),
        copied=len(reuse.rows),
        copied_from=reuse.live,
        encoded=encoded,
        self_queries_checked=checked,
        users=len(users),
        encoder=ref,
        index_type=cfg.index.index_type,
    )

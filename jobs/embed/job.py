"""The embed stage: every text the encoder reads, with its base-embedder vector.

Texts come from :mod:`persona4rec.texts` (one template for training, indexing and serving):
persona texts, interaction texts (all splits: serving builds profiles from the latest ones) and item
texts (summary-only index, fallback of items without personas). Vectors are computed on a Ray actor
pool and stored in a content-addressed cache (hash of model, max length and text) in chunks of
``embed.chunk_rows``: a rerun embeds only texts it has not seen, a crash loses at most the chunks in
flight, and a catalogue change re-embeds only what changed.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from persona4rec import schemas
from persona4rec.artifacts import StageResult
from persona4rec.config import Config
from persona4rec.errors import StageUnavailable, WorkerLost
from persona4rec.jobs.embed.stage import EmbedSummary
from persona4rec.reasoning.cache import ResultCache, content_key
from persona4rec.stage import Build
from persona4rec.texts import interaction_text, item_text, persona_text

VECTOR_CACHE = pa.schema([("key", pa.string()), ("vector", schemas.VECTOR)])


def build(b: Build) -> EmbedSummary:
    cfg, timer = b.cfg, b.timer
    with timer("texts"):
        tables = build_texts(cfg, b.inputs["prepare"], b.inputs["reason"])
    cache = ResultCache(cfg.artifacts_root / "embed" / "cache", VECTOR_CACHE)
    keys = {name: [_key(cfg, t) for t in table["text"].to_pylist()] for name, table in tables.items()}
    with timer("cache_read"):
        cached = cache.load_table()
        known = set(cached["key"].to_pylist())
    todo: dict[str, str] = {}
    for name, table in tables.items():
        for key, text in zip(keys[name], table["text"].to_pylist(), strict=True):
            if key not in known:
                todo.setdefault(key, text)
    with timer("embed"):
        embedded = _embed(cfg, todo, cache, b.progress) if todo else 0
    embed_s = timer.timings.get("embed", 0.0)

    with timer("write"):
        vectors = cache.load_table()
        row_of = {k: i for i, k in enumerate(vectors["key"].to_pylist())}  # the newest row of a key wins
        for name, table in tables.items():
            rows = pa.array([row_of[k] for k in keys[name]], pa.int64())
            b.add_table(table.append_column("vector", vectors["vector"].take(rows)), schemas.TABLES[name])
    cache.compact()
    unique = len({k for ks in keys.values() for k in ks})
    return EmbedSummary(
        texts=sum(len(k) for k in keys.values()),
        unique_texts=unique,
        embedded_this_run=embedded,
        from_cache=unique - embedded,
        dim=len(vectors["vector"][0]) if len(vectors) else 0,
        sentences_per_s=round(embedded / embed_s, 1) if embedded and embed_s else None,
    )


def _key(cfg: Config, text: str) -> str:
    return content_key("embed", model=cfg.embed.model, max_length=cfg.embed.max_length, text=text)


def build_texts(cfg: Config, prepared: StageResult, reasoned: StageResult) -> dict[str, pa.Table]:
    """The three text tables (without vectors), in key order."""
    items = pq.read_table(prepared.table("items"), columns=["item_id", "title"]).to_pylist()
    summaries = {r["item_id"]: r["summary"] for r in pq.read_table(reasoned.table("summaries")).to_pylist()}
    personas = pq.read_table(reasoned.table("personas")).sort_by("persona_id").to_pylist()
    item_texts = {i["item_id"]: item_text(i["item_id"], summaries.get(i["item_id"]), i["title"]) for i in items}
    with_personas = {p["item_id"] for p in personas}

    aspects: dict[str, str] = {}
    if cfg.reason.mode == "paper" and (reasoned.folder / "aspects").exists():
        kept = pq.read_table(reasoned.table("aspects"))
        kept = kept.filter(pc.and_(pc.equal(kept["status"], "ok"), pc.equal(kept["kept"], True)))
        aspects = dict(zip(kept["review_id"].to_pylist(), kept["aspects_json"].to_pylist(), strict=True))
    reviews = pq.read_table(prepared.table("reviews"), columns=["review_id", "title", "text"]).to_pylist()
    review_of = {r["review_id"]: r for r in reviews}
    interactions = pq.read_table(prepared.table("interactions")).sort_by(
        [("user_id", "ascending"), ("position", "ascending")]
    )
    inter_rows = []
    for r in interactions.to_pylist():
        review = review_of[r["review_id"]]
        text = interaction_text(
            item_texts[r["item_id"]],
            review_title=review["title"],
            review_text=review["text"],
            aspects_json=aspects.get(r["review_id"]),
        )
        inter_rows.append({k: r[k] for k in ("user_id", "position", "item_id", "review_id", "split", "rating")})
        inter_rows[-1]["text"] = text

    def table(rows: list[dict], schema: schemas.TableSchema) -> pa.Table:
        fields = [f for f in schema.arrow() if f.name != "vector"]
        return pa.Table.from_pylist(rows, schema=pa.schema(fields))

    return {
        "persona_vectors": table(
            [
                {
                    "persona_id": p["persona_id"],
                    "item_id": p["item_id"],
                    "text": persona_text(p, item_texts[p["item_id"]]),
                }
                for p in personas
            ],
            schemas.PERSONA_VECTORS,
        ),
        "interaction_vectors": table(inter_rows, schemas.INTERACTION_VECTORS),
        "item_vectors": table(
            [{"item_id": i, "has_personas": i in with_personas, "text": t} for i, t in sorted(item_texts.items())],
            schemas.ITEM_VECTORS,
        ),
    }


def _embed(cfg: Config, todo: dict[str, str], cache: ResultCache, progress: bool) -> int:
    """Embed texts on a Ray actor pool, appending each chunk to the cache as it comes back."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise StageUnavailable("embedding runs on Ray: pip install 'persona4rec[ray]'") from None
    from persona4rec.infra.ray import ensure_ray
    from persona4rec.ray_actors.embedder import BatchEmbedder

    ensure_ray(cfg.ray)
    e = cfg.embed
    actor = ray.remote(BatchEmbedder).options(num_cpus=e.num_cpus, num_gpus=e.num_gpus)
    pool = ActorPool([actor.remote(e.model, e.max_length, e.batch_size, e.num_gpus > 0) for _ in range(e.num_actors)])
    keys, texts = list(todo), list(todo.values())
    chunks = [(keys[lo : lo + e.chunk_rows], texts[lo : lo + e.chunk_rows]) for lo in range(0, len(keys), e.chunk_rows)]
    from ray.exceptions import OutOfMemoryError, RayActorError

    done, t0 = 0, time.perf_counter()
    with tqdm(total=len(todo), desc="embed", unit="text", disable=not progress) as bar:
        try:
            for chunk_keys, vecs in pool.map_unordered(lambda a, c: a.embed_chunk.remote(*c), chunks):
                cache.append_table(
                    pa.table({"key": pa.array(chunk_keys, pa.string()), "vector": schemas.vectors_to_arrow(vecs)})
                )
                done += len(vecs)
                bar.update(len(vecs))
                bar.set_postfix(texts_per_s=f"{done / (time.perf_counter() - t0):.0f}")
        except (OutOfMemoryError, RayActorError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WorkerLost(
                f"an embedding actor was lost after {done:,} of {len(todo):,} texts ({type(exc).__name__}: {why}). "
                "Every finished chunk is in the vector cache: run the same command again to resume."
            ) from exc
    return done

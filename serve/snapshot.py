"""What the service holds in memory for one index version, and the watcher that swaps in the next.

A :class:`Snapshot` is loaded from the collection an alias points at: every persona vector and its
explanation (:class:`~persona4rec.scoring.PersonaTable`), plus the user profiles and item popularity the
index stage wrote beside it, and the learned reranker registered with its encoder when there is one
(:func:`learned_reranker`; requests with first-stage scores use it). Requests read the current snapshot
through one reference; a :class:`Watcher` checks the alias every ``serve.reload_interval_s``, loads a moved
alias in the background and swaps the reference, so requests never wait for a reload and never see half
of one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from persona4rec import schemas
from persona4rec.config import Config
from persona4rec.infra import milvus
from persona4rec.scoring import PersonaTable

log = logging.getLogger("persona4rec.serve")


@dataclass
class Snapshot:
    """One index version, ready to score: personas, user profiles, seen items and popularity."""

    collection: str
    meta: dict[str, Any]
    table: PersonaTable
    user_row: dict[str, int]
    profiles: np.ndarray  # (n_users, d)
    seen: list[list[str]]
    popular: list[str]  # item ids, most interactions first
    loaded_at: float
    item_interactions: dict[str, int] = field(default_factory=dict)  # interactions known per item
    n_interactions: np.ndarray | None = None  # (n_users,) interactions known per user
    reranker: Any = None  # a persona4rec.learned.LearnedReranker, or None

    @property
    def encoder_version(self) -> str:
        return str(self.meta.get("encoder", {}).get("version", "?"))


def load(client: Any, collection: str, cfg: Config | None = None) -> Snapshot:
    """Read a collection version and the user tables of the stage output it names; with ``cfg``, also the
    learned reranker registered with its encoder (for ``score.learned_generator``)."""
    meta = milvus.meta_of(client, collection)
    client.load_collection(collection)  # Milvus Lite forgets loaded collections when its process ends
    fields = [*milvus.EXPLAIN_FIELDS, milvus.VECTOR_FIELD]
    cols = milvus.read(client, collection, fields)
    table = PersonaTable(
        persona_ids=np.asarray(cols["persona_id"], dtype=object),
        item_of=np.asarray(cols["item_id"], dtype=object),
        vectors=np.asarray(cols[milvus.VECTOR_FIELD], dtype=np.float32).reshape(len(cols["persona_id"]), -1),
        names=cols["name"],
        descriptions=cols["description"],
        rationales=cols["rationale"],
        evidence=[list(e or []) for e in cols["evidence"]],
        kinds=cols["kind"],
    )
    folder = Path(meta.get("artifacts", ""))
    if not (folder / "user_profiles").is_dir():
        raise milvus.PersonaIndexError(
            f"{collection}: its user profiles ({folder}/user_profiles) are not readable from here; "
            "serve from a machine that sees the index stage's artifacts"
        )
    users = pq.read_table(folder / "user_profiles")
    pop = pq.read_table(folder / "item_popularity")
    ids = users["user_id"].to_pylist()
    indexed = set(table.item_ids.tolist())
    snap = Snapshot(
        collection=collection,
        meta=meta,
        table=table,
        user_row={u: i for i, u in enumerate(ids)},
        profiles=schemas.arrow_to_vectors(users["vector"]).reshape(len(ids), table.dim),
        seen=users["items"].to_pylist(),
        popular=[i for i in pop["item_id"].to_pylist() if i in indexed],
        loaded_at=time.time(),
        item_interactions=dict(zip(pop["item_id"].to_pylist(), pop["interactions"].to_pylist(), strict=True)),
        n_interactions=users["n_interactions"].to_numpy(),
    )
    if cfg is not None:
        snap.reranker = learned_reranker(cfg, snap.meta.get("encoder", {}))
    return snap


def learned_reranker(cfg: Config, encoder: dict[str, Any]) -> Any:
    """The learned reranker registered with this encoder version, or None (said once in the log) when it has
    none or the registry cannot be read: requests with first-stage scores then use linear fusion."""
    from persona4rec.learned import LearnedReranker

    version, generator = encoder.get("version"), cfg.learned_generator
    try:
        from persona4rec.infra import mlflow as registry

        folder = registry.load_reranker(cfg, str(version), generator) if version else None
    except Exception as exc:  # the registry is optional for serving: persona scores need none of it
        log.warning("no learned reranker for encoder %s: %s: %s", version, type(exc).__name__, exc)
        return None
    if folder is None:
        log.info("encoder %s has no learned reranker for %s: first-stage scores are fused linearly", version,
                 generator)  # fmt: skip
        return None
    model = LearnedReranker.load(folder)
    log.info("learned reranker for %s loaded (%d rounds, features %s)", generator, model.rounds, model.features)
    return model


class Watcher:
    """Holds the current snapshot; a daemon thread reloads it when the alias moves."""

    def __init__(
        self,
        resolve: Callable[[], str | None],
        loader: Callable[[str], Snapshot],
        interval_s: float,
    ) -> None:
        self._resolve, self._loader, self._interval = resolve, loader, interval_s
        self.listeners: list[Callable[[Snapshot], None]] = []  # called after each swap
        self.current: Snapshot | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load the alias's collection if it is not the current one; True when a new snapshot went live."""
        try:
            target = self._resolve()
            if target is None:
                self.last_error = "the index alias does not exist yet: run `p4r index`"
                return False
            if self.current is not None and self.current.collection == target:
                return False
            snapshot = self._loader(target)
        except Exception as exc:  # keep serving the old snapshot; say why on /ready and in the log (once)
            error = f"{type(exc).__name__}: {exc}"
            if error != self.last_error:
                log.warning("index reload failed: %s", error)
            self.last_error = error
            return False
        self.current, self.last_error = snapshot, None  # one reference swap: requests see old or new
        log.info("serving %s (%d personas)", snapshot.collection, len(snapshot.table))
        for listener in self.listeners:
            listener(snapshot)
        return True

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="index-watcher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 5)

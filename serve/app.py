"""The HTTP service: explainable reranking and recommendation from the persona index, no LLM on the path.

    POST /rerank                 a user's candidates, best first, each with the persona that won it
    POST /recommend              the user's top k of the whole catalogue (a grouping search in Milvus)
    GET  /items/{item_id}/personas
    GET  /health                 the process is up
    GET  /ready                  an index version is loaded (503 with the reason until then)
    GET  /metrics                Prometheus: request latency histograms, requests and errors by route
    GET  /docs, /openapi.json    the schema
    GET  /ui                     the persona explorer: items, users, index and evaluation (HTML, serve/ui.py)

Bad input is a 4xx that says what is wrong (422 for an invalid body or unknown item ids, 404 for an
unknown user when ``serve.unknown_user`` is ``error``); 503 while no index is loaded.
"""

# No `from __future__ import annotations` here: FastAPI reads the request models from the route
# signatures at run time, and they are defined inside create_app (their limits come from the config).

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from persona4rec import __version__
from persona4rec.config import Config
from persona4rec.scoring import UnknownItems
from persona4rec.serve.recommender import NotReady, Recommender, UnknownUser
from persona4rec.serve.snapshot import Snapshot
from persona4rec.serve.ui import router as explorer

ID = Field(min_length=1, max_length=256)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Explanation(BaseModel):
    persona_id: str
    kind: str = Field(description="'persona', or 'summary' for an item without personas.")
    name: str
    description: str
    rationale: str
    evidence: list[str] = Field(description="review_ids the persona rests on.")
    similarity: float | None = Field(description="cos(user, persona); null when listed without a user.")


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="What the list is ordered by.")
    persona_score: float | None = Field(description="Max over the item's personas of cos(user, persona).")
    first_stage: float | None
    explanation: Explanation | None = Field(description="The arg-max persona; null for a popularity fallback.")


class Ranking(BaseModel):
    user_id: str
    index: str = Field(description="The index version (Milvus collection) that answered.")
    encoder_version: str
    fallback: str | None = Field(description="'popularity' when the user is unknown and that fallback is on.")
    items: list[ScoredItem]


def create_app(cfg: Config, recommender: Recommender, *, manage_watcher: bool = True) -> FastAPI:
    """The service over a recommender; ``manage_watcher`` starts and stops its index watcher with the app."""
    max_candidates, max_k = cfg.serve.max_candidates, cfg.serve.max_k

    class RerankRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: str = ID
        candidates: list[str] = Field(min_length=1, max_length=max_candidates, description="Item ids, no repeats.")
        first_stage_scores: list[float] | None = Field(
            None, description="One score per candidate from the first stage; fused with score.fusion_weight."
        )

        @field_validator("candidates")
        @classmethod
        def _ids(cls, ids: list[str]) -> list[str]:
            if any(not i or len(i) > 256 for i in ids):
                raise ValueError("every candidate id is a non-empty string of at most 256 characters")
            if len(set(ids)) != len(ids):
                raise ValueError("candidates repeat an item id")
            return ids

        @model_validator(mode="after")
        def _scores(self) -> Self:
            s = self.first_stage_scores
            if s is not None:
                if len(s) != len(self.candidates):
                    raise ValueError(f"{len(s)} first_stage_scores for {len(self.candidates)} candidates")
                if not all(math.isfinite(x) for x in s):
                    raise ValueError("first_stage_scores must be finite numbers")
            return self

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: str = ID
        k: int = Field(10, ge=1, le=max_k)

    registry = CollectorRegistry()
    latency = Histogram(
        "p4r_request_latency_seconds", "Request latency by route.", ["route"], buckets=LATENCY_BUCKETS,
        registry=registry,
    )  # fmt: skip
    requests = Counter("p4r_requests_total", "Requests by route and status.", ["route", "status"], registry=registry)
    errors = Counter("p4r_request_errors_total", "Responses with status >= 400 by route.", ["route"], registry=registry)
    reloads = Counter("p4r_index_reloads_total", "Index versions swapped in.", registry=registry)
    personas_g = Gauge("p4r_index_personas", "Personas in the served index version.", registry=registry)

    def on_swap(snap: Snapshot) -> None:
        reloads.inc()
        personas_g.set(len(snap.table))

    watcher = recommender.watcher
    watcher.listeners.append(on_swap)
    if watcher.current is not None:
        on_swap(watcher.current)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_watcher:
            watcher.start()
        yield
        if manage_watcher:
            watcher.stop()

    app = FastAPI(
        title="Persona4Rec",
        version=__version__,
        description="Explainable recommendations from a persona-profiled item index.",
        lifespan=lifespan,
    )

    app.add_middleware(Metrics, latency=latency, requests=requests, errors=errors)

    @app.exception_handler(UnknownItems)
    async def _unknown_items(request: Request, exc: UnknownItems) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "unknown_items": exc.ids[:100]}, status_code=422)

    @app.exception_handler(UnknownUser)
    async def _unknown_user(request: Request, exc: UnknownUser) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse({"detail": f"no index loaded: {exc}"}, status_code=503)

    # Responses are built as JSON directly (the models above document them): rerank is all in memory and
    # runs on the event loop; recommend waits on Milvus and runs in the thread pool.
    @app.post("/rerank", response_model=Ranking, summary="Rerank a user's candidates, with explanations")
    async def rerank_(body: RerankRequest) -> Any:
        return JSONResponse(vars(recommender.rerank(body.user_id, body.candidates, body.first_stage_scores)))

    @app.post("/recommend", response_model=Ranking, summary="Top k of the whole catalogue for a user")
    def recommend_(body: RecommendRequest) -> Any:
        return JSONResponse(vars(recommender.recommend(body.user_id, body.k)))

    @app.get("/items/{item_id}/personas", response_model=list[Explanation], summary="An item's personas")
    def personas_(item_id: str) -> Any:
        try:
            return [e._asdict() for e in recommender.personas(item_id)]
        except UnknownItems:
            raise HTTPException(404, f"unknown item {item_id!r}: not in the index") from None

    @app.get("/health", summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: an index version is loaded")
    def ready() -> Any:
        snap = watcher.current
        if snap is None:
            return JSONResponse({"status": "loading", "reason": watcher.last_error}, status_code=503)
        return {
            "status": "ready",
            "index": snap.collection,
            "encoder_version": snap.encoder_version,
            "personas": len(snap.table),
            "items": len(snap.table.item_ids),
            "users": len(snap.user_row),
            "last_reload_error": watcher.last_error,
        }

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(explorer(cfg, recommender))

    return app


class Metrics:
    """ASGI middleware: latency, requests and errors per route template (lighter than BaseHTTPMiddleware)."""

    def __init__(self, app: Any, *, latency: Histogram, requests: Counter, errors: Counter) -> None:
        self.app, self.latency, self.requests, self.errors = app, latency, requests, errors

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # the template, not the raw path
            self.latency.labels(route).observe(time.perf_counter() - t0)
            self.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.errors.labels(route).inc()


def build(cfg: Config) -> tuple[FastAPI, Recommender]:
    """The service on the configured index: a Milvus client, a watcher on the alias, the app."""
    from persona4rec.infra import milvus
    from persona4rec.serve.snapshot import Watcher, load

    client = milvus.connect(cfg)
    watcher = Watcher(
        lambda: milvus.resolve(client, cfg.index_alias), lambda name: load(client, name), cfg.serve.reload_interval_s
    )
    recommender = Recommender(cfg, watcher, client)
    return create_app(cfg, recommender), recommender

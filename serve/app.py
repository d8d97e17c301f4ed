"""The HTTP service: explainable reranking and recommendation from the persona index, no LLM on the path.

    POST /rerank                 a user's candidates, best first, each with the persona that won it
    POST /recommend              the user's top k of the whole catalogue (a grouping search in Milvus)
    GET  /items/{item_id}/personas
    GET  /health                 the process is up
    GET  /ready                  an index version is loaded (503 with the reason until then)
    GET  /metrics                Prometheus: request latency histograms, requests and errors by route
    GET  /docs, /openapi.json    the schema
    GET  /ui                     the persona explorer: items, users, index and evaluation (HTML, serve/ui.py)

Bad input is a 4xx that says what is wrong, never a 5xx: 422 for an invalid body or unknown item ids, 400
for a body that is not parseable JSON text (nested too deeply, not UTF-8, an integer of more than 4300
digits), 415 for a body not sent as JSON, 404 for an unknown user when ``serve.unknown_user`` is ``error``.
Request models are strict: ``k`` is a JSON integer (not "10", not true), ids are strings of 1 to 256
characters, first-stage scores are JSON numbers of magnitude at most 1e38 (NaN, Infinity and 1e400 are
refused: the scores are fused in float32), and no string may hold a lone UTF-16 surrogate (JSON's "\ud800"
escape decodes to one, and it cannot be written back as UTF-8). A 422 lists at most ``MAX_ERRORS`` errors,
and echoes an input only when it is short and JSON-safe. 503 while no index is loaded.
"""

# No `from __future__ import annotations` here: FastAPI reads the request models from the route
# signatures at run time, and they are defined inside create_app (their limits come from the config).

import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Self

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from persona4rec import __version__
from persona4rec.config import Config
from persona4rec.scoring import UnknownItems
from persona4rec.serve.recommender import NotReady, Recommender, UnknownUser
from persona4rec.serve.snapshot import Snapshot
from persona4rec.serve.ui import router as explorer

MAX_ID = 256  # characters of a user or item id
#: The largest first-stage score magnitude: scores are fused in float32 (max 3.4e38), after a min-max scaling
#: that subtracts two of them, so a larger one would overflow to inf and come out as NaN.
MAX_SCORE = 1e38
MAX_ERRORS = 20  # validation errors listed in a 422
MAX_ECHO = 200  # characters of an input a 422 echoes back
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _valid_unicode(text: str) -> str:
    """Refuse a lone UTF-16 surrogate (JSON's ``"\\ud800"`` escape decodes to one; no UTF-8 can carry it).

    pydantic's length-constrained strict ``str`` already refuses one (``string_unicode``, reworded by
    :func:`_validation_error`); this keeps the guarantee, for an ASCII string at the cost of one ``isascii``,
    should it stop doing so: a surrogate that reaches a response makes its UTF-8 encoding fail, a 500."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"the text holds a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}: "
                "send valid Unicode"
            ) from None
    return text


UserId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_ID), AfterValidator(_valid_unicode)]
ItemId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_ID)]
Score = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # a JSON number; the bound: _scores below


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
        user_id: UserId
        candidates: list[ItemId] = Field(
            min_length=1, max_length=max_candidates, description="Item ids (1 to 256 characters), no repeats."
        )
        first_stage_scores: list[Score] | None = Field(
            None,
            description="One score per candidate from the first stage (finite, |score| <= 1e38); fused with "
            "score.fusion_weight.",
        )

        @field_validator("candidates")
        @classmethod
        def _ids(cls, ids: list[str]) -> list[str]:
            joined = "".join(ids)  # one check for the whole list; surrogates stay unpaired across a join
            if not joined.isascii():
                for n, i in enumerate(ids):
                    try:
                        _valid_unicode(i)
                    except ValueError as exc:
                        raise ValueError(f"candidate {n}: {exc}") from None
            if len(set(ids)) != len(ids):
                raise ValueError("candidates repeat an item id")
            return ids

        @field_validator("first_stage_scores")
        @classmethod
        def _bounded(cls, scores: list[float] | None) -> list[float] | None:
            if scores and (max(scores) > MAX_SCORE or min(scores) < -MAX_SCORE):  # C loops: cheap on long lists
                n = next(n for n, x in enumerate(scores) if abs(x) > MAX_SCORE)
                raise ValueError(
                    f"score {n} is {scores[n]:g}: first-stage scores must lie within +-{MAX_SCORE:g} "
                    "(they are fused in float32)"
                )
            return scores

        @model_validator(mode="after")
        def _scores(self) -> Self:
            s = self.first_stage_scores
            if s is not None and len(s) != len(self.candidates):
                raise ValueError(f"{len(s)} first_stage_scores for {len(self.candidates)} candidates")
            return self

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: UserId
        k: int = Field(10, ge=1, le=max_k, strict=True, description="A JSON integer.")

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

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if isinstance(exc.body, bytes | bytearray):  # FastAPI parses JSON only when the content type says so
            kind = _clip(request.headers.get("content-type") or "none")
            return JSONResponse(
                {"detail": f"send the body as JSON, with Content-Type: application/json (it was {kind!r})"}, 415
            )
        return _validation_error(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        cause = exc.__cause__
        if exc.status_code == 400 and cause is not None and not isinstance(cause, StarletteHTTPException):
            # FastAPI's answer to a body json.loads could not read (other than a JSON syntax error, a 422)
            return JSONResponse({"detail": f"the body is not readable JSON: {_unreadable(cause)}"}, 400)
        return await http_exception_handler(request, exc)

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
            raise HTTPException(404, f"unknown item {_clip(item_id)!r}: not in the index") from None

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


def _clip(text: str, n: int = MAX_ECHO) -> str:
    """``text`` cut to ``n`` characters, any lone surrogate written as its escape: safe to put in a JSON answer."""
    text = text if len(text) <= n else text[: n - 1] + "…"
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _echo(value: Any) -> Any:
    """``value`` as a 422 may echo it: a short JSON-safe scalar or small container as is, a long string cut;
    anything else (NaN, Infinity, a long list, a huge integer, deep nesting) is left out (None)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 1 << 63 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, list | dict) and len(value) <= 8:
        try:
            text = json.dumps(value, allow_nan=False, ensure_ascii=False)
            text.encode("utf-8")
        except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
            return None
        return value if len(text) <= MAX_ECHO else None
    return None


def _validation_error(errors: Any) -> JSONResponse:
    """The 422 for pydantic's errors, whatever the input: every string made JSON-safe, inputs echoed only
    when short and JSON-safe (:func:`_echo`), at most ``MAX_ERRORS`` errors listed."""
    errors = list(errors)
    detail = []
    for e in errors[:MAX_ERRORS]:
        out: dict[str, Any] = {
            "type": str(e.get("type", "invalid")),
            "loc": [x if isinstance(x, int) else _clip(str(x)) for x in e.get("loc", ())],
            "msg": _clip(str(e.get("msg", "invalid")), 1000),
        }
        if out["type"] == "string_unicode":  # pydantic's words for a str it cannot read as Unicode
            out["msg"] = (
                "Input should be a valid string: this string (or a key of this object) holds a lone UTF-16 "
                "surrogate, such as a \\ud800 escape without its pair; send valid Unicode"
            )
        if "input" in e and (echo := _echo(e["input"])) is not None:
            out["input"] = echo
        ctx = e.get("ctx")
        if isinstance(ctx, dict) and ctx:
            out["ctx"] = {_clip(str(k)): v if isinstance(v, int | float) and _echo(v) is not None else _clip(str(v))
                          for k, v in ctx.items()}  # fmt: skip
        detail.append(out)
    body: dict[str, Any] = {"detail": detail}
    if len(errors) > MAX_ERRORS:
        body["more_errors"] = len(errors) - MAX_ERRORS
    try:
        return JSONResponse(body, 422)
    except (ValueError, TypeError, RecursionError):  # not expected; a 422 must still go out
        return JSONResponse({"detail": [{"type": d["type"], "loc": [str(x) for x in d["loc"]]} for d in detail]}, 422)


def _unreadable(cause: BaseException) -> str:
    """Why json.loads could not read a body, in the client's terms."""
    if isinstance(cause, RecursionError):
        return "it is nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return "it is not UTF-8 (or UTF-16/32) text"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "an integer in it has more than 4300 digits"
    return _clip(f"{type(cause).__name__}: {cause}")


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
        lambda: milvus.resolve(client, cfg.index_alias),
        lambda name: load(client, name, cfg),  # with cfg: the learned reranker registered with its encoder
        cfg.serve.reload_interval_s,
    )
    recommender = Recommender(cfg, watcher, client)
    return create_app(cfg, recommender), recommender

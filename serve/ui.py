"""The persona explorer: server-rendered pages under ``/ui`` to inspect the served index by eye.

    GET /ui/items?q=&status=     search items by id or text (title, summary, persona names)
    GET /ui/items/{item_id}      summary, personas with the reviews each one cites, reasoning status
    GET /ui/users?q=             search users by id
    GET /ui/users/{user_id}      recent history, full-catalogue recommendations and the rerank of the
                                 user's first-stage candidates, each explained by its winning persona
    GET /ui/index                alias and version, encoder (MLflow), counts, the latest evaluation report
    GET /ui/plots/{name}         a plot of that report (only files of its plots/ folder)

Pages read the snapshot the API serves (through the :class:`Recommender`) and the stage outputs it was
built from (:mod:`persona4rec.serve.catalog`, read once per index version). Review and LLM text is
untrusted: templates autoescape everything, nothing of it is marked safe, and every page is sent with a
Content-Security-Policy that allows no script at all. The one piece of HTML not made by a template is
the evaluation report, Markdown written by our own code, converted with raw HTML disabled.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markdown_it import MarkdownIt
from markupsafe import Markup

from persona4rec.config import Config
from persona4rec.scoring import UnknownItems
from persona4rec.serve.catalog import Catalog, Catalogs
from persona4rec.serve.recommender import NotReady, Recommender, UnknownUser
from persona4rec.serve.snapshot import Snapshot

PREFIX = "/ui"
HERE = Path(__file__).resolve().parent
LIMIT = 50  # rows of a search result
RECOMMEND_K = 10
REGISTRY_WAIT_S = 3.0
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined,
    trim_blocks=True, lstrip_blocks=True,
)  # fmt: skip
_md = MarkdownIt("commonmark", {"html": False}).enable("table")


def anchor(kind: str, raw: str) -> str:
    """A fragment id for a persona or review: any id string maps to a valid, stable HTML id."""
    return f"{kind}-{hashlib.sha1(raw.encode('utf-8')).hexdigest()[:12]}"


def excerpt(text: str | None, n: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


_env.globals["anchor"] = anchor
_env.filters["path"] = lambda s: quote(str(s), safe="")
_env.filters["excerpt"] = excerpt


def render_report(text: str, root: str, plots: dict[str, Path], shift: int = 2) -> Markup:
    """The evaluation report as HTML: raw HTML in it stays text, headings move ``shift`` levels down
    (under the page's own h1/h2), table headers get a scope, and plot images point at the plot route."""
    tokens = _md.parse(text)
    for tok in tokens:
        if tok.type in ("heading_open", "heading_close"):
            tok.tag = f"h{min(int(tok.tag[1]) + shift, 6)}"
        elif tok.type == "th_open":
            tok.attrSet("scope", "col")
        for child in tok.children or []:
            if child.type == "image":
                src = str(child.attrGet("src") or "")
                name = src.removeprefix("plots/")
                if name in plots:
                    child.attrSet("src", f"{root}/plots/{quote(name)}")
                child.attrSet("loading", "lazy")
    return Markup(_md.renderer.render(tokens, _md.options, {}))  # markdown-it escaped every text node


def router(cfg: Config, recommender: Recommender) -> APIRouter:
    """The explorer's routes, over the service's recommender (mounted by ``create_app``)."""
    catalogs = Catalogs(cfg.tracking_uri)
    css = (HERE / "static" / "ui.css").read_bytes()
    ui = APIRouter(prefix=PREFIX, include_in_schema=False)

    def page(request: Request, template: str, t0: float, code: int = 200, **ctx: Any) -> HTMLResponse:
        mount = request.scope.get("root_path", "")  # behind a proxy that serves the app under a prefix
        html = _env.get_template(template).render(root=mount + PREFIX, api=mount + "/docs", dataset=cfg.dataset, **ctx)
        ms = (time.perf_counter() - t0) * 1000
        return HTMLResponse(html, code, headers={**HEADERS, "Server-Timing": f"app;dur={ms:.1f}"})

    def with_index(request: Request, view: Callable[[Snapshot, Catalog, float], HTMLResponse]) -> HTMLResponse:
        t0 = time.perf_counter()
        try:
            snap = recommender.snapshot()
        except NotReady as exc:
            return page(request, "message.html", t0, 503, title="No index loaded", section="",
                        message=f"The service has no index version loaded yet: {exc}.")  # fmt: skip
        return view(snap, catalogs.get(snap), t0)

    def not_found(request: Request, t0: float, title: str, message: str) -> HTMLResponse:
        return page(request, "message.html", t0, 404, title=title, section="", message=message)

    @ui.get("")
    @ui.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/items", status_code=307)

    @ui.get("/static/ui.css")
    def stylesheet() -> Response:
        return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    @ui.get("/items")
    def items(request: Request, q: str = "", status: str = "") -> HTMLResponse:
        def view(snap: Snapshot, cat: Catalog, t0: float) -> HTMLResponse:
            needle, words = q.strip().lower(), q.lower().split()
            wanted = status if status in ("ok", "failed") else ""
            hits = []
            for info in cat.items.values():  # a scan: ~1 ms for 900 items, no index to keep in step
                if wanted and info.status != wanted:
                    continue
                item = info.item_id.lower()
                if not words:
                    rank = 3
                elif item == needle:
                    rank = 0
                elif item.startswith(needle):
                    rank = 1
                elif all(w in cat.search_text.get(info.item_id, item) for w in words):
                    rank = 2
                else:
                    continue
                hits.append((rank, -info.interactions, info.item_id, info))
            hits.sort(key=lambda h: h[:3])
            return page(request, "items.html", t0, title="Items", section="items", q=q, status=wanted,
                        total=len(hits), rows=[h[3] for h in hits[:LIMIT]], limit=LIMIT, counts=cat.counts,
                        failed=len(cat.failed))  # fmt: skip

        return with_index(request, view)

    @ui.get("/items/{item_id:path}")
    def item(request: Request, item_id: str) -> HTMLResponse:
        def view(snap: Snapshot, cat: Catalog, t0: float) -> HTMLResponse:
            try:
                explained = [snap.table.explain(r) for r in snap.table.personas_of(item_id)]
            except UnknownItems:
                if item_id not in cat.items:
                    return not_found(request, t0, "Unknown item", f"No item {item_id!r} in index {snap.collection}.")
                explained = []
            info = cat.items.get(item_id)
            extra = cat.personas
            explained.sort(key=lambda e: (extra[e.persona_id].index if e.persona_id in extra else 0, e.persona_id))
            personas = [e for e in explained if e.kind == "persona"]
            cited: dict[str, list[Any]] = {}
            for p in personas:
                for rid in p.evidence:
                    cited.setdefault(rid, []).append(p)
            others = [r for r in cat.reviews_of_item.get(item_id, []) if r not in cited]
            summary_row = next((e for e in explained if e.kind == "summary"), None)
            return page(request, "item.html", t0, title=f"Item {item_id}", section="items", item_id=item_id,
                        info=info, personas=personas, summary_row=summary_row, cited=cited, others=others,
                        reviews=cat.reviews, extra=extra, reason_missing=cat.missing.get("reason"),
                        prepare_missing=cat.missing.get("prepare"))  # fmt: skip

        return with_index(request, view)

    @ui.get("/users")
    def users(request: Request, q: str = "") -> HTMLResponse:
        def view(snap: Snapshot, cat: Catalog, t0: float) -> HTMLResponse:
            needle = q.strip().lower()
            hits = []
            for user, row in snap.user_row.items():
                low = user.lower()
                if needle and needle not in low:
                    continue
                n = len(cat.history.get(user, ())) or len(snap.seen[row])
                hits.append((low != needle, -n, user, n))
            hits.sort()
            rows = [(u, n, cat.history.get(u, [None])[-1]) for _, _, u, n in hits[:LIMIT]]
            return page(request, "users.html", t0, title="Users", section="users", q=q, total=len(hits), rows=rows,
                        limit=LIMIT)  # fmt: skip

        return with_index(request, view)

    @ui.get("/users/{user_id:path}")
    def user(request: Request, user_id: str, generator: str = "") -> HTMLResponse:
        def view(snap: Snapshot, cat: Catalog, t0: float) -> HTMLResponse:
            if user_id not in snap.user_row:
                return not_found(request, t0, "Unknown user", f"No user {user_id!r} in index {snap.collection}.")
            history = cat.history.get(user_id, [])
            generators = list(cat.candidates)
            gen = generator if generator in cat.candidates else (generators[-1] if generators else "")
            listed = cat.candidates.get(gen, {}).get(user_id)
            recommended = reranked = None
            try:  # the service's own answers; they read the live snapshot, which a reload may just have swapped
                recommended = recommender.recommend(user_id, RECOMMEND_K)
                if listed is not None:
                    known = [i for i in listed.items if i in cat.indexed]
                    reranked = recommender.rerank(user_id, known) if known else None
            except (UnknownUser, UnknownItems):  # gone from the new version: the next view shows it
                pass
            first_rank = {i: n + 1 for n, i in enumerate(listed.items)} if listed is not None else {}
            return page(request, "user.html", t0, title=f"User {user_id}", section="users", user_id=user_id,
                        history=history[::-1][: cfg.encoder.profile.history], n_history=len(history),
                        profile_len=cfg.encoder.profile.history, gamma=snap.meta.get("gamma"),
                        recommended=recommended, reranked=reranked, listed=listed, first_rank=first_rank,
                        generators=generators, generator=gen, items=cat.items, reviews=cat.reviews,
                        candidates_missing=cat.missing.get("candidates"))  # fmt: skip

        return with_index(request, view)

    @ui.get("/index")
    def index(request: Request) -> HTMLResponse:
        def view(snap: Snapshot, cat: Catalog, t0: float) -> HTMLResponse:
            root = request.scope.get("root_path", "") + PREFIX
            report, ev = cat.rendered.get(("report", root)), cat.evaluation
            if report is None and ev is not None:
                report = cat.rendered[("report", root)] = render_report(ev.report, root, ev.plots)
            failures: dict[str, int] = {}
            for info in cat.failed:
                code = (info.reason or "unknown").split(":", 1)[0]
                failures[code] = failures.get(code, 0) + 1
            return page(request, "index.html", t0, title="Index", section="index", snap=snap, cat=cat,
                        alias=cfg.index_alias, counts=cat.counts, failures=sorted(failures.items()),
                        registry=cat.registry_info(REGISTRY_WAIT_S), report=report,
                        loaded_at=datetime.fromtimestamp(snap.loaded_at, UTC).isoformat(timespec="seconds"),
                        reviews=len(cat.reviews), users=len(snap.user_row))  # fmt: skip

        return with_index(request, view)

    @ui.get("/plots/{name}")
    def plot(name: str) -> Response:
        snap = recommender.watcher.current
        evaluation = catalogs.get(snap).evaluation if snap is not None else None
        path = evaluation.plots.get(name) if evaluation is not None else None
        if path is None:  # only the names listed from the report's plots/ folder: no path reaches elsewhere
            return Response("no such plot", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "max-age=300"})

    return ui

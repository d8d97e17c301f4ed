"""The persona explorer (`/ui`) end to end: the service on a small real index, driven by headless Chromium.

The index is built from a copy of the session's 2013-14 Musical Instruments stages (prepare, reason,
embed) in which one cited review and one persona rationale carry markup, so every view shows untrusted
text that must stay text. Candidates (popularity) and an evaluation with its plots are made from the same
copy, so the user and index views have everything to show. The service is the real app (`build`), run
by uvicorn on a loopback port in a thread; Chromium is Debian's, driven by Playwright.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn

from persona4rec import jobs
from persona4rec.artifacts import StageStore
from persona4rec.config import load_config
from persona4rec.serve import catalog as catalog_mod
from persona4rec.serve.ui import anchor
from tests.conftest import FAST, MUSICAL_INSTRUMENTS, free_port, wait_for_http

CHROMIUM = os.environ.get("P4R_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
REVIEW_MARKUP = "<script>alert(1)</script> Sounds <b>great</b> & costs < $20"
RATIONALE_MARKUP = "<b>Loud</b> players <script>alert(2)</script> cite it"


def _rewrite(folder: Path, table: pa.Table) -> None:
    """Replace a stage table's Parquet files with one file holding ``table``."""
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(table, folder / "part-0.parquet")


def _set(table: pa.Table, column: str, row: int, value: str) -> pa.Table:
    values = table[column].to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


@pytest.fixture(scope="module")
def site(mi_pipeline, tmp_path_factory):
    """The app on an index of a marked-up copy of the session's stages; yields (base URL, facts)."""
    config, _ = mi_pipeline
    trained = jobs.run("train", config(), progress=False)  # reused when the training tests ran first
    version = trained.summary.mlflow["version"]
    source = config()
    root = tmp_path_factory.mktemp("ui-artifacts")
    for stage in ("prepare", "reason", "embed"):
        shutil.copytree(source.artifacts_root / stage, root / source.artifacts_root.name / stage)
    cfg = load_config(
        [f"paths.artifacts={root}", f"data.local_dir={MUSICAL_INSTRUMENTS}", *FAST, f"index.uri={root / 'milvus.db'}",
         "index.index_type=FLAT", f"index.encoder_version={version}", f"mlflow.tracking_uri={source.tracking_uri}",
         "candidates.generators=[popularity]", "evaluate.rerankers=[first_stage,persona]", "evaluate.listwise.users=0",
         "evaluate.bootstrap=100", "evaluate.permutations=100", "evaluate.latency_users=10",
         "evaluate.log_to_mlflow=false"],
        dataset=source.dataset,
    ).config  # fmt: skip

    reason = StageStore(cfg.artifacts_root / "reason").current()
    prepare = StageStore(cfg.artifacts_root / "prepare").current()
    personas = pq.read_table(reason / "personas")
    rows = personas.to_pylist()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["item_id"]] = counts.get(r["item_id"], 0) + 1
    marked = min((i for i, r in enumerate(rows) if r["evidence"] and counts[r["item_id"]] > 1),
                 key=lambda i: (rows[i]["item_id"], rows[i]["persona_index"]))  # fmt: skip
    item, persona_id, review_id = rows[marked]["item_id"], rows[marked]["persona_id"], rows[marked]["evidence"][0]
    _rewrite(reason / "personas", _set(personas, "rationale", marked, RATIONALE_MARKUP))
    reviews = pq.read_table(prepare / "reviews")
    at = reviews["review_id"].to_pylist().index(review_id)
    _rewrite(prepare / "reviews", _set(reviews, "text", at, REVIEW_MARKUP))

    status = pq.read_table(reason / "item_status", columns=["status"])["status"].to_pylist()
    built = jobs.run("index", cfg, progress=False)
    jobs.run("candidates", cfg, progress=False)
    evaluated = jobs.run("evaluate", cfg, progress=False)

    from persona4rec.serve.app import build

    app, recommender = build(cfg)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="ui-test-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/ready", alive=thread.is_alive, what="the UI's server", timeout_s=60, poll_s=0.2)
        facts = {
            "cfg": cfg, "recommender": recommender, "item": item, "persona_id": persona_id, "review_id": review_id,
            "personas_of_item": counts[item], "collection": built.summary.collection,
            "encoder_version": version, "evaluation": evaluated.folder, "failed": status.count("failed"),
        }  # fmt: skip
        yield base, facts
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        recommender.client.close()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, one for the module. Missing, it is a failure: install.sh installs it."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: the explorer's browser tests need it "
            "(scripts/install.sh --extras dev installs it; or apt-get install chromium)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page that records any dialog (an executed alert() would open one)."""
    context = browser.new_context()
    tab = context.new_page()
    tab.dialogs = []
    tab.on("dialog", lambda d: (tab.dialogs.append(d.message), d.dismiss()))
    yield tab
    context.close()


def _one_h1(page) -> str:
    assert page.locator("h1").count() == 1
    return page.locator("h1").inner_text()


def test_search_an_item_open_it_and_read_its_personas_and_evidence(site, page):
    base, f = site
    page.goto(f"{base}/ui/items")
    page.keyboard.press("Tab")  # the skip link comes first and leads to the main content
    assert page.evaluate("document.activeElement.textContent") == "Skip to main content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    page.get_by_label("Item id or text").fill(f["item"])
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/ui/items\?q="))
    results = page.locator("table tbody tr")
    assert results.count() == 1 and page.locator("#results-count").inner_text().startswith("1 item ")
    results.get_by_role("link", name=f["item"]).click()

    assert f["item"] in _one_h1(page)
    personas = page.locator("article.persona")
    assert personas.count() == f["personas_of_item"]
    marked = page.locator(f"#{anchor('persona', f['persona_id'])}")
    assert RATIONALE_MARKUP in marked.inner_text()  # LLM text with markup is shown as the characters it is

    marked.locator("ul.evidence-links a").first.click()  # a persona's evidence link lands on the review, highlighted
    target = anchor("review", f["review_id"])
    assert page.evaluate("document.querySelector(':target').id") == target
    review = page.locator(f"#{target}")
    assert "cited" in review.get_attribute("class") and review.is_visible()
    assert REVIEW_MARKUP in review.locator("blockquote").inner_text()
    assert review.get_by_role("link", name=marked.locator("h3").inner_text()).count() == 1  # cited by, linked back

    assert page.locator("script").count() == 0 and page.locator("main b").count() == 0
    assert page.dialogs == []


def test_open_a_user_and_follow_an_explanation_to_its_evidence(site, page):
    base, f = site
    recommender = f["recommender"]
    snap = recommender.snapshot()
    lists = catalog_mod.build(snap).candidates["popularity"]
    user = max((u for u in snap.user_row if u in lists), key=lambda u: (len(snap.seen[snap.user_row[u]]), u))

    page.goto(f"{base}/ui/users")
    page.get_by_label("User id").fill(user)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=user, exact=True).click()
    assert user in _one_h1(page)
    assert page.locator("section[aria-labelledby='history-h'] tbody tr").count() == min(
        len(snap.seen[snap.user_row[user]]), f["cfg"].encoder.profile.history
    )

    recommended = page.locator("section[aria-labelledby='recommend-h'] tbody tr")
    expected = httpx.post(f"{base}/recommend", json={"user_id": user, "k": 10}).json()["items"]
    assert recommended.count() == len(expected) == 10
    shown = [recommended.nth(i).locator("th a").first.inner_text() for i in range(10)]
    assert shown == [e["item_id"] for e in expected]

    reranked = page.locator("section[aria-labelledby='rerank-h'] tbody tr")
    api = httpx.post(f"{base}/rerank", json={"user_id": user, "candidates": lists[user].items}).json()["items"]
    shown = [reranked.nth(i).locator("th a").first.inner_text() for i in range(reranked.count())]
    assert shown == [e["item_id"] for e in api]  # the page shows what the API answers
    if lists[user].target in shown:
        assert "held-out test item" in reranked.nth(shown.index(lists[user].target)).inner_text()

    first = expected[0]
    persona = recommended.first.locator("a.persona-link")
    assert persona.inner_text() == first["explanation"]["name"]
    evidence = recommended.first.locator("ul.evidence-links a")
    assert evidence.count() == len(first["explanation"]["evidence"])
    persona.click()
    page.wait_for_url(re.compile(rf"/ui/items/{re.escape(first['item_id'])}#persona-"))
    target = page.locator(":target")
    assert target.locator("h3").inner_text() == first["explanation"]["name"]
    assert page.url.endswith("#" + anchor("persona", first["explanation"]["persona_id"]))
    for rid in first["explanation"]["evidence"]:  # every cited review is on the item page, where it links to
        assert page.locator(f"article.review.cited#{anchor('review', rid)}").count() == 1
    assert page.dialogs == []


def test_the_index_page_shows_version_encoder_counts_and_the_evaluation_with_plots(site, page):
    base, f = site
    snap = f["recommender"].snapshot()
    deadline = time.monotonic() + 60  # MLflow is read in the background; until it answers, the page says so
    while "MLflow has not answered yet" in httpx.get(f"{base}/ui/index", timeout=30).text:
        assert time.monotonic() < deadline, "MLflow did not answer within 60 s"
        time.sleep(0.5)
    page.goto(f"{base}/ui/index")
    assert _one_h1(page) == "Index"
    version = page.locator("section[aria-labelledby='version-h']").inner_text()
    assert f["collection"] in version and f["cfg"].index_alias in version
    registry = page.locator("section[aria-labelledby='encoder-h']").inner_text()
    assert f"version {f['encoder_version']}" in registry and "Not available" not in registry
    counts = dict(
        (row.locator("th").inner_text(), row.locator("td").inner_text())
        for row in page.locator("section[aria-labelledby='counts-h'] table.counts tr").all()
    )
    personas = sum(k == "persona" for k in snap.table.kinds)
    assert counts["Items in the index"] == str(len(snap.table.item_ids))
    assert counts["Personas"] == str(personas)
    assert counts["Items scored by their summary (no personas)"] == str(len(snap.table) - personas)
    assert counts["Users with a profile"] == str(len(snap.user_row))

    evaluation = page.locator("section[aria-labelledby='evaluation-h']")
    assert f["evaluation"].name in evaluation.inner_text()
    assert evaluation.locator("h3").first.inner_text().startswith("Evaluation:")  # the report's h1, moved under h2
    images = evaluation.locator(".report img")
    plots = sorted(p.name for p in (f["evaluation"] / "plots").glob("*.png"))
    assert images.count() == len(plots) > 0
    for img in images.all():
        img.scroll_into_view_if_needed()  # the report's images load lazily
        page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=img.element_handle(), timeout=10_000)


def test_markup_in_reviews_and_personas_is_escaped_in_the_html(site):
    base, f = site
    r = httpx.get(f"{base}/ui/items/{quote(f['item'])}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Sounds &lt;b&gt;great&lt;/b&gt; &amp; costs &lt; $20" in r.text
    assert "&lt;b&gt;Loud&lt;/b&gt;" in r.text and "<script" not in r.text and "<b>" not in r.text
    assert (
        "default-src 'none'" in r.headers["content-security-policy"]
        and "script-src" not in r.headers["content-security-policy"]
    )  # no script may run on the explorer's pages at all
    user = f["recommender"].snapshot().user_row
    assert "<script" not in httpx.get(f"{base}/ui/users/{quote(next(iter(user)))}").text


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/ui/items/B000NOPE", "No item &#39;B000NOPE&#39;"),
        ("/ui/items/%3Cscript%3Ex", "No item &#39;&lt;script&gt;x&#39;"),
        ("/ui/users/nobody", "No user &#39;nobody&#39;"),
        ("/ui/plots/nothing.png", "no such plot"),
        ("/ui/plots/report.md", "no such plot"),  # beside plots/ in the evaluation folder
        ("/ui/plots/%2E%2E", "no such plot"),
        ("/ui/plots/..%5Creport.md", "no such plot"),
        ("/ui/plots/..%2Freport.md", None),  # an encoded slash never reaches the plot route at all
        ("/ui/plots/..%2F..%2Fmanifest.json", None),
        ("/ui/plots/%2Fetc%2Fpasswd", None),
    ],
)
def test_unknown_pages_and_paths_outside_the_plots_folder_are_404(site, path, says):
    base, f = site
    r = httpx.get(base + path)
    assert r.status_code == 404, r.text[:500]
    if says is not None:
        assert says in r.text, r.text[:500]
    report = (f["evaluation"] / "report.md").read_text(encoding="utf-8")
    assert report[:40] not in r.text and "fingerprint" not in r.text and "root:" not in r.text


def test_plots_routes_redirect_and_the_api_schema(site):
    base, f = site
    name = sorted(p.name for p in (f["evaluation"] / "plots").glob("*.png"))[0]
    r = httpx.get(f"{base}/ui/plots/{name}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (f["evaluation"] / "plots" / name).read_bytes()
    home = httpx.get(f"{base}/ui", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/ui/items"
    css = httpx.get(f"{base}/ui/static/ui.css")
    assert css.status_code == 200 and ":focus-visible" in css.text
    assert not [p for p in httpx.get(f"{base}/openapi.json").json()["paths"] if p.startswith("/ui")]
    failed = httpx.get(f"{base}/ui/items", params={"status": "failed"})
    n = f["failed"]
    assert failed.status_code == 200 and f"{n} item{'' if n == 1 else 's'} (failed)" in failed.text


def test_the_catalog_is_read_once_per_index_version_and_says_what_is_missing(site):
    _, f = site
    snap = f["recommender"].snapshot()
    catalogs = catalog_mod.Catalogs(None)
    first = catalogs.get(snap)
    assert catalogs.get(snap) is first
    assert catalogs.get(dataclasses.replace(snap, loaded_at=snap.loaded_at + 1)) is not first  # a swapped-in version
    assert first.missing == {} and first.evaluation is not None and f["review_id"] in first.reviews

    moved = dataclasses.replace(snap, meta={**snap.meta, "artifacts": str(Path("/nonexistent/ds/index/v"))})
    bare = catalog_mod.build(moved)
    assert set(bare.missing) == {"reason", "prepare", "candidates", "evaluation"}
    assert bare.reviews == {} and bare.evaluation is None and bare.counts == first.counts


def test_pages_say_so_when_no_index_is_loaded(site):
    from fastapi.testclient import TestClient

    from persona4rec.serve.app import create_app
    from persona4rec.serve.recommender import Recommender
    from persona4rec.serve.snapshot import Watcher

    _, f = site
    watcher = Watcher(lambda: None, lambda name: None, 60)
    watcher.last_error = "the index alias does not exist yet: run `p4r index`"
    app = create_app(f["cfg"], Recommender(f["cfg"], watcher, None), manage_watcher=False)
    with TestClient(app) as client:
        for path in ("/ui/items", "/ui/users/x", "/ui/index"):
            r = client.get(path)
            assert r.status_code == 503 and "run `p4r index`" in r.text
        assert client.get("/ui/plots/metrics_at_k.png").status_code == 404


def test_every_link_follows_the_proxy_prefix(site):
    from fastapi.testclient import TestClient

    from persona4rec.serve.app import create_app

    _, f = site
    app = create_app(f["cfg"], f["recommender"], manage_watcher=False)
    with TestClient(app, root_path="/p4r") as client:
        r = client.get("/p4r/ui/items")
    assert r.status_code == 200, r.text[:300]
    hrefs = re.findall(r'(?:href|src)="([^"]+)"', r.text)
    assert "/p4r/docs" in hrefs and "/p4r/ui/users" in hrefs and "/p4r/ui/static/ui.css" in hrefs
    assert not [h for h in hrefs if h.startswith("/") and not h.startswith("/p4r/")]

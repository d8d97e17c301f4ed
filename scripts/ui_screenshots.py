"""Screenshots of the persona explorer's three views, and how fast its pages render, on a real index.

Starts the service (the same app as `p4r serve`) on a free loopback port in this process, opens an item,
a user and the index page in headless Chromium (Debian's ``chromium``, driven by Playwright), and saves
``ui-items.png``, ``ui-users.png`` and ``ui-index.png``. Then it requests every view ``--repeat`` times
and prints the server-side render time (the ``Server-Timing`` header) and the wall time per view.

    python scripts/ui_screenshots.py --out docs -d amazon2014-musical-instruments \\
        -c conf/experiments/extractive-personas.yaml paths.artifacts=/tmp/mi-eval \\
        data.local_dir=../shared/data/amazon2014_musical_instruments_5core

The item defaults to the most reviewed one with personas, the user to the one with the most interactions
whose held-out item is among their first-stage candidates (``--item``/``--user`` choose others).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import uvicorn

from persona4rec.config import load_config
from persona4rec.serve import catalog as catalog_mod
from persona4rec.serve.app import build

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick(snap, cat) -> tuple[str, str]:
    """The most reviewed item with personas; the most active user whose held-out item was generated."""
    items = [i for i in cat.items.values() if i.status == "ok" and i.item_id in cat.indexed]
    item = max(items, key=lambda i: (i.interactions, i.item_id)).item_id
    lists = next(reversed(cat.candidates.values()), {})
    users = [u for u in snap.user_row if (c := lists.get(u)) is not None and c.target in c.items] or list(snap.user_row)
    user = max(users, key=lambda u: (len(cat.history.get(u, ())), u))
    return item, user


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--item")
    ap.add_argument("--user")
    ap.add_argument("--repeat", type=int, default=20, help="requests per view for the timings")
    ap.add_argument("-d", "--dataset")
    ap.add_argument("-c", "--config")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args()

    cfg = load_config(args.overrides, experiment=args.config, dataset=args.dataset).config
    app, recommender = build(cfg)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                print(f"the service did not become ready: {recommender.watcher.last_error}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        snap = recommender.snapshot()
        item, user = pick(snap, catalog_mod.build(snap))
        item, user = args.item or item, args.user or user
        views = {
            "items": f"/ui/items/{quote(item, safe='')}",
            "users": f"/ui/users/{quote(user, safe='')}",
            "index": "/ui/index",
        }
        heights = {"items": 1500, "users": 1900, "index": 1900}  # the top of each page, at most this tall
        args.out.mkdir(parents=True, exist_ok=True)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            for name, path in views.items():
                page.goto(base + path)
                page.wait_for_load_state("load")
                target = args.out / f"ui-{name}.png"
                height = min(heights[name], page.evaluate("document.documentElement.scrollHeight"))
                clip = {"x": 0, "y": 0, "width": 1280, "height": height}
                page.screenshot(path=str(target), full_page=True, clip=clip)
                print(f"{target}: {path}")
            browser.close()

        print(f"\n{'view':<8} {'server ms (median / max)':>26} {'wall ms (median)':>18}   over {args.repeat} requests")
        with httpx.Client(base_url=base, timeout=30) as client:
            for name, path in {**views, "search": "/ui/items?q=" + quote(item[:4])}.items():
                server_ms, wall_ms = [], []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    r = client.get(path)
                    wall_ms.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                    server_ms.append(float(r.headers["server-timing"].split("dur=")[1]))
                print(f"{name:<8} {statistics.median(server_ms):>17.1f} / {max(server_ms):>6.1f}"
                      f" {statistics.median(wall_ms):>18.1f}")  # fmt: skip
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

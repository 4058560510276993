"""Serve the built site on 127.0.0.1 and drive Debian's Chromium with Playwright.

The site defaults to the fast-mode build of `make test` (_build/fast/_build/html); XXPO_SITE overrides
it (e.g. _build/html after `make book`). Every request to a non-local address is blocked and recorded.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "_artifacts"


def site_dir() -> Path:
    return Path(os.environ.get("XXPO_SITE", ROOT / "_build" / "fast" / "_build" / "html"))


def toc_pages() -> list[str]:
    """Every page of the table of contents, as paths without suffix (chapters/00_family, ...)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [c["file"] for c in part["chapters"]]
    return pages


@pytest.fixture(scope="session")
def site_url():
    site = site_dir()
    if not (site / "index.html").exists():
        pytest.fail(f"no built site at {site}: run `make test-book` (or set XXPO_SITE)")
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser-deps` installs Debian's chromium")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=args,
            headless=True, viewport={"width": 1280, "height": 900})
        context.blocked = []  # non-local requests that were refused

        def route(route):
            host = urlparse(route.request.url).hostname
            if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                context.blocked.append((route.request.resource_type, route.request.url))
                route.abort()

        context.route("**/*", route)
        yield context
        context.close()


def _load(context, site_url: str, path: str):
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    response = page.goto(f"{site_url}/{path}", wait_until="load")
    assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
    page.evaluate("() => window.MathJax?.startup?.promise")  # typesetting done (pages with math)
    return page, errors


@pytest.fixture
def open_page(browser_context, site_url):
    """Open a fresh copy of a page of the site, for a test that changes it (moves a slider); returns
    (page, errors) where errors are the JavaScript errors the page raised."""
    opened = []

    def _open(path: str):
        page, errors = _load(browser_context, site_url, path)
        opened.append(page)
        return page, errors

    yield _open
    for page in opened:
        page.close()


@pytest.fixture(scope="session")
def loaded_page(browser_context, site_url):
    """A page of the site, loaded once per session and shared by the tests that only read it (each page
    costs a second or two to load and typeset); returns (page, errors) like `open_page`."""
    pages = {}

    def _open(path: str):
        if path not in pages:
            pages[path] = _load(browser_context, site_url, path)
        return pages[path]

    yield _open
    for page, _ in pages.values():
        page.close()


@pytest.fixture(scope="session")
def repository() -> tuple[str, str]:
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    return cfg["repository"]["url"], cfg["repository"]["branch"]

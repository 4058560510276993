"""Layer 4: the built website in headless Chromium, with every non-local request blocked."""

from __future__ import annotations

import json

import pytest
from conftest import ARTIFACTS, ROOT, toc_pages

PAGES = toc_pages()
NOTEBOOK_PAGES = [p for p in PAGES if (ROOT / f"{p}.ipynb").exists()]


def _math_state(page) -> dict:
    return page.evaluate("""() => ({
        rendered: document.querySelectorAll('mjx-container').length,
        raw: (document.querySelector('article') || document.body).innerText.match(/\\\\\\(|\\\\\\[|\\\\begin\\{|\\$\\$/g) || [],
    })""")


@pytest.mark.parametrize("path", PAGES)
def test_page_loads_without_errors(open_page, path):
    page, errors = open_page(f"{path}.html")
    page.wait_for_timeout(300)
    assert page.title(), f"{path} has no title"
    assert errors == [], f"{path}: JavaScript errors {errors}"
    state = _math_state(page)
    assert state["raw"] == [], f"{path}: raw TeX left in the page: {state['raw'][:5]}"


@pytest.mark.parametrize("path", NOTEBOOK_PAGES)
def test_figures_are_present_and_loaded(open_page, path):
    page, _ = open_page(f"{path}.html")
    images = page.evaluate("""() => Array.from(document.querySelectorAll('article img'))
        .filter(img => img.src.includes('_images'))
        .map(img => ({src: img.src, ok: img.complete && img.naturalWidth > 0}))""")
    source = json.loads((ROOT / f"{path}.ipynb").read_text())
    if "plt.show()" in "".join("".join(c["source"]) for c in source["cells"] if c["cell_type"] == "code"):
        assert images, f"{path}: the notebook draws figures but the page shows none"
    assert all(img["ok"] for img in images), f"{path}: images that failed to load {images}"


def test_math_is_rendered_by_mathjax(open_page):
    page, _ = open_page(f"{PAGES[0]}.html")
    page.wait_for_function("document.querySelectorAll('mjx-container').length > 0", timeout=15000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chapter0.png"), full_page=False)
    assert _math_state(page)["rendered"] > 0


@pytest.mark.parametrize("path", NOTEBOOK_PAGES)
def test_colab_button_points_at_this_notebook(open_page, repository, path):
    url, branch = repository
    org_repo = url.removeprefix("https://github.com/")
    expected = f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/{path}.ipynb"
    page, _ = open_page(f"{path}.html")
    hrefs = page.evaluate("() => Array.from(document.querySelectorAll('a')).map(a => a.href)")
    colab = [h for h in hrefs if "colab.research.google.com" in h]
    assert colab == [expected], f"{path}: Colab links {colab}, expected {expected}"


def test_repository_button(open_page, repository):
    page, _ = open_page(f"{PAGES[0]}.html")
    hrefs = page.evaluate("() => Array.from(document.querySelectorAll('a')).map(a => a.href)")
    assert repository[0] in hrefs


def test_site_needs_no_cdn(open_page, browser_context):
    for path in PAGES:
        open_page(f"{path}.html")
    scripts = [(kind, url) for kind, url in browser_context.blocked if kind in ("script", "stylesheet", "font")]
    assert scripts == [], f"pages asked a CDN for {scripts}"

"""Layer 4: the built website in headless Chromium, with every non-local request blocked.

`make test` runs these on the fast build; `make book` runs them on the full build, the site readers see."""

from __future__ import annotations

import json
import re

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
def test_page_loads_without_errors(loaded_page, path):
    page, errors = loaded_page(f"{path}.html")
    page.wait_for_timeout(300)
    assert page.title(), f"{path} has no title"
    assert errors == [], f"{path}: JavaScript errors {errors}"
    state = _math_state(page)
    assert state["raw"] == [], f"{path}: raw TeX left in the page: {state['raw'][:5]}"


@pytest.mark.parametrize("path", NOTEBOOK_PAGES)
def test_figures_are_present_and_loaded(loaded_page, path):
    page, _ = loaded_page(f"{path}.html")
    images = page.evaluate("""() => Array.from(document.querySelectorAll('article img'))
        .filter(img => img.src.includes('_images'))
        .map(img => ({src: img.src, ok: img.complete && img.naturalWidth > 0}))""")
    source = json.loads((ROOT / f"{path}.ipynb").read_text())
    if "plt.show()" in "".join("".join(c["source"]) for c in source["cells"] if c["cell_type"] == "code"):
        assert images, f"{path}: the notebook draws figures but the page shows none"
    assert all(img["ok"] for img in images), f"{path}: images that failed to load {images}"


def test_math_is_rendered_by_mathjax(loaded_page):
    page, _ = loaded_page(f"{PAGES[0]}.html")
    page.wait_for_function("document.querySelectorAll('mjx-container').length > 0", timeout=15000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chapter0.png"), full_page=False)
    assert _math_state(page)["rendered"] > 0


@pytest.mark.parametrize("path", NOTEBOOK_PAGES)
def test_colab_button_points_at_this_notebook(loaded_page, repository, path):
    url, branch = repository
    org_repo = url.removeprefix("https://github.com/")
    expected = f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/{path}.ipynb"
    page, _ = loaded_page(f"{path}.html")
    hrefs = page.evaluate("() => Array.from(document.querySelectorAll('a')).map(a => a.href)")
    colab = [h for h in hrefs if "colab.research.google.com" in h]
    assert colab == [expected], f"{path}: Colab links {colab}, expected {expected}"


def test_repository_button(loaded_page, repository):
    page, _ = loaded_page(f"{PAGES[0]}.html")
    hrefs = page.evaluate("() => Array.from(document.querySelectorAll('a')).map(a => a.href)")
    assert repository[0] in hrefs


def test_site_needs_no_cdn(loaded_page, browser_context):
    for path in PAGES:
        loaded_page(f"{path}.html")
    scripts = [(kind, url) for kind, url in browser_context.blocked if kind in ("script", "stylesheet", "font")]
    assert scripts == [], f"pages asked a CDN for {scripts}"


@pytest.mark.parametrize("path", PAGES)
def test_every_formula_renders(loaded_page, path):
    """MathJax shows a bad formula as a red 'Math input error' box (mjx-merror) and raises no JavaScript
    error: look for the box itself."""
    page, _ = loaded_page(f"{path}.html")
    bad = page.evaluate("""() => Array.from(document.querySelectorAll('mjx-merror'))
        .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120))""")
    assert bad == [], f"{path}: MathJax could not render {bad}"


OVERFLOW = """() => {
    const column = document.querySelector('article.bd-article') || document.querySelector('main');
    const right = column.getBoundingClientRect().right + 1;
    const name = e => e.tagName.toLowerCase() + (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ')[0] : '');
    const wide = [];
    const candidates = document.querySelectorAll(
        'mjx-container[display="true"], div.highlight pre, .xxpo-box, .cell_output table, .cell_output img, article table');
    for (const e of candidates) {
        const box = e.getBoundingClientRect();
        if (box.width === 0) continue;
        const scrolls = e.scrollWidth > e.clientWidth + 1;
        if (box.right > right || scrolls) {
            wide.push(name(e) + ': ' + (e.textContent || e.getAttribute('src') || '').trim().slice(0, 60) +
                      ` (right ${Math.round(box.right)} > ${Math.round(right)} or content ${e.scrollWidth} > ${e.clientWidth})`);
        }
    }
    return wide;
}"""


@pytest.mark.parametrize("path", PAGES)
def test_nothing_is_wider_than_its_column(loaded_page, path):
    """No displayed equation, code block, table or figure runs past the text column at 1280 px, or needs a
    sideways scroll bar to be read."""
    page, _ = loaded_page(f"{path}.html")
    page.wait_for_timeout(300)
    assert page.evaluate(OVERFLOW) == [], f"{path}: wider than the column"


@pytest.mark.parametrize("path", PAGES)
def test_prose_numbers_are_formatted_and_nothing_points_outside_the_book(loaded_page, path):
    """Every glued number reached the page formatted (no 0.7845134219260657), and no page cites a file readers
    cannot open (../shared, a probe report)."""
    page, _ = loaded_page(f"{path}.html")
    text = page.evaluate("() => Array.from(document.querySelectorAll('article p, article li')).map(e => e.innerText).join('\\n')")
    raw = re.findall(r"\d\.\d{6,}", text)
    assert raw == [], f"{path}: unformatted numbers in the prose {raw[:5]}"
    for leak in ("../shared", "shared/reference", "probe-length", "probe-staleness"):
        assert leak not in text, f"{path}: the page cites {leak!r}, which readers cannot open"


@pytest.mark.parametrize("path", NOTEBOOK_PAGES)
def test_plumbing_is_folded_and_teaching_code_is_in_view(loaded_page, path):
    """Cells tagged hide-input show a fold button instead of their code; the cells left in view are the ones
    a reader learns from (configs and calls into the lab), never a cell of imports only, or glue."""
    page, _ = loaded_page(f"{path}.html")
    visible = page.evaluate("""() => Array.from(document.querySelectorAll('div.cell:not(.tag_hide-input) .cell_input'))
        .map(e => e.innerText)""")
    assert page.evaluate("() => document.querySelectorAll('div.cell.tag_hide-input').length") > 0, path
    for code in visible:
        lines = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        imports_only = all(line.startswith(("import ", "from ")) for line in lines)
        assert "glue(" not in code and not imports_only and "XXPO_REPO" not in code, (
            f"{path}: plumbing in view:\n{code[:200]}")

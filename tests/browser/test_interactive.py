"""Kernel-free interactivity on the built site: the loss explorer's sliders change the plotted curves."""

from __future__ import annotations

import re

import pytest
from conftest import ARTIFACTS, toc_pages

EXPLORER = "chapters/a3_loss_explorer"
GD = "document.querySelector('.plotly-graph-div')"


def _trace(page, name: str, axis: str) -> int:
    """Index of the objective trace of loss `name` in the panel on `axis` ('y' = A > 0, 'y2' = A < 0)."""
    return page.evaluate(f"""() => {GD}.data.findIndex(t => t.name === '{name}' && t.yaxis === '{axis}'
                                                              && t.fill !== 'tozeroy')""")


def _shoot(page, element, name: str) -> None:
    """Screenshot of a whole figure under the test's output folder: a viewport tall enough for all of it,
    scrolled so that the page's sticky header does not cover its top (legend included)."""
    page.set_viewport_size({"width": 1280, "height": 1600})
    page.evaluate("(el) => window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - 100)", element)
    page.wait_for_timeout(200)
    ARTIFACTS.mkdir(exist_ok=True)
    element.screenshot(path=str(ARTIFACTS / name))


def _slider_click(page, slider: int, fraction: float) -> None:
    """Click slider number `slider` at a fraction of its rail, as a reader would."""
    rail = page.query_selector_all(".slider-container .slider-rail-rect")[slider]
    rail.scroll_into_view_if_needed()
    box = rail.bounding_box()
    page.mouse.click(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)
    page.wait_for_timeout(500)


@pytest.mark.skipif(EXPLORER not in toc_pages(), reason="the loss explorer page is not in the book")
def test_explorer_slider_moves_the_curve(open_page):
    page, errors = open_page(f"{EXPLORER}.html")
    page.wait_for_function(f"{GD} && {GD}.layout.meta.xxpo_explorer")
    ppo = _trace(page, "ppo", "y")
    assert ppo >= 0
    graph = page.query_selector(".plotly-graph-div")
    _shoot(page, graph, "explorer_before.png")
    before = page.evaluate(f"() => Array.from({GD}.data[{ppo}].y)")
    # eps_high (the second slider) to its first position, 0.0003: PPO's A > 0 objective flattens at 1.0003
    sliders = page.evaluate(f"() => {GD}.layout.sliders.map(s => s.name)")
    _slider_click(page, sliders.index("eps_high"), 0.01)
    after = page.evaluate(f"() => Array.from({GD}.data[{ppo}].y)")
    _shoot(page, graph, "explorer_after.png")
    assert before[-1] == pytest.approx(1.2) and after[-1] == pytest.approx(1.0003)
    assert page.evaluate(f"() => {GD}.layout.sliders[{sliders.index('eps_high')}].active") == 0
    # SAPO's A < 0 curve follows tau_neg and nothing else
    sapo_neg = _trace(page, "sapo", "y2")
    sapo_before = page.evaluate(f"() => Array.from({GD}.data[{sapo_neg}].y)")
    _slider_click(page, sliders.index("tau_neg"), 0.99)
    sapo_after = page.evaluate(f"() => Array.from({GD}.data[{sapo_neg}].y)")
    assert sapo_before != sapo_after
    assert page.evaluate(f"() => Array.from({GD}.data[{ppo}].y)") == after
    assert errors == []


def _pages_with_sweeps() -> list[str]:
    from conftest import ROOT

    return [p for p in toc_pages() if (ROOT / f"{p}.ipynb").exists()
            and re.search(r"\bsweep(_figure)?\(", (ROOT / f"{p}.ipynb").read_text())]


def test_the_book_has_sweep_sliders():
    assert _pages_with_sweeps(), "no chapter calls sweep() or sweep_figure(): the slider test below would test nothing"


@pytest.mark.parametrize("path", _pages_with_sweeps())
def test_sweep_sliders_switch_between_real_runs(open_page, path):
    page, errors = open_page(f"{path}.html")
    figures = page.evaluate("""() => Array.from(document.querySelectorAll('.plotly-graph-div'))
        .map((gd, i) => [i, gd.layout.meta && gd.layout.meta.xxpo_sweep]).filter(x => x[1])""")
    assert figures, f"{path}: no sweep figure on the page"
    for index, param in figures:
        gd = f"document.querySelectorAll('.plotly-graph-div')[{index}]"
        visible_before = page.evaluate(f"() => {gd}.data.map(t => t.visible)")
        title_before = page.evaluate(f"() => {gd}.layout.title.text")
        rail = page.query_selector_all(".plotly-graph-div")[index].query_selector(".slider-rail-rect")
        rail.scroll_into_view_if_needed()
        box = rail.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.99, box["y"] + box["height"] / 2)
        page.wait_for_timeout(400)
        visible_after = page.evaluate(f"() => {gd}.data.map(t => t.visible)")
        title_after = page.evaluate(f"() => {gd}.layout.title.text")
        assert visible_after != visible_before and sum(map(bool, visible_after)) > 0, f"{path}: {param} slider"
        assert title_after != title_before and param in title_after
    _shoot(page, page.query_selector_all(".plotly-graph-div")[figures[-1][0]], f"sweep_{path.split('/')[-1]}.png")
    assert errors == []

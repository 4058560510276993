"""The family tree data, the plots, and the notebooks' committed form."""

import inspect
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch
import yaml

from xxpo_lab import ADVANTAGES, LOSSES, resolve
from xxpo_lab.family import FAMILY, family_table, family_tree, layout

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "chapters"))
import _sync  # noqa: E402


def test_family_data_is_a_consistent_tree():
    names = [m.name for m in FAMILY]
    assert len(names) == len(set(names))
    by_name = {m.name: m for m in FAMILY}
    for m in FAMILY:
        for parent in m.parents:
            assert parent in by_name, f"{m.name}: unknown parent {parent}"
            assert by_name[parent].year <= m.year, f"{m.name} is older than its parent {parent}"
        assert m.change and (m.edge or not m.parents)
        assert not m.loss or m.loss in LOSSES or m.loss in ADVANTAGES, m.loss


def test_family_figure_labels_every_edge():
    pos = layout()
    assert len(set(pos.values())) == len(FAMILY)  # no two members on top of each other
    fig = family_tree()
    bare = lambda text: "".join(text.split())  # labels are wrapped, at spaces or hyphens
    texts = {bare(t.get_text()) for t in fig.axes[0].texts}
    for m in FAMILY:
        assert any(t.startswith(bare(m.name)) for t in texts), m.name
        if m.parents:
            assert bare(m.edge) in texts, m.edge
    assert len(family_table()) == len(FAMILY)


def test_chapter_marks_come_from_the_table_of_contents():
    """The family tree and table mark a member as explained only when its chapter is in _toc.yml, and the
    package's "Book: ch. N" pointers name only chapters that exist."""
    import re

    from xxpo_lab import family

    assert family.BOOK == _sync.book_chapters(), "run `make sync`: family.BOOK differs from _toc.yml"
    numbers = {int(stem[:2]) for stem in family.BOOK}
    for m in FAMILY:
        assert family.chapter_in_book(m) == (m.chapter if m.chapter in numbers else None)
    assert set(family_table()["chapter"]) - {"-"} <= numbers
    for path in (ROOT / "xxpo_lab").glob("*.py"):
        for ref in re.findall(r"Book: ch\. ([0-9, ]+)", path.read_text()):
            cited = {int(n) for n in ref.replace(" ", "").strip(",").split(",") if n}
            assert cited <= numbers, f"{path.name} points to chapter(s) {cited - numbers}, which do not exist"


@pytest.fixture(scope="module")
def runs():
    rows = []
    for run, shift in (("a", 0.0), ("b", 0.1)):
        for seed in (0, 1):
            for step in range(5):
                rows.append({"run": run, "seed": seed, "step": step, "reward/mean": 0.3 + shift + 0.01 * step * seed,
                             "eval/accuracy": 0.4 + shift if step % 2 == 0 else None,
                             "clip/active_frac@u0": 0.0, "clip/active_frac@u1": 0.1 + shift,
                             "len/correct_mean": 3.0, "len/incorrect_mean": 4.0 + shift})
    return pd.DataFrame(rows)


def test_plots_draw_one_line_per_run_with_seed_bands(runs):
    from xxpo_lab import plots

    fig = plots.curves(runs, ["reward/mean", "eval/accuracy"])
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2  # mean lines and min..max bands
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (2 seeds)", "b (2 seeds)"]
    fig = plots.by_update(runs, "clip/active_frac")
    assert list(fig.axes[0].lines[1].get_ydata()) == pytest.approx([0.0, 0.2])
    assert len(plots.length_by_correctness(runs).axes[0].lines) == 4
    assert len(plots.compare_bars(runs, "reward/mean").axes[0].patches) == 2


def test_the_book_style_shows_tables_to_three_decimals():
    from xxpo_lab import plots

    with pd.option_context("display.float_format", None):
        plots.style()
        shown = repr(pd.DataFrame({"x": [0.123456, 4.3e-09, 266.7244]}))
        assert shown.split() == ["x", "0", "0.123", "1", "0.000", "2", "266.724"]


def test_notebooks_are_committed_without_outputs():
    for path in _sync.notebooks():
        nb = json.loads(path.read_text())
        dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
                 and (c.get("outputs") or c.get("execution_count") is not None)]
        assert not dirty, f"{path.name}: cells {dirty} carry outputs (run `make sync`)"


def test_first_code_cell_installs_from_the_configured_repository():
    url, branch = _sync.repository()
    expected = _sync.install_cell()
    assert f"git+{url}@{branch}" in expected
    for path in _sync.notebooks():
        nb = json.loads(path.read_text())
        first = next(c for c in nb["cells"] if c["cell_type"] == "code")
        assert "".join(first["source"]) == expected, f"{path.name}: install cell differs (run `make sync`)"


def test_every_notebook_is_in_the_table_of_contents():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = {toc["root"]} | {c["file"] for part in toc["parts"] for c in part["chapters"]}
    for path in _sync.notebooks():
        assert f"chapters/{path.stem}" in listed, f"{path.name} is not in _toc.yml"
    for page in listed:
        assert (ROOT / f"{page}.ipynb").exists() or (ROOT / f"{page}.md").exists(), page


def test_sweep_figure_switches_whole_sets_of_traces(runs):
    from xxpo_lab.interactive import sweep_figure

    table = pd.concat([runs.assign(eps=0.1), runs.assign(eps=0.2, **{"reward/mean": runs["reward/mean"] + 1})])
    fig = sweep_figure(table, "eps", ["reward/mean"], by="run")
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["0.1", "0.2"]
    masks = [s.args[0]["visible"] for s in steps]
    assert all(a != b for a, b in zip(*masks)) and sum(masks[0]) == sum(masks[1]) == 6  # 2 runs x (band, mean)
    low, high = fig.layout.yaxis.range
    assert low < table["reward/mean"].min() and high > table["reward/mean"].max()  # one range for all positions
    assert fig.layout.meta["xxpo_sweep"] == "eps"
    ordered = sweep_figure(table, "eps", ["reward/mean"], by="run", order=[0.2, 0.1])
    assert [s.label for s in ordered.layout.sliders[0].steps] == ["0.2", "0.1"]


def test_glue_turns_numpy_numbers_into_python_numbers(monkeypatch, capsys):
    import sys as _sys

    import numpy as np

    from xxpo_lab.interactive import glue

    monkeypatch.setitem(_sys.modules, "myst_nb", None)  # outside a book build: the value is printed
    glue("x", np.float64(0.25), ".2f")
    assert capsys.readouterr().out == "x = 0.25\n"


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_minimal_loop_moves_the_policy_as_train_does(tiny, epochs):
    """The book's one-page loop (xxpo_lab/minimal.py) is the lab's step: after one step of each from the same
    warm start and seed, the policies agree and the batches had the same reward. Both take plain SGD steps
    here: Adam's first step is lr·sign(g), which turns float rounding (the lab sums its shuffled minibatch
    in another order) into full-size differences on parameters whose gradient is ~0."""
    import random

    from xxpo_lab import loop, minimal
    from xxpo_lab.policy import make_policy

    cfg = resolve(replace(tiny, epochs=epochs, lr=0.5, warmup_steps=1))
    state = loop.setup(cfg, torch.device("cpu"))
    state.opt = torch.optim.SGD(state.policy.parameters(), lr=cfg.lr)
    row = loop.training_step(state, 0)

    policy, tok, _ = make_policy(cfg, torch.device("cpu"))
    opt = torch.optim.SGD(policy.parameters(), lr=cfg.lr)
    task = loop.make_task(cfg.task, cfg.difficulty)
    reward = minimal.grpo_step(policy, opt, task, tok, random.Random(cfg.seed),
                               torch.Generator().manual_seed(cfg.seed), cfg)
    assert reward == pytest.approx(row["reward/mean"])
    lab = state.policy.state_dict()
    moved = [k for k, v in policy.state_dict().items() if not torch.equal(v, make_policy(cfg)[0].state_dict()[k])]
    assert moved, "the minimal step changed nothing"
    for k, v in policy.state_dict().items():
        torch.testing.assert_close(v, lab[k], atol=1e-5, rtol=1e-4)


def test_the_minimal_loop_is_short():
    from xxpo_lab import minimal

    code = [line for line in inspect.getsource(minimal).splitlines()[8:] if line.strip()]
    assert len(code) <= 80, len(code)


def test_every_function_the_book_shows_fits_the_column():
    """Shown source (docstring cut to its summary) is at most book.WIDTH characters wide: the browser tests fail
    on code wider than the page's column, and the losses, blocks and advantages are what chapters show."""
    from xxpo_lab import advantages, blocks, book, critic, explorer, losses, minimal

    shown = [spec.fn for spec in LOSSES.values()] + list(ADVANTAGES.values()) + [advantages.gae]
    shown += [getattr(blocks, n) for n in dir(blocks) if inspect.isfunction(getattr(blocks, n))]
    shown += [critic.value_loss, critic.prompt_value_loss, losses.LossInfo, explorer.loss_curves]
    shown += [getattr(minimal, n) for n in dir(minimal) if inspect.isfunction(getattr(minimal, n))
              and getattr(minimal, n).__module__ == minimal.__name__]
    for fn in shown:
        widths = [len(line) for line in book.source_of(fn).splitlines()]
        assert max(widths) <= book.WIDTH, f"{fn.__qualname__}: a line of {max(widths)} characters"


def test_show_diff_shows_only_what_differs_as_changes():
    from xxpo_lab import book, losses

    diff = book.show_diff(losses.grpo, losses.dr_grpo).text.splitlines()
    changed = [line for line in diff if line[:1] in "+-"]
    assert any("seq-mean-token-sum-norm" in line for line in changed if line.startswith("+"))
    assert any('"seq-mean-token-mean"' in line for line in changed if line.startswith("-"))
    assert len(changed) == 4  # the def line and the aggregation, each removed and added
    assert any("clip_surrogate" in line for line in diff if line.startswith(" "))  # shared lines shown once


def test_chapter_code_fits_the_page_column():
    """Code cells and fenced code in the chapters are at most 74 characters wide: wider code needs a sideways
    scroll bar in the page's 666-pixel column (the browser tests measure it on the built site)."""
    for path in _sync.notebooks():
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                source = "\n".join(re.findall(r"^```(?!\{)[^\n]*\n(.*?)^```", source, flags=re.M | re.S))
            wide = [line for line in source.splitlines() if len(line) > 74]
            assert wide == [], f"{path.name}: {wide[0]!r} is {len(wide[0])} characters"


def test_reuse_views_shows_one_mixed_group_at_the_first_and_last_update_and_is_cached(tiny, monkeypatch):
    from xxpo_lab import book, measure

    cfg = replace(tiny, loss="ppo", epochs=3, lr=3e-2, P=8)
    views = book.reuse_views(cfg, seed=1, responses=2)
    assert [v["label"].split(",")[0] for v in views] == ["update 0"] * 2 + ["update 2"] * 2
    assert all(len(v["tokens"]) == len(v["weight"]) == len(v["status"]) for v in views)
    assert "clipped" not in views[0]["status"] + views[1]["status"]  # update 0: the policy is the sampler
    assert sorted(v["label"].split("R = ")[1] for v in views[:2]) == ["0", "1"]  # one right, one wrong
    assert [(v["update"], v["reward"]) for v in views] == [(0, 1.0), (0, 0.0), (2, 1.0), (2, 0.0)]
    assert all(type(w) is float for v in views for w in v["weight"])  # plain floats: they become CSS colours
    assert "np.float64" not in book.token_view(views).fragment
    monkeypatch.setattr(measure, "sample_batch", lambda *a, **k: pytest.fail("recomputed a cached view"))
    assert book.reuse_views(cfg, seed=1, responses=2) == views
    monkeypatch.undo()
    sample = measure.sample_batch

    def all_wrong(*args, **kwargs):
        state, b = sample(*args, **kwargs)
        b.correct = torch.zeros_like(b.correct)
        return state, b

    monkeypatch.setattr(measure, "sample_batch", all_wrong)
    with pytest.raises(ValueError, match="no group of seed 2's batch holds both right and wrong answers"):
        book.reuse_views(cfg, seed=2, responses=2)

"""Showing results in the book and on Colab: interactive plotly figures and numbers glued into prose.

On the website (a book build sets XXPO_BOOK=1) a plotly figure is written as plain HTML that uses
the plotly.js the site serves itself, without plotly's own MathJax (the page has one already); on
Colab and in Jupyter it goes through plotly's normal renderer.
"""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pandas as pd


def in_book_build() -> bool:
    """True while Jupyter Book executes the notebook for the website."""
    return os.environ.get("XXPO_BOOK") == "1"


def show(fig, post_script: str | None = None) -> None:
    """Display a plotly figure: kernel-free HTML in the book, the normal renderer elsewhere.

    `post_script` is JavaScript run after the figure is drawn (the loss explorer's slider logic); with
    it, Colab and Jupyter get HTML that loads plotly.js from its CDN, since fig.show() cannot carry it.
    """
    from IPython.display import HTML, display

    options = {"include_mathjax": False, "full_html": False, "post_script": post_script,
               "config": {"displaylogo": False, "responsive": True}}
    if in_book_build():
        display(HTML(fig.to_html(include_plotlyjs=False, **options)))
    elif post_script:
        display(HTML(fig.to_html(include_plotlyjs="cdn", **options)))
    else:
        fig.show()


def glue(name: str, value, fmt: str = "") -> None:
    """Make `value` available to the prose as {glue:text}`name` (myst-nb); elsewhere print it.

    With `fmt` the number is glued already formatted (`format(value, fmt)`), so the prose writes only
    {glue:text}`name` and a number can never reach the page unformatted. Numbers in the chapters' text
    come from here, from the run on the page, never typed by hand.
    """
    if hasattr(value, "item"):  # numpy and torch scalars: glue formats plain Python numbers
        value = value.item()
    if fmt:
        value = format(value, fmt)
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # Colab and plain Jupyter: the prose shows the role, the output shows the number
        print(f"{name} = {value}")
        return
    myst_glue(name, value, display=False)


class ClaimError(AssertionError):
    """A sentence of the book that the run on its page no longer supports."""


def check(claim: str, holds) -> None:
    """A claim the prose makes, checked on the numbers of the run on the page: a build whose runs no longer
    support the sentence fails here instead of publishing it.

    Fast mode (XXPO_FAST=1: a tenth of the steps, small batches) cannot show learning effects, so there, and
    only there, a claim that does not hold is printed instead of failing the build. With $XXPO_CLAIMS_LOG set
    (`make gpu-check`), every claim is appended to that file with whether it held, and none stops the run.
    """
    from xxpo_lab.config import fast_mode

    log = os.environ.get("XXPO_CLAIMS_LOG")
    if log:  # `make gpu-check`: record every claim and whether it held on this device, never stop
        with open(log, "a") as f:
            f.write(json.dumps({"claim": claim, "holds": bool(holds)}) + "\n")
        return
    if bool(holds):
        return
    if fast_mode():
        print(textwrap.fill(f"fast mode, not checked: {claim}", width=72, subsequent_indent="  "))
        return
    raise ClaimError(f"the page claims: {claim!r}, and this run does not support it")


def glue_range(name: str, values, fmt: str = "") -> None:
    """Glue the lowest and the highest of `values` (one per seed) as name_min and name_max, for a prose range
    such as {glue:text}`name_min`–{glue:text}`name_max`. Missing values (NaN: a target never reached) are
    left out; when every value is missing, both read "none"."""
    values = np.asarray(values, dtype=float)
    if np.isnan(values).all():
        glue(f"{name}_min", "none")
        glue(f"{name}_max", "none")
        return
    glue(f"{name}_min", float(np.nanmin(values)), fmt)
    glue(f"{name}_max", float(np.nanmax(values)), fmt)


def slug(label) -> str:
    """A glue name from a run label: 'ppo K=4' -> 'ppo_K4', 'Dr. GRPO' -> 'Dr_GRPO'."""
    words = ("".join(ch for ch in word if ch.isalnum()) for word in str(label).replace("=", "").split())
    return "_".join(word for word in words if word)


def glue_table(name: str, per_seed, columns=("start", "end", "mean"), by: str = "run",
               fmt: str | dict = ".2f") -> None:
    """Glue the lowest and highest value over seeds of each column, for every group of a per-seed table
    (`tables.summary`): `{name}_{slug(group)}_{slug(column)}_min` and `_max`, e.g.
    {glue:text}`learn_ppo_K4_end_min`. `fmt` is one format, or one per column."""
    for group, part in per_seed.groupby(by, sort=False):
        for column in columns:
            spec = fmt.get(column, ".2f") if isinstance(fmt, dict) else fmt
            glue_range(f"{name}_{slug(group)}_{slug(column)}", part[column], spec)


def sweep_figure(table, param: str, metrics, by: str = "run", method: str | None = "loss", x: str = "step",
                 smooth: int = 1, title: str = "", order: list | None = None):
    """One plotly figure with a slider over `param`: every position shows real runs at that value.

    table: the long table of `runs.compare` (or any DataFrame with columns by, param, 'seed', x and the
    metrics). Each position draws, per `by` group, the mean over seeds and a band from the lowest to the
    highest seed, coloured by method as in every figure of the book (`plots.styles`). Precomputed, so the
    slider works on the website without a kernel. `order` fixes the slider's positions (default: the
    sorted values of `param`).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from xxpo_lab.plots import rgba, styles

    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    values = list(order) if order is not None else sorted(table[param].dropna().unique())
    table = table[table[param].isin(values)]
    look = styles(table, by, method)
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics, horizontal_spacing=0.08)
    owner = []  # param value of each trace
    ranges = {metric: [np.inf, -np.inf] for metric in metrics}  # one y range per panel, so positions compare
    dash = {"-": "solid", "--": "dash", ":": "dot", "-.": "dashdot"}
    for v in values:
        part = table[table[param] == v]
        for g, (color, ls) in look.items():
            for col, metric in enumerate(metrics, start=1):
                wide = part[part[by] == g].pivot_table(index=x, columns="seed", values=metric).sort_index()
                if smooth > 1:
                    wide = wide.rolling(smooth, min_periods=1).mean()
                wide = wide.dropna(how="all")
                if wide.empty:
                    continue
                ranges[metric] = [min(ranges[metric][0], np.nanmin(wide.values)),
                                  max(ranges[metric][1], np.nanmax(wide.values))]
                common = {"x": wide.index, "legendgroup": str(g), "visible": v == values[0], "hoverinfo": "skip",
                          "mode": "lines"}
                fig.add_trace(go.Scatter(y=wide.min(axis=1), line={"width": 0}, showlegend=False, **common),
                              row=1, col=col)
                fig.add_trace(go.Scatter(y=wide.max(axis=1), line={"width": 0}, fill="tonexty",
                                         fillcolor=rgba(color, 0.2), showlegend=False, **common), row=1, col=col)
                fig.add_trace(go.Scatter(y=wide.mean(axis=1), name=f"{g} ({wide.shape[1]} seeds)",
                                         line={"color": color, "dash": dash[ls]}, showlegend=col == 1,
                                         **(common | {"hoverinfo": "x+y+name"})), row=1, col=col)
                owner += [v, v, v]
    steps = [{"label": f"{v:g}" if isinstance(v, float) else str(v), "method": "update",
              "args": [{"visible": [o == v for o in owner]}, {"title.text": f"{title} {param} = {v}".strip()}]}
             for v in values]
    fig.update_layout(sliders=[{"active": 0, "currentvalue": {"prefix": f"{param} = "}, "steps": steps,
                                "pad": {"t": 40}}],
                      title={"text": f"{title} {param} = {values[0]}".strip()}, height=420,
                      margin={"t": 70, "b": 40}, meta={"xxpo_sweep": param})
    fig.update_xaxes(title_text=x)
    for col, metric in enumerate(metrics, start=1):
        lo, hi = ranges[metric]
        pad = 0.05 * (hi - lo) if hi > lo else 0.05
        fig.update_yaxes(range=[lo - pad, hi + pad], row=1, col=col)
    return fig


def sweep(table, param: str, metrics, by: str = "run", method: str | None = "loss", x: str = "step",
          smooth: int = 1, title: str = "", order: list | None = None, reduce: str = "mean"):
    """The slider over `param` (`sweep_figure`, kernel-free) and its static per-seed twin in one call.

    The twin (`plots.per_value`) shows every position at once: per `by` group and seed, each metric reduced
    over training ('mean' of the logged values after the first, or 'end', the last one). Displays the
    slider and returns the twin's Figure (the notebook shows it)."""
    show(sweep_figure(table, param, metrics, by, method, x, smooth, title, order))
    from xxpo_lab.plots import per_value

    rows = []
    for (v, g, seed), part in table.groupby([param, by, "seed"], sort=False):
        rows.append({param: v, by: g, "seed": seed} | {
            m: (part[m].dropna().iloc[1:].mean() if reduce == "mean" else part[m].dropna().iloc[-1]) for m in metrics})
    label = {"mean": "mean over training", "end": "at the end"}[reduce]
    static = pd.DataFrame(rows).rename(columns={m: f"{m}, {label}" for m in metrics})
    if method and method in table:
        static[method] = static[by].map(table.groupby(by)[method].first())
    return per_value(static, param, [f"{m}, {label}" for m in metrics], by=by, order=order or None, method=method,
                     title=f"{title} every {param} at once (dots: seeds)".strip())

"""Matplotlib figures with one look and one colour per method for the whole book.

Every function draws into `ax` (an Axes, or a list of them for several panels) when it is given, and
makes its own figure otherwise; it returns the Figure. Runs of one configuration over several seeds
are drawn by `band`: the mean over seeds with a band from the lowest to the highest seed, so a reader
sees the spread, not a lucky seed. Lines are coloured by method (`color_of`): a loss or advantage
has the same colour in every figure of the book; several lines of one method differ by line style.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

METHOD_COLORS = {
    # losses, and the advantage that is the same method's idea
    "pg": "#7f7f7f", "none": "#7f7f7f",  # REINFORCE, no baseline, no clip
    "ppo": "#1f77b4", "gae": "#1f77b4",  # PPO and its critic
    "grpo": "#2ca02c",  # GRPO: loss and group z-score
    "dr_grpo": "#d62728",  # Dr. GRPO: loss and mean-centred advantage
    "bnpo": "#ff7f0e",  # the token mean
    "dapo": "#bcbd22",
    "rloo": "#9467bd",
    "gspo": "#8c564b", "gspo_token": "#c49c94", "luspo": "#e7969c",
    "decoupled_ppo": "#17becf", "a3po": "#9edae5",
    "sppo": "#aec7e8", "sapo": "#e377c2", "cispo": "#ffbb78", "gmpo": "#98df8a",
    "self_play_po": "#c5b0d5", "win_rate": "#c5b0d5",
    "reinforce_pp": "#dbdb8d", "reinforce_pp_baseline": "#dbdb8d",
    "dppo_tv": "#6b6ecf", "dppo_kl": "#9c9ede", "vespo": "#e6550d", "m2po": "#a55194",
}
"""One colour per method across the book (losses by their LOSSES name, advantages by their ADVANTAGES name)."""
OTHER_COLORS = ["#000000", "#637939", "#8c6d31", "#843c39", "#7b4173", "#393b79", "#31a354", "#756bb1"]
"""For groups that are not methods (a warm start, a control): colours no method uses."""
LINESTYLES = ["-", "--", ":", "-."]


def color_of(name, others: list | None = None) -> str:
    """The colour of a method (a loss or advantage name); other names get the next colour no method uses,
    the same one each time within `others` (the list of non-method names seen so far)."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    others = others if others is not None else []
    if name not in others:
        others.append(name)
    return OTHER_COLORS[others.index(name) % len(OTHER_COLORS)]


def rgba(hex_color: str, alpha: float) -> str:
    """'#1f77b4' -> 'rgba(31,119,180,alpha)' (plotly fills)."""
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def style() -> None:
    """The book's defaults: matplotlib sizes for a web page, no top/right spines; tables show 3 decimals."""
    pd.set_option("display.float_format", "{:.3f}".format)
    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 110, "figure.figsize": (6.4, 3.6), "axes.spines.top": False,
        "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "legend.frameon": False,
        "font.size": 10, "axes.titlesize": 11,
    })


def styles(table: pd.DataFrame, by: str = "run", method: str | None = "loss") -> dict:
    """{group: (colour, linestyle)} for the groups of `table[by]`, in order: coloured by the group's method
    (the value of column `method`, or the group's own name), line styles telling apart groups of one method."""
    out, others, used = {}, [], {}
    for group, part in table.groupby(by, sort=False):
        name = part[method].iloc[0] if method and method in part else group
        color = color_of(name, others)
        out[group] = (color, LINESTYLES[used.get(color, 0) % len(LINESTYLES)])
        used[color] = used.get(color, 0) + 1
    return out


def _axes(ax, n: int, ncols: int | None = None, size=(4.2, 3.1)):
    """(figure, list of n axes): the given ones, or a new grid."""
    if ax is not None:
        axes = list(ax) if isinstance(ax, Sequence | np.ndarray) else [ax]
        return axes[0].figure, axes
    ncols = ncols or min(n, 3)
    nrows = -(-n // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    for extra in list(grid.flat)[n:]:
        extra.axis("off")
    return fig, list(grid.flat)[:n]


def band(ax, wide: pd.DataFrame, color: str, label: str | None = None, ls: str = "-", marker: str | None = None,
         smooth: int = 1) -> None:
    """The mean over seeds as a line, and a band from the lowest to the highest seed.
    wide: index = x, one column per seed. When the seeds have no x in common (x is a time), each seed is
    drawn as a thin line of its own instead."""
    wide = wide.sort_index()
    n = wide.shape[1]
    if n > 1 and (wide.notna().sum(axis=1) == 1).mean() > 0.5:
        for i, seed in enumerate(wide):
            line = wide[seed].dropna()
            ax.plot(line.index, line.values, color=color, ls=ls, marker=marker, ms=2, lw=1.0, alpha=0.8,
                    label=None if label is None or i else f"{label} ({n} seeds, one line each)")
        return
    if smooth > 1:
        wide = wide.rolling(smooth, min_periods=1).mean()
    wide = wide.dropna(how="all")
    mean = wide.mean(axis=1)
    ax.plot(mean.index, mean.values, color=color, ls=ls, marker=marker, ms=3, lw=1.8,
            label=None if label is None else f"{label} ({n} seed{'s' * (n > 1)})")
    if n > 1:
        ax.fill_between(mean.index, wide.min(axis=1), wide.max(axis=1), color=color, alpha=0.18, lw=0)


def _long(runs) -> pd.DataFrame:
    """Accept a long table (with 'run' and 'seed'), one History, or {label: History or [Histories]}."""
    if isinstance(runs, pd.DataFrame):
        if "run" in runs:
            return runs
        cfg = runs.attrs.get("config", {})
        return runs.assign(run=cfg.get("loss", "run"), seed=cfg.get("seed", 0), loss=cfg.get("loss", "run"))
    parts = []
    for label, hs in runs.items():
        for i, h in enumerate(hs if isinstance(hs, list | tuple) else [hs]):
            cfg = h.attrs.get("config", {})
            parts.append(h.assign(run=label, seed=cfg.get("seed", i), loss=cfg.get("loss", label)))
    return pd.concat(parts, ignore_index=True)


def curves(runs, metrics, x: str = "step", by: str = "run", method: str | None = "loss", smooth: int = 1,
           title: str | None = None, ncols: int | None = None, logy: tuple[str, ...] = (), ax=None):
    """One panel per metric, one line per group of `by` (mean over seeds, band = min..max over seeds).
    Held-out metrics (eval/*) are never smoothed and drawn with markers at the evaluated steps."""
    df = _long(runs)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    fig, axes = _axes(ax, len(metrics), ncols)
    look = styles(df, by, method)
    for a, metric in zip(axes, metrics):
        for group, part in df.groupby(by, sort=False):
            if metric in part and part[metric].notna().any():
                held_out = metric.startswith("eval/")
                wide = part.pivot_table(index=x, columns="seed", values=metric)
                band(a, wide, look[group][0], label=str(group), ls=look[group][1], marker="o" if held_out else None,
                     smooth=1 if held_out else smooth)
        a.set_title(metric)
        a.set_xlabel(x)
        if metric in logy:
            a.set_yscale("log")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    if ax is None:
        fig.tight_layout()
    return fig


def per_value(table: pd.DataFrame, x: str, metrics, by: str | None = None, order: list | None = None,
              method: str | None = None, title: str | None = None, logx: bool = False, ax=None):
    """Every position of a sweep side by side: one panel per metric, one dot per seed and the mean over seeds
    joined by a line (one line per `by` group), against the swept value `x`. `table` has one row per
    (x, by, seed) with the metrics as columns: the static companion of a slider. Numeric x is drawn at its
    value (log scale with logx), other x as categories in `order`."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    values = list(order) if order is not None else sorted(table[x].unique())
    numeric = all(isinstance(v, int | float | np.number) for v in values)
    pos = {v: (v if numeric else i) for i, v in enumerate(values)}
    fig, axes = _axes(ax, len(metrics), size=(3.4, 3.2))
    look = styles(table.assign(_all="mean over seeds"), by or "_all", method)
    for a, metric in zip(axes, metrics):
        for group, (color, ls) in look.items():
            part = table if by is None else table[table[by] == group]
            means = []
            for v in values:
                seeds = part.loc[part[x] == v, metric].dropna()
                a.scatter(np.full(len(seeds), pos[v], dtype=float), seeds.values, color=color, s=12, alpha=0.6,
                          zorder=3)
                means.append(seeds.mean())
            a.plot([pos[v] for v in values], means, "o", ls=ls, color=color, ms=5, lw=1.5, label=str(group))
        if numeric:
            a.set_xticks(values, [f"{v:g}" for v in values])
            if logx:
                a.set_xscale("log", base=2)
                a.set_xticks(values, [f"{v:g}" for v in values])
                a.minorticks_off()
        else:
            a.set_xticks(range(len(values)), [str(v) for v in values])
        a.set_xlabel(x)
        a.set_title(metric)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    if ax is None:
        fig.tight_layout()
    return fig


def by_update(runs, metric: str = "clip/active_frac", by: str = "run", method: str | None = "loss",
              title: str | None = None, ax=None):
    """A per-update metric against the update index within a batch (`tables.updates`), mean over steps;
    the band spans the seeds."""
    from xxpo_lab.tables import updates

    df = _long(runs)
    long = updates(df, [metric])
    fig, (a,) = _axes(ax, 1, size=(5.6, 3.4))
    look = styles(df, by, method)
    for group, part in long.groupby(by, sort=False):
        wide = part.groupby(["update", "seed"])[metric].mean().unstack("seed")
        band(a, wide, look[group][0], label=str(group), ls=look[group][1], marker="o")
    a.set_xlabel("update index within a batch")
    a.set_ylabel(metric)
    a.set_title(title or f"{metric} by update index (mean over steps; band: seeds)")
    a.legend(fontsize=8)
    if ax is None:
        fig.tight_layout()
    return fig


def length_by_correctness(runs, by: str = "run", method: str | None = "loss", smooth: int = 10,
                          title: str | None = None, ax=None):
    """Mean length of correct (solid) and incorrect (dashed) responses over training, per group."""
    df = _long(runs)
    fig, (a,) = _axes(ax, 1, size=(6.4, 3.6))
    look = styles(df, by, method)
    for group, part in df.groupby(by, sort=False):
        for metric, ls, what in (("len/correct_mean", "-", "correct"), ("len/incorrect_mean", "--", "incorrect")):
            wide = part.pivot_table(index="step", columns="seed", values=metric)
            band(a, wide, look[group][0], label=f"{group}: {what}", ls=ls, smooth=smooth)
    a.set_xlabel("step")
    a.set_ylabel("response length (tokens)")
    a.set_title(title or "length of correct (solid) and incorrect (dashed) responses")
    a.legend(fontsize=8, ncol=2)
    if ax is None:
        fig.tight_layout()
    return fig


def compare_bars(runs, metric: str, last: int = 10, by: str = "run", method: str | None = "loss",
                 title: str | None = None, ax=None):
    """One bar per group: the metric over the last `last` logged values, mean over seeds, seeds as dots."""
    df = _long(runs)
    groups = list(dict.fromkeys(df[by]))
    fig, (a,) = _axes(ax, 1, size=(1.2 + 1.1 * len(groups), 3.2))
    look = styles(df, by, method)
    for i, group in enumerate(groups):
        part = df[df[by] == group]
        per_seed = part.dropna(subset=[metric]).groupby("seed")[metric].apply(lambda s: s.tail(last).mean())
        a.bar(i, per_seed.mean(), color=look[group][0], alpha=0.7)
        a.scatter(np.full(len(per_seed), i), per_seed.values, color="black", s=12, zorder=3)
    a.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=20)
    a.set_ylabel(metric)
    a.set_title(title or f"{metric}, last {last} values (dots: seeds)")
    if ax is None:
        fig.tight_layout()
    return fig


def ratio_hist(ratios: dict[str, np.ndarray], bins: int = 60, title: str | None = None, ax=None):
    """Histograms of log-ratios, one per label (a method name keeps its colour)."""
    fig, (a,) = _axes(ax, 1, size=(6.0, 3.4))
    others = []
    for label, r in ratios.items():
        a.hist(np.log(np.asarray(r)), bins=bins, alpha=0.5, color=color_of(label, others), label=label, density=True)
    a.set_xlabel("log ratio")
    a.set_ylabel("density")
    a.set_title(title or "distribution of log-ratios")
    a.legend(fontsize=8)
    if ax is None:
        fig.tight_layout()
    return fig

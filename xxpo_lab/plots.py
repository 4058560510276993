"""Matplotlib figures with one look for the whole book. Each function takes Histories (or the long
table of `compare`) and returns a Figure.

Runs of one configuration over several seeds are drawn as the mean with a band from the lowest to the
highest seed, so a reader sees the spread, not a lucky seed.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]


def rgba(hex_color: str, alpha: float) -> str:
    """'#1f77b4' -> 'rgba(31,119,180,alpha)' (plotly fills)."""
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def style() -> None:
    """The book's matplotlib defaults (sizes for a web page, no top/right spines)."""
    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 110, "figure.figsize": (6.4, 3.6), "axes.spines.top": False,
        "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "legend.frameon": False,
        "font.size": 10, "axes.titlesize": 11,
    })


def _long(runs) -> pd.DataFrame:
    """Accept a long table (with 'run' and 'seed'), one History, or {label: History or [Histories]}."""
    if isinstance(runs, pd.DataFrame):
        if "run" in runs:
            return runs
        return runs.assign(run=runs.attrs.get("config", {}).get("loss", "run"), seed=0)
    parts = []
    for label, hs in runs.items():
        for i, h in enumerate(hs if isinstance(hs, list | tuple) else [hs]):
            parts.append(h.assign(run=label, seed=h.attrs.get("config", {}).get("seed", i)))
    return pd.concat(parts, ignore_index=True)


def _band(ax, df: pd.DataFrame, metric: str, x: str, color, label: str, smooth: int) -> None:
    wide = df.pivot_table(index=x, columns="seed", values=metric).sort_index()
    if smooth > 1:
        wide = wide.rolling(smooth, min_periods=1).mean()
    wide = wide.dropna(how="all")
    mean = wide.mean(axis=1)
    n = wide.shape[1]
    ax.plot(mean.index, mean.values, color=color, lw=1.8, label=f"{label} ({n} seed{'s' * (n > 1)})")
    if n > 1:
        ax.fill_between(mean.index, wide.min(axis=1), wide.max(axis=1), color=color, alpha=0.18, lw=0)


def curves(runs, metrics, x: str = "step", smooth: int = 1, title: str | None = None, ncols: int | None = None,
           logy: tuple[str, ...] = ()):
    """One panel per metric, one line per run (mean over seeds, band = min..max over seeds)."""
    df = _long(runs)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    ncols = ncols or min(len(metrics), 3)
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.1 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for color, (label, part) in zip(COLORS, df.groupby("run", sort=False)):
            if metric in part and part[metric].notna().any():
                _band(ax, part[[x, "seed", metric]].dropna(), metric, x, color, label,
                      1 if metric.startswith("eval/") else smooth)
        ax.set_title(metric)
        ax.set_xlabel(x)
        if metric in logy:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def compare_bars(runs, metric: str, last: int = 10, title: str | None = None):
    """One bar per run: the metric over the last `last` logged values, mean over seeds, seeds as dots."""
    df = _long(runs)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * df["run"].nunique(), 3.2))
    for i, (_, part) in enumerate(df.groupby("run", sort=False)):
        per_seed = part.dropna(subset=[metric]).groupby("seed")[metric].apply(lambda s: s.tail(last).mean())
        ax.bar(i, per_seed.mean(), color=COLORS[i % len(COLORS)], alpha=0.7)
        ax.scatter(np.full(len(per_seed), i), per_seed.values, color="black", s=12, zorder=3)
    ax.set_xticks(range(df["run"].nunique()), list(df.groupby("run", sort=False).groups), rotation=20)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric}, last {last} values (dots: seeds)")
    fig.tight_layout()
    return fig


def by_update(runs, metric: str = "clip/active_frac", title: str | None = None):
    """A per-update metric against the update index within a batch (name@u0, name@u1, ...), mean over steps."""
    df = _long(runs)
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for color, (label, part) in zip(COLORS, df.groupby("run", sort=False)):
        cols = sorted((c for c in part if c.startswith(metric + "@u") and part[c].notna().any()),
                      key=lambda c: int(c.split("@u")[1]))
        if not cols:
            continue
        per_seed = part.groupby("seed")[cols].mean()  # [seeds, updates]
        idx = np.arange(len(cols))
        ax.plot(idx, per_seed.mean().values, "o-", color=color, label=label, ms=4)
        if len(per_seed) > 1:
            ax.fill_between(idx, per_seed.min().values, per_seed.max().values, color=color, alpha=0.18, lw=0)
    ax.set_xlabel("update index within a batch")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} by update index (mean over steps; band: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def length_by_correctness(runs, smooth: int = 10, title: str | None = None):
    """Mean length of correct and of incorrect responses over training, per run."""
    df = _long(runs)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for color, (label, part) in zip(COLORS, df.groupby("run", sort=False)):
        for metric, ls in (("len/correct_mean", "-"), ("len/incorrect_mean", "--")):
            wide = part.pivot_table(index="step", columns="seed", values=metric).rolling(smooth, min_periods=1).mean()
            ax.plot(wide.index, wide.mean(axis=1), ls, color=color,
                    label=f"{label}: {'correct' if ls == '-' else 'incorrect'}")
    ax.set_xlabel("step")
    ax.set_ylabel("response length (tokens)")
    ax.set_title(title or "length of correct (solid) and incorrect (dashed) responses")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def ratio_hist(ratios: dict[str, np.ndarray], bins: int = 60, title: str | None = None):
    """Histograms of log-ratios, one per label (e.g. token vs sequence ratios)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for color, (label, r) in zip(COLORS, ratios.items()):
        ax.hist(np.log(np.asarray(r)), bins=bins, alpha=0.5, color=color, label=label, density=True)
    ax.set_xlabel("log ratio")
    ax.set_ylabel("density")
    ax.set_title(title or "distribution of log-ratios")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def grad_snr(table: pd.DataFrame, x: str = "G", by: str = "adv", metric: str = "grad/snr", title: str | None = None,
             logy: bool = True):
    """Gradient SNR (or variance) against `x`, one line per `by`, mean over seeds with min..max band."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for color, (label, part) in zip(COLORS, table.groupby(by, sort=False)):
        g = part.groupby(x)[metric]
        mean = g.mean()
        ax.plot(mean.index, mean.values, "o-", color=color, label=str(label), ms=4)
        if g.size().max() > 1:
            ax.fill_between(mean.index, g.min().values, g.max().values, color=color, alpha=0.18, lw=0)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    if logy:
        ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_title(title or f"{metric} vs {x}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_value(table: pd.DataFrame, x: str, metrics, by: str | None = None, order: list | None = None,
              title: str | None = None):
    """Every position of a sweep side by side: one panel per metric, one dot per seed and the mean over seeds
    joined by a line (one line per `by` group), against the swept value `x` (categorical, in `order`).
    `table` has one row per (x, by, seed) with the metrics as columns: the static companion of a slider."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    values = list(order) if order is not None else sorted(table[x].unique())
    groups = list(dict.fromkeys(table[by])) if by else [None]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for color, g in zip(COLORS, groups):
            part = table if g is None else table[table[by] == g]
            means = []
            for i, v in enumerate(values):
                seeds = part.loc[part[x] == v, metric].dropna()
                ax.scatter(np.full(len(seeds), i), seeds.values, color=color if by else "black", s=12, alpha=0.6,
                           zorder=3)
                means.append(seeds.mean())
            ax.plot(range(len(values)), means, "o-", color=color, ms=6, lw=1.5,
                    label=str(g) if by else "mean over seeds")
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel(x)
        ax.set_title(metric)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

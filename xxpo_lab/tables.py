"""Reading run tables: one summary per run and seed, and the per-update and per-group columns as long tables.

`compare` returns one long table (one row per run, seed and step) whose columns are the metrics of
`diagnostics.GLOSSARY`, the run's label, seed and key, and the Config fields that vary between the
runs. These functions turn it into what a chapter or the command line reports, without parsing
labels or column names.
"""

from __future__ import annotations

import re

import pandas as pd

MODEL_MB = ("mem/policy_params_mb", "mem/policy_optim_mb", "mem/critic_params_mb", "mem/critic_optim_mb")


def id_columns(table: pd.DataFrame) -> list[str]:
    """The columns that say which run a row belongs to: run, seed, key, the Config fields present and any
    column a chapter added (every metric's name has a '/'; step and samples change along a run)."""
    return [c for c in table if "/" not in c and c not in ("step", "samples")]


def summary(table: pd.DataFrame, metric: str = "eval/accuracy", last_update: list[str] = ()) -> pd.DataFrame:
    """One row per run and seed: the identifying columns, then `metric` at the start (first logged value),
    at the end (last), its mean over the logged values after the start ('mean', the area under the curve
    per evaluation) and its lowest value after the start ('low'); the median milliseconds per step, the
    training seconds (sum of time/step), the samples drawn, the memory of parameters and optimizer state
    (policy + critic, MB) and the peak memory of the process (MB). For each per-update metric in
    `last_update` (e.g. 'kl/k3'), its largest value at the last update of a step, as '<metric> (last
    update)'. Shared by the chapters and `python -m xxpo_lab compare`."""
    ids = id_columns(table)
    rows = []
    for _, part in table.groupby(["run", "seed"], sort=False):
        values = part[metric].dropna()
        row = part[ids].iloc[0].to_dict() | {
            "start": values.iloc[0], "end": values.iloc[-1], "mean": values.iloc[1:].mean(),
            "low": values.iloc[1:].min(), "step_ms": 1000 * part["time/step"].median(),
            "train_s": part["time/step"].sum(), "samples": part["samples"].max(),
            "model_mb": part[list(MODEL_MB)].median().sum(), "peak_mb": part["mem/peak_mb"].max()}
        for m in last_update:
            per_update = [c for c in part if c.startswith(f"{m}@u") and part[c].notna().any()]
            last = max(per_update, key=lambda c: int(c.rsplit("@u", 1)[1]))
            row[f"{m} (last update)"] = part[last].max()
        rows.append(row)
    return pd.DataFrame(rows)


def where(table: pd.DataFrame, **values) -> pd.DataFrame:
    """The rows whose columns hold the given values; a list or tuple means any of them:
    where(runs, loss="ppo", epochs=[1, 4]). A column the table lacks is a KeyError naming it."""
    keep = pd.Series(True, index=table.index)
    for column, value in values.items():
        if column not in table:
            raise KeyError(f"where: no column {column!r}; the table's run columns are {id_columns(table)}")
        keep &= table[column].isin(value if isinstance(value, list | tuple) else [value])
    return table[keep]


def per_seed(per_run: pd.DataFrame, column: str = "mean", by: str = "run") -> pd.DataFrame:
    """One column of a per-seed table (`summary`) as seeds × groups: per_seed(s, "end")["ppo K=4"] is that
    run's end value on every seed, so groups compare seed by seed with plain arithmetic."""
    return per_run.pivot(index="seed", columns=by, values=column)


def by_seed(per_run: pd.DataFrame, columns=("start", "end", "mean"), by: str | list[str] = "run") -> pd.DataFrame:
    """A per-seed table for reading: one row per group (`by`: a column or several), each column once per seed."""
    return per_run.set_index([*([by] if isinstance(by, str) else by), "seed"])[list(columns)].unstack("seed")


def wins(per_run: pd.DataFrame, a, b, column: str = "mean", by: str = "run") -> int:
    """On how many seeds group `a` of a per-seed table (`summary`) has a higher `column` than group `b`."""
    values = per_seed(per_run, column, by)
    return int((values[a] > values[b]).sum())


def reached(table: pd.DataFrame, run, within, x: str = "time/elapsed", metric: str = "eval/accuracy",
            by: str = "run") -> pd.Series:
    """Per seed, the last `metric` that run `run` logged at or before the largest `x` that run `within`
    logged: what one run reached in the time (x='time/elapsed') or samples ('eval/samples') another took."""
    out = {}
    for seed, part in where(table, **{by: run}).dropna(subset=[metric]).groupby("seed"):
        budget = where(table, **{by: within, "seed": seed})[x].max()
        out[seed] = part[part[x] <= budget][metric].iloc[-1]
    return pd.Series(out, name=metric).rename_axis("seed")


def first_reached(table: pd.DataFrame, target: float, x: str = "eval/samples", metric: str = "eval/accuracy",
                  by: str = "run") -> pd.DataFrame:
    """Per run and seed, the first `x` (samples, or training seconds with x='time/elapsed') at which `metric`
    reached `target`: the cost to a target accuracy. NaN where a run never reached it. One row per run, one
    column per seed. Book: ch. 8."""
    logged = table.dropna(subset=[metric]).sort_values(x)
    hit = logged[logged[metric] >= target].groupby([by, "seed"])[x].first()
    runs = logged.groupby([by, "seed"])[x].first().index
    return hit.reindex(runs).unstack("seed")


def updates(table: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """The metrics logged per update of a step ('kl/k3@u7': update 7) as a long table: one row per run,
    seed, step and `update` (0 .. K-1), one column per metric (default: all of them)."""
    return _indexed(table, "u", "update", metrics)


def group_counts(table: pd.DataFrame) -> pd.DataFrame:
    """The share of each step's groups with k right answers ('groups/correct@k') as a long table: one row
    per run, seed, step and `k`, with the column 'share'."""
    return _indexed(table, "", "k", ["groups/correct"]).rename(columns={"groups/correct": "share"})


def _indexed(table: pd.DataFrame, tag: str, index: str, metrics: list[str] | None) -> pd.DataFrame:
    pattern = re.compile(rf"^(.+)@{tag}(\d+)$")
    found = [(m.group(1), int(m.group(2)), c) for c in table if (m := pattern.match(c))]
    found = [f for f in found if metrics is None or f[0] in metrics]
    if not found:
        raise KeyError(f"no column of the form <metric>@{tag}<n> for {metrics or 'any metric'} in this table")
    keys = id_columns(table) + ["step"]
    parts = []
    for i in sorted({i for _, i, _ in found}):
        cols = {c: name for name, j, c in found if j == i}
        part = table[keys + list(cols)].rename(columns=cols).dropna(subset=list(cols.values()), how="all")
        parts.append(part.assign(**{index: i}))
    return pd.concat(parts, ignore_index=True)[keys + [index] + sorted({n for n, _, _ in found})]

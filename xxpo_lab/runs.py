"""Finished runs: the on-disk run cache, and running many configs (seeds, sweeps) in parallel.

A History is a pandas DataFrame with one row per step and `.attrs` holding the resolved config, the
warm start's record, the run key, the device and the CPU thread count. The cache key covers the full
config, the device, the thread count on the CPU and a hash of the package source, so a change of code that
can change a run's numbers changes the key.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from xxpo_lab.config import Config, resolve, sized, to_dict
from xxpo_lab.policy import WARM_FIELDS, cpu_threads, make_policy, pick_device
from xxpo_lab.store import (
    StoreError,
    atomic_write,
    cache_dir,
    check_meta,
    key_of,
    load_torch,
    save_torch,
    source_hash,
)

History = pd.DataFrame


def run_key(cfg: Config, device, threads: int) -> str:
    """The cache key of a run: resolved config, device type, CPU thread count (on the CPU only: it changes
    the order of float sums) and package source."""
    device = getattr(device, "type", str(device))
    return key_of({"config": to_dict(cfg), "device": device, "threads": threads if device == "cpu" else None,
                   "source": source_hash()})


def _paths(key: str) -> tuple[Path, Path]:
    root = cache_dir() / "runs"
    return root / f"{key}.parquet", root / f"{key}.json"


def save_run(key: str, hist: History, policy_state: dict | None = None) -> None:
    """Store a finished run: its table, its attrs and (optionally) the final policy weights."""
    table, meta = _paths(key)
    if policy_state is not None:
        save_torch({"meta": {"key": key}, "policy": policy_state}, table.with_suffix(".pt"))
    atomic_write(table, lambda tmp: hist.to_parquet(tmp, index=False))
    atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(hist.attrs, default=str)))


def load_policy(run, device=None):
    """The final policy of a cached run and its tokenizer, e.g. to probe what RL changed. Book: ch. 3.

    run: a History (uses its attrs) or a run key (the 'key' column of `compare`'s table).
    """
    from xxpo_lab.config import from_dict

    key = run if isinstance(run, str) else run.attrs["key"]
    table, meta = _paths(key)
    path = table.with_suffix(".pt")
    if not path.exists() or not meta.exists():
        raise StoreError(f"no final policy stored for run {key} ({path}): train it with cache=True")
    saved = load_torch(path, "final policy")
    check_meta(saved.get("meta", {}), {"key": key}, path, "final policy")
    attrs = json.loads(meta.read_text())
    model, tokenizer, _ = make_policy(from_dict(attrs["config"]), device)
    model.load_state_dict(saved["policy"])
    return model, tokenizer


def load_run(key: str) -> History | None:
    """The cached History for `key`, None if there is none; a broken entry raises StoreError."""
    table, meta = _paths(key)
    if not meta.exists() and not table.exists():
        return None
    try:
        attrs = json.loads(meta.read_text())
        hist = pd.read_parquet(table)
    except Exception as exc:  # a half-deleted or corrupt entry: say which files and what to do
        raise StoreError(f"the cached run {key} ({table}, {meta}) cannot be read: {type(exc).__name__}: {exc}. "
                         f"Delete both files, or pass cache=False.") from exc
    if attrs.get("key") != key:
        raise StoreError(f"the cached run {meta} holds key {attrs.get('key')!r}, not {key!r}. Delete it.")
    hist.attrs = attrs
    return hist


def _call(job):
    fn, kwargs = job
    import torch

    torch.set_num_threads(1)  # one thread per worker: two workers on two cores, no oversubscription
    return fn(**kwargs)


def parallel_map(fn, jobs: list[dict], workers: int | None = None, progress: bool = True, desc: str = "") -> list:
    """[fn(**job) for job in jobs], `workers` processes at a time (spawned; 1 thread each).

    On the CPU every job runs with one thread, in a worker or (one job, or workers=1) in this process, so a
    job's numbers do not depend on how many jobs ran with it. fn must be importable (a module-level
    function). Scripts that call this need the usual `if __name__ == "__main__":` guard; notebooks do not.
    """
    from tqdm.auto import tqdm

    on_cpu = pick_device().type == "cpu"
    workers = workers or (min(2, os.cpu_count() or 1) if on_cpu else 1)
    if workers == 1 or len(jobs) == 1:
        with cpu_threads(1 if on_cpu else None):
            return [fn(**job) for job in tqdm(jobs, disable=not progress, desc=desc)]
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the workers' OpenMP at start-up: no second thread spinning
    try:
        with mp.get_context("spawn").Pool(workers) as pool:
            return list(tqdm(pool.imap(_call, [(fn, job) for job in jobs]), total=len(jobs), disable=not progress,
                             desc=desc))
    finally:
        if before is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = before


def run_many(cfgs: list[Config], workers: int | None = None, progress: bool = True) -> list[History]:
    """Train every config (cached runs are loaded, the rest run `workers` at a time, 1 thread each)."""
    from xxpo_lab.train import train

    device = pick_device()
    found = [load_run(run_key(resolve(sized(c)), device, 1)) for c in cfgs]
    missing = [c for c, h in zip(cfgs, found) if h is None]
    if missing:
        warm = {tuple(getattr(c, f) for f in WARM_FIELDS): c for c in map(sized, missing)}
        for cfg in warm.values():
            make_policy(cfg, device)  # each warm start trains once, before the workers would race for it
        done = parallel_map(train, [{"cfg": c, "progress": False, "threads": 1} for c in missing], workers, progress,
                            desc=f"{len(missing)} runs")
        results = iter(done)
        found = [h if h is not None else next(results) for h in found]
    return found


def compare(configs: dict[str, Config], seeds=(0, 1, 2), workers: int | None = None,
            progress: bool = True) -> pd.DataFrame:
    """Run each labelled config on each seed; one long table with columns 'run', 'seed' and 'key' (the run's
    cache key, for `load_policy`) added."""
    jobs = [(label, seed, replace(cfg, seed=seed)) for label, cfg in configs.items() for seed in seeds]
    hists = run_many([cfg for _, _, cfg in jobs], workers=workers, progress=progress)
    parts = [h.assign(run=label, seed=seed, key=h.attrs["key"]) for (label, seed, _), h in zip(jobs, hists)]
    out = pd.concat(parts, ignore_index=True)
    out.attrs = {"configs": {label: to_dict(resolve(sized(cfg))) for label, cfg in configs.items()}}
    return out


__all__ = ["History", "StoreError", "cached_table", "compare", "load_policy", "load_run", "run_key", "run_many",
           "save_run"]


def cached_table(kind: str, payload: dict, compute, cache: bool = True) -> pd.DataFrame:
    """A table computed by `compute()` and cached on disk like a run: keyed by `kind`, the JSON-able
    `payload` that determines it (configs, seeds, sizes) and the package source. For measurements that
    are not training runs (gradient statistics, probes)."""
    key = key_of({"kind": kind, "payload": payload, "source": source_hash()})
    path = cache_dir() / "tables" / f"{kind}-{key}.parquet"
    if cache and path.exists():
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # a corrupt entry is reported, not silently recomputed
            raise StoreError(f"the cached table {path} cannot be read: {type(exc).__name__}: {exc}. "
                             f"Delete it, or pass cache=False.") from exc
    table = compute()
    if cache:
        atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
    return table

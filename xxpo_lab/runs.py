"""Runs: `train(cfg)` around the loop (run cache, CPU threads, progress, checkpoints), many runs in parallel
(`run_many`, `compare`), and cached measurement tables.

A History is a pandas DataFrame with one row per step and `.attrs` holding the resolved config, the
warm start's record, the run key, the device and the CPU thread count. The cache key covers the full
config, the device, the thread count on the CPU and the hash of the code the run executes
(`codekey.code_hash`), so a change of code that can change a run's numbers retrains it, and no other does.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from xxpo_lab import loop
from xxpo_lab.codekey import code_hash
from xxpo_lab.config import Config, from_dict, resolve, sized, to_dict
from xxpo_lab.loop import NonFiniteError
from xxpo_lab.policy import WARM_FIELDS, cpu_threads, make_policy, pick_device
from xxpo_lab.store import StoreError, atomic_write, cache_dir, check_meta, key_of, load_torch, save_torch

History = pd.DataFrame
RUN_CODE = ["loop.setup", "loop.run"]
"""The entry points of a training run: the code reachable from them keys the run cache."""


def train(cfg: Config, *, progress: bool | None = None, cache: bool = True, device: str | None = None,
          callback: Callable[[dict], None] | None = None, checkpoint_dir: str | Path | None = None,
          checkpoint_every: int = 0, threads: int | None = None) -> History:
    """Train a policy with `cfg` and return its History (a DataFrame, one row per step, config in .attrs).

    Row k describes step k; its eval/* columns measure the policy that sampled step k (every eval_every
    steps). A last row, step = cfg.steps, holds only the evaluation of the final policy.

    cfg is first shrunk for fast mode (`config.sized`) and completed with the loss's defaults
    (`config.resolve`). With `cache`, a finished run with the same key is loaded instead of retrained.
    With `checkpoint_dir`, a checkpoint is written every `checkpoint_every` steps and an existing one is
    resumed; the resumed run ends identical to an uninterrupted one. `callback(row)` is called after every
    step (live plots). `threads` sets torch's CPU threads (default: the current count); it is part of the
    key on the CPU, as it changes the order of float sums. `progress` shows a bar (default: yes, except
    while the book is built, where a bar would be saved into the page as a widget).
    """
    cfg = resolve(sized(cfg))
    device = pick_device(device)
    threads = threads or torch.get_num_threads()
    key = run_key(cfg, device, threads)
    if cache and (hist := load_run(key)) is not None:
        return hist
    ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
    with cpu_threads(threads):
        state = loop.setup(cfg, device)
        if ckpt is not None and ckpt.exists():
            saved = load_torch(ckpt, "checkpoint")
            check_meta(saved.get("meta", {}), {"key": key}, ckpt, "checkpoint")
            state.load_state_dict(saved["state"])
        bar = tqdm(total=cfg.steps, initial=len(state.rows), disable=not _show_progress(progress),
                   desc=f"{cfg.loss} seed {cfg.seed}")

        def on_step(state: loop.State) -> None:
            row = state.rows[-1]
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward/mean']:.3f}")
            if callback is not None:
                callback(row)
            if ckpt is not None and checkpoint_every and len(state.rows) % checkpoint_every == 0:
                save_torch({"meta": {"key": key, "step": len(state.rows)}, "state": state.state_dict()}, ckpt)

        try:
            loop.run(state, on_step)
        except NonFiniteError as err:
            err.history = history(state, "")
            raise
        finally:
            bar.close()
    hist = history(state, key)
    if cache:
        weights = [None if m is None else {k: v.detach().cpu() for k, v in m.state_dict().items()}
                   for m in (state.policy, state.critic)]
        save_run(key, hist, *weights)
    return hist


def history(state: loop.State, key: str) -> History:
    """The state's rows as a History, with the config, warm start, key, device and threads in .attrs."""
    hist = pd.DataFrame(state.rows)
    hist.attrs = {"config": to_dict(state.cfg), "warm_start": state.warm, "key": key, "device": state.device.type,
                  "threads": torch.get_num_threads()}
    return hist


def _show_progress(progress: bool | None) -> bool:
    from xxpo_lab.interactive import in_book_build

    return (not in_book_build()) if progress is None else progress


def run_key(cfg: Config, device, threads: int, sources: dict[str, str] | None = None) -> str:
    """The cache key of a run: resolved config, device type, CPU thread count (on the CPU only: it changes
    the order of float sums) and the hash of the code the run executes (`sources` replaces the package's
    files, for tests)."""
    device = getattr(device, "type", str(device))
    config = to_dict(cfg)
    return key_of({"config": config, "device": device, "threads": threads if device == "cpu" else None,
                   "code": code_hash(RUN_CODE, config, sources)})


def _paths(key: str) -> tuple[Path, Path]:
    root = cache_dir() / "runs"
    return root / f"{key}.parquet", root / f"{key}.json"


def save_run(key: str, hist: History, policy_state: dict | None = None, critic_state: dict | None = None) -> None:
    """Store a finished run: its table, its attrs and (optionally) the final policy and critic weights."""
    table, meta = _paths(key)
    if policy_state is not None:
        save_torch({"meta": {"key": key}, "policy": policy_state, "critic": critic_state}, table.with_suffix(".pt"))
    atomic_write(table, lambda tmp: hist.to_parquet(tmp, index=False))
    atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(hist.attrs, default=str)))


def load_policy(run, device=None):
    """The final policy of a cached run and its tokenizer, e.g. to probe what RL changed. Book: ch. 3.

    run: a History (uses its attrs) or a run key (the 'key' column of `compare`'s table).
    """
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


def final_state(run, device=None) -> loop.State:
    """A run's setup with its final policy and critic weights loaded (not its optimizer state or random
    streams): to measure what a finished run's policy and critic do. Book: ch. 8.

    run: a History (uses its attrs) or a run key (the 'key' column of `compare`'s table).
    """
    key = run if isinstance(run, str) else run.attrs["key"]
    table, meta = _paths(key)
    path = table.with_suffix(".pt")
    if not path.exists() or not meta.exists():
        raise StoreError(f"no final weights stored for run {key} ({path}): train it with cache=True")
    saved = load_torch(path, "final weights")
    check_meta(saved.get("meta", {}), {"key": key}, path, "final weights")
    state = loop.setup(from_dict(json.loads(meta.read_text())["config"]), pick_device(device))
    state.policy.load_state_dict(saved["policy"])
    if state.critic is not None:
        if saved.get("critic") is None:
            raise StoreError(f"run {key} stored no critic weights ({path}): delete it and train it again")
        state.critic.load_state_dict(saved["critic"])
    return state


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
    torch.set_num_threads(1)  # one thread per worker: two workers on two cores, no oversubscription
    return fn(**kwargs)


def parallel_map(fn, jobs: list[dict], workers: int | None = None, progress: bool | None = None, desc: str = "") -> list:
    """[fn(**job) for job in jobs], `workers` processes at a time (spawned once and kept for later calls
    while the code and the XXPO_* environment stay the same; 1 thread each).

    On the CPU every job runs with one thread, in a worker or (one job, or workers=1) in this process, so a
    job's numbers do not depend on how many jobs ran with it. fn must be importable (a module-level
    function). Scripts that call this need the usual `if __name__ == "__main__":` guard; notebooks do not.
    """
    progress = _show_progress(progress)
    on_cpu = pick_device().type == "cpu"
    workers = workers or (min(2, os.cpu_count() or 1) if on_cpu else 1)
    if workers == 1 or len(jobs) == 1:
        with cpu_threads(1 if on_cpu else None):
            return [fn(**job) for job in tqdm(jobs, disable=not progress, desc=desc)]
    pool = _worker_pool(workers)
    try:
        return list(tqdm(pool.imap(_call, [(fn, job) for job in jobs]), total=len(jobs), disable=not progress,
                         desc=desc))
    except BaseException:  # a failed job (or an interrupt) leaves the others queued: drop the whole pool
        _POOL.clear()
        pool.terminate()
        raise


_POOL: list = []  # [(key, pool)]: the spawned workers, kept between calls (starting them costs seconds)


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C (and a kernel's shutdown signal) to the parent, which terminates the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_pool(workers: int):
    """A pool of `workers` spawned processes, reused by later calls while nothing a job reads at import
    time has changed: the XXPO_* environment, the working directory, and the package's source files (a
    worker that imported an older version of the lab must not train under the new code's run keys)."""
    package = Path(__file__).parent
    key = (workers, os.getcwd(), tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("XXPO_"))),
           tuple((p.name, p.stat().st_mtime_ns) for p in sorted(package.glob("*.py"))))
    if _POOL and _POOL[0][0] == key:
        return _POOL[0][1]
    while _POOL:
        _POOL.pop()[1].terminate()
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the workers' OpenMP at start-up: no second thread spinning
    try:
        pool = mp.get_context("spawn").Pool(workers, initializer=_ignore_interrupts)
    finally:
        if before is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = before
    _POOL.append((key, pool))
    return pool


def run_many(cfgs: list[Config], workers: int | None = None, progress: bool | None = None) -> list[History]:
    """Train every config (cached runs are loaded, the rest run `workers` at a time, 1 thread each)."""
    device = pick_device()
    found = [load_run(run_key(resolve(sized(c)), device, 1)) for c in cfgs]
    missing = [c for c, h in zip(cfgs, found) if h is None]
    if missing:
        warm = {tuple(getattr(c, f) for f in WARM_FIELDS): c for c in map(sized, missing)}
        for cfg in warm.values():
            make_policy(cfg, device)  # each warm start trains once, before the workers would race for it
        order = sorted(range(len(missing)), key=lambda i: -work(missing[i]))  # longest first: no lone long tail
        done = parallel_map(train, [{"cfg": missing[i], "progress": False, "threads": 1} for i in order], workers,
                            progress, desc=f"{len(missing)} runs")
        results = iter(h for _, h in sorted(zip(order, done)))
        found = [h if h is not None else next(results) for h in found]
    return found


def work(cfg: Config) -> float:
    """A run's rough cost in sampling rounds, to start the longest runs first: each step samples once and
    takes `epochs` passes over its batch, a pass costing about 2.5 sampling rounds (chapter 1 measures it)."""
    return cfg.steps * (1 + 2.5 * cfg.epochs)


def compare(configs: dict[str, Config], seeds=(0, 1, 2), workers: int | None = None,
            progress: bool | None = None) -> pd.DataFrame:
    """Run each labelled config on each seed: one long table of their Histories, self-describing.

    Added columns: 'run' (the label), 'seed', 'key' (the run's cache key, for `load_policy`), 'loss' (which
    colours a run in every figure), and every Config field whose value differs between the labels (after
    fast mode and the loss's defaults), e.g. 'epochs': select runs by value, never by parsing labels.
    `.attrs['configs']` holds each label's full config.
    """
    jobs = [(label, seed, replace(cfg, seed=seed)) for label, cfg in configs.items() for seed in seeds]
    hists = run_many([cfg for _, _, cfg in jobs], workers=workers, progress=progress)
    resolved = {label: to_dict(resolve(sized(cfg))) for label, cfg in configs.items()}
    varying = ["loss"] + [f for f in varying_fields(resolved) if f != "loss"]
    parts = [h.assign(run=label, seed=seed, key=h.attrs["key"], **{f: resolved[label][f] for f in varying})
             for (label, seed, _), h in zip(jobs, hists)]
    out = pd.concat(parts, ignore_index=True).copy()  # consolidated: runs with fewer updates lack columns
    out.attrs = {"configs": resolved}
    return out


def varying_fields(resolved: dict[str, dict]) -> list[str]:
    """The Config fields (but the seed) whose values differ between the labelled config dicts."""
    return [f.name for f in fields(Config) if f.name != "seed"
            and len({json.dumps(c[f.name]) for c in resolved.values()}) > 1]


def cached_table(kind: str, payload: dict, compute: Callable[[], pd.DataFrame], code: list[Callable],
                 cache: bool = True) -> pd.DataFrame:
    """A table computed by `compute()` and cached on disk like a run, for measurements that are not training
    runs (gradient statistics, probes). Keyed by `kind`, the JSON-able `payload` that determines it (configs,
    loss and task names, seeds, sizes) and the code reachable from the functions in `code` (the package
    functions `compute` calls); registry entries count when their name is in the payload."""
    roots = [f"{fn.__module__.removeprefix('xxpo_lab.')}.{fn.__qualname__}" for fn in code]
    key = key_of({"kind": kind, "payload": payload, "code": code_hash(roots, payload)})
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


__all__ = ["History", "StoreError", "cached_table", "compare", "final_state", "history", "load_policy", "load_run", "parallel_map",
           "run_key", "run_many", "save_run", "train"]

"""How the lab's time per RL step grows with the response length T and the group size G.

    .venv/bin/python benchmarks/bench_scaling.py --steps 20 --rounds 4 --out benchmarks/scaling.json

The model, task, loss and threads of `bench_step.py` (GPT-2 2x4x128, addition, GRPO, fp32, 2 threads),
with P = 8 prompts and EOS made unsampleable by the weights (`bench_common.no_eos_policy`), so every
response is exactly T tokens long. Two sweeps: T in {16, 32, 64, 128} at G = 4, and G in {4, 8, 16, 32}
at T = 16 (7 configurations: the base T = 16, G = 4 is shared). Rounds alternate the configurations
(each round runs every one once, in reversed order every other round); the first WARMUP steps of every
run are dropped, and so are contended steps (`bench_common.QUIET`); medians are over the rest.

For each sweep it prints time per step over the time at the smallest size next to the size ratio, and an
affine least-squares fit time = a + b * size: "linear" means the fit holds (small residuals); the
intercept a is the part of a step that does not grow with the size (for G: the per-token Python and
kernel-launch overhead of T sequential decode steps, paid whatever the batch).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from bench_common import QUIET, THREADS, WARMUP, Size, git_state, kept, median_of, run_lab, wait_quiet

SWEEPS = {"T": (16, 32, 64, 128), "G": (4, 8, 16, 32)}
BASE = Size(P=8, G=4, T=16)


def sizes() -> list[Size]:
    """Every configuration of both sweeps once (the base T = 16, G = 4 belongs to both)."""
    return list(dict.fromkeys(replace(BASE, **{name: v}) for name, values in SWEEPS.items() for v in values))


def fit(x: list[float], y: list[float]) -> dict:
    """Affine least squares y = a + b x; worst relative residual and R^2."""
    b, a = np.polyfit(x, y, 1)
    pred = a + b * np.asarray(x)
    resid = np.asarray(y) - pred
    r2 = 1 - float((resid**2).sum() / ((np.asarray(y) - np.mean(y)) ** 2).sum())
    return {"intercept_ms": float(a), "slope_ms": float(b), "max_rel_residual": float(np.max(np.abs(resid) / y)),
            "r2": r2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help=f"steps per run (the first {WARMUP} are warm-up)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds at least; each runs every configuration once")
    ap.add_argument("--min-quiet", type=int, default=30, help="more rounds until each size has this many quiet steps")
    ap.add_argument("--budget", type=float, default=600, help="no new round after this many seconds")
    ap.add_argument("--out", default="benchmarks/scaling.json")
    a = ap.parse_args()
    torch.set_num_threads(THREADS)
    runs: dict[Size, list[dict]] = {size: [] for size in sizes()}
    git = git_state()
    start, r = time.perf_counter(), 0
    while r < a.rounds or min(sum(len(kept(run, "inner_s")) for run in rs) for rs in runs.values()) < a.min_quiet:
        if time.perf_counter() - start > a.budget:
            print(f"time budget spent: fewer than {a.min_quiet} quiet steps (the machine is busy)")
            break
        order, r = (sizes() if r % 2 == 0 else sizes()[::-1]), r + 1
        for size in order:
            wait_quiet()
            runs[size].append(run := run_lab(size, a.steps))
            n = len(kept(run, "inner_s"))
            print(f"round {r - 1} T={size.T} G={size.G}: {n} quiet steps of {a.steps}, median "
                  f"{1e3 * median_of([run], 'inner_s', n > 0):.1f} ms/step", flush=True)

    def med(key, k):  # over the uncontended steps
        return 1e3 * median_of(runs[key], k)

    res = {"setup": {"base": asdict(BASE), "steps": a.steps, "rounds": r, "warmup": WARMUP, "quiet_below_cores": QUIET,
                     "threads": THREADS, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "git": git}}
    for name, values in SWEEPS.items():
        rows = []
        for v in values:
            key = replace(BASE, **{name: v})
            tokens = median_of(runs[key], "tokens")
            quiet = sum(len(kept(run, "inner_s")) for run in runs[key])
            rows.append({name: v, "quiet_steps": quiet, "ms_per_step": med(key, "inner_s"),
                         "sample_ms": med(key, "sample_s"),
                         "update_ms": med(key, "update_s"), "tokens_per_step": tokens})
        t0, v0 = rows[0]["ms_per_step"], values[0]
        for row in rows:
            row |= {"size_ratio": row[name] / v0, "time_ratio": row["ms_per_step"] / t0}
        res[name] = {"rows": rows, "fit": fit(list(values), [row["ms_per_step"] for row in rows]),
                     "fit_sample": fit(list(values), [row["sample_ms"] for row in rows]),
                     "fit_update": fit(list(values), [row["update_ms"] for row in rows])}
        other = "G" if name == "T" else "T"
        print(f"\n{name} sweep ({other} = {getattr(BASE, other)}, P = {BASE.P})")
        print(f"{name:>4} {'ms/step':>8} {'sample':>8} {'update':>8} {'tokens':>7} {'size x':>7} {'time x':>7}")
        for row in rows:
            print(f"{row[name]:4d} {row['ms_per_step']:8.1f} {row['sample_ms']:8.1f} {row['update_ms']:8.1f} "
                  f"{row['tokens_per_step']:7.0f} {row['size_ratio']:7.1f} {row['time_ratio']:7.2f}")
        f = res[name]["fit"]
        print(f"fit: {f['intercept_ms']:.1f} ms + {f['slope_ms']:.2f} ms x {name}; R^2 {f['r2']:.4f}, "
              f"worst residual {100 * f['max_rel_residual']:.1f}%")
    res["raw"] = {f"T={size.T},G={size.G}": rs for size, rs in runs.items()}
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

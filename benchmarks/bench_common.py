"""What both benchmarks share: the sizes, the lab's run with equal-length responses, the machine's load.

Not a script: `bench_step.py` and `bench_scaling.py` import it (run them from the repository root).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

THREADS, WARMUP, NAN = 2, 3, float("nan")
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}


@dataclass(frozen=True)
class Size:
    P: int = 8
    G: int = 8
    T: int = 16
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128


def lab_config(size: Size, steps: int):
    from xxpo_lab import Config

    return Config(task="addition", difficulty=2, n_layer=size.n_layer, n_head=size.n_head, n_embd=size.n_embd,
                  P=size.P, G=size.G, T_max=size.T, minibatches=1, epochs=1, loss="grpo", steps=steps,
                  eval_every=steps + 1, eval_prompts=8, lr=1e-4)


def no_eos_policy(cfg, tokenizer):
    """The lab's random-init GPT-2 (`policy.build_policy`) with EOS made unsampleable by the weights alone:
    ln_f pins hidden unit 0 to 1 and the tied embedding gives EOS -30 there (0 for every other token)."""
    from xxpo_lab.policy import build_policy

    model = build_policy(cfg, tokenizer)
    with torch.no_grad():
        model.transformer.ln_f.weight[0], model.transformer.ln_f.bias[0] = 0.0, 1.0
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[tokenizer.eos_token_id, 0] = -30.0
    return model


def run_lab(size: Size, steps: int) -> dict:
    """`xxpo_lab.train` itself; only its policy factory is swapped for `no_eos_policy` (no warm start)."""
    from xxpo_lab import loop, train
    from xxpo_lab.tasks import char_tokenizer

    tok = char_tokenizer()
    loop.make_policy = lambda cfg, device=None: (no_eos_policy(cfg, tok).to(device), tok, {})  # loop.setup's factory
    probe = Probe()
    hist = train(lab_config(size, steps), progress=False, cache=False, threads=THREADS, callback=probe.mark)
    rows = hist[hist.step < steps]
    return {"inner_s": rows["time/step"].tolist(), "loop_s": probe.intervals(), "foreign": probe.foreign(),
            "tokens": (rows["len/mean"] * size.P * size.G).tolist(), "sample_s": rows["time/sample"].tolist(),
            "update_s": rows["time/update"].tolist()}


# -------------------------------------------------------------------------------------------------
# other work on the machine: the benchmark shares 2 cores with whatever else runs, and an OpenMP job with
# 2 threads slows down many times when another process takes one core, so contended steps are dropped

QUIET = 0.5  # a step is kept when other processes kept fewer cores than this busy during it


def busy_seconds() -> float:
    """CPU-seconds all CPUs spent busy since boot (/proc/stat: every state but idle and iowait)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Probe:
    """Marks (at step ends): wall clock, the machine's busy CPU time and this process's own CPU time."""

    def __init__(self):
        self.marks = []

    def mark(self, *_) -> None:
        self.marks.append((time.perf_counter(), busy_seconds(), time.process_time()))

    def intervals(self) -> list[float]:
        """Wall time between consecutive marks (NaN before the first)."""
        return [NAN] + [b[0] - a[0] for a, b in zip(self.marks, self.marks[1:])]

    def foreign(self) -> list[float]:
        """Cores other processes kept busy between consecutive marks (NaN before the first)."""
        pairs = zip(self.marks, self.marks[1:])
        return [NAN] + [max(0.0, (b[1] - a[1] - (b[2] - a[2])) / (b[0] - a[0])) for a, b in pairs]


def wait_quiet(max_wait: float = 30.0) -> None:
    """Wait (at most max_wait seconds) for a second in which other processes use under QUIET / 2 cores."""
    probe, start = Probe(), time.perf_counter()
    probe.mark()
    while time.perf_counter() - start < max_wait:
        time.sleep(1.0)
        probe.mark()
        if probe.foreign()[-1] < QUIET / 2:
            return


# -------------------------------------------------------------------------------------------------
# reductions and the machine's peak


def kept(run: dict, key: str, quiet: bool = True) -> list[float]:
    """Values of `key` after the warm-up steps (and, with `quiet`, of uncontended steps only)."""
    return [x for i, (x, f) in enumerate(zip(run[key], run["foreign"]))
            if i >= WARMUP and x == x and (not quiet or f < QUIET)]


def median_of(runs: list[dict], key: str, quiet: bool = True) -> float:
    values = [x for run in runs for x in kept(run, key, quiet)]
    return statistics.median(values) if values else NAN


def git_state() -> dict:
    """The commit measured, and whether xxpo_lab/ had uncommitted changes (then the numbers are of those)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True).stdout.strip()

    dirty = bool(git("status", "--porcelain", "../xxpo_lab"))
    return {"commit": git("rev-parse", "--short", "HEAD"), "xxpo_lab_dirty": dirty}


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 FLOP/s of an n x n matmul at THREADS threads (the machine's practical peak)."""
    torch.set_num_threads(THREADS)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best

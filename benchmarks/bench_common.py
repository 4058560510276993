"""What both benchmarks share: the sizes, the lab's run with equal-length responses, the machine's load.

Not a script: `bench_step.py` and `bench_scaling.py` import it (run them from the repository root).
"""

from __future__ import annotations

import importlib
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

THREADS, WARMUP = 2, 3
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
    from xxpo_lab.tasks import char_tokenizer

    loop = importlib.import_module("xxpo_lab.train")  # the module (the package's `train` is the function)

    tok = char_tokenizer()
    loop.make_policy = lambda cfg, device=None: (no_eos_policy(cfg, tok).to(device), tok, {})
    ends = []
    hist = loop.train(lab_config(size, steps), progress=False, cache=False, threads=THREADS,
                      callback=lambda row: ends.append(time.perf_counter()))
    rows = hist[hist.step < steps]
    return {"inner_s": rows["time/step"].tolist(), "loop_s": [float("nan")] + [b - a for a, b in zip(ends, ends[1:])],
            "tokens": (rows["len/mean"] * size.P * size.G).tolist(), "sample_s": rows["time/sample"].tolist(),
            "update_s": rows["time/update"].tolist()}


# -------------------------------------------------------------------------------------------------
# other work on the machine (the benchmark shares 2 cores with whatever else runs)

QUIET = 0.25  # a run counts as quiet when other processes used fewer cores than this on average


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot (/proc/stat: user nice system idle iowait irq softirq steal)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


def foreign_cores(before: tuple, after: tuple, own_cpu_s: float) -> float:
    """Average number of cores busy with processes other than ours between two `cpu_jiffies` readings."""
    hz, cpus = os.sysconf("SC_CLK_TCK"), os.cpu_count()
    wall = (after[1] - before[1]) / hz / cpus
    return max(0.0, ((after[0] - before[0]) / hz - own_cpu_s) / max(wall, 1e-9))


def wait_quiet(max_wait: float = 60.0) -> None:
    """Wait (at most max_wait seconds) until other processes use fewer than QUIET cores over one second."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        before = cpu_jiffies()
        time.sleep(1.0)
        if foreign_cores(before, cpu_jiffies(), 0.0) < QUIET:
            return


# -------------------------------------------------------------------------------------------------
# reductions and the machine's peak


def median_of(runs: list[dict], key: str) -> float:
    kept = [x for run in runs for x in run[key][WARMUP:] if x == x]  # drop warm-up steps and NaN
    return statistics.median(kept)


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

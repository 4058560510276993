"""Speed of one RL step: xxpo_lab's loop against TRL's GRPOTrainer on the identical model, task and sizes.

    .venv/bin/python benchmarks/bench_step.py --steps 40 --rounds 6 --out benchmarks/results.json

Reference setting (the issue): GPT-2 with n_layer=2, n_head=4, n_embd=128 and the lab's char vocab (45
tokens), the addition task at difficulty 2, 8 prompts x 8 samples, 16 new tokens, one optimizer step per
batch, fp32, 2 threads, GRPO loss, no KL (beta = 0).

Equal work: both systems start from the same random-init GPT-2 whose EOS logit is pinned to about -30
(`no_eos_policy`), so every response is exactly 16 tokens long in both (all are truncated, score 0 and
have zero advantage; that changes no FLOP). Tokens/s uses the lengths each system reports. TRL runs
twice: `trl` with gradient_checkpointing=False (the lab's work, the headline) and `trl_gc` with TRL's
default gradient_checkpointing=True (what a user gets; the backward recomputes the forward).

Each (system, round) runs in its own subprocess (the lab's never imports TRL), so its ru_maxrss is that
system's peak RSS. Rounds rotate the order (lab, trl, trl_gc; trl, trl_gc, lab; ...); the first WARMUP
steps of every run are dropped. Two timings per step: `inner` (lab: `time/step`; TRL: on_step_begin -> on_step_end) and
`loop` (time between consecutive step ends: also logging, data loading, callbacks).

The machine is shared: every run first waits for a quiet second, every step records how many cores other
processes kept busy during it (/proc/stat minus our own CPU time), and the headline medians use only the
steps with fewer than QUIET = 0.5 such cores (medians over all steps are reported too). Rounds go on past
--rounds until each system has --min-quiet quiet steps, or until --budget seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from bench_common import (
    ENV,
    QUIET,
    THREADS,
    WARMUP,
    Probe,
    Size,
    git_state,
    kept,
    lab_config,
    matmul_peak,
    median_of,
    no_eos_policy,
    run_lab,
    wait_quiet,
)

SYSTEMS = ("lab", "trl", "trl_gc")


def run_trl(size: Size, steps: int, checkpointing: bool) -> dict:
    """A fresh GRPOTrainer on the same weights (saved with save_pretrained), one generation batch per step."""
    import datasets
    import trl
    from transformers import TrainerCallback

    from xxpo_lab.tasks import Problem, char_tokenizer, make_task

    tok, task = char_tokenizer(), make_task("addition", 2)
    tmp = Path(tempfile.mkdtemp(prefix="bench_trl_"))
    no_eos_policy(lab_config(size, steps), tok).save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    problems = task.sample(size.P * steps, random.Random(0))
    data = datasets.Dataset.from_dict({"prompt": [p.prompt for p in problems],
                                       "solution": [p.solution for p in problems]})

    def verifier(prompts, completions, completion_ids, solution, **_):
        eos = tok.eos_token_id
        return [float(task.verify(Problem(p, s), tok.decode([i for i in ids if i != eos]), eos not in ids))
                for p, s, ids in zip(prompts, solution, completion_ids)]

    class Timer(TrainerCallback):
        def __init__(self):
            self.begin, self.end, self.lengths, self.probe = [], [], [], Probe()

        def on_step_begin(self, args, state, control, **kw):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.end.append(time.perf_counter())
            self.probe.mark()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    args = trl.GRPOConfig(
        output_dir=str(tmp / "out"), per_device_train_batch_size=size.P * size.G, num_generations=size.G,
        max_completion_length=size.T, temperature=1.0, num_iterations=1, beta=0.0, loss_type="grpo",
        learning_rate=1e-4, max_steps=steps, use_cpu=True, bf16=False, report_to=[], logging_steps=1,
        save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0, gradient_checkpointing=checkpointing)
    trainer = trl.GRPOTrainer(model=str(tmp / "model"), reward_funcs=verifier, args=args, train_dataset=data,
                              processing_class=tok, callbacks=[timer := Timer()])
    assert trainer.args.gradient_accumulation_steps == 1 and trainer.args.steps_per_generation == 1
    assert trainer.args.generation_batch_size == size.P * size.G and trainer.num_iterations == 1
    assert next(trainer.model.parameters()).dtype == torch.float32
    torch.set_num_threads(THREADS)
    trainer.train()
    shutil.rmtree(tmp, ignore_errors=True)
    t = timer
    return {"inner_s": [b - a for a, b in zip(t.begin, t.end)], "loop_s": t.probe.intervals(),
            "foreign": t.probe.foreign(), "tokens": [n * size.P * size.G for n in t.lengths]}


def child(system: str, size: Size, steps: int) -> dict:
    torch.set_num_threads(THREADS)
    out = run_lab(size, steps) if system == "lab" else run_trl(size, steps, checkpointing=system == "trl_gc")
    return out | {"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def spawn(system: str, size: Size, steps: int) -> dict:
    """Run one system in a fresh interpreter once the machine is quiet; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "--child", system, "--steps", str(steps), "--size", json.dumps(asdict(size))]
    wait_quiet()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | ENV)
    if proc.returncode:
        sys.exit(f"{system} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------------
# model FLOPs


def model_flops(size: Size, prompt_len: int, vocab: int) -> dict:
    """Useful FLOPs of one RL step. Per token at position p (0-based), one forward costs
    2*N + 4*n_layer*d*(p+1), with N = 12*n_layer*d^2 + V*d the matmul weights (blocks + LM head) and the
    second term the causal attention scores and mix. Sampling with a KV cache runs positions
    0 .. L+T-2 once (prefill + T-1 decode steps); training runs 0 .. L+T-1 forward and backward (3x)."""
    d, nl = size.n_embd, size.n_layer
    n_mm = 12 * nl * d * d + vocab * d

    def fwd(n_pos):
        return sum(2 * n_mm + 4 * nl * d * (p + 1) for p in range(n_pos))

    B, L = size.P * size.G, prompt_len
    sample, learn = B * fwd(L + size.T - 1), 3 * B * fwd(L + size.T)
    return {"matmul_params": n_mm, "sample_flops": sample, "train_flops": learn, "step_flops": sample + learn}


# -------------------------------------------------------------------------------------------------
# the comparison


def summarize(runs: list[dict], flops: float, peak: float, quiet: bool) -> dict:
    out = {"steps_kept": sum(len(kept(run, "inner_s", quiet)) for run in runs)}
    for timing in ("inner", "loop"):
        sec = median_of(runs, f"{timing}_s", quiet)
        out |= {f"{timing}_ms_per_step": 1e3 * sec, f"{timing}_steps_per_s": 1 / sec}
    sec = median_of(runs, "inner_s", quiet)
    tokens = median_of(runs, "tokens", quiet)
    out |= {"tokens_per_step": tokens, "tokens_per_s": tokens / sec, "mfu": flops / sec / peak,
            "peak_rss_mb": statistics.median(run["maxrss_mb"] for run in runs)}
    if "sample_s" in runs[0]:
        out |= {f"{k}_ms": 1e3 * median_of(runs, f"{k}_s", quiet) for k in ("sample", "update")}
    return out


def compare(runs: dict, flops: float, peak: float, quiet: bool) -> dict:
    """Medians of each system (over uncontended steps with `quiet`) and the lab/TRL ratios; prints them."""
    res = {s: summarize(runs[s], flops, peak, quiet) for s in SYSTEMS}
    res["ratio"] = {s: {t: res["lab"][f"{t}_steps_per_s"] / res[s][f"{t}_steps_per_s"] for t in ("inner", "loop")}
                    for s in SYSTEMS[1:]}
    print(f"-- quiet steps (other processes < {QUIET} cores)" if quiet else "-- all steps")
    for s in SYSTEMS:
        x = res[s]
        print(f"{s:6s} {x['steps_kept']:3d} steps  inner {x['inner_ms_per_step']:6.1f} ms "
              f"({x['inner_steps_per_s']:5.2f} steps/s)  loop {x['loop_ms_per_step']:6.1f} ms  "
              f"{x['tokens_per_s']:6.0f} tok/s  MFU {100 * x['mfu']:4.1f}%  RSS {x['peak_rss_mb']:.0f} MB")
    for s, ratio in res["ratio"].items():
        print(f"lab/{s} steps per second: inner {ratio['inner']:.2f}x, loop {ratio['loop']:.2f}x")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help=f"steps per run (the first {WARMUP} are warm-up)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds at least; each runs every system once")
    ap.add_argument("--min-quiet", type=int, default=100, help="then rounds until each has this many quiet steps")
    ap.add_argument("--budget", type=float, default=900, help="no new round after this many seconds")
    ap.add_argument("--out", default="benchmarks/results.json")
    ap.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    ap.add_argument("--size", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    size = Size(**json.loads(a.size))
    if a.child:
        print(json.dumps(child(a.child, size, a.steps)))
        return

    import transformers
    import trl

    from xxpo_lab.tasks import char_tokenizer, make_task

    prompt = make_task("addition", 2).sample(1, random.Random(0))[0].prompt
    flops = model_flops(size, len(prompt), len(char_tokenizer()))["step_flops"]
    runs, peak, git = {s: [] for s in SYSTEMS}, 0.0, git_state()
    start, r = time.perf_counter(), 0
    while r < a.rounds or min(sum(len(kept(run, "inner_s")) for run in rs) for rs in runs.values()) < a.min_quiet:
        if time.perf_counter() - start > a.budget:
            print(f"time budget spent: fewer than {a.min_quiet} quiet steps (the machine is busy)")
            break
        for system in SYSTEMS[r % 3:] + SYSTEMS[:r % 3]:
            runs[system].append(run := spawn(system, size, a.steps))
            n = len(kept(run, "inner_s"))
            print(f"round {r} {system}: {n} quiet steps of {a.steps}, median "
                  f"{1e3 * median_of([run], 'inner_s', n > 0):.1f} ms/step", flush=True)
        wait_quiet()
        peak, r = max(peak, matmul_peak()), r + 1
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s, model FLOPs per step {flops / 1e9:.3f} G")
    res = {"quiet": compare(runs, flops, peak, quiet=True), "all": compare(runs, flops, peak, quiet=False)}
    res["setup"] = {"size": asdict(size), "steps": a.steps, "rounds": r, "warmup": WARMUP, "quiet_below_cores": QUIET,
                    "threads": THREADS,
                    "matmul_peak_gflops": peak / 1e9, "flops": model_flops(size, len(prompt), len(char_tokenizer())),
                    "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                    "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "git": git}
    res["raw"] = runs
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

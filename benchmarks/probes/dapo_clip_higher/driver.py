"""DAPO clip-higher probe driver: one training run at a time, one CPU thread, no package edits.

Runs xxpo_lab's own loop (loop.setup + loop.run) and, by wrapping loop.loss_of at runtime (the package
files are untouched), records per step the sampler probability exp(behav_logp) of
  - tokens the upper clip blocks (A > 0, r > 1 + eps_high)          -> p_clip_high
  - tokens the symmetric clip would block (A > 0, r > 1.2)            -> p_would_clip02
  - tokens the lower clip blocks (A < 0, r < 1 - eps_low)             -> p_clip_low
  - all valid tokens / all A>0 tokens                                   -> p_all / p_pos
summed over the step's updates (token-count weighted).

Usage: python driver.py OUT.jsonl key=value ... seeds=0,1,2
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("XXPO_CACHE", "/tmp/dapo_probe/cache")

import json
import sys
import time
from dataclasses import asdict

import torch

torch.set_num_threads(1)

from xxpo_lab import loop  # noqa: E402
from xxpo_lab.config import Config, resolve, sized  # noqa: E402
from xxpo_lab.policy import pick_device  # noqa: E402

_orig_loss_of = loop.loss_of
_orig_training_step = loop.training_step
ACC: dict = {}
BINS = [0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0001]


def _add(name, p, flags):
    ACC[name + "_sum"] = ACC.get(name + "_sum", 0.0) + float((p * flags).sum())
    ACC[name + "_n"] = ACC.get(name + "_n", 0.0) + float(flags.sum())


def loss_of(name, logp, b, cfg):
    loss, info = _orig_loss_of(name, logp, b, cfg)
    if info.clip_high is not None:
        with torch.no_grad():
            m = b.mask > 0
            p = torch.exp(b.behav_logp).float()
            pos = m & (b.adv > 0)
            _add("p_all", p, m.float())
            _add("p_pos", p, pos.float())
            _add("p_clip_high", p, (info.clip_high & m).float())
            _add("p_would_clip02", p, (pos & (info.ratio > 1.2)).float())
            _add("p_clip_low", p, (info.clip_low & m).float())
            # how much probability mass the current policy added to clipped tokens (pi - pi_old)
            dp = torch.exp(logp.detach()).float() - p
            _add("dp_clip_high", dp, (info.clip_high & m).float())
            # per sampler-probability bin: A>0 tokens, and those the upper clip blocks
            for i, (lo, hi) in enumerate(zip(BINS[:-1], BINS[1:])):
                inb = pos & (p >= lo) & (p < hi)
                _add(f"bin{i}_pos", p, inb.float())
                _add(f"bin{i}_clip", p, (inb & info.clip_high).float())
    return loss, info


def training_step(state, step):
    ACC.clear()
    row = _orig_training_step(state, step)
    for k in ("p_all", "p_pos", "p_clip_high", "p_would_clip02", "p_clip_low", "dp_clip_high",
              *[f"bin{i}_{w}" for i in range(len(BINS) - 1) for w in ("pos", "clip")]):
        row[f"probe/{k}_sum"] = ACC.get(k + "_sum", 0.0)
        row[f"probe/{k}_n"] = ACC.get(k + "_n", 0.0)
    return row


loop.loss_of = loss_of
loop.training_step = training_step


def run_one(cfg: Config):
    cfg = resolve(sized(cfg))
    t0 = time.time()
    state = loop.setup(cfg, pick_device("cpu"))
    t1 = time.time()
    loop.run(state)
    return state.rows, t1 - t0, time.time() - t1, cfg


def parse(v):
    for f in (int, float):
        try:
            return f(v)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(v, v)


if __name__ == "__main__":
    out = sys.argv[1]
    kw = dict(a.split("=", 1) for a in sys.argv[2:])
    seeds = [int(s) for s in kw.pop("seeds", "0").split(",")]
    tag = kw.pop("tag", "")
    kw = {k: parse(v) for k, v in kw.items()}
    for seed in seeds:
        cfg = Config(**kw, seed=seed)
        rows, t_setup, t_run, rcfg = run_one(cfg)
        rec = {"tag": tag, "args": kw, "seed": seed, "config": asdict(rcfg), "setup_s": t_setup, "run_s": t_run,
               "rows": rows}
        with open(out, "a") as fh:
            fh.write(json.dumps(rec, default=float) + "\n")
        print(f"done {tag} seed {seed}: setup {t_setup:.1f}s run {t_run:.1f}s", flush=True)

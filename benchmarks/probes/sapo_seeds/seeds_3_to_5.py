"""Chapter 9's claims on seeds the chapter never uses (RL seeds 3-5), and on another warm start (init_seed 1,
RL seeds 0-2), with the chapter's own configs and measurements.

Run: XXPO_CACHE=/tmp/sapo_seeds .venv/bin/python benchmarks/probes/sapo_seeds/seeds_3_to_5.py
(about 5 minutes on 2 cores; a fresh cache so nothing is shared with the book). Results: REPORT.md.
"""

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from xxpo_lab import Config, blocks, compare, summary
from xxpo_lab.measure import entropy_by_sign, stale_tokens, token_ratios

pd.set_option("display.width", 250)

if __name__ == "__main__":
    BASE = Config(task="reverse", lr=1e-3, steps=36, eval_every=9, minibatches=4)
    LEVELS = {"K=4": {}, "K=16": {"epochs": 4}, "d=8": {"staleness": 8}}
    LOSSES = {"GRPO": "grpo", "GSPO": "gspo", "SAPO": "sapo"}
    TEMPS = {"SAPO τneg=0.95": (1.0, 0.95), "SAPO τneg=1.5": (1.0, 1.5), "SAPO τ=10": (10.0, 10.0)}
    for label, seeds, warm in (("RL seeds 3-5, warm start 0", [3, 4, 5], 0),
                               ("RL seeds 0-2, warm start 1", [0, 1, 2], 1)):
        base = replace(BASE, init_seed=warm)
        cfgs = {f"{n} {lv}": replace(base, loss=loss, **ch) for n, loss in LOSSES.items() for lv, ch in LEVELS.items()}
        for n, (tp, tn) in TEMPS.items():
            cfgs[f"{n} d=8"] = replace(base, loss="sapo", staleness=8, tau_pos=tp, tau_neg=tn)
        runs = compare(cfgs, seeds=seeds, progress=False)
        per_run = summary(runs)
        auc = per_run.pivot(index="run", columns="seed", values="mean")
        auc["mean"] = auc.mean(axis=1)
        print(f"\n== {label} ==\nstart accuracy {per_run['start'].min():.3f}-{per_run['start'].max():.3f}")
        print("AUC:\n", auc.round(3))
        steps = runs[runs["time/step"].notna()]
        diag = steps.groupby("run")[["kl/k3", "ratio/std", "gate/mean", "gate/low_frac", "clip/active_frac"]].mean()
        diag["ratio/max"] = steps.groupby("run")["ratio/max"].max()
        print("diagnostics (mean over steps and seeds; max r: max):\n", diag.round(3))
        # where the zero-weight tokens are (reused batch, last update)
        reuse = replace(base, minibatches=1, epochs=8)
        for seed in seeds:
            out = {}
            for loss in ("grpo", "sapo"):
                t = token_ratios(replace(reuse, loss=loss), seed=seed)
                t = t[t["update"] == t["update"].max()]
                r, adv = torch.tensor(np.exp(t["log_r"].to_numpy())), torch.tensor(t["adv"].to_numpy())
                p = np.exp(t["prox_logp"].to_numpy())
                if loss == "grpo":
                    _, lo, hi, _ = blocks.clip_surrogate(r, adv, 0.2, 0.2)
                    z = (lo | hi).numpy()
                    out |= {"grpo clipped": z.mean(), "p clipped": np.median(p[z]), "p all": np.median(p)}
                else:
                    out["sapo gate<1/2"] = (blocks.soft_gate(r, adv, 1.0, 1.05)[1] < 0.5).float().mean().item()
            st = stale_tokens(replace(base, loss="sapo", staleness=8, tau_pos=10.0, tau_neg=10.0), seed=seed,
                              at_step=12)
            r0 = torch.tensor(np.exp(st["prox_logp"] - st["behav_logp"]).to_numpy())
            a0 = torch.tensor(st["adv"].to_numpy())
            against = ((a0 > 0) & (r0 < 1)) | ((a0 < 0) & (r0 > 1))
            closed = blocks.soft_gate(r0, a0, 10.0, 10.0)[1] < 0.5
            _, lo, hi, _ = blocks.clip_surrogate(r0, a0, 0.2, 0.2)
            out |= {"against": against.float().mean().item(), "tau10 closed: against": against[closed].float().mean().item(),
                    "clip: against": against[lo | hi].float().mean().item()}
            e = entropy_by_sign(replace(base, loss="sapo"), seed=seed, batches=4).groupby("sign")["dH"].mean()
            out |= {"dH A<0": e["A < 0"], "dH A>0": e["A > 0"]}
            print(f"seed {seed}:", {k: round(float(v), 3) for k, v in out.items()})

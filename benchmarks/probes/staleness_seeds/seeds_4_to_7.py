"""Chapters 6 and 7's claims on seeds the chapters never use (RL seeds 4-7), and on another warm start
(init_seed 1, RL seeds 0-3), with the chapters' own configs.

Run: XXPO_CACHE=/tmp/staleness_seeds .venv/bin/python benchmarks/probes/staleness_seeds/seeds_4_to_7.py
(about 3 minutes on 2 cores; a fresh cache so nothing is shared with the book). Results: REPORT.md.
"""

from dataclasses import replace

import pandas as pd

from xxpo_lab import Config, compare, summary

pd.set_option("display.width", 250)
if __name__ == "__main__":
    BASE = Config(task="reverse", loss="ppo", adv="grpo", minibatches=4, steps=36, eval_every=9)
    FAST, GENTLE = 1e-3, 3e-4
    CAP = {"behav_weight_cap": 5.0}
    METHODS = {
        "coupled": {},
        "dual clip": {"dual_clip_c": 3.0},
        "decoupled": {"loss": "decoupled_ppo"},
        "decoupled + cap": {"loss": "decoupled_ppo", **CAP},
        "A-3PO + cap": {"loss": "a3po", **CAP},
    }
    cfgs = {f"coupled d=0 lr={FAST:g}": replace(BASE, lr=FAST), f"coupled d=0 lr={GENTLE:g}": replace(BASE, lr=GENTLE)}
    for name, changes in METHODS.items():
        cfgs[f"{name} d=8 lr={FAST:g}"] = replace(BASE, lr=FAST, staleness=8, **changes)
        if name in ("coupled", "decoupled + cap", "A-3PO + cap"):
            cfgs[f"{name} d=8 lr={GENTLE:g}"] = replace(BASE, lr=GENTLE, staleness=8, **changes)
    for label, seeds, warm in (("RL seeds 4-7, warm start 0", [4, 5, 6, 7], 0),
                               ("RL seeds 0-3, warm start 1", [0, 1, 2, 3], 1)):
        runs = compare({k: replace(c, init_seed=warm) for k, c in cfgs.items()}, seeds=seeds, progress=False)
        auc = summary(runs).pivot_table(index="run", columns="seed", values="mean")
        auc["mean"] = auc.mean(axis=1)
        print(f"\n== {label}: AUC (mean held-out accuracy after the start) ==")
        print(auc.round(3))
        start = summary(runs)["start"].iloc[0]
        print(f"start accuracy {start:.3f}")

"""Chapter 5's claims on seeds the chapter never uses (3, 4, 5), with its own configs.

Run: XXPO_CACHE=/tmp/gspo_seeds .venv/bin/python benchmarks/probes/gspo_seeds/seeds_3_to_5.py
(about 3 minutes on 2 cores; a fresh cache so nothing is shared with the book). Results: REPORT.md.
"""

from dataclasses import replace

import pandas as pd

from xxpo_lab import Config, compare
from xxpo_lab.measure import noise_effect, token_ratios

pd.set_option("display.width", 250)
pd.set_option("display.max_columns", 30)
if __name__ == "__main__":
    SEEDS = [3, 4, 5]
    BASE = Config(task="reverse", lr=5e-4, minibatches=4, steps=50, eval_every=10)
    K16 = dict(epochs=2, minibatches=8)
    MOE = replace(BASE, model_type="mixtral", eval_every=25)
    cf = {
        "GRPO": BASE,
        "GSPO": replace(BASE, loss="gspo"),
        "GRPO K16": replace(BASE, **K16),
        "GSPO K16": replace(BASE, loss="gspo", **K16),
        "MoE GRPO": MOE,
        "MoE GRPO + replay": replace(MOE, routing_replay=True),
        "MoE GSPO": replace(MOE, loss="gspo"),
        "MoE GRPO, K=1": replace(MOE, minibatches=1),
    }
    runs = compare(cf, seeds=SEEDS, progress=False)
    m = runs.groupby(["run", "seed"]).mean(numeric_only=True)
    print(
        m[
            ["clip/active_frac", "clip/seq_active_frac", "eval/accuracy", "ratio/logr_seq_std@u1", "moe/route_drift@u1"]
        ].round(4)
    )
    first = runs[runs.step == 0].groupby(["run", "seed"])["eval/accuracy"].first()
    last = runs[runs.step == runs.step.max()].groupby(["run", "seed"])["eval/accuracy"].first()
    print(pd.DataFrame({"start": first, "end": last}).round(3))
    LONG = Config(task="reverse", difficulty=12, T_max=14, lr=2e-5, epochs=4, P=64)
    for s in SEEDS:
        r = token_ratios(LONG, seed=s)
        last_u = r[r["update"] == 3]
        g = last_u.groupby("row").agg(
            length=("length", "first"), seq=("log_r", "mean"), sp=("log_r", lambda v: v.std(ddof=0))
        )
        g = g[g.length >= 2]
        g["bin"] = pd.cut(g.length, [2, 5, 9, 14], right=False)
        t = g.groupby("bin", observed=True).agg(sp=("sp", "mean"), seq=("seq", lambda v: v.abs().mean()))
        print("ratios", s, (t.sp / t.seq).round(2).tolist(), (t.sp > t.seq).all())
        NL = {
            "GRPO": {"loss": "grpo"},
            "GSPO": {"loss": "gspo"},
            "GSPO ε 0.2": {"loss": "gspo", "eps_low": 0.2, "eps_high": 0.2},
        }
        n = noise_effect(LONG, [0.01, 0.1, 0.3], [0.0, 0.9], NL, seed=s, draws=8)
        print(
            n.groupby(["loss", "rho", "sigma"])[["cosine", "clip_seq_frac"]]
            .mean()
            .round(3)
            .unstack("loss")
            .loc[[(0.0, 0.01), (0.0, 0.3), (0.9, 0.3)]]
        )

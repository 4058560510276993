"""Chapter 10's runs and measurements on the chapter's seeds (0-2), on seeds it never uses (3-5), and on
another warm start (init_seed 1, seeds 0-2), with the chapter's own configs.

Run: XXPO_CACHE=/tmp/mismatch_seeds .venv/bin/python benchmarks/probes/mismatch_seeds/seeds.py [group ...]
(groups: chapter, seeds_3_5, warm_1; about 4 minutes each on 2 cores; a cache of its own). Results: REPORT.md.
"""

import sys
from dataclasses import replace

import pandas as pd

from xxpo_lab import Config, compare, summary
from xxpo_lab.measure import sampler_gap

pd.set_option("display.width", 250)
GENTLE = Config(task="reverse", lr=5e-4, steps=40, eval_every=10, minibatches=2)
STRESS = Config(task="reverse", lr=1e-3, steps=36, eval_every=9, minibatches=4, staleness=8)
TRAINER = {"prox_source": "trainer"}
TOP_P = {"top_p": 0.9}
CONFIGS = {
    "float32": GENTLE,
    "bfloat16": replace(GENTLE, sampler_dtype="bfloat16"),
    "float8": replace(GENTLE, sampler_dtype="float8"),
    "top-p, sampler's π_old": replace(GENTLE, **TOP_P),
    "top-p, trainer's π_old": replace(GENTLE, **TOP_P, **TRAINER),
    "top-p + TIS (C=2)": replace(GENTLE, **TOP_P, **TRAINER, is_mode="token_truncate", is_clip_max=2.0),
    "top-p + token mask [0.5, 2]": replace(GENTLE, **TOP_P, **TRAINER, is_mode="token_mask", is_clip_min=0.5,
                                           is_clip_max=2.0),
    "top-p + sequence truncate (C=3)": replace(GENTLE, **TOP_P, **TRAINER, is_mode="sequence_truncate"),
    "top-p + sequence mask (C=3)": replace(GENTLE, **TOP_P, **TRAINER, is_mode="sequence_mask"),
    "top-p + V3.2 mask (δ=0.05)": replace(GENTLE, **TOP_P, off_policy_mask=0.05),
    "float32 + V3.2 mask (δ=0.05)": replace(GENTLE, off_policy_mask=0.05),
    "top-p, DPPO-TV": replace(GENTLE, **TOP_P, loss="dppo_tv"),
    "d=8: GRPO": STRESS,
    "d=8: DPPO-TV": replace(STRESS, loss="dppo_tv"),
    "d=8: DPPO-KL": replace(STRESS, loss="dppo_kl"),
}
for loss in ("grpo", "dppo_tv", "cispo", "vespo", "m2po"):
    CONFIGS[f"d=16: {loss}"] = replace(GENTLE, staleness=16, loss=loss)
GROUPS = {"chapter": ([0, 1, 2], 0), "seeds_3_5": ([3, 4, 5], 0), "warm_1": ([0, 1, 2], 1)}

if __name__ == "__main__":
    for group in sys.argv[1:] or list(GROUPS):
        seeds, warm = GROUPS[group]
        cfgs = {k: replace(v, init_seed=warm) for k, v in CONFIGS.items()}
        runs = compare(cfgs, seeds=seeds, progress=False)
        per_run = summary(runs)
        auc = per_run.pivot(index="run", columns="seed", values="mean").loc[list(cfgs)]
        auc["mean"] = auc.mean(axis=1)
        print(f"\n== {group}: seeds {seeds}, warm start {warm} ==")
        print(f"start accuracy {per_run['start'].min():.3f}-{per_run['start'].max():.3f}")
        print("AUC (mean held-out accuracy after the start):\n", auc.round(3).to_string())
        steps = runs[runs["time/step"].notna()]
        cols = ["entropy/mean", "clip/low_frac", "clip/active_frac", "mismatch/abs_gap", "is/weight_mean",
                "is/zeroed_frac", "is/truncated_frac", "is/ess", "opm/masked_frac", "is/masked_frac", "phi/mean",
                "kl/k3"]
        cols = [c for c in cols if c in steps]
        print("diagnostics (mean over steps and seeds):\n",
              steps.groupby("run")[cols].mean().loc[list(cfgs)].round(4).to_string())
        print("tail mass under top-p 0.9 (mean -log S of the tokens it draws), warm start and final policies:")
        for seed in seeds:
            start = sampler_gap(cfgs["float32"], seed=seed, top_p=0.9)
            print(f"  warm start seed {seed}: mean -log S {-start['gap'].mean():.4f}")
        for name in ("float32", "top-p, trainer's π_old"):
            for seed in seeds:
                key = runs[(runs["run"] == name) & (runs["seed"] == seed)]["key"].iloc[0]
                gap = sampler_gap(key, seed=seed, top_p=0.9)
                print(f"  {name} seed {seed}: mean -log S {-gap['gap'].mean():.4f}")
        for dtype in ("bfloat16", "float16", "float8"):
            for seed in seeds:
                g = sampler_gap(cfgs["float32"], seed=seed, sampler_dtype=dtype)
                print(f"  warm start {dtype} seed {seed}: token |gap| {g['gap'].abs().mean():.4f}, "
                      f"p<0.5 {g[g.p_trainer < 0.5]['gap'].abs().mean():.4f}, "
                      f"p>0.9 {g[g.p_trainer > 0.9]['gap'].abs().mean():.5f}, "
                      f"seq |sum| {g.groupby('response')['gap'].sum().abs().mean():.4f}")

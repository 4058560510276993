"""How far a lower-precision copy of the policy is from the float32 trainer on the same tokens (groundwork for the
sampler/trainer mismatch chapter): per-token |log π_fp32 - log π_low| and its per-sequence sum, for the warm start
and for a trained, more peaked policy, against the token's probability.

Run: XXPO_CACHE=/work/main/.xxpo_cache .venv/bin/python benchmarks/probes/precision_mismatch/mismatch.py
(under a minute once chapter 8's runs are cached; the trained policy is chapter 8's "no baseline, G=1" run, seed 0).
Results: REPORT.md.
"""

import copy
import random
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from xxpo_lab import Config, train
from xxpo_lab.batch import concat
from xxpo_lab.loop import collect
from xxpo_lab.measure import sample_batch
from xxpo_lab.policy import token_logp
from xxpo_lab.runs import final_state

pd.set_option("display.width", 200)


def gaps(policy, b, dtype):
    """Per valid token: log π under float32 and under a `dtype` copy of the policy, on the batch's tokens."""
    low = copy.deepcopy(policy).to(dtype)
    with torch.no_grad():
        ref = token_logp(policy, b.prompt_ids, b.prompt_mask, b.resp_ids, 1.0)
        other = token_logp(low, b.prompt_ids, b.prompt_mask, b.resp_ids, 1.0)
    rows, t = b.mask.nonzero(as_tuple=True)
    return pd.DataFrame({"row": rows.numpy(), "t": t.numpy(), "logp": ref[rows, t].numpy(),
                         "gap": (other - ref)[rows, t].float().numpy()})


if __name__ == "__main__":
    BASE = Config(task="reverse", lr=3e-4, steps=60, eval_every=10, loss="ppo", adv="none", G=1, P=128)
    trained = final_state(train(BASE, progress=False))
    out = []
    for name in ("warm start", "trained (ch. 8, no baseline)"):
        for seed in (0, 1, 2):
            if name == "warm start":
                state, b = sample_batch(replace(BASE, P=256), seed=seed)
            else:  # 256 responses sampled by the trained policy itself
                state = trained
                rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
                b, _ = collect(state, state.policy, 0, rng, gen, {})
                b2, _ = collect(state, state.policy, 0, rng, gen, {})
                b = concat([b, b2], state.tokenizer.pad_token_id)
            for dtype in (torch.bfloat16, torch.float16):
                g = gaps(state.policy, b, dtype)
                seq = g.groupby("row")["gap"].sum()
                p = np.exp(g["logp"])
                out.append({"policy": name, "seed": seed, "dtype": str(dtype).split(".")[1],
                            "token |gap| mean": g["gap"].abs().mean(), "token |gap| max": g["gap"].abs().max(),
                            "|gap| p<0.5": g.loc[p < 0.5, "gap"].abs().mean(),
                            "|gap| p>0.9": g.loc[p > 0.9, "gap"].abs().mean(),
                            "seq |sum| mean": seq.abs().mean(), "seq |sum| max": seq.abs().max(),
                            "mean p": p.mean()})
    print(pd.DataFrame(out).round(4).to_string(index=False))

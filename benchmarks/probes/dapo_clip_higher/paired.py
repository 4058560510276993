"""Paired-by-seed differences (eps_high 0.2 minus others) for a tag family. python paired.py TAGPREFIX"""
import json
import sys

import pandas as pd
from summarize import summarise

prefix = sys.argv[1]
rows = pd.DataFrame([summarise(json.loads(line)) for line in open("/tmp/dapo_probe/runs.jsonl")])
r = rows[rows.tag.str.startswith(prefix)]
for col in ["ent_mean", "ent1", "acc1", "acc_mean", "high"]:
    p = r.pivot_table(index="seed", columns="eps_hi", values=col)
    print(col)
    print(p.round(3).to_string())
    for e in [c for c in p.columns if c != 0.2]:
        d = (p[0.2] - p[e]).dropna()
        print(f"  0.2 minus {e}: mean {d.mean():+.4f}  sd {d.std():.4f}  se {d.std() / len(d) ** .5:.4f}  "
              f"0.2 larger on {(d > 0).sum()}/{len(d)} seeds")

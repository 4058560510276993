"""Upper-clip rate by sampler-probability bin (A>0 tokens), pooled over the seeds of each tag.
python bins.py [runs.jsonl] [tag-prefix]"""
import json
import sys

import pandas as pd

BINS = [0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/dapo_probe/runs.jsonl"
prefix = sys.argv[2] if len(sys.argv) > 2 else ""
out = []
for line in open(path):
    r = json.loads(line)
    if not r["tag"].startswith(prefix) or "probe/bin0_pos_n" not in r["rows"][0]:
        continue
    df = pd.DataFrame(r["rows"][:-1])
    row = {"tag": r["tag"], "seed": r["seed"]}
    tot = sum(df[f"probe/bin{i}_pos_n"].sum() for i in range(6))
    for i in range(6):
        npos, ncl = df[f"probe/bin{i}_pos_n"].sum(), df[f"probe/bin{i}_clip_n"].sum()
        row[f"[{BINS[i]},{BINS[i+1]})"] = f"{ncl / max(npos, 1):.3f} ({npos / tot:.2f})"
    out.append(row)
pd.set_option("display.width", 250)
print("each cell: share of A>0 tokens in the bin that the upper clip blocks (share of A>0 tokens in the bin)")
print(pd.DataFrame(out).to_string(index=False))

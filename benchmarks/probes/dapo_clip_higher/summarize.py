"""Summarise runs.jsonl: one line per (tag, seed) and per-tag means.  python summarize.py [runs.jsonl] [tag-prefix]"""
import json
import sys

import pandas as pd


def summarise(rec):
    df = pd.DataFrame(rec["rows"])
    tr = df[df.step < rec["config"]["steps"]]
    ev = df["eval/accuracy"].dropna()
    ent = tr["entropy/mean"]
    pr = lambda k: tr[f"probe/{k}_sum"].sum() / max(tr[f"probe/{k}_n"].sum(), 1)
    n = lambda k: tr[f"probe/{k}_n"].sum()
    c = rec["config"]
    return {
        "tag": rec["tag"], "seed": rec["seed"], "task": c["task"], "lr": c["lr"], "ExM": f"{c['epochs']}x{c['minibatches']}",
        "P": c["P"], "G": c["G"], "steps": c["steps"], "eps_hi": c["eps_high"], "run_s": round(rec["run_s"], 1),
        "ent0": ent.iloc[:3].mean(), "ent1": ent.iloc[-5:].mean(), "ent_mean": ent.mean(),
        "high": tr["clip/high_frac"].mean(), "low": tr["clip/low_frac"].mean(),
        "acc0": ev.iloc[0], "acc1": ev.iloc[-1], "acc_mean": ev.mean(), "acc_max": ev.max(),
        "train_acc_last5": tr["reward/correct_frac"].iloc[-5:].mean(),
        "zero_std": tr["adv/zero_std_frac"].mean(),
        "p_all": pr("p_all"), "p_pos": pr("p_pos"), "p_clipH": pr("p_clip_high"), "n_clipH": n("p_clip_high"),
        "p_would02": pr("p_would_clip02"), "p_clipL": pr("p_clip_low"), "dp_clipH": pr("dp_clip_high"),
    }


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/dapo_probe/runs.jsonl"
    prefix = sys.argv[2] if len(sys.argv) > 2 else ""
    recs = [json.loads(line) for line in open(path)]
    rows = pd.DataFrame([summarise(r) for r in recs if r["tag"].startswith(prefix)])
    pd.set_option("display.width", 250, "display.max_columns", 40, "display.max_rows", 500)
    print(rows.round(3).to_string(index=False))
    num = [c for c in rows.columns if c not in ("tag", "seed", "task", "ExM") and rows[c].dtype != object]
    print()
    print(rows.groupby(["tag"], sort=False)[["eps_hi", "ent0", "ent1", "ent_mean", "high", "low", "acc0", "acc1", "acc_mean",
                                             "p_all", "p_pos", "p_clipH", "p_would02", "p_clipL", "run_s"]].mean().round(3).to_string())

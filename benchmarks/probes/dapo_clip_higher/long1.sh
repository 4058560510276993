#!/bin/bash
# longer horizon: reverse, lr 1e-4, 4x4, 150 steps, eps_high 0.2 / 0.28 / 0.4, seeds 0,1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XXPO_CACHE=/tmp/dapo_probe/cache
PY=/work/main/.venv/bin/python
for e in 0.2 0.28 0.4; do
 $PY driver.py runs.jsonl tag=L_rev_lr1e-4_4x4_s150_e$e task=reverse loss=dapo lr=1e-4 epochs=4 minibatches=4 steps=150 eval_every=25 eps_high=$e seeds=0,1
done

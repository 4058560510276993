#!/bin/bash
# multi-seed sweep of the two candidate regimes: eps_high 0.2 / 0.28 / 0.4 / 100 (no upper clip), seeds 0,1,2
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XXPO_CACHE=/tmp/dapo_probe/cache
PY=/work/main/.venv/bin/python
for e in 0.2 0.28 0.4 100; do
 $PY driver.py runs.jsonl tag=M_rev_lr1e-4_8x4_e$e task=reverse loss=dapo lr=1e-4 epochs=8 minibatches=4 steps=60 eval_every=20 eps_high=$e seeds=0,1,2
done
for e in 0.2 0.28 0.4 100; do
 $PY driver.py runs.jsonl tag=M_cd_lr5e-5_8x4_e$e task=countdown loss=dapo lr=5e-5 epochs=8 minibatches=4 steps=60 eval_every=20 eps_high=$e seeds=0,1,2
done

#!/bin/bash
# screen 1: seed 0, eps_high 0.2 vs 0.28, several regimes; sequential, one thread
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XXPO_CACHE=/tmp/dapo_probe/cache
PY=/work/main/.venv/bin/python
run() { $PY driver.py runs.jsonl "$@" seeds=0; }
for e in 0.2 0.28; do
 run tag=S1A_cd_lr1e-4_2x4_e$e task=countdown loss=dapo lr=1e-4 epochs=2 minibatches=4 steps=60 eval_every=20 eps_high=$e
 run tag=S1B_cd_lr1e-4_4x4_e$e task=countdown loss=dapo lr=1e-4 epochs=4 minibatches=4 steps=60 eval_every=20 eps_high=$e
 run tag=S1D_rev_lr3e-4_2x4_e$e task=reverse loss=dapo lr=3e-4 epochs=2 minibatches=4 steps=60 eval_every=20 eps_high=$e
 run tag=S1E_rev_lr1e-4_4x4_e$e task=reverse loss=dapo lr=1e-4 epochs=4 minibatches=4 steps=60 eval_every=20 eps_high=$e
 run tag=S1F_rev_lr3e-4_4x4_e$e task=reverse loss=dapo lr=3e-4 epochs=4 minibatches=4 steps=60 eval_every=20 eps_high=$e
done

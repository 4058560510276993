#!/bin/bash
# screen 2: seed 0, eps_high 0.2 vs 0.4; more updates per rollout, weaker warm start (more entropy)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XXPO_CACHE=/tmp/dapo_probe/cache
PY=/work/main/.venv/bin/python
run() { $PY driver.py runs.jsonl "$@" seeds=0; }
for e in 0.2 0.4; do
 run tag=S2R1_rev_lr1e-4_8x4_e$e task=reverse loss=dapo lr=1e-4 epochs=8 minibatches=4 steps=60 eval_every=20 eps_high=$e
 run tag=S2R2_rev_lr1e-4_4x4_ws0.2_e$e task=reverse loss=dapo lr=1e-4 epochs=4 minibatches=4 steps=60 eval_every=20 eps_high=$e warm_start_acc=0.2
 run tag=S2R3_rev_lr3e-4_2x4_ws0.2_s100_e$e task=reverse loss=dapo lr=3e-4 epochs=2 minibatches=4 steps=100 eval_every=25 eps_high=$e warm_start_acc=0.2
 run tag=S2C1_cd_lr5e-5_8x4_e$e task=countdown loss=dapo lr=5e-5 epochs=8 minibatches=4 steps=60 eval_every=20 eps_high=$e
 run tag=S2C2_cd_lr1e-4_4x4_ws0.2_e$e task=countdown loss=dapo lr=1e-4 epochs=4 minibatches=4 steps=60 eval_every=20 eps_high=$e warm_start_acc=0.2
done

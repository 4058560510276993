#!/bin/bash
# screen 4: seed 0, eps_high 0.2 / 0.4 / 100 (no upper clip); small minibatches = many updates per rollout
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XXPO_CACHE=/tmp/dapo_probe/cache
PY=/work/main/.venv/bin/python
run() { $PY driver.py runs.jsonl "$@" seeds=0; }
for e in 0.2 0.4 100; do
 run tag=S4a_rev_lr1e-4_4x16_e$e task=reverse loss=dapo lr=1e-4 epochs=4 minibatches=16 steps=60 eval_every=20 eps_high=$e
 run tag=S4b_rev_lr1e-4_4x8_e$e task=reverse loss=dapo lr=1e-4 epochs=4 minibatches=8 steps=60 eval_every=20 eps_high=$e
 run tag=S4c_cd_lr1e-4_4x8_e$e task=countdown loss=dapo lr=1e-4 epochs=4 minibatches=8 steps=60 eval_every=20 eps_high=$e
done

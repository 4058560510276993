#!/bin/bash
# screen 6: countdown with a stronger warm start (most groups contain several valid answers), seeds 0,1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XXPO_CACHE=/tmp/dapo_probe/cache
PY=/work/main/.venv/bin/python
for e in 0.2 0.28 0.4 100; do
 $PY driver.py runs.jsonl tag=S6a_cd2_ws0.6_lr1e-4_8x4_e$e task=countdown difficulty=2 warm_start_acc=0.6 loss=dapo lr=1e-4 epochs=8 minibatches=4 steps=60 eval_every=20 eps_high=$e seeds=0,1
done
for e in 0.2 100; do
 $PY driver.py runs.jsonl tag=S6b_cd3_ws0.5_lr1e-4_8x4_e$e task=countdown warm_start_acc=0.5 loss=dapo lr=1e-4 epochs=8 minibatches=4 steps=60 eval_every=20 eps_high=$e seeds=0,1
done

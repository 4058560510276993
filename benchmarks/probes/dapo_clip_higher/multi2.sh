#!/bin/bash
# third seed of the countdown-d2 regime (screen6 ran seeds 0,1 under the same tags)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XXPO_CACHE=/tmp/dapo_probe/cache
PY=/work/main/.venv/bin/python
for e in 0.2 0.28 0.4 100; do
 $PY driver.py runs.jsonl tag=S6a_cd2_ws0.6_lr1e-4_8x4_e$e task=countdown difficulty=2 warm_start_acc=0.6 loss=dapo lr=1e-4 epochs=8 minibatches=4 steps=60 eval_every=20 eps_high=$e seeds=2
done

#!/bin/bash
# screen 5: countdown difficulty 2 (most problems have 2 valid orderings), eps_high 0.2 / 0.4 / 100
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XXPO_CACHE=/tmp/dapo_probe/cache
PY=/work/main/.venv/bin/python
run() { $PY driver.py runs.jsonl "$@" seeds=0; }
for e in 0.2 0.4 100; do
 run tag=S5a_cd2_lr1e-4_4x8_e$e task=countdown difficulty=2 loss=dapo lr=1e-4 epochs=4 minibatches=8 steps=60 eval_every=20 eps_high=$e
 run tag=S5b_cd2_lr3e-4_2x4_e$e task=countdown difficulty=2 loss=dapo lr=3e-4 epochs=2 minibatches=4 steps=60 eval_every=20 eps_high=$e
done

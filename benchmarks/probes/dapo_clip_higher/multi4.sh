#!/bin/bash
# extra seeds 3,4,5 of the recommended regime, no upper clip (eps_high 100)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XXPO_CACHE=/tmp/dapo_probe/cache
PY=/work/main/.venv/bin/python
$PY driver.py runs.jsonl tag=M_rev_lr1e-4_8x4_e100 task=reverse loss=dapo lr=1e-4 epochs=8 minibatches=4 steps=60 eval_every=20 eps_high=100 seeds=3,4,5

#!/bin/bash
# extra seeds 3,4,5 of the recommended regime for eps_high 0.2 vs 0.28 (is the 0.2-vs-0.28 entropy gap resolvable?)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XXPO_CACHE=/tmp/dapo_probe/cache
PY=/work/main/.venv/bin/python
for e in 0.2 0.28 0.4; do
 $PY driver.py runs.jsonl tag=M_rev_lr1e-4_8x4_e$e task=reverse loss=dapo lr=1e-4 epochs=8 minibatches=4 steps=60 eval_every=20 eps_high=$e seeds=3,4,5
done

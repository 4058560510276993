#!/bin/bash
# screen 3: seed 0, eps_high 0.2 vs 0.4; aggressive lr, big groups, longer strings, temperature
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XXPO_CACHE=/tmp/dapo_probe/cache
PY=/work/main/.venv/bin/python
run() { $PY driver.py runs.jsonl "$@" seeds=0; }
for e in 0.2 0.4; do
 run tag=S3a_rev_lr3e-4_8x4_e$e task=reverse loss=dapo lr=3e-4 epochs=8 minibatches=4 steps=60 eval_every=20 eps_high=$e
 run tag=S3b_rev_ws0.2_P8G32_4x4_e$e task=reverse loss=dapo lr=1e-4 epochs=4 minibatches=4 P=8 G=32 steps=60 eval_every=20 eps_high=$e warm_start_acc=0.2
 run tag=S3c_cd_P8G32_4x4_e$e task=countdown loss=dapo lr=1e-4 epochs=4 minibatches=4 P=8 G=32 steps=60 eval_every=20 eps_high=$e
 run tag=S3d_rev_d8_4x4_e$e task=reverse difficulty=8 T_max=10 loss=dapo lr=1e-4 epochs=4 minibatches=4 steps=60 eval_every=20 eps_high=$e
 run tag=S3e_rev_temp1.5_4x4_e$e task=reverse temperature=1.5 loss=dapo lr=1e-4 epochs=4 minibatches=4 steps=60 eval_every=20 eps_high=$e
done

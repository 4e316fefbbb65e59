#!/usr/bin/env bash
# Issue 17, second run: a wider/deeper DiNAT (embed 40, depths 2-4-2, heads 2-4-8,
# 0.97 M parameters, 35 M multiply-adds at 28x28), same recipe, 35 epochs (the
# machine's files do not outlive a sitting, so the run has to fit in one).
# Resumable: run again and it continues.
cd /work/train17b
bin=${NA_BIN:-/work/train17b/na-d881be8}
resume=""
[ -f runs/fashion_dinat_v2/checkpoint.json ] && resume="--resume"
exec "$bin" train --config fashion_dinat_v2.json --epochs 35 --batch-size 32 --lr 1e-3 --min-lr 1e-5 \
  --weight-decay 0.05 --warmup-epochs 1 --label-smoothing 0.1 --shift 2 --erase-prob 0.25 \
  --ema-decay 0.999 --clip-grad-norm 1 --val-images 5000 --eval-every 1 --seed 0 \
  --out runs/fashion_dinat_v2 $resume

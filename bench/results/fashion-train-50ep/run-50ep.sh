#!/usr/bin/env bash
# Issue 17, first long run: the shipped `fashion_dinat` architecture (embed 32, depths 2-2-4,
# heads 1-2-4, 866,944 parameters, 25 M multiply-adds at 28x28) with the full recipe, 50 epochs.
# Every option below is `na train`'s default written out (checkpoint.json's "options").
# Resumable: run again and it continues from the last checkpoint set.
cd /work/train17
bin=${NA_BIN:-/work/train17/na-4f14b73}
resume=""
[ -f runs/fashion_dinat_50ep/checkpoint.json ] && resume="--resume"
exec "$bin" train --model fashion_dinat --epochs 50 --batch-size 32 --lr 1e-3 --min-lr 1e-5 \
  --weight-decay 0.05 --warmup-epochs 1 --label-smoothing 0.1 --shift 2 --erase-prob 0.25 \
  --ema-decay 0.999 --clip-grad-norm 1 --val-images 5000 --eval-every 1 --seed 0 \
  --out runs/fashion_dinat_50ep $resume

#!/usr/bin/env bash
# Issue 17, third run: a warm restart of the second run's chosen weights
# (bench/results/fashion-train-v2, validation 92.70%): a second cosine cycle of
# 24 epochs at half the peak learning rate, same recipe otherwise, seed 1.
# init-v2.safetensors is that model: `git show b4fc231:examples/fashion/fashion_dinat.safetensors`;
# fashion_dinat.json is crates/na-model/assets/fashion_dinat.json.
# Resumable: run again and it continues.
cd "${WORK:-/work/train17c}"
bin=${NA_BIN:-na}
resume=""
[ -f runs/fashion_dinat_v3/checkpoint.json ] && resume="--resume"
exec "$bin" train --config fashion_dinat.json --init init-v2.safetensors --epochs 24 --batch-size 32 \
  --lr 5e-4 --min-lr 1e-5 --weight-decay 0.05 --warmup-epochs 1 --label-smoothing 0.1 --shift 2 \
  --erase-prob 0.25 --ema-decay 0.999 --clip-grad-norm 1 --val-images 5000 --eval-every 1 --seed 1 \
  --out runs/fashion_dinat_v3 $resume

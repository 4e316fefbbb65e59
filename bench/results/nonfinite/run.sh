#!/usr/bin/env bash
# Interleaved base/new runs of `na bench`, 1 thread, f32.
set -u
out=${OUT:-/tmp/bench/raw}; mkdir -p $out
cases=(
 "2d56_k7|--shape 1,56,56,4,32 --kernel-size 7,7"
 "2d56_k7_causal_rpb|--shape 1,56,56,4,32 --kernel-size 7,7 --causal true,true --rpb"
 "1d_k7_s2_d2|--shape 1,4096,4,32 --kernel-size 7 --stride 2 --dilation 2"
 "1d_k13_s2_d3_rpb|--shape 1,4096,4,32 --kernel-size 13 --stride 2 --dilation 3 --rpb"
 "dinat_l0|--case dinat-l0"
)
for round in 1 2 3 4; do
 for c in "${cases[@]}"; do
  name=${c%%|*}; args=${c#*|}
  for pass in fwd bwd; do
   extra=""; [ $pass = bwd ] && extra="--backward"
   order="base new"; [ $((round % 2)) = 0 ] && order="new base"
   for b in $order; do
     ${NA_BIN_DIR:-/tmp}/na-$b bench $args $extra --threads 1 --iters 30 --warmup 3 --max-seconds 8 --json $out/${name}_${pass}_${b}_r$round.json >/dev/null 2>&1 || echo "fail $name $pass $b"
   done
  done
 done
done
echo done

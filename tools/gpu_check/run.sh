#!/usr/bin/env bash
# The prepared GPU check of issue 14, for a machine with an NVIDIA GPU, the CUDA
# toolkit (NVRTC) and Python with PyTorch, but no Rust. Run from the repository root.
#
# Built beforehand on a machine with Rust (tools/gpu_check/build.sh puts them in .gpu/):
#   .gpu/na          release `na` binary
#   .gpu/gpu         na-cuda's tests/gpu.rs test binary (release)
#   .gpu/compile     na-cuda's tests/compile.rs test binary (release)
#   .gpu/lib         na-cuda's unit-test binary (release)
#
# Stages, each under its own time limit, every log and JSON in $WORK, which is
# packed into $OUT/results.tar.gz after each stage (so a run cut short still
# brings back what it finished):
#   1. machine facts (nvidia-smi, nvcc, NVRTC found, compute-sanitizer)
#   2. na-cuda's test binaries with NA_CUDA_REQUIRE_GPU=1 (a missing GPU fails)
#   3. NATTEN's golden fixtures through `na attn --device cuda` (and --device cpu)
#   4. `na bench --device cuda` on BENCHMARKS.md's GPU suite (f16 forward and
#      forward+backward) and bench/gpu_baselines.py (PyTorch SDPA) in the same run
#   5. compute-sanitizer memcheck and racecheck on small `na attn` cases
#   6. ("more") bf16 and f32 forward, FlexAttention forward
#
# Environment: OUT (results folder, default /tmp/gpu-check-out), BIN (default .gpu),
# STAGES (default "facts tests golden bench sanitizer more"; add "compile" for
# tests/compile.rs),
# BENCH_SECONDS (per case and pass, default 1), DEADLINE_S (the whole run's
# budget in seconds, default 570: later commands are cut short or skipped).
set -u
OUT=${OUT:-/tmp/gpu-check-out}
BIN=$(realpath "${BIN:-.gpu}")
STAGES=${STAGES:-facts tests golden bench sanitizer more}
BENCH_SECONDS=${BENCH_SECONDS:-1}
DEADLINE_S=${DEADLINE_S:-570}
ROOT=$(pwd)
WORK=/tmp/gpu-check-work
rm -rf "$WORK"; mkdir -p "$WORK" "$OUT"
exec > >(tee -a "$OUT/check.log") 2>&1
export NA_MAX_MEMORY_GIB=100 PYTHONUNBUFFERED=1 RUST_BACKTRACE=1 NA_CUDA_CACHE_DIR=/tmp/na-cuda-cache
start=$(date +%s)
pack() { tar -C "$WORK" -czf "$OUT/results.tar.gz.tmp" . && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"; }
stage() { echo; echo "=== $1 (t+$(( $(date +%s) - start )) s)"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
# run LIMIT LOG CMD...: one command under a time limit (cut to what is left
# before DEADLINE_S), its output in $WORK/LOG too.
run() {
  local limit=$1 log=$2; shift 2
  local left=$(( start + DEADLINE_S - $(date +%s) - 10 ))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -le 5 ]; then echo "[skipped, no time left: $*]" | tee -a "$WORK/$log"; echo "skipped $log $*" >> "$WORK/rcs.txt"; return 0; fi
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$WORK/$log"
  local rc=${PIPESTATUS[0]}
  echo "[rc $rc: $*]" | tee -a "$WORK/$log"
  echo "$rc $log $*" >> "$WORK/rcs.txt"
  return 0
}

# NVRTC: na-cuda (cudarc, dynamic loading) looks for libnvrtc.so or libnvrtc.so.12;
# CUDA 13 ships libnvrtc.so.13, so link the newest found under the plain name.
nvrtc=$(ls -1 /usr/local/cuda/lib64/libnvrtc.so.1[0-9]* /usr/local/cuda*/targets/x86_64-linux/lib/libnvrtc.so.1[0-9]* \
  $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null | sed 's|$|/libnvrtc.so.13|') \
  2>/dev/null | grep -v builtins | head -1)
mkdir -p /tmp/nvrtc-link
if [ -n "$nvrtc" ]; then ln -sf "$nvrtc" /tmp/nvrtc-link/libnvrtc.so; fi
export LD_LIBRARY_PATH=/tmp/nvrtc-link:$(dirname "${nvrtc:-/usr/local/cuda/lib64/x}"):/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# na bench and gpu_baselines.py settings; the GPU suite's case ids.
b=(--device cuda --warmup 1 --iters 20 --max-seconds "$BENCH_SECONDS")
g=(--warmup 1 --iters 20 --max-seconds "$BENCH_SECONDS")
CASES="nat-l0 nat-l0-b64 dinat-l0 nat-l2 hires seq-1d seq-1d-blocked vol-3d flux-2d flux-2d-s16"

if want facts; then
  stage "1. machine facts"
  {
    echo "commit $(cat "$BIN/COMMIT" 2>/dev/null || git rev-parse HEAD 2>/dev/null)"
    date -u
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm --format=csv
    nvcc --version
    echo "NVRTC: $nvrtc"
    ls -l /tmp/nvrtc-link
    command -v compute-sanitizer && compute-sanitizer --version
    python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'
    nproc; free -g
  } 2>&1 | tee "$WORK/facts.txt"
  pack
fi

if want tests; then
  stage "2. na-cuda tests (NA_CUDA_REQUIRE_GPU=1)"
  export NA_CUDA_REQUIRE_GPU=1 NA_CUDA_REQUIRE_NVRTC=1
  (cd crates/na-cuda && run 30 tests-lib.log "$BIN/lib" --test-threads 4)
  (cd crates/na-cuda && run 220 tests-gpu.log "$BIN/gpu" --test-threads 8 --nocapture)
  # tests/compile.rs (every instantiation to sm_80 and sm_90 cubin, CPU-only
  # work) runs when `compile` is in STAGES.
  if want compile; then (cd crates/na-cuda && run 240 tests-compile.log "$BIN/compile"); fi
  pack
fi

if want golden; then
  stage "3. golden fixtures through na attn"
  run 150 golden-cuda.log python3 tools/gpu_check/golden_cli.py --na "$BIN/na" --device cuda --json "$WORK/golden-cuda.json"
  pack
fi

if want bench; then
  stage "4. na bench --device cuda (GPU suite) and bench/gpu_baselines.py, same run"
  for c in $CASES; do run 30 bench-na.log "$BIN/na" bench "${b[@]}" --case "$c" --dtype f16 --json "$WORK/na-fwd-f16-$c.json"; done
  pack
  run 90 bench-baselines.log python3 bench/gpu_baselines.py "${g[@]}" --impl torch-sdpa --dtype f16 --json "$WORK/sdpa-fwd-f16.json"
  pack
  for c in $CASES; do run 45 bench-na.log "$BIN/na" bench "${b[@]}" --case "$c" --dtype f16 --backward --json "$WORK/na-fwdbwd-f16-$c.json"; done
  pack
  run 90 bench-baselines.log python3 bench/gpu_baselines.py "${g[@]}" --impl torch-sdpa --dtype f16 --backward --json "$WORK/sdpa-fwdbwd-f16.json"
  pack
fi

if want sanitizer && command -v compute-sanitizer >/dev/null; then
  stage "5. compute-sanitizer"
  few=na1d_causal_k7_s2_L8,na2d_k3x5_s2x3_scale1p3_d16,rpb_na2d_k5x3_d2x3_nondiv,na3d_mixed_causal_dil_stride
  for tool in memcheck racecheck; do
    run 90 "sanitizer-$tool.log" python3 tools/gpu_check/golden_cli.py --na "$BIN/na" --device cuda --case "$few" \
      --timeout 60 --wrap "compute-sanitizer --tool $tool --error-exitcode 9" --json "$WORK/sanitizer-$tool.json"
  done
  pack
fi

if want more; then
  stage "6. more benchmarks"
  for c in $CASES; do run 30 bench-na.log "$BIN/na" bench "${b[@]}" --case "$c" --dtype bf16 --json "$WORK/na-fwd-bf16-$c.json"; done
  pack
  for c in $CASES; do run 30 bench-na.log "$BIN/na" bench "${b[@]}" --case "$c" --dtype f32 --json "$WORK/na-fwd-f32-$c.json"; done
  pack
  run 150 bench-baselines.log python3 bench/gpu_baselines.py "${g[@]}" --impl torch-flex --dtype f16 --json "$WORK/flex-fwd-f16.json"
  pack
fi

stage "done"
cat "$WORK/rcs.txt" 2>/dev/null
pack

#!/usr/bin/env bash
# Side-by-side timing of two builds of na-core's `kernel_loop` example (one
# fused forward, or forward + backward, on the calling thread in a loop):
#   bash bench/results/fused-key-rows/run.sh OLD_BIN NEW_BIN [ROUNDS] > results.json
# Each round runs every shape on OLD then NEW, back to back; the figure kept
# per shape and build is the smallest per-call minimum over the rounds.
set -euo pipefail
old=$1 new=$2 rounds=${3:-3}
shapes=(
  "nat-l0|56 56 2 32 7 1 200"
  "dinat-l0|56 56 2 32 7 8 200"
  "nat-l0-avx2|56 56 2 32 7 1 200 fwd avx2"
  "dinat-l0-avx2|56 56 2 32 7 8 200 fwd avx2"
  "fashion-l0-d2-avx2|14 14 1 32 5 2 3000 fwd avx2"
  "nat-l0-bwd-avx2|56 56 2 32 7 1 40 bwd avx2"
  "nat-l2|14 14 8 32 7 1 800"
  "fashion-l0-d1|14 14 1 32 5 1 3000"
  "fashion-l0-d2|14 14 1 32 5 2 3000"
  "fashion-l1|7 7 2 32 5 1 4000"
  "hires|128 128 4 32 13 1 8"
  "dinat-l0-bwd-avx2|56 56 2 32 7 8 40 bwd avx2"
  "fashion-l0-d1-bwd-avx2|14 14 1 32 5 1 600 bwd avx2"
  "hires-bwd|128 128 4 32 13 1 3 bwd"
  "nat-l0-bwd|56 56 2 32 7 1 40 bwd"
  "fashion-l0-d2-bwd|14 14 1 32 5 2 600 bwd"
)
tmp=$(mktemp)
for r in $(seq "$rounds"); do
  for s in "${shapes[@]}"; do
    name=${s%%|*} args=${s#*|}
    for which in old new; do
      bin=$old; [ "$which" = new ] && bin=$new
      # shellcheck disable=SC2086
      ms=$("$bin" $args | sed -n 's/.*min \([0-9.]*\) ms.*/\1/p')
      echo "$name $which $ms" >> "$tmp"
    done
  done
done
python3 - "$tmp" "$rounds" <<'PY'
import json, sys, collections
best = collections.defaultdict(lambda: float("inf"))
order = []
for line in open(sys.argv[1]):
    name, which, ms = line.split()
    if name not in order: order.append(name)
    best[(name, which)] = min(best[(name, which)], float(ms))
rows = [{"case": n, "old_ms": best[(n, "old")], "new_ms": best[(n, "new")],
         "change_pct": round(100 * (best[(n, "new")] / best[(n, "old")] - 1), 1)} for n in order]
print(json.dumps({"rounds": int(sys.argv[2]), "unit": "ms per call, min", "cases": rows}, indent=1))
PY
rm -f "$tmp"

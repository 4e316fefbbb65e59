#!/usr/bin/env bash
# Side-by-side timing of two builds of na-core's `kernel_loop` example (one
# fused forward, or forward + backward, on the calling thread in a loop):
#   bash bench/kernel_side_by_side.sh OLD_BIN NEW_BIN ROUNDS SHAPES > results.json
# SHAPES: one case per line, `name|kernel_loop arguments` (see
# bench/results/fused-key-rows/shapes.txt).
# Each round runs every shape on OLD then NEW, back to back; the figure kept
# per shape and build is the smallest per-call minimum over the rounds.
set -euo pipefail
old=$1 new=$2 rounds=$3
mapfile -t shapes < "$4"
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

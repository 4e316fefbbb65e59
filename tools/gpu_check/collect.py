#!/usr/bin/env python3
"""Gathers a tools/gpu_check/run.sh results folder into bench/results/<dir>/.

Merges the per-case `na bench --json` files into one file per dtype and pass
(na-cuda-<dtype>-<pass>.json), copies the baselines' JSON, the correctness
JSON and the logs, and prints the README table (markdown) comparing na-cuda
with PyTorch SDPA (dense, the "speed of light") and FlexAttention.

  python3 tools/gpu_check/collect.py RUN_DIR [EXTRA_JSON...] --out bench/results/gpu-h200-2026-12-04
"""

import argparse
import glob
import json
import os
import re
import shutil

SUITE = ["nat-l0", "nat-l0-b64", "dinat-l0", "nat-l2", "hires", "seq-1d", "seq-1d-blocked",
         "vol-3d", "flux-2d", "flux-2d-s16"]


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("extra", nargs="*", help="more na bench / baseline JSON files (a second call)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    na, base = {}, {}
    files = glob.glob(os.path.join(a.run_dir, "*.json")) + a.extra
    for f in sorted(files):
        name = os.path.basename(f)
        if name.endswith(".txt"):
            # printed lines of gpu_baselines.py, kept when its JSON did not come back
            shutil.copy(f, os.path.join(a.out, name))
            for line in open(f):
                m = re.match(r"(\S+)\s+(torch-\S+)\s+(forward\+backward|forward)\s+median\s+([\d.]+) ms", line)
                if m:
                    ps = "fwd" if m[3] == "forward" else "fwdbwd"
                    dt = "bf16" if "bf16" in name else "f16"
                    base.setdefault((dt, ps), []).append(
                        {"case": m[1], "impl": m[2], "median_s": float(m[4]) / 1e3, "from": name})
            continue
        if name.startswith(("golden", "sanitizer")):
            shutil.copy(f, os.path.join(a.out, name))
            continue
        for r in load(f):
            key = (r["dtype"], "fwd" if r["pass"] == "forward" else "fwdbwd")
            (na if r["impl"] == "na-cuda" else base).setdefault(key, []).append(r)
    for (dt, ps), rs in na.items():
        rs.sort(key=lambda r: SUITE.index(r["case"]))
        with open(os.path.join(a.out, f"na-cuda-{dt}-{ps}.json"), "w") as f:
            json.dump(rs, f, indent=1)
    for (dt, ps), rs in base.items():
        rs = [r for r in rs if "from" not in r]
        if not rs:
            continue
        with open(os.path.join(a.out, f"baselines-{dt}-{ps}.json"), "w") as f:
            json.dump(rs, f, indent=1)
    for log in glob.glob(os.path.join(a.run_dir, "*.log")) + glob.glob(os.path.join(a.run_dir, "*.txt")):
        shutil.copy(log, os.path.join(a.out, os.path.basename(log)))

    def med(group, impl, case):
        for r in group:
            if r["case"] == case and r["impl"] == impl:
                return r["median_s"] * 1e3
        return None

    def cell(x):
        return "—" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")

    rows = ["| case | pass | na-cuda f16 ms | SDPA f16 ms (dense) | na / SDPA | Flex f16 ms | na-cuda bf16 ms | na-cuda f32 ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for ps in ("fwd", "fwdbwd"):
        for c in SUITE:
            n = med(na.get(("f16", ps), []), "na-cuda", c)
            s = med(base.get(("f16", ps), []), "torch-sdpa", c)
            fl = med(base.get(("f16", ps), []), "torch-flex", c)
            b = med(na.get(("bf16", ps), []), "na-cuda", c)
            f32 = med(na.get(("f32", ps), []), "na-cuda", c)
            ratio = f"{n / s:.2f}" if n and s else "—"
            rows.append(f"| {c} | {'forward' if ps == 'fwd' else 'fwd+bwd'} | {cell(n)} | {cell(s)} | {ratio} | {cell(fl)} | {cell(b)} | {cell(f32)} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

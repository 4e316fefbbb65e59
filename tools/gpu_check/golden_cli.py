#!/usr/bin/env python3
"""NATTEN's golden fixtures through the `na attn` binary, on a chosen device.

For every case of crates/na-core/tests/fixtures/manifest_natten021.json and
manifest_natten0175.json (RPB), runs `na attn` forward and backward (f32, the
fixtures' compute type) with `--device DEV` and compares out, lse and every
gradient with the fixture within SPEC.md's f32 tolerances (1e-4 for out and
lse, 1e-3 for gradients, absolute). Prints one line per case and writes a JSON
summary; exits 1 if any case fails or errors.

Needs numpy only (no PyTorch):

  python3 tools/gpu_check/golden_cli.py --na target/release/na --device cuda --json /tmp/golden.json
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np

FIX = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "na-core", "tests", "fixtures")
TOL = {"out": 1e-4, "lse": 1e-4, "grad_query": 1e-3, "grad_key": 1e-3, "grad_value": 1e-3, "grad_rpb": 1e-3}


def csv(v):
    return ",".join(str(int(x) if isinstance(x, bool) else x) for x in v)


def run_case(na, device, case, tmp, wrap, timeout):
    f = lambda part: os.path.join(FIX, f"{case['name']}.{part}.npy")
    o = lambda part: os.path.join(tmp, f"{case['name']}.{part}.npy")
    cmd = [na, "attn", "--device", device, "--threads", "0",
           "--query", f("query"), "--key", f("key"), "--value", f("value"),
           "--kernel-size", csv(case["kernel_size"]), "--stride", csv(case["stride"]),
           "--dilation", csv(case["dilation"]), "--causal", csv(case["causal"]),
           "--scale", repr(case["scale"]),
           "--out", o("out"), "--lse", o("lse"),
           "--grad-out", f("grad_out"), "--grad-query", o("grad_query"),
           "--grad-key", o("grad_key"), "--grad-value", o("grad_value")]
    parts = ["out", "lse", "grad_query", "grad_key", "grad_value"]
    if case["rpb"]:
        cmd += ["--rpb", f("rpb"), "--grad-rpb", o("grad_rpb")]
        parts.append("grad_rpb")
    r = subprocess.run(wrap + cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        return {"name": case["name"], "ok": False, "error": (r.stdout + r.stderr).strip()[-3000:]}
    errs = {}
    ok = True
    for part in parts:
        want = np.load(f(part)).astype(np.float64).ravel()
        got = np.load(o(part)).astype(np.float64).ravel()
        if want.shape != got.shape:
            errs[part] = f"shape {got.shape} vs {want.shape}"
            ok = False
            continue
        e = float(np.max(np.abs(got - want))) if want.size else 0.0
        if not np.isfinite(got).all():
            e = float("inf")
        errs[part] = e
        ok &= e <= TOL[part]
    return {"name": case["name"], "ok": bool(ok), "max_abs_err": errs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--na", required=True, help="the na binary")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", help="write the per-case results here")
    ap.add_argument("--case", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--wrap", default="", help="a command to run `na` under, e.g. 'compute-sanitizer --tool memcheck --error-exitcode 9'")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    args = ap.parse_args()
    wanted = set(filter(None, args.case.split(",")))
    results = []
    for manifest in ("manifest_natten021.json", "manifest_natten0175.json"):
        m = json.load(open(os.path.join(FIX, manifest)))
        with tempfile.TemporaryDirectory() as tmp:
            for case in m["cases"]:
                if wanted and case["name"] not in wanted:
                    continue
                try:
                    r = run_case(args.na, args.device, case, tmp, shlex.split(args.wrap), args.timeout)
                except subprocess.TimeoutExpired:
                    r = {"name": case["name"], "ok": False, "error": f"timed out after {args.timeout} s"}
                r["peer"] = m["peer"]
                results.append(r)
                detail = r.get("error") or " ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in r["max_abs_err"].items())
                print(f"{'ok  ' if r['ok'] else 'FAIL'} {case['name']:<36} {detail}", flush=True)
    bad = [r["name"] for r in results if not r["ok"]]
    if not results:
        print(f"no case matched --case {args.case}")
        sys.exit(1)
    print(f"{len(results) - len(bad)}/{len(results)} cases within SPEC.md's f32 tolerances on --device {args.device}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": args.device, "na": args.na, "results": results}, fh, indent=1)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

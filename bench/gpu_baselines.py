#!/usr/bin/env python3
"""GPU baselines for the operator suite of BENCHMARKS.md, timed like `na bench`.

For the device machine (PyTorch + Triton, no internet). Implementations (each
one `impl` value in the results):

  torch-sdpa   torch.nn.functional.scaled_dot_product_attention over all N
               tokens (flash / cuDNN / efficient backend, no mask): the "speed of
               light" reference; a perfect NA kernel is N/W times faster.
  torch-flex   FlexAttention (torch.compile'd) with a block mask built from the
               exact SPEC.md window (border shift, dilation groups, stride,
               causal), so it computes neighborhood attention exactly, skipping
               fully masked 128x128 blocks.

Both take contiguous heads-last inputs [B, *spatial, heads, D] and return a
heads-last output: the layout changes are timed, as in bench/baselines.py. Masks
and compilation are built outside the timed region. Timing uses CUDA events
around each run (synchronised before the clock is read); forward+backward runs
`out.backward(d_out)` with inputs that require grad.

Every result has the fields of `na bench --json` plus "gpu" and "driver";
"gflop" is the neighborhood-attention FLOP count of the case (BENCHMARKS.md) for
every impl, so GFLOP/s compare as effective throughput, "dense_gflop" is what
SDPA actually computes, and "peak_gflops" is SDPA's achieved dense GFLOP/s of
the same case and pass in the same run (the practical peak).

Without a GPU, `--list` prints the suite and `--dry-run` checks the mask
function against a literal transcription of SPEC.md on small shapes (CPU).

Examples:
  python3 bench/gpu_baselines.py --list
  python3 bench/gpu_baselines.py --dry-run
  python3 bench/gpu_baselines.py --dtype f16 --json bench/results/gpu-suite-fwd-f16-baselines.json
  python3 bench/gpu_baselines.py --dtype bf16 --backward --case flux-2d,flux-2d-s16 --json /tmp/x.json
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

# The GPU operator suite of BENCHMARKS.md.
# (id, batch, spatial, heads, head_dim, kernel, stride, dilation)
SUITE = [
    ("nat-l0", 1, [56, 56], 2, 32, [7, 7], [1], [1]),
    ("nat-l0-b64", 64, [56, 56], 2, 32, [7, 7], [1], [1]),
    ("dinat-l0", 1, [56, 56], 2, 32, [7, 7], [1], [8]),
    ("nat-l2", 1, [14, 14], 8, 32, [7, 7], [1], [1]),
    ("hires", 1, [128, 128], 4, 32, [13, 13], [1], [1]),
    ("seq-1d", 1, [32768], 1, 128, [2048], [1], [1]),
    ("seq-1d-blocked", 1, [32768], 1, 128, [2048], [2048], [1]),
    ("vol-3d", 1, [30, 48, 80], 24, 128, [18, 24, 24], [1], [1]),
    ("flux-2d", 1, [256, 256], 24, 128, [80, 80], [1], [1]),
    ("flux-2d-s16", 1, [256, 256], 24, 128, [80, 80], [16], [1]),
]

IMPLS = ["torch-sdpa", "torch-flex"]


def per_axis(values, rank):
    return list(values) * rank if len(values) == 1 else list(values)


def case_dict(c):
    cid, batch, spatial, heads, d, kernel, stride, dilation = c
    rank = len(spatial)
    return {
        "case": cid,
        "batch": batch,
        "shape": spatial,
        "heads": heads,
        "head_dim": d,
        "head_dim_v": d,
        "kernel_size": per_axis(kernel, rank),
        "stride": per_axis(stride, rank),
        "dilation": per_axis(dilation, rank),
        "causal": [False] * rank,
    }


def prod(xs):
    out = 1
    for x in xs:
        out *= x
    return out


def na_gflop(c):
    n = prod(c["shape"])
    w = prod(c["kernel_size"])
    return 4.0 * c["batch"] * c["heads"] * n * w * c["head_dim"] / 1e9


def dense_gflop(c):
    n = prod(c["shape"])
    return 4.0 * c["batch"] * c["heads"] * n * n * c["head_dim"] / 1e9


# ------------------------------------------------------------------ SPEC window


def spec_window(L, k, s, d, causal, i):
    """SPEC.md's pseudocode, literally: the keys query i attends on one axis."""
    g, ii = i % d, i // d
    Lg = L // d + (1 if g < L % d else 0)
    left, right = k // 2, k // 2 + (k % 2) - 1
    if not causal:
        lead = min((ii // s) * s + s // 2, Lg - 1)
        start = max(lead - left, 0)
        if lead + right >= Lg:
            start += Lg - right - lead - 1
        end = start + k
    else:
        lead = min((ii // s) * s + s - 1, Lg - 1)
        start = max(lead - (k - 1), 0)
        end = min(ii + 1, Lg)
    return {j * d + g for j in range(start, end)}


def axis_attends(torch, i, j, L, k, s, d, causal):
    """The same window as tensor ops (usable inside a FlexAttention mask_mod)."""
    g, ii = i % d, i // d
    gj, jj = j % d, j // d
    Lg = L // d + torch.where(g < L % d, 1, 0)
    if causal:
        lead = torch.minimum((ii // s) * s + (s - 1), Lg - 1)
        start = torch.clamp(lead - (k - 1), min=0)
        end = torch.minimum(ii + 1, Lg)
    else:
        left, right = k // 2, k // 2 + (k % 2) - 1
        lead = torch.minimum((ii // s) * s + s // 2, Lg - 1)
        start = torch.clamp(lead - left, min=0)
        start = torch.where(lead + right >= Lg, Lg - k, start)
        end = start + k
    return (g == gj) & (jj >= start) & (jj < end)


def make_mask_mod(torch, c):
    shape = c["shape"]
    rank = len(shape)
    strides = [prod(shape[a + 1:]) for a in range(rank)]

    def mask_mod(b, h, q_idx, kv_idx):
        ok = None
        for a in range(rank):
            qi = (q_idx // strides[a]) % shape[a]
            kj = (kv_idx // strides[a]) % shape[a]
            m = axis_attends(torch, qi, kj, shape[a], c["kernel_size"][a], c["stride"][a],
                             c["dilation"][a], c["causal"][a])
            ok = m if ok is None else ok & m
        return ok

    return mask_mod


def dry_run():
    """Checks the tensor mask against SPEC.md's pseudocode on small shapes (CPU)."""
    import torch

    checks = [
        ([13], [4], [3], [2], [False]),
        ([14], [3], [1], [3], [True]),
        ([9, 11], [3, 4], [2, 1], [2, 2], [False, True]),
        ([6, 5, 7], [3, 2, 3], [1, 2, 3], [2, 1, 2], [False, False, True]),
        ([16], [16], [1], [1], [False]),
    ]
    for shape, k, s, d, causal in checks:
        c = {"shape": shape, "kernel_size": k, "stride": s, "dilation": d, "causal": causal}
        n = prod(shape)
        q = torch.arange(n).view(n, 1).expand(n, n)
        kv = torch.arange(n).view(1, n).expand(n, n)
        got = make_mask_mod(torch, c)(None, None, q, kv)
        strides = [prod(shape[a + 1:]) for a in range(len(shape))]
        for qi in range(n):
            qc = [(qi // strides[a]) % shape[a] for a in range(len(shape))]
            wins = [spec_window(shape[a], k[a], s[a], d[a], causal[a], qc[a])
                    for a in range(len(shape))]
            for ki in range(n):
                kc = [(ki // strides[a]) % shape[a] for a in range(len(shape))]
                want = all(kc[a] in wins[a] for a in range(len(shape)))
                if bool(got[qi, ki]) != want:
                    raise SystemExit(f"mask mismatch for {c} at query {qc}, key {kc}")
        print(f"mask ok: shape {shape} k {k} s {s} d {d} causal {causal}")
    for c in SUITE:
        cd = case_dict(c)
        print(f"{cd['case']}: {na_gflop(cd):.3f} GFLOP (NA), {dense_gflop(cd):.1f} GFLOP (dense)")
    print("dry run ok")


# ------------------------------------------------------------------ timing


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def driver_version(torch):
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        v = out.stdout.strip().splitlines()
        if v:
            return v[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return f"unknown (torch built for CUDA {torch.version.cuda})"


def time_runs(torch, fn, warmup, iters, max_seconds):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    t_start = time.monotonic()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    while len(times) < iters:
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
        if time.monotonic() - t_start > max_seconds and len(times) >= 3:
            break
    return times


def bench_case(torch, c, impl, dtype, backward, args):
    import torch.nn.functional as F

    dev = "cuda"
    b, h, d = c["batch"], c["heads"], c["head_dim"]
    shape = c["shape"]
    n = prod(shape)
    gen = torch.Generator(device=dev).manual_seed(0)
    mk = lambda: torch.randn([b, *shape, h, d], device=dev, dtype=dtype, generator=gen)
    q, k, v = mk(), mk(), mk()
    d_out = mk()
    if backward:
        for t in (q, k, v):
            t.requires_grad_(True)

    def to_bhnd(x):  # [B, *S, H, D] -> [B, H, N, D]
        return x.reshape(b, n, h, d).transpose(1, 2)

    def to_heads_last(o):  # [B, H, N, D] -> [B, *S, H, D], contiguous
        return o.transpose(1, 2).reshape(b, *shape, h, d).contiguous()

    if impl == "torch-sdpa":
        def attn(qq, kk, vv):
            return F.scaled_dot_product_attention(qq, kk, vv)
    elif impl == "torch-flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        block_mask = create_block_mask(make_mask_mod(torch, c), B=None, H=None, Q_LEN=n,
                                       KV_LEN=n, device=dev)
        flex = torch.compile(flex_attention, dynamic=False)

        def attn(qq, kk, vv):
            return flex(qq, kk, vv, block_mask=block_mask)
    else:
        raise ValueError(impl)

    def run():
        if backward:
            for t in (q, k, v):
                t.grad = None
        out = to_heads_last(attn(to_bhnd(q), to_bhnd(k), to_bhnd(v)))
        if backward:
            out.backward(d_out)
        return out

    return time_runs(torch, run, args.warmup, args.iters, args.max_seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="print the suite and exit")
    ap.add_argument("--dry-run", action="store_true",
                    help="check the mask function against SPEC.md on the CPU and exit")
    ap.add_argument("--case", default="", help="comma-separated case ids (default: all)")
    ap.add_argument("--impl", default=",".join(IMPLS), help="comma-separated: " + ", ".join(IMPLS))
    ap.add_argument("--dtype", choices=["f16", "bf16"], default="f16")
    ap.add_argument("--backward", action="store_true", help="time forward+backward")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=20.0,
                    help="stop timing a case after this long (at least 3 runs)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    if args.list:
        print(f"{'case':<16} {'batch':>5} {'spatial':<14} {'heads x D':>9} {'window':<14} "
              f"{'dilation':<10} {'stride':<8} {'NA GFLOP':>10}")
        for c in SUITE:
            cd = case_dict(c)
            print(f"{cd['case']:<16} {cd['batch']:>5} {str(cd['shape']):<14} "
                  f"{str(cd['heads']) + 'x' + str(cd['head_dim']):>9} {str(cd['kernel_size']):<14} "
                  f"{str(cd['dilation']):<10} {str(cd['stride']):<8} {na_gflop(cd):>10.3f}")
        return 0
    if args.dry_run:
        dry_run()
        return 0

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device visible to PyTorch; use --list or --dry-run here", file=sys.stderr)
        return 2
    wanted = [x for x in args.case.split(",") if x]
    cases = [case_dict(c) for c in SUITE if not wanted or c[0] in wanted]
    unknown = set(wanted) - {c["case"] for c in cases}
    if unknown:
        print(f"unknown case(s): {sorted(unknown)}", file=sys.stderr)
        return 2
    impls = [x for x in args.impl.split(",") if x]
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    gpu, driver, commit = torch.cuda.get_device_name(), driver_version(torch), git_commit()
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    pass_name = "forward+backward" if args.backward else "forward"
    factor = 3.5 if args.backward else 1.0
    results = []
    for c in cases:
        peak = None
        for impl in (["torch-sdpa"] if "torch-sdpa" not in impls else []) + impls:
            # SDPA always runs first: its dense throughput is the case's practical peak.
            record = impl in impls
            res = dict(c, impl=impl, isa="cuda", rpb=False, dtype=args.dtype, **{"pass": pass_name},
                       threads=None, gpu=gpu, driver=driver, commit=commit, command=command,
                       torch=torch.__version__)
            try:
                times = bench_case(torch, c, impl, dtype, args.backward, args)
            except Exception as e:  # noqa: BLE001 - recorded, the suite goes on
                torch.cuda.empty_cache()
                res["skipped"] = f"{type(e).__name__}: {e}"[:500]
                print(f"{c['case']:<16} {impl:<11} skipped: {res['skipped']}", flush=True)
                if record:
                    results.append(res)
                continue
            med = statistics.median(times)
            gflop = na_gflop(c) * factor
            if impl == "torch-sdpa":
                peak = dense_gflop(c) * factor / med
            res.update(median_s=med, min_s=min(times), max_s=max(times), times_s=times,
                       gflop=gflop, gflops=gflop / med, dense_gflop=dense_gflop(c) * factor,
                       peak_gflops=peak)
            torch.cuda.empty_cache()
            if record:
                results.append(res)
                print(f"{c['case']:<16} {impl:<11} {pass_name:<16} median {med * 1e3:10.3f} ms "
                      f"(min {min(times) * 1e3:.3f}, max {max(times) * 1e3:.3f}) "
                      f"{gflop / med:10.1f} GFLOP/s effective", flush=True)
    print(f"{gpu}; driver {driver}; torch {torch.__version__}; {args.dtype}; commit {commit}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""CPU baselines for the operator suite of BENCHMARKS.md, timed like `na bench`.

Implementations (each one `impl` value in the results):

  torch-gather  PyTorch neighborhood attention: every query gathers its window of
                keys/values with precomputed SPEC.md window indices (built once,
                outside the timed region), softmax over the window. Exact per
                SPEC.md (border shift, dilation groups, stride, causal); `--check`
                verifies it against a literal transcription of SPEC.md and NATTEN.
  torch-sdpa    torch.nn.functional.scaled_dot_product_attention over all N tokens
                (dense, no mask: N/W times the work of neighborhood attention).
  natten        NATTEN's na1d/na2d/na3d on CPU (torch FlexAttention, eager, unfused,
                dense masked). Needs NATTEN importable: run this script with the
                python of the NATTEN venv (see bench/README.md).

Every implementation takes contiguous heads-last inputs [B, *spatial, heads, D]
and returns a contiguous heads-last output, so layout changes are timed too.

Each (case, impl) runs in a child process of this script, which the parent
watches: a single run longer than --run-limit seconds, a child above
--max-memory-gb resident memory, an exception or a crash is recorded as
`"skipped": "<reason>"` instead of stopping the whole benchmark.

Examples:
  .venv-natten021/bin/python bench/baselines.py --check
  .venv-natten021/bin/python bench/baselines.py --json bench/results/cpu-suite-fwd-baselines.json
  .venv-natten021/bin/python bench/baselines.py --backward --case nat-l0,nat-l2 --json /tmp/x.json
"""

import argparse
import json
import math
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time

# The CPU operator suite, as `na bench --list` prints it.
# (id, batch, spatial, heads, head_dim, kernel, stride, dilation)
SUITE = [
    ("nat-l0", 1, [56, 56], 2, 32, [7, 7], [1], [1]),
    ("nat-l0-b64", 64, [56, 56], 2, 32, [7, 7], [1], [1]),
    ("dinat-l0", 1, [56, 56], 2, 32, [7, 7], [1], [8]),
    ("nat-l2", 1, [14, 14], 8, 32, [7, 7], [1], [1]),
    ("hires", 1, [128, 128], 4, 32, [13, 13], [1], [1]),
    ("seq-1d", 1, [4096], 4, 64, [255], [1], [1]),
    ("seq-1d-blocked", 1, [4096], 4, 64, [256], [256], [1]),
    ("vol-3d", 1, [8, 16, 16], 4, 32, [3, 7, 7], [1], [1]),
]

IMPLS = ["torch-gather", "torch-sdpa", "natten"]


def per_axis(values, dims):
    """Broadcasts a one-element list to every axis (like na_core::Params)."""
    values = list(values)
    if len(values) == 1:
        return values * dims
    if len(values) != dims:
        raise ValueError(f"expected 1 or {dims} values, got {values}")
    return values


def make_case(cid, batch, spatial, heads, head_dim, kernel, stride, dilation,
              causal=(False,), head_dim_v=None):
    dims = len(spatial)
    return {
        "case": cid,
        "dims": dims,
        "batch": batch,
        "shape": list(spatial),
        "heads": heads,
        "head_dim": head_dim,
        "head_dim_v": head_dim if head_dim_v is None else head_dim_v,
        "kernel_size": per_axis(kernel, dims),
        "dilation": per_axis(dilation, dims),
        "stride": per_axis(stride, dims),
        "causal": [bool(c) for c in per_axis(causal, dims)],
        "rpb": False,
    }


def suite_cases():
    return [make_case(*row) for row in SUITE]


def forward_gflop(c):
    """BENCHMARKS.md: forward FLOPs = 4 * B * heads * N * W * D."""
    n = math.prod(c["shape"])
    w = math.prod(c["kernel_size"])
    return 4.0 * c["batch"] * c["heads"] * n * w * c["head_dim"] / 1e9


# --------------------------------------------------------------------------
# SPEC.md window math
# --------------------------------------------------------------------------

def window_literal(L, k, s, d, causal, i):
    """Keys of query i on one axis: a literal transcription of SPEC.md."""
    g = i % d
    ii = i // d
    Lg = L // d + (1 if g < L % d else 0)
    left = k // 2
    right = k // 2 + (k % 2) - 1
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
    return [j * d + g for j in range(start, end)]


def window_axis(L, k, s, d, causal):
    """Vectorised SPEC.md window of every query on one axis.

    Returns (idx, valid): int64 [L, k] key coordinates and bool [L, k]; a causal
    window holds end - start <= k keys, the rest of its row is invalid (idx 0).
    """
    import numpy as np

    i = np.arange(L, dtype=np.int64)
    g = i % d
    ii = i // d
    Lg = L // d + (g < L % d).astype(np.int64)
    left = k // 2
    right = k // 2 + (k % 2) - 1
    if not causal:
        lead = np.minimum((ii // s) * s + s // 2, Lg - 1)
        start = np.maximum(lead - left, 0)
        start = np.where(lead + right >= Lg, start + Lg - right - lead - 1, start)
        end = start + k
    else:
        lead = np.minimum((ii // s) * s + s - 1, Lg - 1)
        start = np.maximum(lead - (k - 1), 0)
        end = np.minimum(ii + 1, Lg)
    j = start[:, None] + np.arange(k, dtype=np.int64)[None, :]
    valid = j < end[:, None]
    idx = np.where(valid, j * d + g[:, None], 0)
    return idx, valid


def neighborhood(c):
    """Flat key indices [N, W] (int64 tensor) and the valid mask [N, W] (bool
    tensor, or None when every window is full) of the case, W = prod(kernel)."""
    import numpy as np
    import torch

    shape = c["shape"]
    dims = len(shape)
    strides = [math.prod(shape[a + 1:]) for a in range(dims)]
    idx = np.zeros([1] * (2 * dims), dtype=np.int64)
    valid = np.ones([1] * (2 * dims), dtype=bool)
    for a in range(dims):
        ia, va = window_axis(shape[a], c["kernel_size"][a], c["stride"][a],
                             c["dilation"][a], c["causal"][a])
        view = [1] * (2 * dims)
        view[a] = shape[a]
        view[dims + a] = c["kernel_size"][a]
        idx = idx + (ia * strides[a]).reshape(view)
        valid = valid & va.reshape(view)
    n = math.prod(shape)
    w = math.prod(c["kernel_size"])
    full = [*shape, *c["kernel_size"]]
    idx = np.broadcast_to(idx, full).reshape(n, w)
    valid = np.broadcast_to(valid, full).reshape(n, w)
    vt = None if valid.all() else torch.from_numpy(np.array(valid, copy=True))
    return torch.from_numpy(np.array(idx, dtype=np.int64, copy=True)), vt


# --------------------------------------------------------------------------
# Implementations
# --------------------------------------------------------------------------

def gather_attention(q, k, v, idx, invalid, scale):
    """Neighborhood attention by gathering windows. q, k: [B, *S, H, D], v:
    [B, *S, H, Dv]; idx: [N, W] flat key indices; invalid: [N, W] bool or None."""
    import torch

    B, H, D, Dv = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    N, W = idx.shape
    qh = q.reshape(B, N, H, D).transpose(1, 2) * scale  # [B, H, N, D]
    kh = k.reshape(B, N, H, D).transpose(1, 2)
    vh = v.reshape(B, N, H, Dv).transpose(1, 2)
    flat = idx.reshape(-1)
    kw = kh.index_select(2, flat).view(B, H, N, W, D)
    vw = vh.index_select(2, flat).view(B, H, N, W, Dv)
    logits = torch.einsum("bhnd,bhnwd->bhnw", qh, kw)
    if invalid is not None:
        logits = logits.masked_fill(invalid, float("-inf"))
    attn = torch.softmax(logits, dim=-1)
    out = torch.einsum("bhnw,bhnwd->bhnd", attn, vw)
    return out.transpose(1, 2).reshape(*q.shape[:-1], Dv)


def sdpa_attention(q, k, v, scale):
    """Dense self attention over all tokens (no mask)."""
    import torch.nn.functional as F

    B, H, D, Dv = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    N = math.prod(q.shape[1:-2])
    qh = q.reshape(B, N, H, D).transpose(1, 2)
    kh = k.reshape(B, N, H, D).transpose(1, 2)
    vh = v.reshape(B, N, H, Dv).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    return out.transpose(1, 2).reshape(*q.shape[:-1], Dv)


def natten_fn(c):
    import natten.functional as nf

    fn = {1: nf.na1d, 2: nf.na2d, 3: nf.na3d}[c["dims"]]
    kw = dict(
        kernel_size=tuple(c["kernel_size"]),
        stride=tuple(c["stride"]),
        dilation=tuple(c["dilation"]),
        is_causal=tuple(c["causal"]),
    )
    return lambda q, k, v, scale: fn(q, k, v, scale=scale, **kw)


def make_impl(name, c):
    """Returns f(q, k, v, scale) -> out; precomputation happens here, untimed."""
    if name == "torch-gather":
        idx, valid = neighborhood(c)
        invalid = None if valid is None else ~valid
        return lambda q, k, v, scale: gather_attention(q, k, v, idx, invalid, scale)
    if name == "torch-sdpa":
        return sdpa_attention
    if name == "natten":
        return natten_fn(c)
    raise ValueError(f"unknown impl {name}")


def quiet_warnings():
    import warnings

    # torch's eager flex_attention warns on every NATTEN call (unfused / deprecated lse).
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    warnings.filterwarnings("ignore", message=".*return_lse is deprecated.*")


# --------------------------------------------------------------------------
# Child processes: one (case, impl) timing, or the GEMM peak
# --------------------------------------------------------------------------

def emit(*parts):
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def versions():
    import torch

    v = {"torch": torch.__version__, "natten": None}
    try:
        import importlib.metadata as md

        v["natten"] = md.version("natten")
    except Exception:
        pass
    return v


def worker_gemm(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    n = 1024
    g = torch.Generator().manual_seed(7)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    c = torch.matmul(a, b)
    best = math.inf
    for _ in range(6):
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    emit("done", json.dumps({
        "gemm_peak_gflops": 2.0 * n ** 3 / best / 1e9,
        "threads": torch.get_num_threads(),
        "versions": versions(),
    }))


def worker_case(spec):
    import torch

    quiet_warnings()
    torch.set_num_threads(spec["threads"])
    c, backward = spec["case"], spec["backward"]
    budget, run_limit = spec["max_seconds"], spec["run_limit"]
    try:
        f = make_impl(spec["impl"], c)
    except ImportError as e:
        emit("error", json.dumps(f"not importable: {e}"))
        return
    g = torch.Generator().manual_seed(spec["seed"])
    qk_shape = [c["batch"], *c["shape"], c["heads"], c["head_dim"]]
    v_shape = [c["batch"], *c["shape"], c["heads"], c["head_dim_v"]]
    q = torch.randn(qk_shape, generator=g)
    k = torch.randn(qk_shape, generator=g)
    v = torch.randn(v_shape, generator=g)
    d_out = torch.randn(v_shape, generator=g)
    scale = c["head_dim"] ** -0.5
    if backward:
        for x in (q, k, v):
            x.requires_grad_(True)

    def once():
        if backward:
            q.grad = k.grad = v.grad = None
            t = time.perf_counter()
            out = f(q, k, v, scale)
            out.backward(d_out)
            dt = time.perf_counter() - t
        else:
            with torch.no_grad():
                t = time.perf_counter()
                out = f(q, k, v, scale)
                dt = time.perf_counter() - t
        del out
        return dt

    emit("ready")
    try:
        start = time.perf_counter()
        for _ in range(spec["warmup"]):
            dt = once()
            emit("warmup", dt)
            if dt > run_limit:
                emit("slow", dt)
                return
            if time.perf_counter() - start > budget / 2:
                break
        times = []
        timed = time.perf_counter()
        while len(times) < max(spec["iters"], 1):
            dt = once()
            emit("run", dt)
            if dt > run_limit:
                emit("slow", dt)
                return
            times.append(dt)
            elapsed = time.perf_counter() - timed
            # Like na bench: at least 3 timed runs, then stop when the budget is
            # spent; a run longer than the whole budget is timed once only.
            if elapsed > budget and (len(times) >= 3 or dt > budget):
                break
    except Exception as e:  # noqa: BLE001 - recorded as skipped
        msg = f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
        emit("error", json.dumps(msg))
        return
    emit("done", json.dumps({"times_s": times}))


# --------------------------------------------------------------------------
# Parent: watch the children
# --------------------------------------------------------------------------

def rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def mem_available_gb():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return None


def run_child(spec, setup_limit, run_limit, max_mem_bytes, progress=None):
    """Runs one child; returns (kind, payload, timed_runs) with kind one of
    done / error / slow / killed."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    runs = []
    limit = setup_limit
    last = time.monotonic()
    peak = 0
    result = None
    try:
        while result is None:
            events = sel.select(timeout=0.05)
            if events:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf and result is None:
                    line, buf = buf.split(b"\n", 1)
                    tag, _, rest = line.decode().partition(" ")
                    last = time.monotonic()
                    if tag == "ready":
                        limit = run_limit
                    elif tag in ("warmup", "run"):
                        if tag == "run":
                            runs.append(float(rest))
                        if progress:
                            progress(tag, float(rest))
                    elif tag == "slow":
                        result = ("slow", f"a single run took {float(rest):.1f} s "
                                          f"(> --run-limit {run_limit:g} s)")
                    elif tag == "error":
                        result = ("error", json.loads(rest))
                    elif tag == "done":
                        result = ("done", json.loads(rest))
            if result is not None:
                break
            peak = max(peak, rss_bytes(proc.pid))
            if max_mem_bytes and peak > max_mem_bytes:
                result = ("killed", f"stopped at {peak / 2**30:.1f} GiB resident "
                                    f"(> --max-memory-gb {max_mem_bytes / 2**30:.1f})")
            elif time.monotonic() - last > limit:
                what = "setup" if limit == setup_limit else "a single run"
                result = ("killed", f"{what} exceeded {limit:g} s (stopped)")
            elif proc.poll() is not None and not events:
                break
    finally:
        if result is not None and result[0] == "killed" and proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        sel.close()
    if result is None:
        rc = proc.returncode
        if rc is not None and rc < 0:
            why = f"child process killed by {signal.Signals(-rc).name} (out of memory?)"
        else:
            why = f"child process exited with code {rc} without a result"
        result = ("killed", why)
    return result[0], result[1], runs


def git_commit(cwd):
    def git(*args):
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
        except OSError:
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    c = git("rev-parse", "--short", "HEAD")
    if not c:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{c}-dirty" if dirty else c


def cpu_name():
    cores = os.cpu_count() or 1
    model = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if not model:
        import platform

        model = platform.machine()
    return f"{model} ({cores} logical cores)"


def stats(times):
    s = sorted(times)
    n = len(s)
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return med, s[0], s[-1]


def natten_importable():
    import importlib.util

    return importlib.util.find_spec("natten") is not None


def split_list(values):
    out = []
    for v in values or []:
        out += [x for x in v.split(",") if x]
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Time PyTorch / NATTEN CPU baselines on the na bench operator suite.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Cases: " + ", ".join(r[0] for r in SUITE),
    )
    p.add_argument("--case", action="append", help="case ids, comma separated (default: all)")
    p.add_argument("--impl", action="append",
                   help=f"implementations, comma separated (default: {','.join(IMPLS)})")
    p.add_argument("--backward", action="store_true",
                   help="time forward+backward (out.backward(d_out)) instead of forward")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    p.add_argument("--iters", type=int, default=20,
                   help="timed runs (fewer if --max-seconds runs out, at least 3) (default 20)")
    p.add_argument("--max-seconds", type=float, default=10.0,
                   help="time budget per case and impl; a single run longer than this "
                        "is timed once only (default 10)")
    p.add_argument("--run-limit", type=float, default=60.0,
                   help="a single run longer than this is recorded as skipped (default 60)")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="a child above this resident memory is stopped and recorded as "
                        "skipped (default: 60%% of MemAvailable at start)")
    p.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    p.add_argument("--json", metavar="FILE", help="write every result (with raw times) here")
    p.add_argument("--check", action="store_true",
                   help="verify torch-gather against SPEC.md and NATTEN on small shapes, then exit")
    p.add_argument("--list", action="store_true", help="list the suite's cases and exit")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args._worker:
        spec = json.loads(args._worker)
        (worker_gemm if spec.get("gemm") else worker_case)(spec)
        return 0
    if args.list:
        print(f"{'case':<16} {'batch':>5} {'spatial':<14} {'heads x D':>9} {'window':<10} "
              f"{'dilation':<10} {'stride':<8}")
        for r in SUITE:
            print(f"{r[0]:<16} {r[1]:>5} {str(r[2]):<14} {f'{r[3]}x{r[4]}':>9} "
                  f"{str(r[5]):<10} {str(r[7]):<10} {str(r[6]):<8}")
        return 0
    if args.check:
        return run_checks()

    all_cases = {c["case"]: c for c in suite_cases()}
    ids = split_list(args.case) or list(all_cases)
    unknown = [i for i in ids if i not in all_cases]
    if unknown:
        sys.exit(f"unknown --case {', '.join(unknown)} (known: {', '.join(all_cases)})")
    impls = split_list(args.impl) or list(IMPLS)
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        sys.exit(f"unknown --impl {', '.join(bad)} (known: {', '.join(IMPLS)})")
    if "natten" in impls and not natten_importable():
        print(f"natten is not importable by {sys.executable}: skipping impl natten "
              "(run with the NATTEN venv's python, see bench/README.md)", file=sys.stderr)
        impls = [i for i in impls if i != "natten"]
    if not impls:
        return 1
    if args.max_memory_gb is None:
        avail = mem_available_gb()
        args.max_memory_gb = 0.6 * avail if avail else 0
    max_mem = int(args.max_memory_gb * 2 ** 30)

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit, cpu = git_commit(repo), cpu_name()
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        exe = rel if not rel.startswith("..") else exe
    except ValueError:
        pass
    command = shlex.join([exe, *sys.argv])
    pass_name = "forward+backward" if args.backward else "forward"

    kind, info, _ = run_child({"gemm": True, "threads": args.threads}, 300, 300, 0)
    if kind != "done":
        sys.exit(f"GEMM peak measurement failed: {info}")
    peak, threads, vers = info["gemm_peak_gflops"], info["threads"], info["versions"]
    print(f"{cpu}; {threads} thread(s); torch {vers['torch']}, natten {vers['natten']}; "
          f"commit {commit}; f32 GEMM peak (torch.matmul) {peak:.1f} GFLOP/s", flush=True)

    results = []
    for cid in ids:
        c = all_cases[cid]
        for impl in impls:
            spec = {"case": c, "impl": impl, "backward": args.backward, "threads": args.threads,
                    "warmup": args.warmup, "iters": args.iters, "max_seconds": args.max_seconds,
                    "run_limit": args.run_limit, "seed": args.seed}
            print(f"{cid} {impl} {pass_name} ...", end="", file=sys.stderr, flush=True)

            def progress(tag, dt):
                print(f" {dt * 1e3:.1f}ms" if tag == "run" else " w", end="",
                      file=sys.stderr, flush=True)

            kind, info, runs = run_child(spec, 300, args.run_limit, max_mem, progress)
            print(file=sys.stderr, flush=True)
            gflop = forward_gflop(c) * (3.5 if args.backward else 1.0)
            rec = {"case": c["case"], "impl": impl, "isa": "torch"}
            rec.update({k: c[k] for k in ("dims", "batch", "shape", "heads", "head_dim",
                                          "head_dim_v", "kernel_size", "dilation", "stride",
                                          "causal", "rpb")})
            rec.update({"dtype": "f32", "pass": pass_name, "threads": threads})
            if kind == "done":
                times = info["times_s"]
                med, lo, hi = stats(times)
                rec.update({"median_s": med, "min_s": lo, "max_s": hi, "times_s": times,
                            "gflop": gflop, "gflops": gflop / med})
            else:
                rec.update({"median_s": None, "min_s": None, "max_s": None, "times_s": runs,
                            "gflop": gflop, "gflops": None, "skipped": str(info)})
            rec.update({"gemm_peak_gflops": peak, "commit": commit, "cpu": cpu,
                        "command": command, "versions": vers})
            results.append(rec)
            if args.json:
                write_json(args.json, results)

    print(f"{'case':<16} {'impl':<13} {'pass':<16} {'median ms':>11} {'min ms':>11} "
          f"{'max ms':>11} {'GFLOP/s':>9} {'% peak':>8}")
    for r in results:
        if "skipped" in r:
            print(f"{r['case']:<16} {r['impl']:<13} {pass_name:<16} skipped: {r['skipped']}")
            continue
        print(f"{r['case']:<16} {r['impl']:<13} {pass_name:<16} {r['median_s'] * 1e3:>11.3f} "
              f"{r['min_s'] * 1e3:>11.3f} {r['max_s'] * 1e3:>11.3f} {r['gflops']:>9.2f} "
              f"{100 * r['gflops'] / peak:>7.1f}%")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def write_json(path, results):
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# --check: torch-gather against SPEC.md (literal, dense f64) and NATTEN
# --------------------------------------------------------------------------

CHECK_CASES = [
    # (batch, spatial, heads, D, kernel, stride, dilation, causal)
    (2, [37], 2, 16, [7], [1], [1], [False]),
    (2, [37], 2, 16, [8], [2], [3], [False]),
    (2, [37], 2, 16, [5], [3], [2], [True]),
    (1, [36], 2, 16, [6], [6], [1], [False]),
    (2, [13, 11], 2, 16, [5, 4], [1, 3], [2, 1], [True, False]),
    (1, [9, 9], 2, 8, [3], [1], [3], [False]),
    (1, [12, 10], 2, 16, [4, 5], [4, 2], [1, 2], [False, True]),
    (1, [5, 6, 7], 2, 16, [3, 3, 5], [2, 1, 3], [1, 2, 1], [False, True, False]),
    (1, [4, 6, 6], 2, 8, [2, 3, 3], [1, 3, 1], [2, 1, 2], [True, False, False]),
]


def dense_reference(q, k, v, c, scale):
    """Dense masked softmax attention in f64 with the mask from window_literal."""
    import torch

    shape = c["shape"]
    n = math.prod(shape)
    coords = [list(x) for x in __import__("itertools").product(*[range(L) for L in shape])]
    axis_sets = []
    for a, L in enumerate(shape):
        axis_sets.append([set(window_literal(L, c["kernel_size"][a], c["stride"][a],
                                             c["dilation"][a], c["causal"][a], i))
                          for i in range(L)])
    mask = torch.zeros(n, n, dtype=torch.bool)
    for p, pc in enumerate(coords):
        for t, tc in enumerate(coords):
            mask[p, t] = all(tc[a] in axis_sets[a][pc[a]] for a in range(len(shape)))
    B, H = q.shape[0], q.shape[-2]
    qh = q.double().reshape(B, n, H, -1).transpose(1, 2)
    kh = k.double().reshape(B, n, H, -1).transpose(1, 2)
    vh = v.double().reshape(B, n, H, -1).transpose(1, 2)
    logits = (qh @ kh.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~mask, float("-inf"))
    out = torch.softmax(logits, -1) @ vh
    return out.transpose(1, 2).reshape(v.shape)


def run_checks():
    import torch

    quiet_warnings()
    torch.set_num_threads(1)
    ok = True

    # 1. Vectorised window math against the literal SPEC.md transcription, on every
    #    axis configuration of the suite and the check cases.
    axes = set()
    for c in suite_cases() + [make_case("chk", *r[:5], r[5], r[6], r[7]) for r in CHECK_CASES]:
        for a in range(c["dims"]):
            axes.add((c["shape"][a], c["kernel_size"][a], c["stride"][a],
                      c["dilation"][a], c["causal"][a]))
    for (L, k, s, d, causal) in sorted(axes):
        idx, valid = window_axis(L, k, s, d, causal)
        for i in range(L):
            got = [int(x) for x, ok_ in zip(idx[i], valid[i]) if ok_]
            if got != window_literal(L, k, s, d, causal, i):
                print(f"FAIL window L={L} k={k} s={s} d={d} causal={causal} i={i}: "
                      f"{got} != {window_literal(L, k, s, d, causal, i)}")
                ok = False
                break
    print(f"window math: {len(axes)} axis configurations vs SPEC.md literal: "
          f"{'ok' if ok else 'FAIL'}")

    have_natten = natten_importable()
    if not have_natten:
        print(f"natten is not importable by {sys.executable}: NATTEN comparison skipped")
    worst = {"out_spec": 0.0, "out_natten": 0.0, "grad_natten": 0.0}
    for n_case, row in enumerate(CHECK_CASES):
        b, spatial, heads, dim, kernel, stride, dil, causal = row
        c = make_case(f"check{n_case}", b, spatial, heads, dim, kernel, stride, dil, causal)
        g = torch.Generator().manual_seed(n_case)
        shp = [b, *spatial, heads, dim]
        q, k, v, d_out = (torch.randn(shp, generator=g) for _ in range(4))
        scale = dim ** -0.5
        gather = make_impl("torch-gather", c)
        qs, ks, vs = (x.clone().requires_grad_(True) for x in (q, k, v))
        out = gather(qs, ks, vs, scale)
        out.backward(d_out)
        e_spec = (out.double() - dense_reference(q, k, v, c, scale)).abs().max().item()
        line = (f"{c['dims']}D {spatial} k={c['kernel_size']} s={c['stride']} "
                f"d={c['dilation']} causal={c['causal']}: vs dense SPEC f64 {e_spec:.1e}")
        worst["out_spec"] = max(worst["out_spec"], e_spec)
        good = e_spec <= 1e-4
        if have_natten:
            nat = make_impl("natten", c)
            qn, kn, vn = (x.clone().requires_grad_(True) for x in (q, k, v))
            try:
                on = nat(qn, kn, vn, scale)
                on.backward(d_out)
                e_out = (out - on).abs().max().item()
                e_grad = max((a.grad - bb.grad).abs().max().item()
                             for a, bb in ((qs, qn), (ks, kn), (vs, vn)))
                worst["out_natten"] = max(worst["out_natten"], e_out)
                worst["grad_natten"] = max(worst["grad_natten"], e_grad)
                line += f"; vs NATTEN out {e_out:.1e} grads {e_grad:.1e}"
                good = good and e_out <= 1e-4 and e_grad <= 1e-3
            except Exception as e:  # noqa: BLE001
                line += f"; NATTEN refused: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(("ok   " if good else "FAIL ") + line)
        ok = ok and good
    print(f"worst: out vs SPEC f64 {worst['out_spec']:.1e}"
          + (f", out vs NATTEN {worst['out_natten']:.1e}, grads vs NATTEN "
             f"{worst['grad_natten']:.1e}" if have_natten else "")
          + " (tolerances f32: out 1e-4, grads 1e-3)")

    # 2. NATTEN's own argument and CPU-backend checks on the suite's shapes (batch 1;
    #    no attention is computed here, the timed runs show what else fails).
    if have_natten:
        from natten.backends.configs.checks import can_run_flex_attention
        from natten.utils.checks import check_all_args, check_args_against_input

        for c in suite_cases():
            x = torch.zeros([1, *c["shape"], c["heads"], c["head_dim"]])
            try:
                args4 = check_all_args(c["dims"], tuple(c["kernel_size"]), tuple(c["stride"]),
                                       tuple(c["dilation"]), tuple(c["causal"]))
                check_args_against_input(x, *args4)
                can_run_flex_attention(x, x, x, torch_compile=False, raise_error=True)
                print(f"NATTEN CPU (flex, eager) accepts {c['case']}")
            except Exception as e:  # noqa: BLE001
                print(f"NATTEN CPU refuses {c['case']}: {str(e).splitlines()[0][:200]}")
    print("check: " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Whole-model CPU inference baselines in PyTorch eager, timed like `na bench --model`.

f32, forward under torch.inference_mode(), batch sizes from --batch (default 1,16),
224x224 RGB except fashion_dinat (28x28 grey). Every record has the fields
`na bench --model` writes ("case" is "<model>-b<batch>"), so the two JSON files can
be put side by side.

Implementations (each one `impl` value in the results):

  authors-natten0175  nat_mini and dinat_mini built by tools/model_parity/models.py
                      (`build_model(config)`, the preset configs of
                      tools/model_parity/param_counts.json): a faithful PyTorch
                      implementation of the authors' NAT / DiNAT on NATTEN 0.17.5's
                      CPU ops (na2d_qk with rpb, softmax, na2d_av). Random weights.
                      Needs NATTEN 0.17.5: run this script with
                      .venv-natten0175/bin/python. Seconds per image, so it has its
                      own batch list (--natten-batch, default 1: the other batches
                      are recorded as skipped), iteration count (--natten-iters,
                      default 5) and budget (--natten-max-seconds, default 40).
  timm                timm's convnext_tiny and swin_tiny_patch4_window7_224
                      (pretrained=False, random weights), the usual ConvNeXt-T /
                      Swin-T reference points.
  torch-transcription fashion_dinat (the built-in Fashion-MNIST DiNAT: 1 x 28 x 28
                      input, 10 classes, 866,944 parameters) built by
                      tools/fashion_torch/model.py, a plain-PyTorch transcription
                      of the Rust model (no NATTEN; neighborhood attention as dense
                      scores with an rpb / -inf window bias, `"attention": "dense"`
                      in the record). Random weights. Needs only torch: any venv
                      with torch runs it (.venv-torch, see
                      tools/fashion_torch/README.md). Compare with
                      `na bench --model fashion_dinat --image-size 28`.

Input: the same deterministic image `na bench --model` uses,
x[i] = ((i * 7919) % 255) / 255 - 0.5 over the flat [B, C, H, W] tensor
([B, 3, 224, 224]; [B, 1, 28, 28] for fashion_dinat).

gflop = 2 x multiply-adds of one image x batch:
  - nat_mini / dinat_mini: 5.390 GFLOP per image, what `na info nat_mini` prints
    (2.695 G multiply-adds). Cross-check: torch.utils.flop_counter counts 5.109
    GFLOP of Conv2d/Linear in models.py's nat_mini, plus neighborhood attention
    4 * N * 49 * C summed over the 18 blocks = 0.280 GFLOP, total 5.389.
  - fashion_dinat: 0.04993 GFLOP per 28x28 image, what
    `na info fashion_dinat --size 28` prints (24.96 M multiply-adds; neighborhood
    attention counted over its k*k window, though the dense form computes all
    N x N scores).
  - timm models: counted with torch.utils.flop_counter.FlopCounterMode (built into
    torch; fvcore/thop are not installed) over one batch-1 forward, untimed. It
    counts 2 x MACs of convolutions and matmuls (addmm/mm/bmm, so Swin's window
    attention q @ k^T and attn @ v are included) and nothing else (no norms,
    activations, softmax), which is the same convention as `na info`.

Each (model, impl, batch) runs in a child process of this script, which the parent
watches: a single run longer than --run-limit seconds, a child above
--max-memory-gb resident memory, an exception or a crash is recorded as
`"skipped": "<reason>"`. Models that cannot be built (timm or natten missing) are
recorded as skipped too. peak_rss_bytes is the child's VmHWM after its runs (one
process per record, so it covers that model and batch only).

Timing follows `na bench` and bench/baselines.py: warm-up runs (--warmup) stop once
half of --max-seconds is spent; then at least 3 timed runs (at most --iters),
stopping once the budget is spent; a run longer than the whole budget is timed once.
Every record also carries the 1/5/15-minute load average when its child started
(`load_average`) and finished (`load_average_end`); the benchmark's own threads count
in it (a 2-thread run adds about 2), so more than --threads points at other work.

Examples:
  .venv-natten0175/bin/python bench/model_baselines.py --list
  .venv-natten0175/bin/python bench/model_baselines.py --batch 1,16 \\
      --json bench/results/cpu-models-baselines.json
  .venv-natten0175/bin/python bench/model_baselines.py --impl timm --batch 1 --iters 5
  .venv-torch/bin/python bench/model_baselines.py --impl torch-transcription \\
      --batch 1,16,256 --json bench/results/cpu-models-fashion-baselines.json
"""

import argparse
import json
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time

# Shared with the operator baselines (same protocol and record fields).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baselines import (  # noqa: E402
    cpu_name, emit, git_commit, mem_available_gb, split_list, stats, write_json)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PARITY = os.path.join(REPO, "tools", "model_parity")

# (model, impl)
MODELS = [
    ("nat_mini", "authors-natten0175"),
    ("dinat_mini", "authors-natten0175"),
    ("convnext_tiny", "timm"),
    ("swin_tiny_patch4_window7_224", "timm"),
    ("fashion_dinat", "torch-transcription"),
]
IMPLS = ["authors-natten0175", "timm", "torch-transcription"]
NATTEN_IMPL = "authors-natten0175"
FASHION_MODEL = os.path.join(REPO, "tools", "fashion_torch", "model.py")

# 2 x multiply-adds of one image (224x224; fashion_dinat 28x28), from `na info <model>`.
NA_INFO_GFLOP = {"nat_mini": 5.390, "dinat_mini": 5.390, "fashion_dinat": 0.049928704}
IMAGE_SIZE = [224, 224]
# (channels, [H, W]) of the models whose input is not 3 x 224 x 224.
MODEL_INPUT = {"fashion_dinat": (1, [28, 28])}


def model_input(model):
    return MODEL_INPUT.get(model, (3, list(IMAGE_SIZE)))


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def proc_status_bytes(key, pid="self"):
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM) in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def int_list(values, what):
    try:
        out = [int(x) for x in split_list(values)]
    except ValueError:
        sys.exit(f"{what} takes comma-separated positive integers")
    if any(b <= 0 for b in out):
        sys.exit(f"{what} sizes must be positive")
    return out


def versions():
    import importlib.metadata as md
    import platform

    v = {"python": platform.python_version()}
    for name in ("torch", "natten", "timm", "numpy"):
        try:
            v[name] = md.version(name)
        except Exception:  # noqa: BLE001 - not installed
            v[name] = None
    try:
        import torch

        v["torch"] = torch.__version__
    except ImportError:
        pass
    return v


# --------------------------------------------------------------------------
# Building the models
# --------------------------------------------------------------------------

def build(model, impl):
    """Returns (module in eval mode, gflop of one image or None to count it)."""
    import torch

    torch.manual_seed(0)
    if impl == NATTEN_IMPL:
        if PARITY not in sys.path:
            sys.path.insert(0, PARITY)
        from models import build_model  # tools/model_parity/models.py (imports natten)

        with open(os.path.join(PARITY, "param_counts.json")) as fh:
            presets = json.load(fh)["presets"]
        if model not in presets:
            raise ValueError(f"{model} is not a preset of tools/model_parity/param_counts.json")
        return build_model(presets[model]["config"]).eval(), NA_INFO_GFLOP.get(model)
    if impl == "timm":
        import timm

        return timm.create_model(model, pretrained=False).eval(), None
    if impl == "torch-transcription":
        import importlib.util

        spec = importlib.util.spec_from_file_location("fashion_torch_model", FASHION_MODEL)
        fm = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fm)  # tools/fashion_torch/model.py (needs only torch)
        m = fm.build(model, seed=0)
        n = fm.count_params(m)
        if n != fm.FASHION_PARAMS:
            raise ValueError(f"{model}: {n} parameters, `na info` says {fm.FASHION_PARAMS}")
        return m.eval(), NA_INFO_GFLOP.get(model)
    raise ValueError(f"unknown impl {impl}")


def count_gflop(m, channels, size=IMAGE_SIZE):
    """2 x MACs of one image, by torch.utils.flop_counter (conv + matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, channels, *size)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        m(x)
    return fc.get_total_flops() / 1e9


def make_input(batch, channels, size=IMAGE_SIZE):
    """The image `na bench --model` uses: ((i * 7919) % 255) / 255 - 0.5."""
    import torch

    n = batch * channels * size[0] * size[1]
    i = torch.arange(n, dtype=torch.int64)
    x = ((i * 7919) % 255).to(torch.float32) / 255.0 - 0.5
    return x.reshape(batch, channels, *size)


# --------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------

def worker_gemm(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    n = 1024
    g = torch.Generator().manual_seed(7)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    c = torch.matmul(a, b)
    best = float("inf")
    for _ in range(6):
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    emit("done", json.dumps({
        "gemm_peak_gflops": 2.0 * n ** 3 / best / 1e9,
        "threads": torch.get_num_threads(),
        "versions": versions(),
    }))


def worker_model(spec):
    import warnings

    warnings.filterwarnings("ignore")
    load = load_average()
    import torch

    torch.set_num_threads(spec["threads"])
    rss_before = proc_status_bytes("VmHWM")
    try:
        m, gflop1 = build(spec["model"], spec["impl"])
        channels, size = model_input(spec["model"])
        params = sum(p.numel() for p in m.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
        if gflop1 is None:
            gflop1 = count_gflop(m, channels, size)
    except Exception as e:  # noqa: BLE001 - recorded as skipped
        msg = f"cannot build: {type(e).__name__}: {e}".strip().splitlines()[0][:300]
        emit("error", json.dumps(msg))
        return
    x = make_input(spec["batch"], channels, size)
    budget, run_limit = spec["max_seconds"], spec["run_limit"]

    def once():
        with torch.inference_mode():
            t = time.perf_counter()
            y = m(x)
            dt = time.perf_counter() - t
        del y
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
    emit("done", json.dumps({
        "times_s": times, "gflop_per_image": gflop1, "params": params,
        "weight_bytes": weight_bytes, "peak_rss_bytes": proc_status_bytes("VmHWM"),
        "rss_before_load_bytes": rss_before, "threads": torch.get_num_threads(),
        "load_average": load, "load_average_end": load_average(), "versions": versions(),
    }))


# --------------------------------------------------------------------------
# Parent: watch the children
# --------------------------------------------------------------------------

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
            rss = proc_status_bytes("VmRSS", proc.pid) or 0
            if max_mem_bytes and rss > max_mem_bytes:
                result = ("killed", f"stopped at {rss / 2**30:.1f} GiB resident "
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


def importable(mod):
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Time whole-model PyTorch eager CPU baselines (f32, forward).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Models: " + ", ".join(f"{m} ({i})" for m, i in MODELS),
    )
    p.add_argument("--model", action="append", help="models, comma separated (default: all)")
    p.add_argument("--impl", action="append",
                   help=f"implementations, comma separated (default: {','.join(IMPLS)})")
    p.add_argument("--batch", action="append",
                   help="batch sizes, comma separated (default 1,16)")
    p.add_argument("--natten-batch", action="append",
                   help=f"batch sizes run for {NATTEN_IMPL} (default 1); the other --batch "
                        "sizes are recorded as skipped for it")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch.set_num_threads (default: all cores, %(default)s here)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    p.add_argument("--iters", type=int, default=20,
                   help="timed runs (fewer if --max-seconds runs out, at least 3) (default 20)")
    p.add_argument("--natten-iters", type=int, default=5,
                   help=f"--iters for {NATTEN_IMPL} (default 5)")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="time budget per model and batch; a single run longer than this "
                        "is timed once only (default 20)")
    p.add_argument("--natten-max-seconds", type=float, default=40.0,
                   help=f"--max-seconds for {NATTEN_IMPL} (default 40)")
    p.add_argument("--run-limit", type=float, default=180.0,
                   help="a single run longer than this is recorded as skipped (default 180)")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="a child above this resident memory is stopped and recorded as "
                        "skipped (default: 60%% of MemAvailable at start)")
    p.add_argument("--json", metavar="FILE", help="write every result (with raw times) here")
    p.add_argument("--list", action="store_true", help="list the models and exit")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args._worker:
        spec = json.loads(args._worker)
        (worker_gemm if spec.get("gemm") else worker_model)(spec)
        return 0
    if args.list:
        for m, i in MODELS:
            print(f"{m:<30} {i}")
        return 0

    known = [m for m, _ in MODELS]
    models = split_list(args.model) or known
    unknown = [m for m in models if m not in known]
    if unknown:
        sys.exit(f"unknown --model {', '.join(unknown)} (known: {', '.join(known)})")
    impls = split_list(args.impl) or list(IMPLS)
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        sys.exit(f"unknown --impl {', '.join(bad)} (known: {', '.join(IMPLS)})")
    batches = int_list(args.batch, "--batch") or [1, 16]
    natten_batches = int_list(args.natten_batch, "--natten-batch") or [1]
    if args.threads < 1:
        sys.exit("--threads must be positive")
    if args.max_memory_gb is None:
        avail = mem_available_gb()
        args.max_memory_gb = 0.6 * avail if avail else 0
    max_mem = int(args.max_memory_gb * 2 ** 30)
    missing = {NATTEN_IMPL: None if importable("natten") else
               f"natten is not importable by {sys.executable} (run with "
               ".venv-natten0175/bin/python, see bench/README.md)",
               "timm": None if importable("timm") else
               f"timm is not importable by {sys.executable} "
               "(.venv-natten0175/bin/pip install timm torchvision==<torch's>)",
               "torch-transcription": None}

    commit, cpu = git_commit(REPO), cpu_name()
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        exe = rel if not rel.startswith("..") else exe
    except ValueError:
        pass
    command = shlex.join([exe, *sys.argv])
    load_start = load_average()

    kind, info, _ = run_child({"gemm": True, "threads": args.threads}, 300, 300, 0)
    if kind != "done":
        sys.exit(f"GEMM peak measurement failed: {info}")
    peak, threads, vers = info["gemm_peak_gflops"], info["threads"], info["versions"]
    print(f"{cpu}; {threads} thread(s); torch {vers['torch']}, natten {vers['natten']}, "
          f"timm {vers['timm']}; commit {commit}; load average {load_start}; "
          f"f32 GEMM peak (torch.matmul) {peak:.1f} GFLOP/s", flush=True)

    results = []
    for model, impl in MODELS:
        if model not in models or impl not in impls:
            continue
        is_natten = impl == NATTEN_IMPL
        for b in batches:
            rec = {"case": f"{model}-b{b}", "impl": impl, "model": model, "batch": b,
                   "image_size": model_input(model)[1], "dtype": "f32", "pass": "forward",
                   "threads": threads}
            if impl == "torch-transcription":
                rec["attention"] = "dense"
            skip = missing[impl]
            if skip is None and is_natten and b not in natten_batches:
                skip = (f"batch {b} not run for {impl}: NATTEN 0.17.5's CPU ops take seconds "
                        f"per image (see the batch-1 record); --natten-batch "
                        f"{','.join(map(str, natten_batches))} was given")
            spec = {"model": model, "impl": impl, "batch": b, "threads": args.threads,
                    "warmup": args.warmup,
                    "iters": args.natten_iters if is_natten else args.iters,
                    "max_seconds": args.natten_max_seconds if is_natten else args.max_seconds,
                    "run_limit": args.run_limit}
            kind, info, runs = "skip", skip, []
            if skip is None:
                print(f"{model} {impl} batch {b} ...", end="", file=sys.stderr, flush=True)

                def progress(tag, dt):
                    print(f" {dt * 1e3:.0f}ms" if tag == "run" else " w", end="",
                          file=sys.stderr, flush=True)

                kind, info, runs = run_child(spec, 600, args.run_limit, max_mem, progress)
                print(file=sys.stderr, flush=True)
            else:
                print(f"{model} {impl} batch {b}: skipped: {skip}", file=sys.stderr, flush=True)
            if kind == "done":
                times = info["times_s"]
                med, lo, hi = stats(times)
                gflop = info["gflop_per_image"] * b
                rec.update({"median_s": med, "min_s": lo, "max_s": hi, "times_s": times,
                            "images_per_s": b / med, "gflop": gflop, "gflops": gflop / med,
                            "params": info["params"], "weight_bytes": info["weight_bytes"],
                            "peak_rss_bytes": info["peak_rss_bytes"],
                            "rss_before_load_bytes": info["rss_before_load_bytes"],
                            "load_average": info["load_average"],
                            "load_average_end": info["load_average_end"]})
            else:
                gf = NA_INFO_GFLOP.get(model)
                rec.update({"median_s": None, "min_s": None, "max_s": None, "times_s": runs,
                            "images_per_s": None, "gflop": gf * b if gf else None,
                            "gflops": None, "params": None, "peak_rss_bytes": None,
                            "load_average": load_average(), "skipped": str(info)})
            rec.update({"gemm_peak_gflops": peak, "warmup": args.warmup,
                        "iters": spec["iters"], "max_seconds": spec["max_seconds"],
                        "load_average_at_start": load_start,
                        "commit": commit, "cpu": cpu, "command": command, "versions": vers})
            results.append(rec)
            if args.json:
                write_json(args.json, results)

    print(f"{'model':<30} {'impl':<19} {'batch':>5} {'median ms':>10} {'min ms':>10} "
          f"{'max ms':>10} {'images/s':>9} {'GFLOP/s':>8} {'% peak':>7}")
    for r in results:
        if "skipped" in r:
            print(f"{r['model']:<30} {r['impl']:<19} {r['batch']:>5} skipped: {r['skipped']}")
            continue
        print(f"{r['model']:<30} {r['impl']:<19} {r['batch']:>5} {r['median_s'] * 1e3:>10.1f} "
              f"{r['min_s'] * 1e3:>10.1f} {r['max_s'] * 1e3:>10.1f} {r['images_per_s']:>9.2f} "
              f"{r['gflops']:>8.1f} {100 * r['gflops'] / peak:>6.1f}%")
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Training-step and inference speed of `fashion_dinat` in PyTorch on the CPU,
the side-by-side baseline of `na train` / `na eval`.

The model is tools/fashion_torch/model.py, a transcription of the Rust model
(866,944 parameters, asserted), f32, 28x28 grey input, 10 classes.

Passes (the `pass` field):

  train-step  optimizer.zero_grad(); loss = cross_entropy(model(x), y,
              label_smoothing=0.1); loss.backward(); optimizer.step(), with
              torch.optim.AdamW(lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight
              decay 0.05 on matrices and convolution kernels only), the
              hyper-parameters of `na train` (crates/na-model/src/train/run.rs,
              TrainOptions::default; constant lr, no augmentation). Batch
              --batch (default 32, the Rust trainer's). One fixed random batch
              (x ~ N(0, 1), labels uniform), so the loss falls while timing;
              its first and last values are recorded (`loss_first`,
              `loss_last`).
  forward     logits = model(x) under torch.inference_mode(), batch
              --eval-batch (default 256), random x.

Implementations (the `impl` field, `torch-<mode>-<attention>`; --impl picks):

  mode       eager: PyTorch eager.
             compile: torch.compile (default inductor backend, dynamic=False):
             for train-step the forward and loss (backward through
             AOTAutograd; the AdamW step stays eager, torch's default foreach
             implementation), for forward the model. The compile (first
             call) is timed apart as `compile_s`. Where compiling fails (no
             C++ compiler, an inductor error) the record is
             `"skipped": "<reason>"`.
  attention  dense: N x N scores plus an rpb / -inf window bias (plain
             matmuls; N is 196 tokens at most here); gather: each query's k*k keys and values
             gathered by index_select (tools/train_check/one_step.py's form).
             The same function either way (model.py --check compares both
             with one_step.py and with `na classify`).

  torch-eager-dense, torch-eager-gather, torch-compile-dense,
  torch-compile-gather (default: all four).

Timing follows `na bench` and bench/model_baselines.py: warm-up runs
(--warmup) stop once half of --max-seconds is spent; then at least 3 timed
runs (at most --iters), stopping once --max-seconds is spent; a run longer than
the whole budget is timed once. Each (impl, pass, batch) runs in its own child
process, watched like model_baselines.py's (a single run over --run-limit, the
compile over --compile-limit, memory over --max-memory-gb, an exception or a
crash is recorded as "skipped").

Records have model_baselines.py's fields (case "<model>-<pass>-b<batch>",
impl, model, batch, image_size, dtype, pass, threads, median_s, min_s, max_s,
times_s, images_per_s, gflop, gflops, gemm_peak_gflops, params, weight_bytes,
peak_rss_bytes, load_average, load_average_end, commit, cpu, command,
versions ...). gflop: `na info fashion_dinat --size 28` gives 0.04993 GFLOP
(2 x multiply-adds) per image forward; forward records use that x batch,
train-step records 3 x that x batch (backward counted as twice the forward,
`gflop_convention`).

Examples (run with the venv of tools/fashion_torch/README.md):
  .venv-torch/bin/python tools/fashion_torch/bench_train.py \\
      --json bench/results/fashion/cpu-fashion-train-torch.json
  (not in bench/results/ itself: make_table.py's model table ignores `pass` and
  would show train-step records as forward times)
  .venv-torch/bin/python tools/fashion_torch/bench_train.py \\
      --impl torch-eager-dense,torch-eager-gather --iters 2 --max-seconds 5   # smoke run
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

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench"))
sys.path.insert(0, HERE)
# Shared with the operator and model baselines (same protocol and record fields).
from baselines import (  # noqa: E402
    cpu_name, emit, git_commit, mem_available_gb, split_list, stats, write_json)
from model_baselines import (  # noqa: E402
    default_threads, int_list, load_average, proc_status_bytes, worker_gemm)

IMPLS = ["torch-eager-dense", "torch-eager-gather", "torch-compile-dense",
         "torch-compile-gather"]
PASSES = ["train-step", "forward"]
MODELS = ["fashion_dinat", "fashion_nat"]


# --------------------------------------------------------------------------
# Child: one (impl, pass, batch)
# --------------------------------------------------------------------------

def worker(spec):
    import warnings

    warnings.filterwarnings("ignore")
    load = load_average()
    import torch
    import torch.nn.functional as F

    import model as fm  # tools/fashion_torch/model.py

    torch.set_num_threads(spec["threads"])
    rss_before = proc_status_bytes("VmHWM")
    _, mode, attention = spec["impl"].split("-")
    b, train, compiled = spec["batch"], spec["pass"] == "train-step", mode == "compile"
    try:
        m = fm.build(spec["model"], seed=spec["seed"], attention=attention)
        params = fm.count_params(m)
        if params != fm.FASHION_PARAMS:
            raise AssertionError(f"{params} parameters, na info says {fm.FASHION_PARAMS}")
        weight_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
        g = torch.Generator().manual_seed(spec["seed"] + 1)
        x = torch.randn(b, 1, *fm.IMAGE_SIZE, generator=g)
        y = torch.randint(0, 10, (b,), generator=g)
        losses = []
        if train:
            m.train()
            opt = torch.optim.AdamW(fm.decay_groups(m, spec["weight_decay"]), lr=spec["lr"],
                                    betas=(0.9, 0.999), eps=1e-8)
            ls = spec["label_smoothing"]

            def fwd_loss(x, y):
                return F.cross_entropy(m(x), y, label_smoothing=ls)

            loss_fn = torch.compile(fwd_loss, dynamic=False) if compiled else fwd_loss

            def once():
                t = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(x, y)
                loss.backward()
                opt.step()
                dt = time.perf_counter() - t
                losses.append(loss.item())
                return dt
        else:
            m.eval()
            fwd = torch.compile(m, dynamic=False) if compiled else m

            def once():
                with torch.inference_mode():
                    t = time.perf_counter()
                    out = fwd(x)
                    dt = time.perf_counter() - t
                del out
                return dt

        compile_s = None
        if compiled:
            # The first call compiles; it counts as setup (--compile-limit).
            compile_s = once()
    except Exception as e:  # noqa: BLE001 - recorded as skipped
        msg = f"{'compile' if compiled else 'setup'} failed: {type(e).__name__}: {e}"
        emit("error", json.dumps(msg.strip().splitlines()[0][:300]))
        return
    budget, run_limit = spec["max_seconds"], spec["run_limit"]
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
        n_warm = len(losses)
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
            if elapsed > budget and (len(times) >= 3 or dt > budget):
                break
    except Exception as e:  # noqa: BLE001 - recorded as skipped
        msg = f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
        emit("error", json.dumps(msg))
        return
    out = {
        "times_s": times, "params": params, "weight_bytes": weight_bytes,
        "peak_rss_bytes": proc_status_bytes("VmHWM"), "rss_before_load_bytes": rss_before,
        "threads": torch.get_num_threads(), "load_average": load,
        "load_average_end": load_average(), "compile_s": compile_s,
    }
    if train:
        out.update({"loss_first": losses[0], "loss_last": losses[-1],
                    "steps_taken": len(losses), "warmup_steps": n_warm})
    emit("done", json.dumps(out))


# --------------------------------------------------------------------------
# Parent: watch the children (bench/model_baselines.py's run_child, for this file)
# --------------------------------------------------------------------------

def run_child(spec, setup_limit, run_limit, max_mem_bytes, progress=None):
    """Runs one child; returns (kind, payload, timed_runs) with kind one of
    done / error / slow / killed."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf, runs, limit, last, result = b"", [], setup_limit, time.monotonic(), None
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
                    tag, _, rest = line.decode(errors="replace").partition(" ")
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
                what = "setup/compile" if limit == setup_limit else "a single run"
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


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Time fashion_dinat training steps and inference in PyTorch on the CPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Implementations: {', '.join(IMPLS)}; passes: {', '.join(PASSES)}.",
    )
    p.add_argument("--model", default="fashion_dinat", choices=MODELS,
                   help="preset (default fashion_dinat)")
    p.add_argument("--impl", action="append",
                   help=f"implementations, comma separated (default: {','.join(IMPLS)})")
    p.add_argument("--pass", dest="passes", action="append",
                   help=f"passes, comma separated (default: {','.join(PASSES)})")
    p.add_argument("--batch", action="append",
                   help="train-step batch sizes, comma separated (default 32, na train's)")
    p.add_argument("--eval-batch", action="append",
                   help="forward (inference) batch sizes, comma separated (default 256)")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch.set_num_threads (default: all cores, %(default)s here)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing (default 3)")
    p.add_argument("--iters", type=int, default=30,
                   help="timed runs (fewer if --max-seconds runs out, at least 3) (default 30)")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="time budget per record; a single run longer than this is timed "
                        "once only (default 20)")
    p.add_argument("--run-limit", type=float, default=120.0,
                   help="a single run longer than this is recorded as skipped (default 120)")
    p.add_argument("--compile-limit", type=float, default=900.0,
                   help="setup including torch.compile's first call longer than this is "
                        "recorded as skipped (default 900)")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="a child above this resident memory is stopped and recorded as "
                        "skipped (default: 60%% of MemAvailable at start)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.05,
                   help="AdamW weight decay on matrices and kernels (default 0.05)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="(default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="weights and data seed (default 0)")
    p.add_argument("--json", metavar="FILE", help="write every result (with raw times) here")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args._worker:
        spec = json.loads(args._worker)
        (worker_gemm if spec.get("gemm") else worker)(spec)
        return 0
    impls = split_list(args.impl) or list(IMPLS)
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        sys.exit(f"unknown --impl {', '.join(bad)} (known: {', '.join(IMPLS)})")
    passes = split_list(args.passes) or list(PASSES)
    bad = [x for x in passes if x not in PASSES]
    if bad:
        sys.exit(f"unknown --pass {', '.join(bad)} (known: {', '.join(PASSES)})")
    batches = int_list(args.batch, "--batch") or [32]
    eval_batches = int_list(args.eval_batch, "--eval-batch") or [256]
    if args.threads < 1:
        sys.exit("--threads must be positive")
    if args.max_memory_gb is None:
        avail = mem_available_gb()
        args.max_memory_gb = 0.6 * avail if avail else 0
    max_mem = int(args.max_memory_gb * 2 ** 30)

    import model as fm  # only constants; torch is imported by the children

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
    print(f"{cpu}; {threads} thread(s); torch {vers['torch']}; commit {commit}; "
          f"load average {load_start}; f32 GEMM peak (torch.matmul) {peak:.1f} GFLOP/s",
          flush=True)

    gflop1 = fm.FASHION_GFLOP_28
    results = []
    for impl in impls:
        for pas in passes:
            train = pas == "train-step"
            for b in (batches if train else eval_batches):
                rec = {"case": f"{args.model}-{pas}-b{b}", "impl": impl, "model": args.model,
                       "batch": b, "image_size": list(fm.IMAGE_SIZE), "dtype": "f32",
                       "pass": pas, "threads": threads, "attention": impl.split("-")[2]}
                spec = {"model": args.model, "impl": impl, "pass": pas, "batch": b,
                        "threads": args.threads, "warmup": args.warmup, "iters": args.iters,
                        "max_seconds": args.max_seconds, "run_limit": args.run_limit,
                        "seed": args.seed, "lr": args.lr, "weight_decay": args.weight_decay,
                        "label_smoothing": args.label_smoothing}
                print(f"{args.model} {impl} {pas} batch {b} ...", end="", file=sys.stderr,
                      flush=True)

                def progress(tag, dt):
                    print(f" {dt * 1e3:.0f}ms" if tag == "run" else " w", end="",
                          file=sys.stderr, flush=True)

                kind, info, runs = run_child(spec, args.compile_limit, args.run_limit, max_mem,
                                             progress)
                print(file=sys.stderr, flush=True)
                gflop = (3 if train else 1) * gflop1 * b
                rec.update({"gflop": gflop, "gflop_per_image_forward": gflop1,
                            "gflop_convention": "na info fashion_dinat --size 28 (2 x MACs), "
                            + ("x 3 for forward + backward" if train else "forward")})
                if kind == "done":
                    med, lo, hi = stats(info["times_s"])
                    rec.update({"median_s": med, "min_s": lo, "max_s": hi,
                                "times_s": info["times_s"], "images_per_s": b / med,
                                "gflops": gflop / med})
                    rec.update({k: v for k, v in info.items() if k not in ("times_s", "threads")})
                else:
                    rec.update({"median_s": None, "min_s": None, "max_s": None,
                                "times_s": runs, "images_per_s": None, "gflops": None,
                                "params": None, "peak_rss_bytes": None,
                                "load_average": load_average(), "skipped": str(info)})
                if impl.startswith("torch-compile"):
                    rec["compile_scope"] = ("model forward + cross-entropy (backward via "
                                            "AOTAutograd), AdamW step eager" if train
                                            else "model forward")
                if train:
                    rec["optimizer"] = {"name": "torch.optim.AdamW", "lr": args.lr,
                                        "betas": [0.9, 0.999], "eps": 1e-8,
                                        "weight_decay": args.weight_decay,
                                        "decay_on": "matrices and conv kernels",
                                        "label_smoothing": args.label_smoothing}
                rec.update({"gemm_peak_gflops": peak, "warmup": args.warmup,
                            "iters": args.iters, "max_seconds": args.max_seconds,
                            "load_average_at_start": load_start, "commit": commit, "cpu": cpu,
                            "command": command, "versions": vers})
                results.append(rec)
                if args.json:
                    write_json(args.json, results)

    print(f"{'impl':<20} {'pass':<10} {'batch':>5} {'median ms':>10} {'min ms':>9} "
          f"{'max ms':>9} {'images/s':>9} {'GFLOP/s':>8} {'% peak':>7} {'compile s':>9}")
    for r in results:
        if "skipped" in r:
            print(f"{r['impl']:<20} {r['pass']:<10} {r['batch']:>5} skipped: {r['skipped']}")
            continue
        cs = r.get("compile_s")
        print(f"{r['impl']:<20} {r['pass']:<10} {r['batch']:>5} {r['median_s'] * 1e3:>10.2f} "
              f"{r['min_s'] * 1e3:>9.2f} {r['max_s'] * 1e3:>9.2f} {r['images_per_s']:>9.1f} "
              f"{r['gflops']:>8.2f} {100 * r['gflops'] / peak:>6.1f}% "
              f"{'' if cs is None else f'{cs:.1f}':>9}")
    for r in results:
        if "loss_first" in r:
            print(f"{r['impl']} train-step batch {r['batch']}: loss {r['loss_first']:.4f} -> "
                  f"{r['loss_last']:.4f} over {r['steps_taken']} steps on one fixed batch")
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

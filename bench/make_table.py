#!/usr/bin/env python3
"""Writes the benchmark table of README.md from bench/results/*.json.

Every results file is a JSON list of result objects, as written by
`na bench --json` and by bench/baselines.py. The table goes between the lines
`<!-- bench:start -->` and `<!-- bench:end -->` of README.md (a `## Benchmarks`
section holding them is appended when they are missing).

One table per (cpu, threads, dtype); one row per (case, pass) with each
implementation's median time in ms and the speedup of na-fused over every other
implementation (median of the other / median of na-fused: > 1 means na-fused is
faster). Plain python, no third-party packages; the output is deterministic.

  python3 bench/make_table.py            # rewrite README.md
  python3 bench/make_table.py --print    # print the table only
"""

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

CASE_ORDER = ["nat-l0", "nat-l0-b64", "dinat-l0", "nat-l2", "hires", "seq-1d",
              "seq-1d-blocked", "vol-3d"]
IMPL_ORDER = ["na-fused", "na-reference", "torch-gather", "torch-sdpa", "natten"]
PASS_ORDER = ["forward", "forward+backward"]
DTYPE_ORDER = ["f32", "f16", "bf16"]
MAIN = "na-fused"


def order(seq, x):
    return (0, seq.index(x), "") if x in seq else (1, 0, str(x))


def fmt_ms(s):
    ms = s * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(r):
    if r >= 100:
        return f"{r:.0f}×"
    if r >= 10:
        return f"{r:.1f}×"
    return f"{r:.2f}×"


def is_skipped(r):
    return bool(r.get("skipped")) or not isinstance(r.get("median_s"), (int, float))


def load(results_dir):
    """(records, files): each record gets `_file` (path relative to the repo)."""
    files = sorted(glob.glob(os.path.join(results_dir, "*.json")))
    records = []
    for n, path in enumerate(files):
        rel = os.path.relpath(path, REPO)
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as e:
            print(f"warning: cannot read {rel}: {e}", file=sys.stderr)
            continue
        if isinstance(data, dict):
            data = [data]
        for i, r in enumerate(data):
            if not isinstance(r, dict) or "case" not in r or "impl" not in r:
                print(f"warning: {rel}[{i}] is not a result object", file=sys.stderr)
                continue
            r = dict(r)
            r["_file"], r["_rank"] = rel, (n, i)
            records.append(r)
    return records, [os.path.relpath(f, REPO) for f in files]


def pick(records):
    """One record per (cpu, threads, dtype, case, pass, impl): a measured one over a
    skipped one, then the one from the later file (sorted by name)."""
    best = {}
    for r in records:
        key = (r.get("cpu", "?"), r.get("threads", 0), r.get("dtype", "f32"), r["case"],
               r.get("pass", "forward"), r["impl"])
        rank = (not is_skipped(r), r["_rank"])
        if key in best:
            old = best[key]
            print(f"warning: {key[3]} {key[5]} {key[4]} ({key[0]}, {key[1]} threads) is in "
                  f"{old['_file']} and {r['_file']}; using the "
                  f"{'latter' if rank > (not is_skipped(old), old['_rank']) else 'former'}",
                  file=sys.stderr)
            if rank <= (not is_skipped(old), old["_rank"]):
                continue
        best[key] = r
    return best


def table(best):
    groups = sorted({k[:3] for k in best},
                    key=lambda g: (g[0], g[1], order(DTYPE_ORDER, g[2])))
    out = []
    for cpu, threads, dtype in groups:
        recs = {k[3:]: r for k, r in best.items() if k[:3] == (cpu, threads, dtype)}
        impls = sorted({k[2] for k in recs}, key=lambda x: order(IMPL_ORDER, x))
        rows = sorted({k[:2] for k in recs},
                      key=lambda x: (order(CASE_ORDER, x[0]), order(PASS_ORDER, x[1])))
        others = [i for i in impls if i != MAIN] if MAIN in impls else []

        out.append(f"### {cpu}, {threads} thread(s), {dtype}")
        out.append("")
        head = ["case", "pass"] + [f"{i} ms" for i in impls]
        head += [f"{MAIN} vs {i}" for i in others]
        if MAIN in impls:
            head.append(f"{MAIN} GFLOP/s (% GEMM peak)")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
        skipped = []
        for case, pas in rows:
            cells = [case, pas]
            for i in impls:
                r = recs.get((case, pas, i))
                if r is None:
                    cells.append("—")
                elif is_skipped(r):
                    cells.append("skipped")
                    skipped.append(f"{case} {pas} {i}: {r.get('skipped') or 'no median'}")
                else:
                    cells.append(fmt_ms(r["median_s"]))
            main = recs.get((case, pas, MAIN))
            for i in others:
                r = recs.get((case, pas, i))
                if main is None or r is None or is_skipped(main) or is_skipped(r):
                    cells.append("—")
                else:
                    cells.append(fmt_ratio(r["median_s"] / main["median_s"]))
            if MAIN in impls:
                if main is None or is_skipped(main):
                    cells.append("—")
                else:
                    gf = main.get("gflops")
                    peak = main.get("gemm_peak_gflops")
                    if isinstance(gf, (int, float)) and isinstance(peak, (int, float)) and peak:
                        cells.append(f"{gf:.1f} ({100 * gf / peak:.0f}%)")
                    else:
                        cells.append("—")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")

        def uniq(field, impl_list=None):
            vals = {}
            for (case, pas, i), r in recs.items():
                if impl_list is None or i in impl_list:
                    vals.setdefault(str(r.get(field, "?")), set()).add(i)
            return vals

        def describe(vals):
            return "; ".join(
                f"`{v}` ({', '.join(sorted(imps, key=lambda x: order(IMPL_ORDER, x)))})"
                for v, imps in sorted(vals.items()))

        notes = [f"Machine: {cpu}; {threads} thread(s); {dtype}."]
        notes.append(f"Commits: {describe(uniq('commit'))}.")
        peaks = {}
        for (case, pas, i), r in recs.items():
            p = r.get("gemm_peak_gflops")
            if isinstance(p, (int, float)):
                lib = "torch.matmul" if r.get("isa") == "torch" else "gemm crate"
                peaks.setdefault(lib, []).append(p)
        if peaks:
            notes.append("f32 GEMM peak measured in the same runs: " + ", ".join(
                f"{min(v):.0f}–{max(v):.0f} GFLOP/s ({lib})" if round(min(v)) != round(max(v))
                else f"{min(v):.0f} GFLOP/s ({lib})" for lib, v in sorted(peaks.items())) + ".")
        isas = {str(r.get("isa")) for (c_, p_, i), r in recs.items() if i == MAIN}
        if isas:
            notes.append(f"{MAIN} ISA: {', '.join(sorted(isas))}.")
        vers = {}
        for r in recs.values():
            for lib, v in sorted((r.get("versions") or {}).items()):
                if v:
                    vers.setdefault(lib, set()).add(str(v))
        if vers:
            notes.append("Versions: " + ", ".join(
                f"{lib} {'/'.join(sorted(v))}" for lib, v in sorted(vers.items())) + ".")
        files = sorted({r["_file"] for r in recs.values()})
        notes.append("Source: " + ", ".join(f"`{f}`" for f in files) + ".")
        notes.append(f"Speedup = median of the other implementation / median of {MAIN}.")
        if skipped:
            notes.append("Skipped: " + "; ".join(sorted(skipped, key=skip_key)) + ".")
        out.extend(f"- {n}" for n in notes)
        out.append("")
    return "\n".join(out).rstrip("\n")


MODEL_ORDER = ["nat_mini", "dinat_mini", "nat_tiny", "dinat_tiny", "nat_base", "convnext_tiny",
               "swin_tiny_patch4_window7_224"]
MODEL_IMPL_ORDER = ["na-model-cpu", "authors-natten0175", "timm"]
MODEL_MAIN = "na-model-cpu"


def model_table(records):
    """Whole-model results (records with a "model" field): one table per (cpu,
    threads); rows (model, batch); median ms and images/s per implementation."""
    best = {}
    for r in records:
        key = (r.get("cpu", "?"), r.get("threads", 0), r["model"], r.get("batch", 1), r["impl"])
        rank = (not is_skipped(r), r["_rank"])
        if key not in best or rank > (not is_skipped(best[key]), best[key]["_rank"]):
            best[key] = r
    out = []
    for cpu, threads in sorted({k[:2] for k in best}):
        recs = {k[2:]: r for k, r in best.items() if k[:2] == (cpu, threads)}
        impls = sorted({k[2] for k in recs}, key=lambda x: order(MODEL_IMPL_ORDER, x))
        rows = sorted({k[:2] for k in recs}, key=lambda x: (order(MODEL_ORDER, x[0]), x[1]))
        out.append(f"### Models: {cpu}, {threads} thread(s), f32, forward")
        out.append("")
        head = ["model", "batch"] + [f"{i} ms (images/s)" for i in impls]
        head.append(f"{MODEL_MAIN} GFLOP/s (% GEMM peak)")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---", "---:"] + ["---:"] * (len(head) - 2)) + "|")
        skipped = []
        for model, batch in rows:
            cells = [model, str(batch)]
            for i in impls:
                r = recs.get((model, batch, i))
                if r is None:
                    cells.append("—")
                elif is_skipped(r):
                    cells.append("skipped")
                    skipped.append(f"{model} batch {batch} {i}: {r.get('skipped') or 'no median'}")
                else:
                    cells.append(f"{fmt_ms(r['median_s'])} ({batch / r['median_s']:.1f})")
            main = recs.get((model, batch, MODEL_MAIN))
            gf = main.get("gflops") if main else None
            peak = main.get("gemm_peak_gflops") if main else None
            if isinstance(gf, (int, float)) and isinstance(peak, (int, float)) and peak:
                cells.append(f"{gf:.1f} ({100 * gf / peak:.0f}%)")
            else:
                cells.append("—")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        files = sorted({r["_file"] for r in recs.values()})
        commits = sorted({str(r.get("commit", "?")) for r in recs.values()})
        out.append(f"- Machine: {cpu}; {threads} thread(s); commits {', '.join(commits)}.")
        loads = sorted({str(r["load_average"]) for r in recs.values() if r.get("load_average")})
        if loads:
            out.append(f"- Load average when the baselines ran: {'; '.join(loads)}.")
        out.append("- Source: " + ", ".join(f"`{f}`" for f in files) + ".")
        if skipped:
            out.append("- Skipped: " + "; ".join(skipped) + ".")
        out.append("")
    return "\n".join(out).rstrip("\n")


def skip_key(s):
    case, pas, rest = s.split(" ", 2)
    impl = rest.split(":", 1)[0]
    return (order(CASE_ORDER, case), order(PASS_ORDER, pas), order(IMPL_ORDER, impl))


def render(results_dir):
    records, files = load(results_dir)
    if not records:
        return ("_No results yet: see [bench/README.md](bench/README.md) for how to "
                "produce them._")
    ops = [r for r in records if "model" not in r]
    models = [r for r in records if "model" in r]
    parts = []
    if ops:
        parts.append(table(pick(ops)))
    if models:
        parts.append(model_table(models))
    return ("_Generated by `bench/make_table.py` from `bench/results/*.json`; "
            "do not edit by hand._\n\n" + "\n\n".join(parts))


def update_readme(path, body):
    text = open(path).read() if os.path.exists(path) else ""
    block = f"{START}\n{body}\n{END}"
    if START in text and END in text and text.index(START) < text.index(END):
        a = text.index(START)
        b = text.index(END) + len(END)
        new = text[:a] + block + text[b:]
    else:
        new = text.rstrip("\n") + ("\n\n" if text.strip() else "") + "## Benchmarks\n\n" \
            + block + "\n"
    if new != text:
        with open(path, "w") as fh:
            fh.write(new)
        return True
    return False


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=os.path.join(HERE, "results"),
                   help="folder of results JSON files (default bench/results)")
    p.add_argument("--readme", default=os.path.join(REPO, "README.md"),
                   help="README to update (default README.md of the repository)")
    p.add_argument("--print", action="store_true", help="print the table, leave the README")
    args = p.parse_args()
    body = render(args.results)
    if args.print:
        print(body)
        return 0
    changed = update_readme(args.readme, body)
    print(f"{'updated' if changed else 'unchanged'}: {os.path.relpath(args.readme)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

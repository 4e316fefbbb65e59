#!/usr/bin/env bash
# Builds what tools/gpu_check/run.sh runs on the GPU machine (which has no Rust)
# into .gpu/ (git-ignored through .git/info/exclude): the release `na` binary and
# na-cuda's release test binaries, stripped, with the commit they were built from.
# Then, with the device tool: run `bash tools/gpu_check/run.sh` carrying `.gpu`.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu
cargo build --release -p na-cli
cp target/release/na .gpu/na
cargo test --release -p na-cuda --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("gpu", "compile", "na_cuda"):
        name = {"na_cuda": "lib"}.get(m["target"]["name"], m["target"]["name"])
        shutil.copy(m["executable"], ".gpu/" + name)
        print(name, m["executable"])
'
strip .gpu/*
git rev-parse HEAD > .gpu/COMMIT
git diff --quiet HEAD || echo "dirty" >> .gpu/COMMIT
ls -l .gpu

#!/usr/bin/env bash
# Builds the example firmware with the built-in Fashion-MNIST DiNAT (f16
# blob) and the ten images of examples/fashion/, runs it on an emulated
# Cortex-M4F (qemu-system-arm -machine mps2-an386, -icount shift=0 so one
# instruction is one nanosecond of virtual time), and checks that its classes
# are the host's (`na classify`). Prints the flash, RAM and per-image figures.
#
#   bash firmware/mps2-an386/run.sh
#
# Environment:
#   NA_BIN             an `na` binary to use [default: cargo run --release -p na-cli]
#   NA_FIRMWARE_WORK   folder for the blob, inputs and logs [default: a temporary one]
#
# Needs rustup (the thumbv7em-none-eabihf target is added) and Debian's
# qemu-system-arm.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="${NA_FIRMWARE_WORK:-$(mktemp -d)}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"

if [ -n "${NA_BIN:-}" ]; then
    na=("$(cd "$(dirname "$NA_BIN")" && pwd)/$(basename "$NA_BIN")")
else
    na=(cargo run --quiet --release --manifest-path "$root/Cargo.toml" -p na-cli --)
fi
rustup target add thumbv7em-none-eabihf >/dev/null

cd "$root"
images=(examples/fashion/*.png)
"${na[@]}" export-edge "$work/fashion.naedge" --images "${images[@]}" --inputs "$work/inputs.f32"
"${na[@]}" classify --top-k 1 "${images[@]}" | sed -E 's/^[^:]*: (.*) [0-9.]+%$/\1/' > "$work/host.txt"

cd "$here"
export NA_EDGE_BLOB="$work/fashion.naedge" NA_EDGE_INPUTS="$work/inputs.f32"
cargo fmt -- --check
cargo clippy --release -- -D warnings
cargo build --release
elf=target/thumbv7em-none-eabihf/release/na-firmware-mps2
timeout 900 qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic \
    -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf" \
    | tee "$work/firmware.log"
sed -nE 's/^image [0-9]+: (.*) \(logit .*/\1/p' "$work/firmware.log" > "$work/firmware.txt"
if ! grep -qx done "$work/firmware.log"; then
    echo "the firmware did not finish"; exit 1
fi
if ! diff -u "$work/host.txt" "$work/firmware.txt"; then
    echo "the firmware's classes differ from the host's"; exit 1
fi
echo "classes: the firmware's ${#images[@]} equal the host's (na classify)"

# Flash: what the image loads at address 0 (vector table, code, read-only
# data with the weights and images); RAM: the arena (printed above) and the
# rest of .data/.bss.
size -A "$elf" | awk '
    $1 == ".vector_table" || $1 == ".text" || $1 == ".rodata" || $1 == ".data" { flash += $2 }
    $1 == ".text" { text = $2 } $1 == ".rodata" { ro = $2 }
    $1 == ".data" || $1 == ".bss" { ram += $2 }
    END { printf "flash: %d bytes (code %d, read-only data %d); static RAM (.data + .bss): %d bytes\n", flash, text, ro, ram }'
awk '/^image / { n++; sub(/ ns of virtual time/, ""); s += $NF } END { if (n) printf "instructions per image (mean of %d, -icount shift=0): %d\n", n, s / n }' "$work/firmware.log"

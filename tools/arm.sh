#!/usr/bin/env bash
# amg on ARM: cross-builds for aarch64 (edge boards: Jetson, Raspberry Pi 4/5, Graviton) and runs the
# parity tests — amg against the committed PyTorch references, the inference engine against the
# differentiable model, the training gradients, the model directory and PyTorch round trips, INT8
# against its PyTorch reference (and every INT8 unit, SDOT included, in the kernels' tests) — on
# the aarch64 build under qemu-user. Installs what it needs: the Rust target, Debian's
# gcc-aarch64-linux-gnu (linker) and qemu-user.
#   tools/arm.sh            build + tests
#   STATIC=1 tools/arm.sh   also a static binary to copy onto a board
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
rustup target add "$target"
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get install -y gcc-aarch64-linux-gnu qemu-user
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
cargo build --release --target "$target"
cargo test --release --target "$target" --workspace --lib
cargo test --release --target "$target" --test suite -- parity:: engine_vs_autodiff:: candle_model:: gradients:: model_dir:: pytorch_export:: quantize::int8_
if [ "${STATIC:-0}" = 1 ]; then
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$target"
    aarch64-linux-gnu-strip -o target/$target/release/amg-static target/$target/release/amg
    ls -l target/$target/release/amg-static
    file target/$target/release/amg-static || true
fi

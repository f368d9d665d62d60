#!/usr/bin/env bash
# Runs the tests of amg's own unsafe code under Miri (nightly): the raw-pointer matrix products
# (`gemm_raw`, `matmul_into_raw`), the packed products whose parallel tasks write disjoint blocks
# through a shared pointer, attention forward and backward, and the row kernels — on the portable
# kernel path (Miri does not execute AVX2/AVX-512 intrinsics; tests/suite/isa.rs holds those paths equal to
# the portable one). Tree Borrows, because crossbeam-epoch (under rayon) trips a known Stacked
# Borrows report in its own code; leaks ignored, because rayon's pool threads outlive `main`.
# Not run: the memory map of safetensors files and `mallopt` (foreign calls Miri cannot make).
# About 5 minutes to build and 6 to run here.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add --toolchain nightly miri rust-src
AMG_ISA=portable RAYON_NUM_THREADS=2 MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-permissive-provenance -Zmiri-ignore-leaks" \
    cargo +nightly miri test -p amg-kernels --lib -- gemm:: packed:: attention:: rows::

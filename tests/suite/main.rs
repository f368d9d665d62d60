//! amg's integration tests, one test binary with a module per subject (`cargo test --release --test
//! suite -- parity::` runs one). One binary instead of one per file: each links the whole of amg and
//! its dependencies, so sixteen of them took most of the suite's build time and disk.
//! `tests/hostile_files.rs` stays a binary of its own: it installs a counting global allocator and
//! measures each case's peak memory, which other tests running beside it would disturb.

#[path = "../common/mod.rs"]
mod common;

mod candle_model;
mod cli;
mod demo;
mod docs;
mod engine_vs_autodiff;
mod eval;
mod gradients;
mod isa;
mod model_dir;
mod onnx_export;
mod parity;
mod precision;
mod prune;
mod pytorch_export;
mod quantize;
mod synth;
mod train;
mod user_files;

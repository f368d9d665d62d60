//! The model amg prunes and runs, described once (docs/architecture.md): `model` — the ViT Re-ID
//! definition (`params`: every tensor and its key; `config`: settings, prefix tokens, pooling;
//! `dir`: the model directory; surgery, cost, the differentiable model); `import` and `export` —
//! the file formats it is read from and written to (safetensors, PyTorch .pth read without running
//! pickled code, ONNX, PyTorch); `engine` — the fast inference pass; and the image preprocessing
//! (`preprocess`, `resample`) that turns pictures into its input exactly as Pillow does.
//!
//! What an application that only runs amg's models needs: load a model directory, preprocess, run
//! the engine. Training and pruning live in the `amg` crate above.

// One `unsafe` block: the read-only memory map of a safetensors file (tensor.rs), allowed there.
#![deny(unsafe_code)]

use amg_core::{choice, error, fsutil, rng, text};
use amg_kernels as kernels;

pub mod engine;
pub mod export;
pub mod import;
pub mod model;
pub mod preprocess;
pub mod resample;
pub mod tensor;

pub use amg_core::{Error, Result};

//! amg: attention-map-guided pruning of ViT person re-identification models (Mao et al.,
//! arXiv 2304.01452), and a fast CPU runtime for the pruned models.
//!
//! The pipeline, one layer each, every layer importing only the ones below it: foundation
//! (`kernels`, `preprocess`, `tensor`, `draw`, …) → data (`data`, `synth`) → the model definition
//! (`model`; `import` and `export` map it to and from other formats) → inference (`engine`) →
//! evaluation and deployment (`eval`, `embed`) → training (`train`) → pruning (`prune`) → reporting
//! (`report`) → `demo`. The command line (`src/bin/amg/`) only parses arguments and reports errors.

// Unsafe operations inside an `unsafe fn` still need their own `unsafe` block and SAFETY comment.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod alloc;
pub mod choice;
pub mod data;
pub mod demo;
pub mod draw;
pub mod embed;
pub mod engine;
pub mod error;
pub mod eval;
pub mod export;
pub mod fsutil;
pub mod import;
pub mod interrupt;
pub mod kernels;
pub mod model;
pub mod preprocess;
pub mod progress;
pub mod prune;
pub mod report;
pub mod resample;
pub mod rng;
pub mod synth;
pub mod tensor;
pub mod text;
pub mod train;

pub use error::{Error, Result};

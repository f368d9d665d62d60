//! amg: attention-map-guided pruning of ViT person re-identification models (Mao et al.,
//! arXiv 2304.01452), and a fast CPU runtime for the pruned models.
//!
//! This crate is the pipelines, each module importing only the ones before it: data (`data`, the
//! synthetic benchmark `synth` and its pictures `draw`) → evaluation and deployment (`eval`,
//! `embed`) → training (`train`) → pruning (`prune`) → reporting (`report`) → `demo`. Below it, and
//! re-exported here so that one `amg::` path names everything: amg-model (the model, its file
//! formats, the engine), amg-kernels and amg-core. The command line (the amg-cli package) only
//! parses arguments and reports errors.

#![forbid(unsafe_code)]

pub use amg_core::{choice, error, fsutil, interrupt, progress, rng, text, Error, Result};
pub use amg_kernels as kernels;
pub use amg_kernels::alloc;
pub use amg_model::{engine, export, import, model, preprocess, resample, tensor};

pub mod data;
pub mod demo;
pub mod draw;
pub mod embed;
pub mod eval;
pub mod prune;
pub mod quantize;
pub mod report;
pub mod synth;
pub mod train;

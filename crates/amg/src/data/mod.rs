//! Re-ID data: dataset layouts and the image loader.

pub mod cameras;
pub mod dataset;
pub mod loader;
pub mod sampler;

pub use dataset::{Dataset, Layout, Sample};

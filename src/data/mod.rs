//! Re-ID data: dataset layouts and the image loader.

pub mod dataset;
pub mod loader;

pub use dataset::{Dataset, Layout, Sample};

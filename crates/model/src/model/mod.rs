//! The ViT Re-ID model: configuration, tensors, directory format, cost.

pub mod config;
pub mod cost;
pub mod dir;
pub mod head;
pub mod params;
pub mod quant;
pub mod surgery;
pub mod vit;
pub mod weights;

pub use config::{Arch, HeadConfig, HeadKind, LayerPlan, ModelConfig, Source};
pub use dir::ModelFiles;

//! Random weights for a configuration: how a new model (or a new set of classifiers) starts.

use super::config::ModelConfig;
use super::params::{Key, VitParams};
use crate::rng::Rng;
use crate::tensor::HostTensor;

/// Random weights as timm initialises a ViT (truncated normal 0.02 for weights, position and
/// distillation embeddings, N(0, 1e-6) for the class token, zero biases, unit norms) and LA
/// classifiers as LA-Transformer does (Kaiming for the bottleneck, N(1, 0.02) BatchNorm weight,
/// N(0, 0.001) classifier). Draws follow `VitParams::try_map`'s order, so a seed always gives the
/// same model.
pub fn init_random(cfg: &ModelConfig, seed: u64) -> VitParams<HostTensor> {
    let mut rng = Rng::new(seed);
    VitParams::layout(cfg).map(|key: &Key, shape| {
        let n: usize = shape.iter().product();
        let mut draw = |f: &dyn Fn(&mut Rng) -> f64| -> Vec<f32> { (0..n).map(|_| f(&mut rng) as f32).collect() };
        let data = match (key.parent(), key.leaf()) {
            (_, "running_var") | ("norm1" | "norm2" | "norm", "weight") => vec![1.0; n],
            ("bn", "weight") => draw(&|r| 1.0 + 0.02 * r.normal()),
            ("bottleneck", "weight") => {
                let fan_out = shape[0] as f64;
                draw(&|r| r.normal() * (2.0 / fan_out).sqrt())
            }
            ("classifier", "weight") => draw(&|r| 0.001 * r.normal()),
            (_, "cls_token") => draw(&|r| 1e-6 * r.normal()),
            (_, "weight" | "pos_embed" | "dist_token") => draw(&|r| r.trunc_normal(0.02)),
            _ => vec![0.0; n],
        };
        HostTensor::new(shape.clone(), data)
    })
}

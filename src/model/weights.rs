//! The tensors a model directory holds, by name and shape. Names follow timm's VisionTransformer
//! (`blocks.3.attn.qkv.weight`, …) so a checkpoint's layout is recognisable; pruned layers simply
//! have fewer rows in `qkv` and fewer columns in `proj`.

use super::config::{HeadKind, ModelConfig};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{shape_str, HostTensor, TensorMap};
use std::path::Path;

/// Every tensor the configuration calls for, in a fixed order, with its shape.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let a = &cfg.arch;
    let (d, m, p) = (a.embed_dim, a.mlp_dim, a.patch_size);
    let mut v: Vec<(String, Vec<usize>)> = vec![
        ("patch_embed.proj.weight".into(), vec![d, 3, p, p]),
        ("patch_embed.proj.bias".into(), vec![d]),
        ("cls_token".into(), vec![1, 1, d]),
        ("pos_embed".into(), vec![1, cfg.num_tokens(), d]),
    ];
    for (l, plan) in cfg.layers.iter().enumerate() {
        let inner = plan.heads.len() * a.head_dim;
        let b = format!("blocks.{l}");
        v.push((format!("{b}.norm1.weight"), vec![d]));
        v.push((format!("{b}.norm1.bias"), vec![d]));
        v.push((format!("{b}.attn.qkv.weight"), vec![3 * inner, d]));
        if a.qkv_bias {
            v.push((format!("{b}.attn.qkv.bias"), vec![3 * inner]));
        }
        v.push((format!("{b}.attn.proj.weight"), vec![d, inner]));
        v.push((format!("{b}.attn.proj.bias"), vec![d]));
        v.push((format!("{b}.norm2.weight"), vec![d]));
        v.push((format!("{b}.norm2.bias"), vec![d]));
        v.push((format!("{b}.mlp.fc1.weight"), vec![m, d]));
        v.push((format!("{b}.mlp.fc1.bias"), vec![m]));
        v.push((format!("{b}.mlp.fc2.weight"), vec![d, m]));
        v.push((format!("{b}.mlp.fc2.bias"), vec![d]));
    }
    v.push(("norm.weight".into(), vec![d]));
    v.push(("norm.bias".into(), vec![d]));
    if cfg.head.kind == HeadKind::La {
        let (nb, c) = (cfg.head.bottleneck, cfg.head.num_classes);
        for i in 0..cfg.num_parts() {
            let b = format!("parts.{i}");
            v.push((format!("{b}.bottleneck.weight"), vec![nb, d]));
            v.push((format!("{b}.bottleneck.bias"), vec![nb]));
            for s in ["weight", "bias", "running_mean", "running_var"] {
                v.push((format!("{b}.bn.{s}"), vec![nb]));
            }
            v.push((format!("{b}.classifier.weight"), vec![c, nb]));
            v.push((format!("{b}.classifier.bias"), vec![c]));
        }
    }
    v
}

/// Checks that `tensors` are exactly those `cfg` calls for: a missing, extra or misshapen tensor is
/// an error naming it (and both shapes). `path` is the file they came from, for the message.
pub fn check_tensors(cfg: &ModelConfig, tensors: &TensorMap, path: &Path) -> Result<()> {
    let expected = expected_tensors(cfg);
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => return Err(Error::tensor(path, name, format!("missing (config.json calls for shape {})", shape_str(shape)))),
            Some(t) if &t.shape != shape => {
                return Err(Error::tensor(
                    path,
                    name,
                    format!("shape {} does not match config.json, which calls for {}", shape_str(&t.shape), shape_str(shape)),
                ))
            }
            _ => {}
        }
    }
    if tensors.len() != expected.len() {
        let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        if let Some((name, t)) = tensors.iter().find(|(n, _)| !known.contains(n.as_str())) {
            return Err(Error::tensor(path, name, format!("unexpected tensor of shape {} that config.json does not call for", shape_str(&t.shape))));
        }
    }
    Ok(())
}

/// Random weights as timm initialises a ViT (truncated normal 0.02 for weights and position
/// embeddings, zero biases, unit norms) and LA classifiers as LA-Transformer does (Kaiming for the
/// bottleneck, N(1, 0.02) BatchNorm weight, N(0, 0.001) classifier).
pub fn init_random(cfg: &ModelConfig, seed: u64) -> TensorMap {
    let mut rng = Rng::new(seed);
    let mut out = TensorMap::new();
    for (name, shape) in expected_tensors(cfg) {
        let n: usize = shape.iter().product();
        let mut gen = |f: &mut dyn FnMut(&mut Rng) -> f64| -> Vec<f32> { (0..n).map(|_| f(&mut rng) as f32).collect() };
        let data = if name.ends_with("running_var") || (name.contains("norm") && name.ends_with(".weight")) {
            vec![1.0; n]
        } else if name.ends_with("bn.weight") {
            gen(&mut |r| 1.0 + 0.02 * r.normal())
        } else if name.ends_with("bottleneck.weight") {
            let fan_out = shape[0] as f64;
            gen(&mut |r| r.normal() * (2.0 / fan_out).sqrt())
        } else if name.ends_with("classifier.weight") {
            gen(&mut |r| 0.001 * r.normal())
        } else if name == "cls_token" {
            gen(&mut |r| 1e-6 * r.normal())
        } else if name.ends_with(".weight") || name == "pos_embed" {
            gen(&mut |r| r.trunc_normal(0.02))
        } else {
            vec![0.0; n]
        };
        out.insert(name, HostTensor::new(shape, data));
    }
    out
}

pub fn num_params(tensors: &TensorMap, include: impl Fn(&str) -> bool) -> usize {
    tensors.iter().filter(|(n, _)| include(n) && !n.ends_with("running_mean") && !n.ends_with("running_var")).map(|(_, t)| t.numel()).sum()
}

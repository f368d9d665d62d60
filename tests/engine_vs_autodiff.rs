//! Property test: for random configurations and random valid pruning plans, the inference engine
//! and the differentiable model (eval mode) compute the same tokens, features and logits.
//!
//! Configurations vary every dimension the model definition has: width, heads and head size, MLP
//! width, depth, patch size, a non-square grid, qkv bias, the prefix tokens (class, distillation,
//! none), the head (LA or none) and the batch. Plans remove random heads (at least one kept) and
//! random key tokens (prefix tokens kept), applied by the same surgery `amg prune` uses. Weights
//! are drawn large enough that every block changes the residual stream, so a difference in any
//! layer shows.

use amg::engine::{Engine, Want, Workspace};
use amg::model::params::VitParams;
use amg::model::surgery::{apply_plan, Plan};
use amg::model::vit::{to_host, Mode, Vit};
use amg::model::{Arch, HeadConfig, ModelConfig, ModelFiles, Source};
use amg::rng::Rng;
use amg::tensor::HostTensor;
use candle_core::{Device, Tensor};

fn random_config(rng: &mut Rng) -> ModelConfig {
    let heads = 1 + rng.below(4);
    let head_dim = [8, 16, 32][rng.below(3)];
    let d = heads * head_dim;
    let patch = [4, 8, 16][rng.below(3)];
    let la = rng.bool(0.6);
    let class_token = la || rng.bool(0.7);
    let arch = Arch {
        preset: None,
        embed_dim: d,
        depth: 1 + rng.below(3),
        num_heads: heads,
        head_dim,
        mlp_dim: d * (1 + rng.below(4)),
        patch_size: patch,
        ln_eps: 1e-6,
        qkv_bias: rng.bool(0.7),
        class_token,
        dist_token: rng.bool(0.4),
    };
    let (gh, gw) = (1 + rng.below(5), 1 + rng.below(4));
    let head = if la { HeadConfig { bottleneck: 8 + rng.below(24), lambda: 8.0, ..HeadConfig::la(2 + rng.below(6)) } } else { HeadConfig::none() };
    ModelConfig::new(arch, gh * patch, gw * patch, head, Source::default()).unwrap()
}

/// Weights of order one (norms near one, running variances positive), so that every block and the
/// classifiers move the result.
fn random_weights(cfg: &ModelConfig, rng: &mut Rng) -> VitParams<HostTensor> {
    VitParams::layout(cfg).map(|key, shape| {
        let n: usize = shape.iter().product();
        let fan_in = if shape.len() >= 2 { shape[1..].iter().product::<usize>() } else { 1 } as f64;
        let data = (0..n)
            .map(|_| match (key.parent(), key.leaf()) {
                (_, "running_var") => 0.5 + rng.f64(),
                (_, "running_mean") | (_, "bias") => 0.3 * rng.normal(),
                ("norm1" | "norm2" | "norm" | "bn", "weight") => 1.0 + 0.2 * rng.normal(),
                (_, "weight") => rng.normal() / fan_in.sqrt(),
                _ => rng.normal(),
            } as f32)
            .collect();
        HostTensor::new(shape.clone(), data)
    })
}

/// Random kept heads (at least one per layer) and key tokens (prefix tokens always, at least one).
fn random_plan(cfg: &ModelConfig, rng: &mut Rng) -> Plan {
    let (n, prefix) = (cfg.num_tokens(), cfg.num_prefix());
    let mut plan = Plan::of(cfg);
    for l in 0..cfg.arch.depth {
        if rng.bool(0.6) {
            let mut heads: Vec<usize> = (0..cfg.arch.num_heads).filter(|_| rng.bool(0.5)).collect();
            if heads.is_empty() {
                heads.push(rng.below(cfg.arch.num_heads));
            }
            plan.heads[l] = heads;
        }
        if rng.bool(0.6) {
            let mut tokens: Vec<usize> = (0..n).filter(|&t| t < prefix || rng.bool(0.5)).collect();
            if tokens.is_empty() {
                tokens.push(rng.below(n));
            }
            plan.tokens[l] = tokens;
        }
    }
    plan
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn engine_equals_differentiable_model_on_random_pruned_models() {
    let tol = 1e-5;
    let mut worst = 0f32;
    for case in 0..60u64 {
        let mut rng = Rng::new(1000 + case);
        let cfg = random_config(&mut rng);
        let unpruned = ModelFiles { params: random_weights(&cfg, &mut rng), config: cfg };
        let plan = random_plan(&unpruned.config, &mut rng);
        let files = apply_plan(&unpruned, &plan).unwrap();
        let cfg = files.config.clone();
        let batch = 1 + rng.below(3);
        let images: Vec<f32> = (0..batch * 3 * cfg.input.height * cfg.input.width).map(|_| rng.normal() as f32).collect();
        let la = !files.params.parts.is_empty();
        let what = format!(
            "case {case}: D={} heads={}x{} mlp={} depth={} patch={} input {}x{} prefix={} qkv_bias={} la={la} batch={batch} plan={:?}",
            cfg.arch.embed_dim,
            cfg.arch.num_heads,
            cfg.arch.head_dim,
            cfg.arch.mlp_dim,
            cfg.arch.depth,
            cfg.arch.patch_size,
            cfg.input.height,
            cfg.input.width,
            cfg.num_prefix(),
            cfg.arch.qkv_bias,
            plan
        );

        let engine = Engine::new(files.clone()).unwrap();
        let e = engine.forward(&images, batch, &mut Workspace::default(), Want { tokens: true, logits: la }).unwrap();
        let mut vit = Vit::new(&files, &Device::Cpu).unwrap();
        let x = Tensor::from_vec(images, (batch, 3, cfg.input.height, cfg.input.width), &Device::Cpu).unwrap();
        let v = vit.forward(&x, Mode::eval()).unwrap();

        let tokens = to_host(&v.tokens).unwrap().data;
        assert!(tokens.iter().map(|t| t.abs()).fold(0.0, f32::max) > 0.5, "{what}: tokens are ~0, the comparison would prove nothing");
        let mut diffs =
            vec![("tokens", max_abs_diff(e.tokens.as_ref().unwrap(), &tokens)), ("features", max_abs_diff(&e.features, &to_host(&v.features).unwrap().data))];
        if la {
            let logits = e.logits.as_ref().unwrap();
            assert_eq!(logits.len(), v.logits.len(), "{what}: part count");
            for (el, vl) in logits.iter().zip(&v.logits) {
                diffs.push(("logits", max_abs_diff(el, &to_host(vl).unwrap().data)));
            }
        }
        for (name, d) in diffs {
            worst = worst.max(d);
            assert!(d <= tol, "{what}: {name} differ by {d:e} > {tol:e}");
        }
    }
    eprintln!("largest difference over all cases: {worst:e}");
}

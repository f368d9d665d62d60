//! Property test: for random configurations and random valid pruning plans, the inference engine
//! and the differentiable model (eval mode) compute the same tokens, features and logits.
//!
//! Configurations vary every dimension the model definition has: width, heads and head size, MLP
//! width, depth, patch size, a non-square grid, qkv bias, the prefix tokens (class, distillation,
//! none), the head (LA or none) and the batch. Plans remove random heads (at least one kept) and
//! random key tokens (prefix tokens kept), applied by the same surgery `amg prune` uses. Weights
//! are drawn large enough that every block changes the residual stream, so a difference in any
//! layer shows.

mod common;

use amg::engine::{Engine, Want, Workspace};
use amg::model::surgery::apply_plan;
use amg::model::vit::{to_host, Mode, Vit};
use amg::model::ModelFiles;
use amg::rng::Rng;
use candle_core::{Device, Tensor};
use common::{random_config, random_plan, random_weights};

use common::max_abs_diff;

#[test]
fn engine_equals_differentiable_model_on_random_pruned_models() {
    let tol = 1e-5;
    let mut worst = 0f32;
    for case in 0..60u64 {
        let mut rng = Rng::new(1000 + case);
        let cfg = random_config(&mut rng);
        let unpruned = {
            let w = random_weights(&cfg, &mut rng);
            ModelFiles::new(cfg, w).unwrap()
        };
        let plan = random_plan(unpruned.config(), &mut rng);
        let files = apply_plan(&unpruned, &plan).unwrap();
        let cfg = files.config().clone();
        let batch = 1 + rng.below(3);
        let images: Vec<f32> = (0..batch * 3 * cfg.input.height * cfg.input.width).map(|_| rng.normal() as f32).collect();
        let la = !files.params().parts.is_empty();
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

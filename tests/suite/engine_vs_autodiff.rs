//! Property test: for random configurations and random valid pruning plans, the inference engine
//! and the differentiable model (eval mode) compute the same tokens, features and logits.
//!
//! Configurations vary every dimension the model definition has: width, heads and head size, MLP
//! width, depth, patch size, a non-square grid, qkv bias, the prefix tokens (class, distillation,
//! none), the head (LA or none) and the batch. Plans remove random heads (at least one kept) and
//! random key tokens (prefix tokens kept), applied by the same surgery `amg prune` uses. Weights
//! are drawn large enough that every block changes the residual stream, so a difference in any
//! layer shows.

use crate::common;

use amg::engine::{Engine, Input, Want, Workspace};
use amg::model::surgery::{apply_plan, Plan};
use amg::model::vit::{to_host, Mode, Vit};
use amg::model::ModelFiles;
use amg::rng::Rng;
use candle_core::{Device, Tensor};
use common::{random_config, random_plan, random_weights};

use common::max_abs_diff;

/// `batch` random images for `cfg` and, for a model with SIE, a random camera for each.
fn random_inputs(cfg: &amg::model::ModelConfig, batch: usize, rng: &mut Rng) -> (Vec<f32>, Option<Vec<usize>>) {
    let images = (0..batch * 3 * cfg.input.height * cfg.input.width).map(|_| rng.normal() as f32).collect();
    let cameras = cfg.arch.sie.as_ref().map(|s| (0..batch).map(|_| rng.below(s.cameras)).collect());
    (images, cameras)
}

/// A random configuration with random weights, pruned by a random plan (also returned).
fn random_pruned_model(rng: &mut Rng) -> (ModelFiles, Plan) {
    let cfg = random_config(rng);
    let w = random_weights(&cfg, rng);
    let unpruned = ModelFiles::new(cfg, w).unwrap();
    let plan = random_plan(unpruned.config(), rng);
    (apply_plan(&unpruned, &plan).unwrap(), plan)
}

#[test]
fn engine_equals_differentiable_model_on_random_pruned_models() {
    let tol = 1e-5;
    let mut worst = 0f32;
    let mut kinds = std::collections::BTreeSet::new();
    for case in 0..80u64 {
        let mut rng = Rng::new(1000 + case);
        let (files, plan) = random_pruned_model(&mut rng);
        let cfg = files.config().clone();
        let batch = 1 + rng.below(3);
        let (images, cameras) = random_inputs(&cfg, batch, &mut rng);
        let la = files.has_classifiers();
        let what = format!(
            "case {case}: D={} heads={}x{} mlp={} depth={} patch={} stride={} input {}x{} prefix={} qkv_bias={} head={} sie={:?} jpm={:?} logits={la} batch={batch} plan={:?}",
            cfg.arch.embed_dim,
            cfg.arch.num_heads,
            cfg.arch.head_dim,
            cfg.arch.mlp_dim,
            cfg.arch.depth,
            cfg.arch.patch_size,
            cfg.arch.stride(),
            cfg.input.height,
            cfg.input.width,
            cfg.num_prefix(),
            cfg.arch.qkv_bias,
            cfg.describe_head(),
            cfg.arch.sie,
            cfg.arch.jpm,
            plan
        );

        let engine = Engine::new(files.clone()).unwrap();
        let input = Input { images: &images, cameras: cameras.as_deref(), batch };
        let e = engine.run(input, &mut Workspace::default(), Want { tokens: true, logits: la }, None).unwrap();
        let mut vit = Vit::new(&files, &Device::Cpu).unwrap();
        let x = Tensor::from_vec(images, (batch, 3, cfg.input.height, cfg.input.width), &Device::Cpu).unwrap();
        let v = vit.forward(&x, Mode { cameras: cameras.as_deref(), ..Mode::eval() }).unwrap();

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
        kinds.insert((cfg.head.kind as u8, cfg.arch.jpm.is_some(), cfg.arch.sie.is_some(), cfg.arch.patch_stride.is_some()));
        for (name, d) in diffs {
            worst = worst.max(d);
            assert!(d <= tol, "{what}: {name} differ by {d:e} > {tol:e}");
        }
    }
    eprintln!("largest difference over all cases: {worst:e}");
    // Every head kind, JPM, SIE and overlapping patches were drawn.
    type Kind = (u8, bool, bool, bool);
    let probes: [fn(&Kind) -> bool; 6] = [|k| k.0 == 0, |k| k.0 == 1, |k| k.0 == 2, |k| k.1, |k| k.2, |k| k.3];
    for probe in probes {
        assert!(kinds.iter().any(probe), "the random configurations missed a model variant: {kinds:?}");
    }
}

/// A batch on several threads runs whole images in parallel, each as a batch of one: every image's
/// tokens, features and logits are exactly the same whatever the other images of the batch (the
/// batch reversed gives each image's results bit for bit), and agree with the batch taken as a
/// whole (the path an attention observer gets) and with each image alone (a batch of one, its rows
/// split between the threads) up to the order of float sums.
#[test]
fn a_batch_in_parallel_gives_each_image_its_result_alone() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for case in 0..24u64 {
        let mut rng = Rng::new(5000 + case);
        let (files, _) = random_pruned_model(&mut rng);
        let cfg = files.config().clone();
        let batch = 2 + rng.below(4);
        let len = 3 * cfg.input.height * cfg.input.width;
        let (images, cameras) = random_inputs(&cfg, batch, &mut rng);
        let la = files.has_classifiers();
        kinds.insert((la, cfg.arch.jpm.is_some(), cfg.arch.sie.is_some()));
        let engine = Engine::new(files).unwrap();
        let want = Want { tokens: true, logits: la };
        let observer = |_: usize, _: usize, _: usize, _: &[f32]| {};
        let reversed: Vec<f32> = images.chunks_exact(len).rev().flatten().copied().collect();
        let reversed_cameras: Option<Vec<usize>> = cameras.as_ref().map(|c| c.iter().rev().copied().collect());
        let (split, back, whole, alone) = pool.install(|| {
            let input = Input { images: &images, cameras: cameras.as_deref(), batch };
            let split = engine.run(input, &mut Workspace::default(), want, None).unwrap();
            let back = engine.run(Input { images: &reversed, cameras: reversed_cameras.as_deref(), batch }, &mut Workspace::default(), want, None).unwrap();
            let whole = engine.run(input, &mut Workspace::default(), want, Some(&observer)).unwrap();
            let alone: Vec<_> = (0..batch)
                .map(|b| {
                    let one = Input { images: &images[b * len..(b + 1) * len], cameras: cameras.as_deref().map(|c| &c[b..b + 1]), batch: 1 };
                    engine.run(one, &mut Workspace::default(), want, None).unwrap()
                })
                .collect();
            // A model without SIE ignores cameras, even a list shorter than the batch.
            if cameras.is_none() {
                let input = Input { images: &images, cameras: Some(&[0]), batch };
                let ignored = engine.run(input, &mut Workspace::default(), want, None).unwrap();
                assert_eq!(ignored.features, split.features, "case {case}: cameras given to a model without SIE");
            }
            (split, back, whole, alone)
        });
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        // Per image, in reverse order: `v` holds `batch` rows of equal length.
        let rev = |v: &[f32]| v.chunks_exact(v.len() / batch).rev().flatten().copied().collect::<Vec<f32>>();
        assert_eq!(bits(&split.features), bits(&rev(&back.features)), "case {case}: features in the batch reversed");
        assert_eq!(bits(split.tokens.as_ref().unwrap()), bits(&rev(back.tokens.as_ref().unwrap())), "case {case}: tokens in the batch reversed");
        let cat = |f: &dyn Fn(&amg::engine::Outputs) -> Vec<f32>| alone.iter().flat_map(f).collect::<Vec<f32>>();
        for (what, other) in [("the whole batch", &whole.features), ("each image alone", &cat(&|o| o.features.clone()))] {
            assert!(max_abs_diff(&split.features, other) <= 1e-5, "case {case}: features vs {what}");
        }
        for (what, other) in [("the whole batch", whole.tokens.clone().unwrap()), ("each image alone", cat(&|o| o.tokens.clone().unwrap()))] {
            assert!(max_abs_diff(split.tokens.as_ref().unwrap(), &other) <= 1e-5, "case {case}: tokens vs {what}");
        }
        if la {
            let logits = split.logits.as_ref().unwrap();
            assert_eq!(logits.len(), whole.logits.as_ref().unwrap().len(), "case {case}: logit sets");
            for (h, l) in logits.iter().enumerate() {
                assert_eq!(bits(l), bits(&rev(&back.logits.as_ref().unwrap()[h])), "case {case}: logits {h} in the batch reversed");
                assert!(max_abs_diff(l, &whole.logits.as_ref().unwrap()[h]) <= 1e-5, "case {case}: logits {h} vs the whole batch");
                assert!(max_abs_diff(l, &cat(&|o| o.logits.as_ref().unwrap()[h].clone())) <= 1e-5, "case {case}: logits {h} vs each image alone");
            }
        }
    }
    // Models with a classifier and without, with JPM and with SIE were drawn.
    type Kind = (bool, bool, bool);
    let probes: [fn(&Kind) -> bool; 4] = [|k| k.0, |k| !k.0, |k| k.1, |k| k.2];
    for probe in probes {
        assert!(kinds.iter().any(probe), "the random configurations missed a model variant: {kinds:?}");
    }
}

/// Fewer images than threads: each block's rows are split between the threads (a thread's rows may
/// span images, and the threads may outnumber the kept key/value rows). Tokens, features and
/// logits agree with the pass taken step by step — with an attention observer, and on one thread —
/// up to the order of float sums.
#[test]
fn a_pass_split_by_rows_equals_the_pass_step_by_step() {
    let four = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (mut pruned_tokens, mut several) = (false, false);
    for case in 0..24u64 {
        let mut rng = Rng::new(7000 + case);
        let (files, plan) = random_pruned_model(&mut rng);
        let cfg = files.config().clone();
        pruned_tokens |= plan.tokens.iter().any(|t| t.len() < cfg.num_tokens());
        let batch = 1 + rng.below(3);
        several |= batch > 1;
        let (images, cameras) = random_inputs(&cfg, batch, &mut rng);
        let la = files.has_classifiers();
        let engine = Engine::new(files).unwrap();
        let want = Want { tokens: true, logits: la };
        let input = Input { images: &images, cameras: cameras.as_deref(), batch };
        let observer = |_: usize, _: usize, _: usize, _: &[f32]| {};
        let (rows, stepped) = four.install(|| {
            (engine.run(input, &mut Workspace::default(), want, None).unwrap(), engine.run(input, &mut Workspace::default(), want, Some(&observer)).unwrap())
        });
        let alone = one.install(|| engine.run(input, &mut Workspace::default(), want, None).unwrap());
        assert!(rows.tokens.as_ref().unwrap().iter().map(|t| t.abs()).fold(0.0, f32::max) > 0.5, "case {case}: tokens are ~0");
        for (what, other) in [("with an observer", &stepped), ("on one thread", &alone)] {
            assert!(max_abs_diff(&rows.features, &other.features) <= 1e-5, "case {case}: features vs {what}");
            assert!(max_abs_diff(rows.tokens.as_ref().unwrap(), other.tokens.as_ref().unwrap()) <= 1e-5, "case {case}: tokens vs {what}");
            if la {
                for (h, (l, o)) in rows.logits.as_ref().unwrap().iter().zip(other.logits.as_ref().unwrap()).enumerate() {
                    assert!(max_abs_diff(l, o) <= 1e-5, "case {case}: logits {h} vs {what}");
                }
            }
        }
    }
    assert!(pruned_tokens && several, "the random cases missed token-pruned layers or batches of several images");
}

#![allow(dead_code)]
//! Helpers shared by the integration tests.

use amg::model::config::{Jpm, NeckFeat, Sie};
use amg::model::params::VitParams;
use amg::model::surgery::Plan;
use amg::model::{Arch, HeadConfig, ModelConfig, Source};
use amg::rng::Rng;
use amg::tensor::{HostTensor, SafetensorsFile, TensorMap};
use std::path::{Path, PathBuf};

/// Runs the `amg` binary under test.
pub fn amg(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_amg")).args(args).output().expect("run amg")
}

/// The stdout of a run that must have succeeded.
pub fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "amg failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A run that must have failed, its stderr naming each of `needles`.
pub fn fails_with(out: &std::process::Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

pub fn load_ref(name: &str) -> TensorMap {
    SafetensorsFile::open(&fixture(name)).unwrap().all_f32().unwrap()
}

pub fn fixtures_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("fixtures.json")).unwrap()).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Asserts `got` equals `want` within `tol` max-abs, and that `want` is not trivially zero (so the
/// comparison can fail).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
    assert!(scale > 1e-3, "{what}: reference is all ~zero, the comparison would prove nothing");
    let d = max_abs_diff(got, want);
    eprintln!("{what}: max abs diff {d:e} (tolerance {tol:e})");
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e} (reference max |v| = {scale})");
}

/// A fresh, empty temporary directory unique to this test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("amg-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A random small configuration: every dimension the model definition has varies.
pub fn random_config(rng: &mut Rng) -> ModelConfig {
    let heads = 1 + rng.below(4);
    let head_dim = [8, 16, 32][rng.below(3)];
    let d = heads * head_dim;
    let patch = [4, 8, 16][rng.below(3)];
    // Heads: LA, BNNeck (TransReID, optionally with JPM), or none.
    let kind = rng.below(3);
    let (la, bnneck) = (kind == 0, kind == 1);
    let class_token = la || bnneck || rng.bool(0.7);
    let depth = 1 + rng.below(3);
    let jpm = bnneck && depth >= 2 && rng.bool(0.6);
    // Overlapping patches (TransReID's stride 12 for 16-pixel patches, scaled).
    let stride = if rng.bool(0.4) { Some(patch * 3 / 4) } else { None };
    let arch = Arch {
        preset: None,
        embed_dim: d,
        depth,
        num_heads: heads,
        head_dim,
        mlp_dim: d * (1 + rng.below(4)),
        patch_size: patch,
        ln_eps: 1e-6,
        qkv_bias: rng.bool(0.7),
        class_token,
        dist_token: !jpm && rng.bool(0.4),
        patch_stride: stride,
        sie: rng.bool(0.4).then(|| Sie { cameras: 1 + rng.below(4), views: 1 + rng.below(2), coefficient: 0.5 + 2.5 * rng.f64() as f32 }),
        jpm: None,
    };
    let (gh, gw) = (1 + rng.below(5), 1 + rng.below(4));
    let (gh, gw) = if jpm { (gh + 1, gw + 1) } else { (gh, gw) };
    let head = if la {
        HeadConfig { bottleneck: 8 + rng.below(24), lambda: 8.0, ..HeadConfig::la(2 + rng.below(6)) }
    } else if bnneck {
        HeadConfig::bnneck(rng.below(6), if rng.bool(0.5) { NeckFeat::Before } else { NeckFeat::After })
    } else {
        HeadConfig::none()
    };
    // A side of g patches at stride s: (g − 1)·s + p pixels, plus a remainder the stride leaves.
    let mut side = |g: usize| match stride {
        Some(s) => (g - 1) * s + patch + rng.below(s),
        None => g * patch,
    };
    let (h, w) = (side(gh), side(gw));
    let mut cfg = ModelConfig::new(arch.clone(), h, w, head.clone(), Source::default()).unwrap();
    if jpm {
        let patches = cfg.num_patches();
        let divide = [1, 2, 4].into_iter().filter(|&k| k <= patches).nth(rng.below(3)).unwrap_or(1);
        let groups = [1, 2, 3].into_iter().filter(|&g| patches.is_multiple_of(g) || (patches + 1).is_multiple_of(g)).nth(rng.below(2)).unwrap_or(1);
        let j = Jpm { shift: 1 + rng.below(patches), groups, divide, rearrange: rng.bool(0.7), heads: vec![] };
        cfg = ModelConfig::new(Arch { jpm: Some(j), ..arch }, h, w, head, Source::default()).unwrap();
    }
    cfg
}

/// Weights of order one (norms near one, running variances positive), so that every block and the
/// classifiers move the result.
pub fn random_weights(cfg: &ModelConfig, rng: &mut Rng) -> VitParams<HostTensor> {
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

/// A random configuration with random weights, pruned by a random plan (drawn in that order).
pub fn random_pruned_model(rng: &mut Rng) -> amg::model::ModelFiles {
    let cfg = random_config(rng);
    let weights = random_weights(&cfg, rng);
    let unpruned = amg::model::ModelFiles::new(cfg, weights).unwrap();
    let plan = random_plan(unpruned.config(), rng);
    amg::model::surgery::apply_plan(&unpruned, &plan).unwrap()
}

/// Random kept heads (at least one per layer) and key tokens (prefix tokens always, at least one).
pub fn random_plan(cfg: &ModelConfig, rng: &mut Rng) -> Plan {
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
    if let (Some(j), true) = (&cfg.arch.jpm, rng.bool(0.6)) {
        let mut heads: Vec<usize> = j.heads.iter().copied().filter(|_| rng.bool(0.5)).collect();
        if heads.is_empty() {
            heads.push(j.heads[0]);
        }
        plan.jpm_heads = Some(heads);
    }
    plan
}

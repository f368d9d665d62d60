//! AMG analysis against PyTorch hooks, selection on the fixture, and `amg prune` / `amg viz` end to end.

use crate::common;

use amg::data::Dataset;
use amg::model::surgery::Plan;
use amg::model::ModelFiles;
use amg::prune::analyze::{analyze, AnalyzeOptions, Scores};
use amg::prune::policy::{remove_heads, remove_tokens, HeadWeighting, TokenWeighting};
use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn amg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_amg")).args(args).output().unwrap()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn reference() -> Scores {
    let mut v = fixtures_json()["analyze"].clone();
    v["heads"] = serde_json::json!([]);
    serde_json::from_value(v).unwrap()
}

#[test]
fn analysis_matches_pytorch_hooks() {
    let files = ModelFiles::load(&fixture("analyze_model")).unwrap();
    let data = Dataset::open(&fixture("reid_tiny"), None).unwrap();
    let want = reference();
    let got = analyze(&files, &data, &AnalyzeOptions { batch_size: want.batch_size, limit: None, progress: false }).unwrap();
    assert_eq!(got.images, want.images);
    assert_eq!(got.heads, vec![vec![0, 1], vec![1]]);
    for (l, (a, b)) in got.head_entropy.iter().zip(&want.head_entropy).enumerate() {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "layer {l} entropy {x} vs {y}");
        }
    }
    for (l, (a, b)) in got.token_importance.iter().zip(&want.token_importance).enumerate() {
        assert_eq!(a.iter().map(|v| v.is_some()).collect::<Vec<_>>(), b.iter().map(|v| v.is_some()).collect::<Vec<_>>(), "layer {l}: pruned positions");
        let norm = b.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
        let diff = a.iter().zip(b).filter_map(|(x, y)| Some((x.as_ref()? - y.as_ref()?).powi(2))).sum::<f64>().sqrt();
        assert!(norm > 0.0 && diff <= 1e-3 * norm, "layer {l}: importance relative error {:.2e}", diff / norm);
    }
}

#[test]
fn selection_on_the_fixture_scores() {
    let files = ModelFiles::load(&fixture("analyze_model")).unwrap();
    let plan = Plan::of(files.config());
    let want = reference();
    // Heads: only layer 0 has more than one head (α = 1.00): its higher-entropy head goes.
    let e = &want.head_entropy[0];
    let drop = if e[1] >= e[0] { 1 } else { 0 };
    let out = remove_heads(&plan, &HeadWeighting::AMG.apply(&want.head_entropy), 1).unwrap();
    assert_eq!(out.heads, vec![vec![1 - drop], vec![1]]);
    // A second head cannot go: every layer keeps one.
    assert!(remove_heads(&out, &HeadWeighting::AMG.apply(&[vec![e[1 - drop]], vec![want.head_entropy[1][0]]]), 1).is_err());
    // Tokens: the 3 lowest of |I_l|/‖I_l‖·(1 − 0.03 l) over both layers, computed here directly.
    let mut all: Vec<(f64, usize, usize)> = Vec::new();
    for (l, row) in want.token_importance.iter().enumerate() {
        let norm = row.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
        for (k, v) in row.iter().enumerate() {
            if let Some(v) = v {
                all.push((v.abs() / norm * (1.0 - 0.03 * l as f64), l, k + 1));
            }
        }
    }
    all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let out = remove_tokens(&plan, &TokenWeighting::AMG.apply(&want.token_importance), 1, 3).unwrap();
    for &(_, l, pos) in &all[..3] {
        assert!(!out.tokens[l].contains(&pos), "layer {l} position {pos} should go");
    }
    for &(_, l, pos) in &all[3..] {
        assert!(out.tokens[l].contains(&pos), "layer {l} position {pos} should stay");
    }
}

#[test]
fn prune_end_to_end_and_pictures() {
    let dir = temp_dir("prune-e2e");
    let model = s(&fixture("analyze_model"));
    let data = s(&fixture("reid_tiny"));
    let scores = dir.join("scores.json");
    let o = amg(&["analyze", "--model", &model, "--data", &data, "--out", &s(&scores), "--batch-size", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(Scores::load(&scores).unwrap().head_entropy.len(), 2);

    for criterion in ["amg", "random"] {
        let out = dir.join(criterion);
        let o = amg(&[
            "prune",
            "--model",
            &model,
            "--data",
            &data,
            "--out",
            &s(&out),
            "--heads",
            "0.25",
            "--tokens",
            "0.2",
            "--iters",
            "2",
            "--finetune-epochs",
            "1",
            "--final-epochs",
            "1",
            "--batch-size",
            "4",
            "--criterion",
            criterion,
            "--distill",
            "soft",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let pruned = ModelFiles::load(&out).unwrap();
        let plan: Plan = serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
        assert_eq!(plan, Plan::of(pruned.config()));
        // ⌊0.25·2·2⌋ = 1 head was removed (layer 1 already had one); ⌊0.2·2·8⌋ = 3 key tokens.
        assert_eq!(plan.heads.iter().map(|h| h.len()).sum::<usize>(), 2);
        assert_eq!(plan.tokens.iter().map(|t| t.len()).sum::<usize>(), 9 + 6 - 3);
        for f in ["report.md", "report.json", "scores/heads-01.json", "scores/tokens-01.json", "scores/tokens-02.json", "iterations.json"] {
            assert!(out.join(f).is_file(), "{criterion}: missing {f}");
        }
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        assert!(report["mac_saving"].as_f64().unwrap() > 0.0);
        assert!(report["pruned"]["img_per_s_b16"].as_f64().unwrap() > 0.0);
        assert!(report["pruned"]["mAP"].is_f64());
        let size = |p: &Path| std::fs::metadata(p.join("model.safetensors")).unwrap().len();
        assert!(size(&out) < size(&fixture("analyze_model")), "head removal shrinks the weights");
    }

    // An explicit plan, and a bad one.
    let plan_path = dir.join("plan.json");
    std::fs::write(&plan_path, r#"{"heads": [[1], [1]], "tokens": [[0,1,2,3,4,5,6,7,8], [0,3,4]]}"#).unwrap();
    let out = dir.join("planned");
    let o = amg(&["prune", "--model", &model, "--plan", &s(&plan_path), "--out", &s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(ModelFiles::load(&out).unwrap().config().layers[1].tokens, vec![0, 3, 4]);
    std::fs::write(&plan_path, r#"{"heads": [[1], [0]], "tokens": [[0,1], [0,3]]}"#).unwrap();
    let o = amg(&["prune", "--model", &model, "--plan", &s(&plan_path), "--out", &s(&dir.join("bad"))]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("layer 1 heads index 0 was already removed"));
    assert!(!dir.join("bad").exists());

    let viz = dir.join("viz");
    let img = fixture("reid_tiny/query").read_dir().unwrap().next().unwrap().unwrap().path();
    let o = amg(&["viz", "--model", &model, "--scores", &s(&scores), "--out", &s(&viz), "--image", &s(&img)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["head_entropy.png", "token_importance.png", "kept_tokens.png", "attention.png"] {
        assert!(image::open(viz.join(f)).is_ok(), "{f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

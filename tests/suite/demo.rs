//! `amg demo --quick`: the whole pipeline end to end, as a new user first runs it; and the demo
//! from a base (what `amg demo` does with the repository's converged ViT-Ti), on a small one.

use crate::common;

use common::*;
use std::process::Command;

#[test]
fn quick_demo_runs_end_to_end() {
    let dir = temp_dir("demo");
    let out = dir.join("demo");
    let t = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_amg")).args(["demo", "--quick", "--out", out.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("demo --quick took {:.1} s", t.elapsed().as_secs_f64());
    let stdout = String::from_utf8_lossy(&o.stdout);
    for col in ["params", "MSA params", "MACs (honest)", "FLOPs (paper conv.)", "img/s b1", "Rank-1 %", "mAP %", "mINP %"] {
        assert!(stdout.contains(col), "table lacks {col}:\n{stdout}");
    }
    for row in ["unpruned", "fine-tuned alike (control)", "AMG heads+tokens", "random heads+tokens"] {
        assert!(stdout.contains(row), "table lacks {row}:\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let macs: Vec<u64> = rows.iter().map(|r| r["macs"].as_u64().unwrap()).collect();
    assert!(macs[1] == macs[0] && macs[2] < macs[0] && macs[3] < macs[0], "the control costs as much as the base, pruning saves MACs: {macs:?}");
    assert!(rows.iter().all(|r| r["mAP"].as_f64().unwrap() > 0.0 && r["img_per_s_b16"].as_f64().unwrap() > 0.0));
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("accuracy_vs_macs.png"));
    assert!(image::open(out.join("accuracy_vs_macs.png")).is_ok());
    assert!(amg::model::ModelFiles::load(&out.join("pruned-amg")).is_ok());
    // Running it again replaces its own output.
    let o = Command::new(env!("CARGO_BIN_EXE_amg")).args(["demo", "--quick", "--out", out.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // But never a directory it did not write.
    let other = dir.join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep me").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_amg")).args(["demo", "--quick", "--out", other.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success());
    assert_eq!(std::fs::read_to_string(other.join("notes.txt")).unwrap(), "keep me");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `amg demo --base DIR` starts from the model in DIR instead of training one: it regenerates the
/// benchmark DIR's `benchmark.json` records, refuses one that differs, and compares AMG and random
/// pruning with the base fine-tuned alike. Here the base is a `--quick` demo's trained model.
#[test]
fn the_demo_starts_from_a_base_on_the_benchmark_it_was_trained_on() {
    let dir = temp_dir("demo-base");
    let quick = dir.join("quick");
    let amg = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_amg")).args(args).output().unwrap();
    let o = amg(&["demo", "--quick", "--out", quick.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(quick.join("train/last").join(f), base.join(f)).unwrap();
    }
    std::fs::copy(quick.join("data/synth.json"), base.join(amg::demo::BASE_BENCHMARK)).unwrap();
    let out = dir.join("from-base");
    let o = amg(&["demo", "--base", base.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    // The base is the model given, unchanged: the same accuracy as the quick demo measured for it.
    let quick_report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(quick.join("report.json")).unwrap()).unwrap();
    assert_eq!(rows[0]["mAP"], quick_report["rows"][0]["mAP"]);
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("trained on the benchmark's training identities"));

    // A base whose benchmark record differs from what this amg generates is refused, by name.
    let text = std::fs::read_to_string(base.join(amg::demo::BASE_BENCHMARK)).unwrap();
    std::fs::write(base.join(amg::demo::BASE_BENCHMARK), text.replace("\"train_images\"", "\"train_images_other\"")).unwrap();
    let o = amg(&["demo", "--base", base.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("benchmark.json") && err.contains("differs"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

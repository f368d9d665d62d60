//! `amg demo --quick`: the whole pipeline end to end, as a new user first runs it.

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
    for row in ["unpruned", "AMG heads+tokens", "random heads+tokens"] {
        assert!(stdout.contains(row), "table lacks {row}:\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let macs: Vec<u64> = rows.iter().map(|r| r["macs"].as_u64().unwrap()).collect();
    assert!(macs[1] < macs[0] && macs[2] < macs[0], "pruning saves MACs: {macs:?}");
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

#![allow(dead_code)]
//! Helpers shared by the integration tests.

use amg::tensor::{SafetensorsFile, TensorMap};
use std::path::{Path, PathBuf};

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

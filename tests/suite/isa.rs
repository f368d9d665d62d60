//! Every SIMD path of the element-wise kernels — AVX-512, AVX2+FMA and the portable code that every
//! other CPU (ARM boards included) runs — gives the same results: inference (`amg embed`) and a
//! training run (`amg train`, forward and backward kernels) under `AMG_ISA=portable`, `avx2` and the
//! machine's best agree. The machine's best path is held to PyTorch by the parity tests. So do the
//! ways of computing `--precision bf16` products: the machine's bfloat16 unit (AMX tiles or AVX-512
//! BF16, where the CPU has one) and float32 emulation (`AMG_ISA=portable`, and every CPU without
//! either). The library's unit tests hold every unit the CPU has to float64 products.

use crate::common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn amg(isa: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_amg"));
    if let Some(isa) = isa {
        c.env("AMG_ISA", isa);
    }
    let out = c.args(args).output().unwrap();
    assert!(out.status.success(), "amg {args:?} (AMG_ISA={isa:?}): {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_kernel_path_agrees() {
    let dir = temp_dir("isa");
    let (model, data) = (dir.join("la"), dir.join("data"));
    amg(None, &["import", "--from", "la-transformer", s(&fixture("ckpt_la.pth")), "--out", s(&model)]);
    amg(None, &["synth", "--out", s(&data), "--ids", "12", "--cams", "3", "--images-per-id", "4", "--size", "64x64", "--seed", "3"]);
    let features_in = |isa: Option<&str>, tag: &str, precision: &str| {
        let out = dir.join(format!("f-{tag}-{precision}.safetensors"));
        amg(isa, &["embed", "--model", s(&model), "--images", s(&data.join("query")), "--out", s(&out), "--precision", precision]);
        amg::tensor::SafetensorsFile::open(&out).unwrap().all_f32().unwrap().remove("features").unwrap().data
    };
    let features = |isa: Option<&str>, tag: &str| features_in(isa, tag, "f32");
    let loss = |isa: Option<&str>, tag: &str| {
        let run = dir.join(format!("run-{tag}"));
        let args = ["--threads", "2", "train", "--data", s(&data), "--init", s(&model), "--out", s(&run), "--epochs", "1", "--batch-size", "8", "--seed", "1"];
        amg(isa, &args);
        let line = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        serde_json::from_str::<serde_json::Value>(line.lines().next().unwrap()).unwrap()["loss"].as_f64().unwrap()
    };
    let (f0, l0) = (features(None, "best"), loss(None, "best"));
    assert!(l0.is_finite() && l0 > 0.0);
    for isa in ["portable", "avx2"] {
        let d = max_abs_diff(&features(Some(isa), isa), &f0);
        eprintln!("{isa}: features differ by {d:e}");
        assert!(d <= 1e-5, "{isa}: features differ from the best path's by {d:e}");
        let l = loss(Some(isa), isa);
        eprintln!("{isa}: training loss {l} vs {l0}");
        assert!((l - l0).abs() <= 1e-4 * l0, "{isa}: training loss {l} vs {l0}");
    }
    // bfloat16: the machine's best unit (AMX or AVX-512 BF16 if it has one) against the float32
    // emulation. Their float32 sums run in different orders (~1e-7 apart), which can move an
    // activation across a bfloat16 rounding boundary (a change of up to 2^-8 of that value) before
    // the next product: 6e-6 measured on this model with AMX. And bfloat16 must differ from float32, by its rounding only.
    let (b0, bp) = (features_in(None, "best", "bf16"), features_in(Some("portable"), "portable", "bf16"));
    let d = max_abs_diff(&b0, &bp);
    eprintln!("bf16: the bfloat16 unit (if any) and emulation differ by {d:e}");
    assert!(d <= 2e-5, "bf16: the best path and the emulation differ by {d:e}");
    let d = max_abs_diff(&b0, &f0);
    eprintln!("bf16: features differ from float32's by {d:e}");
    assert!(d > 0.0 && d <= 5e-3, "bf16 features differ from float32's by {d:e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

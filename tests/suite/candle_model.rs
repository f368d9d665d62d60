//! The differentiable (candle) model against the same PyTorch references as the engine, in
//! inference mode and in training mode (BatchNorm batch statistics).

use crate::common;

use amg::import::{import, ImportRequest, SourceFormat};
use amg::model::vit::{to_host, Mode, Vit};
use candle_core::{Device, Tensor};
use common::*;

fn load(format: SourceFormat, ckpt: &str) -> Vit {
    let files = import(&ImportRequest::new(format, fixture(ckpt))).unwrap();
    Vit::new(&files, &Device::Cpu).unwrap()
}

fn input(r: &amg::tensor::TensorMap) -> Tensor {
    let t = &r["input"];
    Tensor::from_slice(&t.data, t.shape.as_slice(), &Device::Cpu).unwrap()
}

fn check_eval(mut m: Vit, reference: &str) {
    let r = load_ref(reference);
    let out = m.forward(&input(&r), Mode::eval()).unwrap();
    assert_close("tokens", &to_host(&out.tokens).unwrap().data, &r["tokens"].data, 1e-4);
    assert_close("features", &to_host(&out.features).unwrap().data, &r["features"].data, 1e-4);
    for (i, l) in out.logits.iter().enumerate() {
        assert_close(&format!("logits.{i}"), &to_host(l).unwrap().data, &r[&format!("logits.{i}")].data, 1e-4);
    }
}

#[test]
fn inference_mode_matches_pytorch() {
    for (format, ckpt, reference) in [
        (SourceFormat::LaTransformer, "ckpt_la.pth", "ref_la.safetensors"),
        (SourceFormat::Amg, "ckpt_amg.pth", "ref_amg.safetensors"),
        (SourceFormat::Timm, "ckpt_timm_a.safetensors", "ref_timm_a.safetensors"),
    ] {
        check_eval(load(format, ckpt), reference);
    }
}

#[test]
fn training_mode_logits_and_running_statistics_match_pytorch() {
    let mut m = load(SourceFormat::LaTransformer, "ckpt_la.pth");
    let r = load_ref("ref_la_train.safetensors");
    let out = m.forward(&input(&r), Mode { train: true, dropout: 0.0, rng: None, gates: None, cameras: None }).unwrap();
    assert_eq!(out.logits.len(), 4);
    for (i, l) in out.logits.iter().enumerate() {
        assert_close(&format!("train logits.{i}"), &to_host(l).unwrap().data, &r[&format!("logits.{i}")].data, 1e-4);
        for stat in ["running_mean", "running_var"] {
            let bn = &m.params.parts[i].bn;
            let got = to_host(if stat == "running_mean" { &bn.running_mean } else { &bn.running_var }).unwrap();
            assert_close(&format!("{stat}.{i}"), &got.data, &r[&format!("{stat}.{i}")].data, 1e-5);
        }
    }
}

#[test]
fn dropout_is_reproducible_per_seed() {
    let mut m = load(SourceFormat::LaTransformer, "ckpt_la.pth");
    let x = input(&load_ref("ref_la_train.safetensors"));
    let mut run = |seed| {
        let mut rng = amg::rng::Rng::new(seed);
        let out = m.forward(&x, Mode { train: true, dropout: 0.5, rng: Some(&mut rng), gates: None, cameras: None }).unwrap();
        to_host(&out.logits[0]).unwrap().data
    };
    let (a, b, c) = (run(1), run(1), run(2));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

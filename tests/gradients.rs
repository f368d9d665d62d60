//! One training step's gradients against PyTorch's: a head- and token-pruned LA student, BatchNorm
//! in training mode, label smoothing and soft distillation from a frozen teacher.

mod common;

use amg::model::vit::{to_host, Mode, Vit};
use amg::model::ModelFiles;
use amg::train::loss::{la_loss, Distill, LossConfig};
use candle_core::{DType, Device, Tensor};
use common::*;

#[test]
fn every_parameter_gradient_matches_pytorch() {
    let dev = Device::Cpu;
    let meta = fixtures_json();
    let g = &meta["grad_step"];
    let r = load_ref("ref_grad_step.safetensors");
    let mut student = Vit::new(&ModelFiles::load(&fixture("grad_student")).unwrap(), &dev).unwrap();
    let mut teacher = Vit::new(&ModelFiles::load(&fixture("grad_teacher")).unwrap(), &dev).unwrap();
    let x = Tensor::from_slice(&r["input"].data, r["input"].shape.as_slice(), &dev).unwrap();
    let labels = Tensor::from_vec(r["labels"].data.iter().map(|&v| v as u32).collect::<Vec<_>>(), r["labels"].shape[0], &dev).unwrap();
    let t = teacher.forward(&x, Mode::eval()).unwrap();
    let t0: Vec<f32> = serde_json::from_value(g["teacher_logits_0"].clone()).unwrap();
    assert_close("teacher logits", &to_host(&t.logits[0]).unwrap().data, &t0, 1e-4);
    let s = student.forward(&x, Mode { train: true, dropout: 0.0, rng: None, gates: None, cameras: None }).unwrap();
    let cfg = LossConfig {
        label_smoothing: g["label_smoothing"].as_f64().unwrap(),
        distill: Distill::Soft { alpha: g["alpha"].as_f64().unwrap(), tau: g["tau"].as_f64().unwrap() },
    };
    let loss = la_loss(&s.logits, &labels, Some(&t.logits), &cfg).unwrap();
    let total = loss.total.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    assert!((total - g["loss"].as_f64().unwrap()).abs() < 1e-4 * total.abs(), "loss {total} vs {}", g["loss"]);
    assert!((loss.ce - g["ce"].as_f64().unwrap()).abs() < 1e-4 * loss.ce, "ce");
    assert!((loss.distill - g["kd"].as_f64().unwrap()).abs() < 1e-4 * loss.distill, "kd");
    let grads = loss.total.backward().unwrap();
    // BatchNorm in training mode subtracts the batch mean, so anything that only adds the same
    // offset to every sample before it (the bottleneck biases, the final norm's bias) has an exact
    // zero gradient: both sides then hold float32 round-off, and are held to an absolute floor.
    let floor = 1e-5;
    let mut checked = 0;
    for (name, var) in &student.trainable() {
        let want = &r[&format!("grad.{name}")].data;
        let got = to_host(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"))).unwrap().data;
        let norm = want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let diff = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        if norm < floor {
            let gn = got.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            assert!(name.ends_with("bottleneck.bias") || name == "norm.bias", "{name}: unexpected zero gradient");
            assert!(gn < floor, "{name}: gradient {gn:e} should be zero");
        } else {
            assert!(diff <= 1e-4 * norm, "{name}: relative error {:.2e}", diff / norm);
        }
        checked += 1;
    }
    assert_eq!(checked, r.keys().filter(|k| k.starts_with("grad.")).count());
}

#[test]
fn optimiser_steps_match_torch_optim() {
    use amg::train::optim::{OptimConfig, OptimKind, Optimizer};
    use candle_core::Var;
    use std::collections::BTreeMap;
    let dev = Device::Cpu;
    let meta = fixtures_json();
    let names: Vec<String> = serde_json::from_value(meta["optim_tensors"].clone()).unwrap();
    let r = load_ref("ref_grad_step.safetensors");
    let want = load_ref("ref_optim.safetensors");
    let start = ModelFiles::load(&fixture("grad_student")).unwrap().params().to_map();
    let configs = [
        ("adamw", OptimConfig { ..OptimConfig::new(OptimKind::Adamw, 0.05) }, 1e-2),
        ("adam", OptimConfig::new(OptimKind::Adam, 1e-3), 1e-2),
        ("sgd", OptimConfig { nesterov: true, momentum: 0.9, ..OptimConfig::new(OptimKind::Sgd, 5e-4) }, 0.1),
    ];
    for (label, cfg, lr) in configs {
        let params: BTreeMap<String, Var> = names
            .iter()
            .map(|n| {
                let t = &start[n];
                (n.clone(), Var::from_tensor(&Tensor::from_slice(&t.data, t.shape.as_slice(), &dev).unwrap()).unwrap())
            })
            .collect();
        let mut opt = Optimizer::new(cfg);
        for step in 0..2 {
            let grad = |n: &str, _: &Var| {
                let g = &r[&format!("grad.{n}")];
                Some((Tensor::from_slice(&g.data, g.shape.as_slice(), &dev).unwrap() * (1.0 + step as f64)).unwrap())
            };
            opt.step_with(&params, grad, lr).unwrap();
        }
        for (n, v) in &params {
            assert_close(&format!("{label} {n}"), &to_host(v.as_tensor()).unwrap().data, &want[&format!("{label}.{n}")].data, 2e-6);
        }
    }
}

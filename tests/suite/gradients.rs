//! One training step's gradients against PyTorch's: a head- and token-pruned LA student, BatchNorm
//! in training mode, label smoothing and soft distillation from a frozen teacher.

use crate::common;

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
        triplet: None,
    };
    let loss = la_loss(&s.logits, &labels, Some(&t.logits), &cfg).unwrap();
    let total = loss.total.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    assert!((total - g["loss"].as_f64().unwrap()).abs() < 1e-4 * total.abs(), "loss {total} vs {}", g["loss"]);
    assert!((loss.ce - g["ce"].as_f64().unwrap()).abs() < 1e-4 * loss.ce, "ce");
    assert!((loss.distill - g["kd"].as_f64().unwrap()).abs() < 1e-4 * loss.distill, "kd");
    let grads = student.backward(&loss.total).unwrap();
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

/// One TransReID training step (tools/fixtures/make_transreid_fixtures.py): JPM + SIE at stride 12,
/// BatchNorms in training mode, the BNNeck biases frozen, label smoothing 0.1, ID loss
/// ½·CE(global) + ½·mean CE(local) plus the soft-margin batch-hard triplet loss likewise — the loss
/// and every parameter's gradient against PyTorch's.
#[test]
fn transreid_training_step_matches_pytorch() {
    use amg::import::{import, ImportRequest, SourceFormat};
    use amg::train::loss::{model_loss, Triplet};
    let dev = Device::Cpu;
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("transreid.json")).unwrap()).unwrap();
    let g = &meta["grad"];
    let r = load_ref("ref_transreid_grad.safetensors");
    let mut req = ImportRequest::new(SourceFormat::TransReid, fixture("ckpt_transreid_grad.safetensors"));
    (req.checkpoint_img_size, req.stride, req.heads) = (Some((64, 40)), Some(12), Some(2));
    let files = import(&req).unwrap();
    let depth = files.config().arch.depth;
    let mut model = Vit::new(&files, &dev).unwrap();
    let x = Tensor::from_slice(&r["input"].data, r["input"].shape.as_slice(), &dev).unwrap();
    let labels = Tensor::from_vec(r["labels"].data.iter().map(|&v| v as u32).collect::<Vec<_>>(), 4, &dev).unwrap();
    let cameras: Vec<usize> = r["cameras"].data.iter().map(|&c| c as usize).collect();
    let out = model.forward(&x, Mode { train: true, dropout: 0.0, rng: None, gates: None, cameras: Some(&cameras) }).unwrap();
    let cfg = LossConfig { label_smoothing: g["label_smoothing"].as_f64().unwrap(), distill: Distill::None, triplet: Some(Triplet { margin: None }) };
    let loss = model_loss(files.config().head.kind, &out, &labels, None, &cfg).unwrap();
    let total = loss.total.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    for (what, got, want) in [("loss", total, &g["loss"]), ("ID loss", loss.ce, &g["id"]), ("triplet loss", loss.triplet, &g["triplet"])] {
        let want = want.as_f64().unwrap();
        assert!((got - want).abs() < 1e-4 * want.abs(), "{what} {got} vs PyTorch {want}");
    }
    let grads = model.backward(&loss.total).unwrap();
    let scheme = SourceFormat::TransReid.scheme().with_jpm(depth);
    let trainable = model.trainable();
    let mut checked = 0;
    for (key, _) in files.params().entries() {
        let name = key.to_string();
        let Some(var) = trainable.get(&name) else {
            assert!(key.is_buffer() || key.is_frozen(), "{name} is neither trained nor a buffer");
            continue;
        };
        let want = &r[&format!("grad.{}", scheme.key(&key))].data;
        let got = to_host(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"))).unwrap().data;
        let norm = want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let diff = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        if norm < 1e-5 {
            // The final norms' biases shift every sample's feature alike: the BatchNorms (training
            // mode) subtract it and the triplet distances ignore it, so the gradient is exactly 0
            // and both sides hold round-off.
            let gn = got.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            assert!(name == "norm.bias" || name == "jpm.norm.bias", "{name}: unexpected zero gradient");
            assert!(gn < 1e-5, "{name}: gradient {gn:e} should be zero");
        } else {
            assert!(diff <= 1e-4 * norm, "{name}: relative error {:.2e}", diff / norm);
        }
        checked += 1;
    }
    // Every PyTorch gradient of a tensor the model runs (not base.blocks.2 / base.norm, which JPM
    // replaces by b1, nor base.fc) was compared.
    let used = r.keys().filter(|k| k.starts_with("grad.") && !k.starts_with("grad.base.fc.")).count();
    assert_eq!(checked, used);
}

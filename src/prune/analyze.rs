//! `amg analyze`: what the attention maps say about each head and each key token (AMG_SPEC §2, §3).
//!
//! The calibration pass runs over the training split in sorted file-name order, without
//! augmentation, in inference mode (BatchNorm running statistics, no dropout).
//! - Head entropy needs forward passes only: the mean attention map of every head over all images
//!   (every image counts once, the last smaller batch too **[differs from the reference]**), then the
//!   mean over queries of −Σ_k Ā·log₂ Ā.
//! - Key-token importance is first-order: a gate g of ones multiplies each layer's attention over its
//!   kept keys, and ∂L/∂g_k = Σ_{i,h,q} A·∂L/∂A; per batch it is divided by B·H·N_q, and the absolute
//!   values are summed over batches. L is the training loss (sum of part cross-entropies) in inference
//!   mode **[differs: the reference runs in training mode]**.

use crate::data::loader::{for_each_batch, LoaderOptions};
use crate::data::Dataset;
use crate::engine::{Engine, Want, Workspace};
use crate::error::{Error, Result};
use crate::model::vit::{Mode, Vit};
use crate::model::{HeadKind, ModelFiles};
use crate::train::loss::{la_loss, Distill, LossConfig};
use crate::kernels::autodiff::with_f32;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub batch_size: usize,
    pub images: usize,
    /// Per layer, the entropy of each kept head (in the order of `heads`).
    pub head_entropy: Vec<Vec<f64>>,
    /// Per layer, the importance of each original key position 1..N−1; `None` where already pruned.
    pub token_importance: Vec<Vec<Option<f64>>>,
    /// Per layer, the original indices of the kept heads the entropies belong to.
    #[serde(default)]
    pub heads: Vec<Vec<usize>>,
}

impl Scores {
    pub fn load(path: &Path) -> Result<Scores> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid scores file: {e}")))
    }
}

impl Scores {
    /// One line: what was scored, over how many images, written where.
    pub fn summary(&self, out: &Path) -> String {
        format!(
            "scores of {} heads and {} key tokens over {} images → {}",
            self.head_entropy.iter().map(|l| l.len()).sum::<usize>(),
            self.token_importance.iter().flatten().flatten().count(),
            self.images,
            out.display()
        )
    }
}

pub struct AnalyzeOptions {
    pub batch_size: usize,
    pub limit: Option<usize>,
    pub progress: bool,
}

fn calibration_set(data: &Dataset, limit: Option<usize>) -> Result<(Vec<PathBuf>, Vec<u32>)> {
    let n = limit.unwrap_or(usize::MAX).min(data.train.len());
    if n == 0 {
        return Err(Error::invalid("--limit 0: the calibration pass needs at least one image"));
    }
    let s = &data.train[..n];
    Ok((s.iter().map(|x| x.path.clone()).collect(), s.iter().map(|x| x.label as u32).collect()))
}

/// Head entropy from forward passes of the inference engine.
pub fn head_entropy(files: &ModelFiles, data: &Dataset, o: &AnalyzeOptions) -> Result<Vec<Vec<f64>>> {
    let cfg = files.config.clone();
    let (paths, _) = calibration_set(data, o.limit)?;
    let engine = Engine::new(files.clone())?;
    let n = cfg.num_tokens();
    // Sums of attention maps per (layer, kept head), in f64.
    let sums: Vec<Vec<Mutex<Vec<f64>>>> =
        cfg.layers.iter().map(|l| (0..l.heads.len()).map(|_| Mutex::new(vec![0f64; n * l.tokens.len()])).collect()).collect();
    let observe = |layer: usize, _img: usize, head: usize, probs: &[f32]| {
        let mut acc = sums[layer][head].lock().unwrap();
        for (a, &p) in acc.iter_mut().zip(probs) {
            *a += p as f64;
        }
    };
    let pb = crate::progress::bar(paths.len() as u64, "entropy", "img", o.progress);
    let order: Vec<usize> = (0..paths.len()).collect();
    let mut ws = Workspace::default();
    for_each_batch(&paths, &order, &cfg.input, &LoaderOptions::inference(o.batch_size), |b| {
        engine.forward_observed(&b.inputs, b.len(), &mut ws, Want::default(), Some(&observe))?;
        pb.inc(b.len() as u64);
        Ok(())
    })?;
    pb.finish_and_clear();
    let images = paths.len() as f64;
    Ok(sums
        .iter()
        .zip(&cfg.layers)
        .map(|(heads, plan)| {
            let nk = plan.tokens.len();
            heads
                .iter()
                .map(|m| {
                    let s = m.lock().unwrap();
                    let mut e = 0.0;
                    for row in s.chunks_exact(nk) {
                        for &v in row {
                            let a = v / images;
                            if a > 0.0 {
                                e -= a * a.log2();
                            }
                        }
                    }
                    e / n as f64
                })
                .collect()
        })
        .collect())
}

/// Key-token importance by the gate trick, with candle's autodiff.
pub fn token_importance(files: &ModelFiles, data: &Dataset, o: &AnalyzeOptions) -> Result<Vec<Vec<Option<f64>>>> {
    let cfg = files.config.clone();
    if cfg.head.kind != HeadKind::La {
        return Err(Error::invalid("token importance needs the training loss: the model has no LA classifiers (import it with its LA head)"));
    }
    if cfg.head.num_classes != data.num_classes {
        return Err(Error::invalid(format!(
            "the model classifies {} identities but the dataset's training split has {}: analyse on the data the model was trained on",
            cfg.head.num_classes, data.num_classes
        )));
    }
    let (paths, labels) = calibration_set(data, o.limit)?;
    let dev = Device::Cpu;
    let mut model = Vit::new(files, &dev)?;
    let n = cfg.num_tokens();
    let mut importance: Vec<Vec<f64>> = cfg.layers.iter().map(|l| vec![0f64; l.tokens.len()]).collect();
    let loss_cfg = LossConfig { label_smoothing: 0.0, distill: Distill::None };
    let pb = crate::progress::bar(paths.len() as u64, "importance", "img", o.progress);
    let order: Vec<usize> = (0..paths.len()).collect();
    let (h, w) = (cfg.input.height, cfg.input.width);
    for_each_batch(&paths, &order, &cfg.input, &LoaderOptions::inference(o.batch_size), |b| {
        let bs = b.len();
        let gates: Vec<Var> = cfg.layers.iter().map(|l| Var::ones(l.tokens.len(), DType::F32, &dev)).collect::<candle_core::Result<_>>()?;
        let gate_tensors: Vec<Tensor> = gates.iter().map(|g| g.as_tensor().clone()).collect();
        let x = Tensor::from_slice(&b.inputs, (bs, 3, h, w), &dev)?;
        let y = Tensor::from_vec(b.indices.iter().map(|&i| labels[i]).collect::<Vec<_>>(), bs, &dev)?;
        let out = model.forward(&x, Mode { train: false, dropout: 0.0, rng: None, gates: Some(&gate_tensors) })?;
        let loss = la_loss(&out.logits, &y, None, &loss_cfg)?;
        let grads = loss.total.backward()?;
        for (l, (g, plan)) in gates.iter().zip(&cfg.layers).enumerate() {
            let denom = (bs * plan.heads.len() * n) as f64;
            let grad = grads.get(g.as_tensor()).ok_or_else(|| Error::invalid(format!("no gradient reached the gate of layer {l}")))?;
            with_f32(&grad.contiguous()?, |v| {
                for (acc, &x) in importance[l].iter_mut().zip(v) {
                    *acc += (x as f64 / denom).abs();
                }
            })?;
        }
        pb.inc(bs as u64);
        Ok(())
    })?;
    pb.finish_and_clear();
    // Map kept positions back to original positions 1..N−1 (CLS, position 0, is never scored).
    Ok(cfg
        .layers
        .iter()
        .zip(importance)
        .map(|(plan, imp)| {
            let mut out = vec![None; n - 1];
            for (&pos, v) in plan.tokens.iter().zip(imp) {
                if pos > 0 {
                    out[pos - 1] = Some(v);
                }
            }
            out
        })
        .collect())
}

/// Both analyses.
pub fn analyze(files: &ModelFiles, data: &Dataset, o: &AnalyzeOptions) -> Result<Scores> {
    if o.batch_size == 0 {
        return Err(Error::invalid("--batch-size must be at least 1"));
    }
    let head_entropy = head_entropy(files, data, o)?;
    let token_importance = token_importance(files, data, o)?;
    let images = o.limit.unwrap_or(usize::MAX).min(data.train.len());
    Ok(Scores { batch_size: o.batch_size, images, head_entropy, token_importance, heads: files.config.layers.iter().map(|l| l.heads.clone()).collect() })
}

//! AMG's token criterion (docs/method.md §3): the first-order importance of each key position.
//! A gate g of ones multiplies each layer's attention over its kept keys, and
//! ∂L/∂g_k = Σ_{i,h,q} A·∂L/∂A; per batch it is divided by B·H·N_q, and the absolute values are
//! summed over batches. L is the training loss (sum of part cross-entropies) in inference mode
//! **[differs: the reference runs in training mode, which makes the scores depend on dropout]**.

use super::{Calibration, TokenCriterion};
use crate::data::loader::{for_each_batch, LoaderOptions};
use crate::error::{Error, Result};
use crate::kernels::autodiff::with_f32;
use crate::model::vit::{Mode, Vit};
use crate::model::HeadKind;
use crate::train::loss::{model_loss, Distill, LossConfig};
use candle_core::{DType, Device, Tensor, Var};

pub struct FirstOrder;

impl TokenCriterion for FirstOrder {
    fn name(&self) -> &'static str {
        "first-order key importance"
    }

    fn score_tokens(&mut self, c: Calibration) -> Result<Vec<Vec<Option<f64>>>> {
        let cfg = c.model.config();
        if cfg.head.num_classes == 0 || cfg.head.kind == HeadKind::None {
            return Err(Error::invalid("token importance needs the training loss: the model has no ID classifiers (import it with its LA or BNNeck head)"));
        }
        if cfg.head.num_classes != c.data.num_classes {
            return Err(Error::invalid(format!(
                "the model classifies {} identities but the dataset's training split has {}: analyse on the data the model was trained on",
                cfg.head.num_classes, c.data.num_classes
            )));
        }
        let (paths, labels) = c.images()?;
        let dev = Device::Cpu;
        let mut model = Vit::new(c.model, &dev)?;
        let n = cfg.num_tokens();
        let mut importance: Vec<Vec<f64>> = cfg.layers.iter().map(|l| vec![0f64; l.tokens.len()]).collect();
        // The ID loss (LA's per-part cross-entropy; TransReID's over its BNNecks): calibration
        // batches are not sampled identity by identity, so no triplet term.
        let loss_cfg = LossConfig::ce(0.0, Distill::None);
        let cameras = crate::data::cameras::cameras_for(cfg, &paths, &crate::data::cameras::SideInfo::FROM_NAMES)?;
        let pb = crate::progress::bar(paths.len() as u64, "importance", "img", c.options.progress);
        let order: Vec<usize> = (0..paths.len()).collect();
        let (h, w) = (cfg.input.height, cfg.input.width);
        for_each_batch(&paths, &order, &cfg.input, &LoaderOptions::inference(c.options.batch_size), |b| {
            let bs = b.len();
            let gates: Vec<Var> = cfg.layers.iter().map(|l| Var::ones(l.tokens.len(), DType::F32, &dev)).collect::<candle_core::Result<_>>()?;
            let gate_tensors: Vec<Tensor> = gates.iter().map(|g| g.as_tensor().clone()).collect();
            let x = Tensor::from_slice(&b.inputs, (bs, 3, h, w), &dev)?;
            let y = Tensor::from_vec(b.indices.iter().map(|&i| labels[i]).collect::<Vec<_>>(), bs, &dev)?;
            let cams = crate::data::cameras::batch_cameras(cameras.as_deref(), &b.indices, 1);
            let out = model.forward(&x, Mode { train: false, dropout: 0.0, rng: None, gates: Some(&gate_tensors), cameras: cams.as_deref() })?;
            let loss = model_loss(cfg.head.kind, &out, &y, None, &loss_cfg)?;
            let grads = model.backward(&loss.total)?;
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
        // Kept positions back to patch positions (prefix tokens are never scored).
        let prefix = cfg.num_prefix();
        Ok(cfg
            .layers
            .iter()
            .zip(importance)
            .map(|(plan, imp)| {
                let mut out = vec![None; n - prefix];
                for (&pos, v) in plan.tokens.iter().zip(imp) {
                    if pos >= prefix {
                        out[pos - prefix] = Some(v);
                    }
                }
                out
            })
            .collect())
    }
}

//! Optimisers with torch.optim's exact update rules (Adam with L2 decay, AdamW with decoupled
//! decay, SGD with Nesterov momentum), updating candle `Var`s in place, in parallel.

use crate::error::Result;
use crate::kernels::autodiff::with_f32;
use crate::kernels::optim::{adam_update, AdamHyper};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Layout, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

crate::choice! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum OptimKind {
        Adam = "adam" => "Adam with L2 weight decay (torch.optim.Adam)",
        Adamw = "adamw" => "AdamW, decoupled weight decay (torch.optim.AdamW)",
        Sgd = "sgd" => "SGD with Nesterov momentum 0.9 (torch.optim.SGD)",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub momentum: f64,
    pub nesterov: bool,
}

impl OptimConfig {
    pub fn new(kind: OptimKind, weight_decay: f64) -> Self {
        OptimConfig { kind, weight_decay, betas: (0.9, 0.999), eps: 1e-8, momentum: 0.9, nesterov: true }
    }
}

/// Per-parameter state: Adam's first and second moments, or SGD's momentum buffer (in `m`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Slot {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Optimizer {
    pub cfg: OptimConfig,
    pub step: u64,
    pub slots: BTreeMap<String, Slot>,
}

struct Update<'a> {
    grad: &'a [f32],
    slot: std::cell::RefCell<&'a mut Slot>,
    cfg: OptimConfig,
    lr: f64,
    step: u64,
}

impl candle_core::InplaceOp1 for Update<'_> {
    fn name(&self) -> &'static str {
        "optimizer-update"
    }
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let p = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &mut v[a..b],
            _ => candle_core::bail!("optimizer: parameter is not a contiguous float32 tensor"),
        };
        let mut slot = self.slot.borrow_mut();
        let n = p.len();
        if self.grad.len() != n {
            candle_core::bail!("optimizer: a gradient of {} values for a parameter of {n}", self.grad.len());
        }
        if slot.m.len() != n {
            slot.m = vec![0.0; n];
            if self.cfg.kind != OptimKind::Sgd {
                slot.v = vec![0.0; n];
            }
        }
        let c = self.cfg;
        let (lr, wd) = (self.lr as f32, c.weight_decay as f32);
        let chunk = 16384;
        match c.kind {
            OptimKind::Adam | OptimKind::Adamw => {
                let (b1, b2) = (c.betas.0 as f32, c.betas.1 as f32);
                let t = self.step as i32;
                let bc1 = 1.0 - (c.betas.0).powi(t);
                let bc2_sqrt = (1.0 - (c.betas.1).powi(t)).sqrt();
                let step_size = (self.lr / bc1) as f32;
                let (bc2_sqrt, eps) = (bc2_sqrt as f32, c.eps as f32);
                let adamw = c.kind == OptimKind::Adamw;
                let Slot { m, v } = &mut **slot;
                let h = AdamHyper { lr, wd, b1, b2, step_size, bc2_sqrt, eps, adamw };
                p.par_chunks_mut(chunk)
                    .zip(m.par_chunks_mut(chunk))
                    .zip(v.par_chunks_mut(chunk))
                    .zip(self.grad.par_chunks(chunk))
                    .for_each(|(((p, m), v), g)| adam_update(p, m, v, g, h));
            }
            OptimKind::Sgd => {
                let (mu, nesterov, first) = (c.momentum as f32, c.nesterov, self.step == 1);
                let m = &mut slot.m;
                p.par_chunks_mut(chunk).zip(m.par_chunks_mut(chunk)).zip(self.grad.par_chunks(chunk)).for_each(|((p, m), g)| {
                    for i in 0..p.len() {
                        let gi = g[i] + wd * p[i];
                        m[i] = if first { gi } else { mu * m[i] + gi };
                        let d = if nesterov { gi + mu * m[i] } else { m[i] };
                        p[i] -= lr * d;
                    }
                });
            }
        }
        Ok(())
    }
}

impl Optimizer {
    pub fn new(cfg: OptimConfig) -> Self {
        Optimizer { cfg, step: 0, slots: BTreeMap::new() }
    }

    /// One update of every parameter that has a gradient, at learning rate `lr`.
    pub fn step(&mut self, params: &BTreeMap<String, Var>, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_with(params, |_, v| grads.get(v.as_tensor()).cloned(), lr)
    }

    /// As `step`, with gradients from any source (`grad(name, var)`).
    pub fn step_with(&mut self, params: &BTreeMap<String, Var>, grad: impl Fn(&str, &Var) -> Option<Tensor>, lr: f64) -> Result<()> {
        self.step += 1;
        for (name, var) in params {
            let Some(g) = grad(name, var) else { continue };
            let g = g.contiguous()?;
            let slot = self.slots.entry(name.clone()).or_default();
            with_f32(&g, |grad| -> Result<()> {
                let up = Update { grad, slot: std::cell::RefCell::new(slot), cfg: self.cfg, lr, step: self.step };
                var.as_tensor().inplace_op1(&up)?;
                Ok(())
            })??;
        }
        Ok(())
    }
}

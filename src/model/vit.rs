//! The ViT + LA head as a differentiable candle graph: the model training, fine-tuning and
//! token-importance analysis run on. Inference uses `engine` (faster); tests hold both to timm.
//!
//! Built from candle's differentiable primitives only: `candle_nn::ops::softmax_last_dim` and
//! `candle_nn::ops::layer_norm` are fused kernels without a backward, so they are not used here.

use super::config::{HeadKind, ModelConfig};
use super::ModelFiles;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{HostTensor, TensorMap};
use crate::kernels::autodiff as ops;
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::BTreeMap;

/// How to run the forward pass.
pub struct Mode<'a> {
    /// Training mode: BatchNorm uses (and updates) batch statistics, dropout is active.
    pub train: bool,
    /// Dropout probability of the LA classifiers in training mode (LA-Transformer: 0.5).
    pub dropout: f32,
    /// Source of dropout masks (training mode with dropout > 0 needs one).
    pub rng: Option<&'a mut Rng>,
    /// Per-layer gates multiplied into the attention probabilities over the kept keys
    /// (`[N_k]` each), for first-order key importance: ∂L/∂g = Σ A·∂L/∂A (AMG_SPEC §3).
    pub gates: Option<&'a [Tensor]>,
}

impl Mode<'_> {
    pub fn eval() -> Mode<'static> {
        Mode { train: false, dropout: 0.0, rng: None, gates: None }
    }
}

pub struct Output {
    /// Final-normed tokens `[B, N, D]`.
    pub tokens: Tensor,
    /// Row-averaged patch tokens `[B, P, D]`.
    pub parts: Tensor,
    /// Retrieval feature `[B, P·D]` (each part scaled to norm 1/√P).
    pub features: Tensor,
    /// Per part `[B, C]` (LA head only).
    pub logits: Vec<Tensor>,
}

/// Model parameters as candle `Var`s (trainable) plus BatchNorm running statistics.
pub struct Vit {
    pub cfg: ModelConfig,
    pub params: BTreeMap<String, Var>,
    pub running: BTreeMap<String, Tensor>,
    /// Use the fused custom ops of `kernels::autodiff` (fast); otherwise candle's composite ops (the
    /// straightforward formulation, kept as a cross-check).
    pub fused: bool,
    device: Device,
}

fn is_running_stat(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

impl Vit {
    pub fn new(files: &ModelFiles, device: &Device) -> Result<Self> {
        let mut params = BTreeMap::new();
        let mut running = BTreeMap::new();
        for (name, t) in &files.tensors {
            let tensor = Tensor::from_slice(&t.data, t.shape.as_slice(), device)?;
            if is_running_stat(name) {
                running.insert(name.clone(), tensor);
            } else {
                params.insert(name.clone(), Var::from_tensor(&tensor)?);
            }
        }
        Ok(Vit { cfg: files.config.clone(), params, running, fused: true, device: device.clone() })
    }

    /// The current weights as a model (for saving).
    pub fn to_files(&self) -> Result<ModelFiles> {
        let mut tensors = TensorMap::new();
        for (name, v) in &self.params {
            tensors.insert(name.clone(), to_host(v.as_tensor())?);
        }
        for (name, t) in &self.running {
            tensors.insert(name.clone(), to_host(t)?);
        }
        Ok(ModelFiles { config: self.cfg.clone(), tensors })
    }

    fn p(&self, name: &str) -> Result<&Tensor> {
        self.params.get(name).map(|v| v.as_tensor()).ok_or_else(|| Error::invalid(format!("model has no parameter `{name}`")))
    }

    /// `x·Wᵀ + b` over the last dimension of a `[B, N, in]` or `[B, in]` tensor.
    fn linear(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let w = self.p(&format!("{prefix}.weight"))?;
        let dims = x.dims().to_vec();
        let inner = *dims.last().unwrap();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let mut y = x.reshape((rows, inner))?.matmul(&w.t()?)?;
        if let Some(b) = self.params.get(&format!("{prefix}.bias")) {
            y = y.broadcast_add(b.as_tensor())?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = w.dims()[0];
        Ok(y.reshape(out_dims)?)
    }

    fn layer_norm(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let eps = self.cfg.arch.ln_eps;
        if self.fused {
            let (w, b) = (self.p(&format!("{prefix}.weight"))?, self.p(&format!("{prefix}.bias"))?);
            return Ok(x.contiguous()?.apply_op3(w, b, ops::LayerNorm { eps: eps as f32 })?);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let c = x.broadcast_sub(&mean)?;
        let var = c.sqr()?.mean_keepdim(D::Minus1)?;
        let y = c.broadcast_div(&(var + eps)?.sqrt()?)?;
        Ok(y.broadcast_mul(self.p(&format!("{prefix}.weight"))?)?.broadcast_add(self.p(&format!("{prefix}.bias"))?)?)
    }

    /// Runs a batch `[B, 3, H, W]` of normalised images.
    pub fn forward(&mut self, x: &Tensor, mut mode: Mode) -> Result<Output> {
        let cfg = self.cfg.clone();
        let a = &cfg.arch;
        let (d, p) = (a.embed_dim, a.patch_size);
        let (gh, gw) = cfg.grid();
        let (b, c, h, w) = x.dims4()?;
        if (c, h, w) != (3, cfg.input.height, cfg.input.width) {
            return Err(Error::invalid(format!("input is [{b}, {c}, {h}, {w}], the model takes [B, 3, {}, {}]", cfg.input.height, cfg.input.width)));
        }
        // Patch embedding as im2col + product (the conv weight flattened in (c, ky, kx) order).
        let patches = x.reshape((b, 3, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b * gh * gw, 3 * p * p))?;
        let pw = self.p("patch_embed.proj.weight")?.reshape((d, 3 * p * p))?;
        let emb = if self.fused {
            patches.apply_op3(&pw, self.p("patch_embed.proj.bias")?, ops::Linear)?
        } else {
            patches.matmul(&pw.t()?)?.broadcast_add(self.p("patch_embed.proj.bias")?)?
        };
        let emb = emb.reshape((b, gh * gw, d))?;
        let cls = self.p("cls_token")?.broadcast_as((b, 1, d))?;
        let z = Tensor::cat(&[&cls, &emb], 1)?.broadcast_add(self.p("pos_embed")?)?;

        let z = self.forward_blocks(z, &mode)?;
        let tokens = self.layer_norm(&z, "norm")?;
        let parts = tokens.narrow(1, 1, gh * gw)?.reshape((b, gh, gw, d))?.mean(2)?;
        let norms = parts.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let features = parts.broadcast_div(&(norms * (gh as f64).sqrt())?)?.reshape((b, gh * d))?;
        let mut logits = Vec::new();
        if cfg.head.kind == HeadKind::La {
            let lambda = cfg.head.lambda as f64;
            let cls = tokens.narrow(1, 0, 1)?.squeeze(1)?;
            for i in 0..gh {
                let pre = format!("parts.{i}");
                let g = ((&cls + (parts.narrow(1, i, 1)?.squeeze(1)? * lambda)?)? / (1.0 + lambda))?;
                let zb = self.linear(&g, &format!("{pre}.bottleneck"))?;
                let zb = self.batch_norm(&zb, &pre, mode.train)?;
                let zb = if mode.train && mode.dropout > 0.0 {
                    let rng = mode.rng.as_deref_mut().ok_or_else(|| Error::invalid("training-mode dropout needs a random generator"))?;
                    dropout(&zb, mode.dropout, rng)?
                } else {
                    zb
                };
                logits.push(self.linear(&zb, &format!("{pre}.classifier"))?);
            }
        }
        Ok(Output { tokens, parts, features, logits })
    }


    /// The transformer blocks on a token sequence `[B, N, D]`.
    pub fn forward_blocks(&self, mut z: Tensor, mode: &Mode) -> Result<Tensor> {
        if self.fused {
            for l in 0..self.cfg.layers.len() {
                z = self.block_fused(z, l, mode)?;
            }
            return Ok(z);
        }
        let cfg = &self.cfg;
        let (hd, d) = (cfg.arch.head_dim, cfg.arch.embed_dim);
        let (b, n, _) = z.dims3()?;
        for (l, plan) in cfg.layers.iter().enumerate() {
            let pre = format!("blocks.{l}");
            let heads = plan.heads.len();
            let inner = heads * hd;
            let y = self.layer_norm(&z, &format!("{pre}.norm1"))?;
            let wqkv = self.p(&format!("{pre}.attn.qkv.weight"))?;
            let bqkv = self.params.get(&format!("{pre}.attn.qkv.bias")).map(|v| v.as_tensor().clone());
            let proj = |inp: &Tensor, rows: std::ops::Range<usize>| -> Result<Tensor> {
                let (bb, t, _) = inp.dims3()?;
                let wpart = wqkv.narrow(0, rows.start, rows.len())?;
                let mut out = inp.reshape((bb * t, d))?.matmul(&wpart.t()?)?;
                if let Some(bias) = &bqkv {
                    out = out.broadcast_add(&bias.narrow(0, rows.start, rows.len())?)?;
                }
                // [B, T, H, hd] -> [B, H, T, hd]
                Ok(out.reshape((bb, t, heads, hd))?.transpose(1, 2)?.contiguous()?)
            };
            let q = proj(&y, 0..inner)?;
            let yk = if plan.tokens.len() == n {
                y.clone()
            } else {
                let idx = Tensor::from_vec(plan.tokens.iter().map(|&t| t as u32).collect::<Vec<_>>(), plan.tokens.len(), &self.device)?;
                y.index_select(&idx, 1)?
            };
            let k = proj(&yk, inner..2 * inner)?;
            let v = proj(&yk, 2 * inner..3 * inner)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * (hd as f64).powf(-0.5))?;
            let mut att = candle_nn::ops::softmax(&scores, D::Minus1)?;
            if let Some(gates) = mode.gates {
                att = att.broadcast_mul(&gates[l])?;
            }
            let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, inner))?;
            z = (z + self.linear(&o, &format!("{pre}.attn.proj"))?)?;
            let y = self.layer_norm(&z, &format!("{pre}.norm2"))?;
            let hidden = self.linear(&y, &format!("{pre}.mlp.fc1"))?.gelu_erf()?;
            z = (z + self.linear(&hidden, &format!("{pre}.mlp.fc2"))?)?;
        }
        Ok(z)
    }

    /// One block with the fused ops. Attention gates, when given, scale the value rows of the kept
    /// keys: (A·diag g)·V = A·(diag g·V), so ∂L/∂g is the same Σ A·∂L/∂A as gating A itself.
    fn block_fused(&self, z: Tensor, l: usize, mode: &Mode) -> Result<Tensor> {
        let cfg = &self.cfg;
        let plan = &cfg.layers[l];
        let (hd, d) = (cfg.arch.head_dim, cfg.arch.embed_dim);
        let (b, n, _) = z.dims3()?;
        let pre = format!("blocks.{l}");
        let heads = plan.heads.len();
        let inner = heads * hd;
        let p = |s: &str| self.p(&format!("{pre}.{s}"));
        let y = self.layer_norm(&z.reshape((b * n, d))?, &format!("{pre}.norm1"))?;
        let wqkv = p("attn.qkv.weight")?;
        let bqkv = match self.params.get(&format!("{pre}.attn.qkv.bias")) {
            Some(v) => v.as_tensor().clone(),
            None => Tensor::zeros(3 * inner, DType::F32, &self.device)?,
        };
        let gate = mode.gates.map(|g| &g[l]);
        let o = if plan.tokens.len() == n && gate.is_none() {
            let qkv = y.apply_op3(wqkv, &bqkv, ops::Linear)?;
            qkv.apply_op1(ops::AttentionPacked { batch: b, n, heads, head_dim: hd })?
        } else {
            let nk = plan.tokens.len();
            let q = y.apply_op3(&wqkv.narrow(0, 0, inner)?, &bqkv.narrow(0, 0, inner)?, ops::Linear)?;
            let yk = if nk == n {
                y.clone()
            } else {
                let idx = Tensor::from_vec(plan.tokens.iter().map(|&t| t as u32).collect::<Vec<_>>(), nk, &self.device)?;
                y.reshape((b, n, d))?.index_select(&idx, 1)?.reshape((b * nk, d))?
            };
            let mut kv = yk.apply_op3(&wqkv.narrow(0, inner, 2 * inner)?, &bqkv.narrow(0, inner, 2 * inner)?, ops::Linear)?;
            if let Some(g) = gate {
                let ones = Tensor::ones((nk, inner), DType::F32, &self.device)?;
                let gv = g.reshape((nk, 1))?.broadcast_as((nk, inner))?;
                let gm = Tensor::cat(&[&ones, &gv], 1)?;
                kv = kv.reshape((b, nk, 2 * inner))?.broadcast_mul(&gm)?.reshape((b * nk, 2 * inner))?;
            }
            q.apply_op2(&kv, ops::AttentionSplit { batch: b, n, nk, heads, head_dim: hd })?
        };
        let z = (z + o.apply_op3(p("attn.proj.weight")?, p("attn.proj.bias")?, ops::Linear)?.reshape((b, n, d))?)?;
        let y = self.layer_norm(&z.reshape((b * n, d))?, &format!("{pre}.norm2"))?;
        let h = y.apply_op3(p("mlp.fc1.weight")?, p("mlp.fc1.bias")?, ops::Linear)?.apply_op1(ops::Gelu)?;
        Ok((z + h.apply_op3(p("mlp.fc2.weight")?, p("mlp.fc2.bias")?, ops::Linear)?.reshape((b, n, d))?)?)
    }

    /// BatchNorm1d (eps 1e-5, momentum 0.1, as torch's defaults): batch statistics in training
    /// mode, updating the running ones with the unbiased variance; running statistics otherwise.
    fn batch_norm(&mut self, x: &Tensor, pre: &str, train: bool) -> Result<Tensor> {
        let (rm_name, rv_name) = (format!("{pre}.bn.running_mean"), format!("{pre}.bn.running_var"));
        let (mean, var) = if train {
            let bsz = x.dims()[0];
            if bsz < 2 {
                return Err(Error::invalid("training-mode BatchNorm needs a batch of at least 2"));
            }
            let mean = x.mean_keepdim(0)?;
            let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
            let unbiased = (var.detach() * (bsz as f64 / (bsz as f64 - 1.0)))?.squeeze(0)?;
            let rm = ((&self.running[&rm_name] * 0.9)? + (mean.detach().squeeze(0)? * 0.1)?)?;
            let rv = ((&self.running[&rv_name] * 0.9)? + (unbiased * 0.1)?)?;
            self.running.insert(rm_name, rm);
            self.running.insert(rv_name, rv);
            (mean, var)
        } else {
            (self.running[&rm_name].unsqueeze(0)?, self.running[&rv_name].unsqueeze(0)?)
        };
        let y = x.broadcast_sub(&mean)?.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
        Ok(y.broadcast_mul(self.p(&format!("{pre}.bn.weight"))?)?.broadcast_add(self.p(&format!("{pre}.bn.bias"))?)?)
    }
}

/// Inverted dropout with masks from our own generator (reproducible per seed).
fn dropout(x: &Tensor, p: f32, rng: &mut Rng) -> Result<Tensor> {
    let n = x.elem_count();
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..n).map(|_| if rng.f32() < keep { 1.0 / keep } else { 0.0 }).collect();
    Ok((x * Tensor::from_vec(mask, x.shape(), x.device())?)?)
}

pub fn to_host(t: &Tensor) -> Result<HostTensor> {
    let shape = t.dims().to_vec();
    let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(HostTensor::new(shape, data))
}

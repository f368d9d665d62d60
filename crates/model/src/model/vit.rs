//! The ViT + LA head as a differentiable candle graph: the model training, fine-tuning and
//! token-importance analysis run on. Inference uses `engine` (faster); tests hold both to timm and
//! to each other.
//!
//! Each transformer block is one fused custom op (`kernels::block`) and the layers around them
//! (patch embedding, final norm, heads) are the per-layer ops of `kernels::autodiff`; all carry
//! hand-written backward passes: candle's `softmax_last_dim` and `layer_norm` have no backward,
//! its composite versions are several times slower, and a block of per-layer nodes costs a zeroed
//! buffer and an addition for every gradient candle accumulates. Backpropagate with
//! `Vit::backward`, not `loss.backward()`: the blocks' parameter gradients reach the model through it.

use super::config::ModelConfig;
use super::params::{BatchNorm, BlockParams, LayerNorm, Linear, PartParams, VitParams};
use super::ModelFiles;
use crate::error::{Error, Result};
use crate::kernels::autodiff as ops;
use crate::kernels::block::{self as ops_block, BlockDims, ParamGrads};
use crate::rng::Rng;
use crate::tensor::HostTensor;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

/// How to run the forward pass.
pub struct Mode<'a> {
    /// Training mode: BatchNorm uses (and updates) batch statistics, dropout is active.
    pub train: bool,
    /// Dropout probability of the LA classifiers in training mode (LA-Transformer: 0.5).
    pub dropout: f32,
    /// Source of dropout masks (training mode with dropout > 0 needs one).
    pub rng: Option<&'a mut Rng>,
    /// Per-layer gates multiplied into the attention probabilities over the kept keys
    /// (`[N_k]` each), for first-order key importance: ∂L/∂g = Σ A·∂L/∂A (docs/method.md §3).
    pub gates: Option<&'a [Tensor]>,
    /// Each image's camera index, for a model with a side information embedding.
    pub cameras: Option<&'a [usize]>,
}

impl Mode<'_> {
    pub fn eval() -> Mode<'static> {
        Mode { train: false, dropout: 0.0, rng: None, gates: None, cameras: None }
    }
}

pub struct Output {
    /// Final-normed tokens `[B, N, D]`.
    pub tokens: Tensor,
    /// The pooled features before the head `[B, P, D]`: the LA parts (means of
    /// `ModelConfig::part_tokens`), or for a BNNeck head the class token and JPM's local features
    /// (TransReID's triplet-loss features).
    pub parts: Tensor,
    /// Retrieval feature `[B, feature_dim]`, normalised as `ModelConfig::feature_groups` says.
    pub features: Tensor,
    /// Per LA part or per BNNeck `[B, C]`.
    pub logits: Vec<Tensor>,
}

/// A model's parameters as candle `Var`s. BatchNorm running statistics are `Var`s too (so one
/// struct holds everything), but they are state, not parameters: `trainable` leaves them out and
/// the forward pass never differentiates through them.
pub struct Vit {
    pub cfg: ModelConfig,
    pub params: VitParams<Var>,
    device: Device,
    /// The blocks run since the last `backward`, whose parameter gradients that pass collects.
    pending: Mutex<Vec<PendingBlock>>,
}

/// A block op in a live graph: where its parameter gradient will be, and the parameters (in
/// packed order, with their lengths; `None` for an absent bias) that gradient belongs to.
struct PendingBlock {
    grads: Weak<ParamGrads>,
    params: Vec<(Option<Var>, usize)>,
}

impl Vit {
    pub fn new(files: &ModelFiles, device: &Device) -> Result<Self> {
        files.require_float("training (the differentiable model)")?;
        files.check()?;
        let params = files.params.try_map(&mut |_, t| Ok(Var::from_tensor(&Tensor::from_slice(&t.data, t.shape.as_slice(), device)?)?))?;
        Ok(Vit { cfg: files.config.clone(), params, device: device.clone(), pending: Mutex::new(Vec::new()) })
    }

    /// Backpropagates `loss` (a scalar computed from this model's forward passes) and returns the
    /// gradients, those of the transformer blocks' parameters included. Use this rather than
    /// `loss.backward()`: the block ops hand their parameter gradients to the model, not to candle
    /// (see `kernels::block::ParamGrads`), and only this collects them.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut still = Vec::new();
        for p in pending.drain(..) {
            // Dead: the graph was dropped without a backward pass through it.
            let Some(sink) = p.grads.upgrade() else { continue };
            let Some(g) = sink.take() else {
                // A graph still alive that this loss did not reach: keep it for its own pass.
                still.push(p);
                continue;
            };
            let total: usize = p.params.iter().map(|(_, len)| len).sum();
            if g.len() != total {
                return Err(Error::invalid(format!("block parameter gradient of {} values for {total} parameters", g.len())));
            }
            // Each parameter's gradient is a view into the packed one (no copy).
            let whole = Tensor::from_vec(g, total, &self.device)?;
            let mut at = 0;
            for (var, len) in &p.params {
                let part = whole.narrow(0, at, *len)?;
                at += len;
                let Some(var) = var else { continue };
                let t = part.reshape(var.shape())?;
                let t = match grads.remove(var.as_tensor()) {
                    Some(prev) => (prev + t)?,
                    None => t,
                };
                grads.insert(var.as_tensor(), t);
            }
        }
        *pending = still;
        Ok(grads)
    }

    /// The current weights as a model (for saving).
    pub fn to_files(&self) -> Result<ModelFiles> {
        Ok(ModelFiles { config: self.cfg.clone(), params: self.params.try_map(&mut |_, v| to_host(v.as_tensor()))?, int8: None })
    }

    /// The learned parameters by name, for the optimiser (its state is saved under these names).
    pub fn trainable(&self) -> BTreeMap<String, Var> {
        self.params.entries().into_iter().filter(|(k, _)| !k.is_buffer() && !k.is_frozen()).map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    /// `x·Wᵀ + b` over the last dimension of `x` (`[rows, in]`), as one fused op.
    fn linear(&self, x: &Tensor, l: &Linear<Var>) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op3(l.weight.as_tensor(), &self.bias(l)?, ops::Linear)?)
    }

    /// A linear layer's bias, or zeros for one without.
    fn bias(&self, l: &Linear<Var>) -> Result<Tensor> {
        Ok(match &l.bias {
            Some(b) => b.as_tensor().clone(),
            None => Tensor::zeros(l.weight.dims()[0], DType::F32, &self.device)?,
        })
    }

    fn layer_norm(&self, x: &Tensor, n: &LayerNorm<Var>) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op3(n.weight.as_tensor(), n.bias.as_tensor(), ops::LayerNorm { eps: self.cfg.arch.ln_eps as f32 })?)
    }

    /// Runs a batch `[B, 3, H, W]` of normalised images.
    pub fn forward(&mut self, x: &Tensor, mut mode: Mode) -> Result<Output> {
        let cfg = &self.cfg;
        let d = cfg.arch.embed_dim;
        let (b, c, h, w) = x.dims4()?;
        if (c, h, w) != (3, cfg.input.height, cfg.input.width) {
            return Err(Error::invalid(format!("input is [{b}, {c}, {h}, {w}], the model takes [B, 3, {}, {}]", cfg.input.height, cfg.input.width)));
        }
        let emb = self.patch_embed(x)?;
        let mut seq: Vec<Tensor> =
            self.params.prefix_tokens().into_iter().map(|t| t.as_tensor().broadcast_as((b, 1, d))).collect::<candle_core::Result<_>>()?;
        seq.push(emb);
        let mut z = Tensor::cat(&seq, 1)?.broadcast_add(self.params.pos_embed.as_tensor())?;
        if let (Some(sie), Some(table)) = (&cfg.arch.sie, &self.params.sie_embed) {
            let cams = mode.cameras.ok_or_else(|| Error::invalid("this model has a side information embedding (SIE): each image needs its camera"))?;
            if cams.len() != b || cams.iter().any(|&c| c >= sie.rows()) {
                return Err(Error::invalid(format!("{} SIE indices for a batch of {b}, each below {}", cams.len(), sie.rows())));
            }
            let idx = Tensor::from_vec(cams.iter().map(|&c| c as u32).collect::<Vec<_>>(), b, &self.device)?;
            z = z.broadcast_add(&(table.as_tensor().index_select(&idx, 0)? * sie.coefficient as f64)?)?;
        }

        let depth = self.params.blocks.len();
        let gates = mode.gates;
        let mut trunk = None;
        let n = z.dims()[1];
        // The blocks take and give `[B·N, D]`: one reshape for the whole trunk, not two per block
        // (each a node whose gradient candle zeroes and adds).
        let mut z = z.reshape((b * n, d))?;
        for l in 0..depth {
            if l + 1 == depth && cfg.arch.jpm.is_some() {
                trunk = Some(z.reshape((b, n, d))?);
            }
            let plan = &cfg.layers[l];
            z = self.block(z, b, &self.params.blocks[l], plan.heads.len(), &plan.tokens, gates.map(|g| &g[l]))?;
        }
        let tokens = self.layer_norm(&z.reshape((b, n, d))?, &self.params.norm)?;
        if !self.params.necks.is_empty() {
            return self.neck_head(tokens, trunk, &mut mode);
        }
        let parts = (0..cfg.num_parts())
            .map(|i| {
                let r = cfg.part_tokens(i);
                tokens.narrow(1, r.start, r.len())?.mean(1)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let parts = Tensor::stack(&parts, 1)?;
        let norms = parts.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let features = parts.broadcast_div(&(norms * (cfg.num_parts() as f64).sqrt())?)?.reshape((b, cfg.num_parts() * d))?;
        let mut logits = Vec::new();
        if !self.params.parts.is_empty() {
            let lambda = cfg.head.lambda as f64;
            // The class token is position 0 (validation requires one for an LA head).
            let cls = tokens.narrow(1, 0, 1)?.squeeze(1)?;
            for i in 0..self.params.parts.len() {
                let g = ((&cls + (parts.narrow(1, i, 1)?.squeeze(1)? * lambda)?)? / (1.0 + lambda))?;
                logits.push(self.part_logits(&g, i, &mut mode)?);
            }
        }
        Ok(Output { tokens, parts, features, logits })
    }

    /// The patch embedding `[B, patches, D]`: im2col, then the conv weight as one product (flattened
    /// in (c, ky, kx) order). Overlapping patches are gathered by index.
    fn patch_embed(&self, x: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (d, p, s) = (cfg.arch.embed_dim, cfg.arch.patch_size, cfg.arch.stride());
        let (gh, gw) = cfg.grid();
        let (b, _, h, w) = x.dims4()?;
        let patches = if s == p {
            x.reshape((b, 3, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b * gh * gw, 3 * p * p))?
        } else {
            let idx: Vec<u32> = (0..gh * gw)
                .flat_map(|i| {
                    let (py, px) = (i / gw, i % gw);
                    (0..3 * p * p).map(move |j| {
                        let (c, ky, kx) = (j / (p * p), (j / p) % p, j % p);
                        (c * h * w + (py * s + ky) * w + px * s + kx) as u32
                    })
                })
                .collect();
            let n = idx.len();
            x.reshape((b, 3 * h * w))?.index_select(&Tensor::from_vec(idx, n, &self.device)?, 1)?.reshape((b * gh * gw, 3 * p * p))?
        };
        let pe = &self.params.patch_embed;
        let pw = pe.weight.as_tensor().reshape((d, 3 * p * p))?;
        Ok(patches.apply_op3(&pw, &self.bias(pe)?, ops::Linear)?.reshape((b, gh * gw, d))?)
    }

    /// The BNNeck head on the final tokens (and JPM's b2 branch on `trunk`, the last block's
    /// input): features, the pooled pieces and the logits, as TransReID computes them.
    fn neck_head(&self, tokens: Tensor, trunk: Option<Tensor>, mode: &mut Mode) -> Result<Output> {
        let cfg = &self.cfg;
        let d = cfg.arch.embed_dim;
        let b = tokens.dims()[0];
        let mut raw = vec![tokens.narrow(1, 0, 1)?.squeeze(1)?];
        if let (Some(j), Some(b2), Some(trunk)) = (&cfg.arch.jpm, &self.params.jpm, trunk) {
            let groups = cfg.jpm_groups();
            let (k, t) = (groups.len(), cfg.jpm_tokens());
            let idx: Vec<u32> = groups.iter().flatten().map(|&p| p as u32).collect();
            let local = trunk.index_select(&Tensor::from_vec(idx, k * t, &self.device)?, 1)?.reshape((b * k * t, d))?;
            let all: Vec<usize> = (0..t).collect();
            let local = self.block(local, b * k, &b2.block, j.heads.len(), &all, None)?.reshape((b * k, t, d))?;
            let local = self.layer_norm(&local.narrow(1, 0, 1)?.reshape((b * k, d))?, &b2.norm)?.reshape((b, k, d))?;
            for g in 0..k {
                raw.push(local.narrow(1, g, 1)?.squeeze(1)?);
            }
        }
        let k = raw.len();
        let mut normed = Vec::with_capacity(k);
        let mut logits = Vec::new();
        for (r, neck) in raw.iter().zip(&self.params.necks) {
            let y = batch_norm(r, &neck.bn, mode.train)?;
            if let Some(c) = &neck.classifier {
                logits.push(self.linear(&y, c)?);
            }
            normed.push(y);
        }
        let after = cfg.head.neck_feat == Some(super::config::NeckFeat::After);
        let pieces: Vec<Tensor> = (if after { &normed } else { &raw })
            .iter()
            .enumerate()
            .map(|(i, t)| if i == 0 { Ok(t.clone()) } else { t / (k - 1) as f64 })
            .collect::<candle_core::Result<_>>()?;
        let cat = Tensor::cat(&pieces, 1)?;
        let norm = cat.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let features = cat.broadcast_div(&norm)?;
        Ok(Output { tokens, parts: Tensor::stack(&raw, 1)?, features, logits })
    }

    /// One LA classifier on its blended input `g` `[B, D]`.
    fn part_logits(&self, g: &Tensor, i: usize, mode: &mut Mode) -> Result<Tensor> {
        let part: &PartParams<Var> = &self.params.parts[i];
        let z = self.linear(g, &part.bottleneck)?;
        let z = batch_norm(&z, &part.bn, mode.train)?;
        let z = if mode.train && mode.dropout > 0.0 {
            let rng = mode.rng.as_deref_mut().ok_or_else(|| Error::invalid("training-mode dropout needs a random generator"))?;
            dropout(&z, mode.dropout, rng)?
        } else {
            z
        };
        self.linear(&z, &part.classifier)
    }

    /// The transformer blocks on a token sequence `[B, N, D]`.
    pub fn forward_blocks(&self, z: Tensor, mode: &Mode) -> Result<Tensor> {
        let (b, n, d) = z.dims3()?;
        let mut z = z.reshape((b * n, d))?;
        for (l, p) in self.params.blocks.iter().enumerate() {
            let plan = &self.cfg.layers[l];
            z = self.block(z, b, p, plan.heads.len(), &plan.tokens, mode.gates.map(|g| &g[l]))?;
        }
        Ok(z.reshape((b, n, d))?)
    }

    /// One block on the tokens `[B·N, D]` of `b` images, with `heads` kept heads and keys/values
    /// from positions `keep` of each sequence, as one fused op (`kernels::block`). Attention
    /// gates, when given, scale the value rows of the kept keys: (A·diag g)·V = A·(diag g·V), so
    /// ∂L/∂g is the same Σ A·∂L/∂A as gating A itself.
    fn block(&self, z: Tensor, b: usize, p: &BlockParams<Var>, heads: usize, keep: &[usize], gate: Option<&Tensor>) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (rows, d) = z.dims2()?;
        let n = rows / b.max(1);
        let dims = BlockDims { batch: b, n, dim: d, heads, head_dim: cfg.arch.head_dim, hidden: p.fc1.weight.dims()[0] };
        // The parameters packed into one tensor, tracked (a `Var`, so that the op's output is
        // differentiated even when its input is not) but with no path back to the parameters:
        // the op hands their gradient to `backward` instead (see `ParamGrads`).
        let weight = |v: &Var| (Some(v.clone()), v.elem_count());
        let bias = |l: &Linear<Var>| (l.bias.clone(), l.weight.dims()[0]);
        #[rustfmt::skip]
        let params: Vec<(Option<Var>, usize)> = vec![
            weight(&p.norm1.weight), weight(&p.norm1.bias),
            weight(&p.qkv.weight), bias(&p.qkv),
            weight(&p.proj.weight), bias(&p.proj),
            weight(&p.norm2.weight), weight(&p.norm2.bias),
            weight(&p.fc1.weight), bias(&p.fc1),
            weight(&p.fc2.weight), bias(&p.fc2),
        ];
        let lens = dims.param_lens();
        if params.iter().map(|(_, l)| *l).ne(lens) {
            return Err(Error::invalid(format!("block parameters do not have the sizes of {dims:?}")));
        }
        let mut data = Vec::with_capacity(lens.iter().sum());
        for (var, len) in &params {
            match var {
                Some(v) => ops::with_f32(&v.as_tensor().contiguous()?, |s| data.extend_from_slice(s))?,
                None => data.resize(data.len() + len, 0.0),
            }
        }
        let n_params = data.len();
        let packed = Var::from_vec(data, n_params, &self.device)?;
        let sink = Arc::new(ParamGrads::default());
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.retain(|p| p.grads.strong_count() > 0);
            pending.push(PendingBlock { grads: Arc::downgrade(&sink), params });
        }
        let op = ops_block::Block::new(dims, cfg.arch.ln_eps as f32, keep.to_vec(), sink);
        let packed = packed.as_tensor();
        let z = z.contiguous()?;
        Ok(match gate {
            Some(g) => z.apply_op3(packed, &g.contiguous()?, op)?,
            None => z.apply_op2(packed, op)?,
        })
    }
}

/// BatchNorm1d: batch statistics in training mode, updating the running ones (with the unbiased
/// variance, momentum 0.1, as torch does); running statistics otherwise.
fn batch_norm(x: &Tensor, bn: &BatchNorm<Var>, train: bool) -> Result<Tensor> {
    let momentum = BatchNorm::<Var>::MOMENTUM;
    let (mean, var) = if train {
        let bsz = x.dims()[0];
        if bsz < 2 {
            return Err(Error::invalid("training-mode BatchNorm needs a batch of at least 2"));
        }
        let mean = x.mean_keepdim(0)?;
        let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
        let unbiased = (var.detach() * (bsz as f64 / (bsz as f64 - 1.0)))?.squeeze(0)?;
        let rm = ((bn.running_mean.as_tensor().detach() * (1.0 - momentum))? + (mean.detach().squeeze(0)? * momentum)?)?;
        let rv = ((bn.running_var.as_tensor().detach() * (1.0 - momentum))? + (unbiased * momentum)?)?;
        bn.running_mean.set(&rm)?;
        bn.running_var.set(&rv)?;
        (mean, var)
    } else {
        (bn.running_mean.as_tensor().detach().unsqueeze(0)?, bn.running_var.as_tensor().detach().unsqueeze(0)?)
    };
    let y = x.broadcast_sub(&mean)?.broadcast_div(&(var + BatchNorm::<Var>::EPS)?.sqrt()?)?;
    Ok(y.broadcast_mul(bn.weight.as_tensor())?.broadcast_add(bn.bias.as_tensor())?)
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

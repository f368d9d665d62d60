//! A whole transformer block — layer norm, attention (packed, or with K/V from the kept tokens and
//! optional gates), projection, residual, layer norm, MLP with GELU, residual — as one candle op
//! with a hand-written backward pass.
//!
//! Why one op: candle's backward pass gives every input of every node a zero tensor of its size and
//! adds the node's gradient into it (a memset and a single-threaded add), and every node allocates
//! its output. With the block as ~12 nodes that was ~10 activation-sized zero-and-add passes per
//! block and step, a large share of a training step. Here the block's intermediate results are kept by the op itself, its
//! gradients are written once, and the residual sums are in-place parallel adds. The kernels are the
//! ones the rest of amg uses (gemm, layer norm, attention, GELU: `rows`, `attention`, `autodiff`'s
//! slice-level functions), so the results are those of per-layer ops up to float summation order.

use super::attention::{attention, attention_backward, AttnLayout, AttnShape};
use super::autodiff::{gelu_keeping_grad, layer_norm_backward, linear_backward, linear_forward, mul_in_place, slice, with};
use super::gemm::Acc;
use super::prof::phase;
use super::rows::layer_norm;
use crate::alloc::{copied, recycle, scratch};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// The sizes of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDims {
    pub batch: usize,
    /// Tokens per image (queries).
    pub n: usize,
    pub dim: usize,
    /// Kept heads.
    pub heads: usize,
    pub head_dim: usize,
    /// The MLP's hidden width.
    pub hidden: usize,
}

impl BlockDims {
    /// The lengths of the parameters in the order they are packed into the op's second input:
    /// norm1 weight, bias; qkv weight `[3I, D]`, bias `[3I]`; proj weight `[D, I]`, bias `[D]`;
    /// norm2 weight, bias; fc1 weight `[M, D]`, bias `[M]`; fc2 weight `[D, M]`, bias `[D]`.
    pub fn param_lens(&self) -> [usize; 12] {
        let (d, i, m) = (self.dim, self.heads * self.head_dim, self.hidden);
        [d, d, 3 * i * d, 3 * i, d * i, d, d, d, m * d, m, d * m, d]
    }
}

/// The parameters, unpacked (views into the packed input), named as the model's `BlockParams`
/// names them.
struct Params<'a> {
    norm1: Affine<'a>,
    qkv: Affine<'a>,
    proj: Affine<'a>,
    norm2: Affine<'a>,
    fc1: Affine<'a>,
    fc2: Affine<'a>,
}

/// A layer norm's or a linear layer's weight and bias.
struct Affine<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
}

/// What the forward pass keeps for the backward pass.
struct Saved {
    y1: Vec<f32>,
    /// Packed path: `[B·N, 3I]`; split path: queries `[B·N, I]`.
    q: Vec<f32>,
    /// Split path: keys and (gated) values of the kept tokens `[B·N_k, 2I]`.
    kv: Vec<f32>,
    /// Split path with gates: the values before gating.
    kv_raw: Vec<f32>,
    /// Split path with pruned tokens: the kept rows of `y1` `[B·N_k, D]`.
    yk: Vec<f32>,
    o: Vec<f32>,
    z2: Vec<f32>,
    y2: Vec<f32>,
    /// GELU'(fc1 output), `[B·N, M]`.
    gelu_grad: Vec<f32>,
    h: Vec<f32>,
}

impl Drop for Saved {
    fn drop(&mut self) {
        let Saved { y1, q, kv, kv_raw, yk, o, z2, y2, gelu_grad, h } = self;
        recycle([y1, q, kv, kv_raw, yk, o, z2, y2, gelu_grad, h].map(std::mem::take));
    }
}

/// The block's gradients: input, packed parameters, gates (when gated).
struct Grads {
    input: Vec<f32>,
    params: Vec<f32>,
    gates: Option<Vec<f32>>,
}

/// Where a block op leaves the gradient of its packed parameters (`BlockDims::param_lens` order).
///
/// Why not through candle: the parameters reach the op packed into one tensor, and candle would
/// hand each parameter its slice of that gradient by zeroing a buffer and adding into it, twice
/// (the concatenation, then the flattening of each weight). The model instead gives each parameter a view of its slice
/// (`model::vit::Vit::backward`).
#[derive(Default)]
pub struct ParamGrads(Mutex<Option<Vec<f32>>>);

impl ParamGrads {
    /// The gradient the last backward pass through the op left, if any (taken).
    pub fn take(&self) -> Option<Vec<f32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn put(&self, g: Vec<f32>) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(match slot.take() {
            // A second backward pass through the same op before the model took the first: sum.
            Some(mut prev) => {
                add_into(&mut prev, &g);
                prev
            }
            None => g,
        });
    }
}

/// One transformer block (pre-norm ViT): inputs `z` `[B·N, D]`, the packed parameters
/// (`BlockDims::param_lens`) and, for `CustomOp3`, per-key gates `[N_k]` that scale the value rows
/// of the kept keys (token importance, docs/method.md §3). Output `[B·N, D]`. The gradient of the
/// parameters goes to `param_grads`, not to candle (see `ParamGrads`).
pub struct Block {
    pub dims: BlockDims,
    pub eps: f32,
    /// Key/value positions (all `0..n` when no token is pruned).
    pub keep: Vec<usize>,
    param_grads: Arc<ParamGrads>,
    saved: Mutex<Option<Saved>>,
}

/// `v ⊙= g` for the value half of every `[K | V]` row of `kv` (`2·inner` wide), `g` per kept key.
fn scale_values(kv: &mut [f32], g: &[f32], inner: usize) {
    let nk = g.len();
    kv.par_chunks_mut(2 * inner).enumerate().for_each(|(r, row)| row[inner..].iter_mut().for_each(|v| *v *= g[r % nk]));
}

/// `a += b`, in parallel.
fn add_into(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(16384).zip(b.par_chunks(16384)).for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(x, y)| *x += y));
}

impl Block {
    pub fn new(dims: BlockDims, eps: f32, keep: Vec<usize>, param_grads: Arc<ParamGrads>) -> Self {
        Block { dims, eps, keep, param_grads, saved: Mutex::new(None) }
    }

    /// Whether attention runs on one packed qkv buffer: every token kept and no gates (gates scale
    /// the values, which need their own buffer).
    fn packed(&self, gated: bool) -> bool {
        self.keep.len() == self.dims.n && !gated
    }

    fn attn(&self, packed: bool) -> (AttnShape, AttnLayout, f32) {
        let BlockDims { batch, n, heads, head_dim, .. } = self.dims;
        let inner = heads * head_dim;
        let nk = self.keep.len();
        let layout = if packed {
            AttnLayout { q_ld: 3 * inner, kv_ld: 3 * inner, k_off: inner, v_off: 2 * inner, out_ld: inner }
        } else {
            AttnLayout { q_ld: inner, kv_ld: 2 * inner, k_off: 0, v_off: inner, out_ld: inner }
        };
        (AttnShape { batch, n, nk, heads, head_dim }, layout, (head_dim as f32).powf(-0.5))
    }

    fn unpack<'a>(&self, p: &'a [f32]) -> Result<Params<'a>> {
        let lens = self.dims.param_lens();
        let total: usize = lens.iter().sum();
        if p.len() != total {
            candle_core::bail!("block: {} packed parameters, expected {total} for {:?}", p.len(), self.dims);
        }
        let mut parts = [&p[..0]; 12];
        let mut at = 0;
        for (part, len) in parts.iter_mut().zip(lens) {
            *part = &p[at..at + len];
            at += len;
        }
        let [n1w, n1b, qkvw, qkvb, projw, projb, n2w, n2b, fc1w, fc1b, fc2w, fc2b] = parts;
        let affine = |weight, bias| Affine { weight, bias };
        Ok(Params {
            norm1: affine(n1w, n1b),
            qkv: affine(qkvw, qkvb),
            proj: affine(projw, projb),
            norm2: affine(n2w, n2b),
            fc1: affine(fc1w, fc1b),
            fc2: affine(fc2w, fc2b),
        })
    }

    fn check(&self, z: &[f32], gate: Option<&[f32]>) -> Result<()> {
        let BlockDims { batch, n, dim, .. } = self.dims;
        if z.len() != batch * n * dim {
            candle_core::bail!("block: input has {} values, expected {batch}·{n}·{dim}", z.len());
        }
        if self.keep.is_empty() || self.keep.iter().any(|&t| t >= n) {
            candle_core::bail!("block: kept key positions must be non-empty and below {n}");
        }
        if let Some(g) = gate {
            if g.len() != self.keep.len() {
                candle_core::bail!("block: {} gates for {} kept keys", g.len(), self.keep.len());
            }
        }
        Ok(())
    }

    fn forward(&self, z: &[f32], p: &[f32], gate: Option<&[f32]>) -> Result<Vec<f32>> {
        self.check(z, gate)?;
        let w = self.unpack(p)?;
        let BlockDims { batch, n, dim: d, heads, head_dim, hidden } = self.dims;
        let (rows, inner, nk) = (batch * n, heads * head_dim, self.keep.len());
        let packed = self.packed(gate.is_some());
        // The residual stream: z now, z + attention below.
        let mut z2 = copied(z);
        let mut y1 = scratch(rows * d);
        phase("blk:ln", || layer_norm(&mut z2, None, w.norm1.weight, w.norm1.bias, self.eps, &mut y1));
        let (shape, layout, scale) = self.attn(packed);
        let mut o = scratch(rows * inner);
        let (q, kv, kv_raw, yk);
        if packed {
            q = phase("blk:qkv", || linear_forward(&y1, w.qkv.weight, w.qkv.bias, rows));
            phase("blk:attention", || attention(&q, &q, &mut o, shape, layout, scale, None));
            (kv, kv_raw, yk) = (Vec::new(), Vec::new(), Vec::new());
        } else {
            q = phase("blk:qkv", || linear_forward(&y1, &w.qkv.weight[..inner * d], &w.qkv.bias[..inner], rows));
            yk = if nk == n {
                Vec::new()
            } else {
                let mut yk = scratch(batch * nk * d);
                yk.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
                    let src = (r / nk) * n + self.keep[r % nk];
                    row.copy_from_slice(&y1[src * d..(src + 1) * d]);
                });
                yk
            };
            let mut kvg = phase("blk:qkv", || linear_forward(if nk == n { &y1 } else { &yk }, &w.qkv.weight[inner * d..], &w.qkv.bias[inner..], batch * nk));
            kv_raw = match gate {
                Some(g) => {
                    let raw = kvg.clone();
                    scale_values(&mut kvg, g, inner);
                    raw
                }
                None => Vec::new(),
            };
            kv = kvg;
            phase("blk:attention", || attention(&q, &kv, &mut o, shape, layout, scale, None));
        }
        let a = phase("blk:proj", || linear_forward(&o, w.proj.weight, w.proj.bias, rows));
        phase("blk:residual", || add_into(&mut z2, &a));
        drop(a);
        let mut y2 = scratch(rows * d);
        phase("blk:ln", || layer_norm(&mut z2, None, w.norm2.weight, w.norm2.bias, self.eps, &mut y2));
        // fc1's output becomes GELU's derivative there once the GELU is taken (see
        // `gelu_keeping_grad`).
        let mut gelu_grad = phase("blk:fc1", || linear_forward(&y2, w.fc1.weight, w.fc1.bias, rows));
        let h = phase("blk:gelu", || gelu_keeping_grad(&mut gelu_grad));
        let mut out = phase("blk:fc2", || linear_forward(&h, w.fc2.weight, w.fc2.bias, rows));
        phase("blk:residual", || add_into(&mut out, &z2));
        debug_assert_eq!(h.len(), rows * hidden);
        // A poisoned lock only means another thread panicked while holding it; the value is
        // replaced whole here.
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(Saved { y1, q, kv, kv_raw, yk, o, z2, y2, gelu_grad, h });
        Ok(out)
    }

    /// Gradients with respect to the input, the packed parameters and the gates.
    fn backward(&self, z: &[f32], p: &[f32], gate: Option<&[f32]>, dout: &[f32]) -> Result<Grads> {
        let w = self.unpack(p)?;
        let guard = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = guard.as_ref() else { candle_core::bail!("block: backward pass without a forward pass") };
        let BlockDims { batch, n, dim: d, heads, head_dim, .. } = self.dims;
        let (rows, inner, nk) = (batch * n, heads * head_dim, self.keep.len());
        let packed = self.packed(gate.is_some());
        // MLP: out = z2 + fc2(GELU(fc1(LN2(z2)))).
        let mut dh = scratch(s.h.len());
        let (dfc2w, dfc2b) = phase("blk-bwd:fc2", || linear_backward(&s.h, w.fc2.weight, dout, rows, &mut dh, Acc::Overwrite));
        phase("blk-bwd:gelu", || mul_in_place(&mut dh, &s.gelu_grad));
        let mut dy2 = scratch(rows * d);
        let (dfc1w, dfc1b) = phase("blk-bwd:fc1", || linear_backward(&s.y2, w.fc1.weight, &dh, rows, &mut dy2, Acc::Overwrite));
        recycle([dh]);
        // z2 feeds both the residual (gradient dout) and LN2: the sum starts from dout.
        let mut dz2 = copied(dout);
        let (dn2w, dn2b) = phase("blk-bwd:ln", || layer_norm_backward(&s.z2, &dy2, w.norm2.weight, self.eps, &mut dz2));
        recycle([dy2]);
        // Attention: z2 = z + proj(attention(LN1(z))).
        let mut d_o = scratch(rows * inner);
        let (dprojw, dprojb) = phase("blk-bwd:proj", || linear_backward(&s.o, w.proj.weight, &dz2, rows, &mut d_o, Acc::Overwrite));
        let (shape, layout, scale) = self.attn(packed);
        let mut dy1 = scratch(rows * d);
        let (dqkvw, dqkvb, dgate);
        if packed {
            let mut dqkv = scratch(s.q.len());
            let dp = dqkv.as_mut_ptr();
            // SAFETY: `dqkv` is exclusively ours and sized like the packed qkv; the q, k and v
            // columns the backward pass writes are disjoint.
            phase("blk-bwd:attention", || unsafe { attention_backward(&s.q, &s.q, &d_o, dp, dp, shape, layout, scale) });
            (dqkvw, dqkvb) = phase("blk-bwd:qkv", || linear_backward(&s.y1, w.qkv.weight, &dqkv, rows, &mut dy1, Acc::Overwrite));
            recycle([dqkv]);
            dgate = None;
        } else {
            let (mut dq, mut dkv) = (scratch(s.q.len()), scratch(s.kv.len()));
            // SAFETY: both buffers are exclusively ours and sized like q and kv.
            phase("blk-bwd:attention", || unsafe { attention_backward(&s.q, &s.kv, &d_o, dq.as_mut_ptr(), dkv.as_mut_ptr(), shape, layout, scale) });
            dgate = gate.map(|g| {
                // v = g ⊙ v_raw per kept key: ∂L/∂g_j = Σ_b Σ_c dv·v_raw (over the batch first, as
                // the broadcast it replaces sums), and dv_raw = g ⊙ dv.
                let mut per_col = vec![0f32; nk * inner];
                for bi in 0..batch {
                    for j in 0..nk {
                        let r = (bi * nk + j) * 2 * inner + inner;
                        for c in 0..inner {
                            per_col[j * inner + c] += dkv[r + c] * s.kv_raw[r + c];
                        }
                    }
                }
                scale_values(&mut dkv, g, inner);
                per_col.chunks_exact(inner).map(|c| c.iter().sum()).collect::<Vec<f32>>()
            });
            let (dqw, dqb) = phase("blk-bwd:qkv", || linear_backward(&s.y1, &w.qkv.weight[..inner * d], &dq, rows, &mut dy1, Acc::Overwrite));
            let (dkvw, dkvb) = if nk == n {
                phase("blk-bwd:qkv", || linear_backward(&s.y1, &w.qkv.weight[inner * d..], &dkv, rows, &mut dy1, Acc::Add))
            } else {
                let mut dyk = scratch(batch * nk * d);
                let r = phase("blk-bwd:qkv", || linear_backward(&s.yk, &w.qkv.weight[inner * d..], &dkv, batch * nk, &mut dyk, Acc::Overwrite));
                // Scatter the kept rows' gradients back (positions are distinct within an image,
                // so each image's rows can be done in parallel).
                dy1.par_chunks_mut(n * d).zip(dyk.par_chunks(nk * d)).for_each(|(img, ks)| {
                    for (j, row) in ks.chunks_exact(d).enumerate() {
                        let t = self.keep[j];
                        img[t * d..(t + 1) * d].iter_mut().zip(row).for_each(|(a, b)| *a += b);
                    }
                });
                recycle([dyk]);
                r
            };
            dqkvw = [dqw.as_slice(), &dkvw].concat();
            dqkvb = [dqb, dkvb].concat();
            recycle([dq, dkv, dqw, dkvw]);
        }
        // z likewise: the residual's dz2 plus LN1's gradient, added into dz2's buffer.
        let mut dz = dz2;
        let (dn1w, dn1b) = phase("blk-bwd:ln", || layer_norm_backward(z, &dy1, w.norm1.weight, self.eps, &mut dz));
        recycle([d_o, dy1]);
        let grads = [dn1w, dn1b, dqkvw, dqkvb, dprojw, dprojb, dn2w, dn2b, dfc1w, dfc1b, dfc2w, dfc2b];
        debug_assert!(grads.iter().zip(self.dims.param_lens()).all(|(g, l)| g.len() == l));
        // Not from the pool: the model hands this buffer to candle (as its parameters' gradients).
        let params = grads.concat();
        recycle(grads);
        Ok(Grads { input: dz, params, gates: dgate })
    }
}

impl CustomOp2 for Block {
    fn name(&self) -> &'static str {
        "amg-block"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self.forward(slice(s1, l1, "block input")?, slice(s2, l2, "block parameters")?, None)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, z: &Tensor, p: &Tensor, _out: &Tensor, dout: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Grads { input: dz, params: dp, .. } =
            with(z, "block input", |zs| with(p, "block parameters", |ps| with(dout, "block dout", |g| self.backward(zs, ps, None, g))))????;
        self.param_grads.put(dp);
        Ok((Some(Tensor::from_vec(dz, z.shape(), z.device())?), None))
    }
}

impl CustomOp3 for Block {
    fn name(&self) -> &'static str {
        "amg-block-gated"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self.forward(slice(s1, l1, "block input")?, slice(s2, l2, "block parameters")?, Some(slice(s3, l3, "block gates")?))?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, z: &Tensor, p: &Tensor, g: &Tensor, _out: &Tensor, dout: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Grads { input: dz, params: dp, gates: dg } = with(z, "block input", |zs| {
            with(p, "block parameters", |ps| with(g, "block gates", |gs| with(dout, "block dout", |d| self.backward(zs, ps, Some(gs), d))))
        })?????;
        let dg = dg.map(|v| Tensor::from_vec(v, g.shape(), g.device())).transpose()?;
        self.param_grads.put(dp);
        Ok((Some(Tensor::from_vec(dz, z.shape(), z.device())?), None, dg))
    }
}

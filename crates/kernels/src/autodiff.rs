//! Candle custom ops with hand-written backward passes for the layers around the transformer
//! blocks — linear (+bias) and layer norm — and the slice-level forward and backward functions
//! (linear, layer norm, GELU) that these ops and the whole-block op (`kernels::block`) share.
//!
//! Why: candle's composite layer norm, softmax and GELU run as chains of single-threaded,
//! allocating element-wise ops forward and (worse) backward, and its matmuls on transposed or
//! batched views copy, which made a training step several times slower than PyTorch's. Each op here is one node in candle's graph, runs on the
//! `kernels` (gemm with strides, vectorised parallel row kernels) and recomputes what it needs in
//! the backward pass (layer-norm statistics) instead of storing it.

use super::gemm::{matmul_bt, matmul_strided, Acc, Mat, Strides};
use super::prof::phase;
use super::rows::{lane_sq_dev, lane_sum, layer_norm, LANES};
use super::{math, rows_per_task, simd_fn};
use crate::alloc::{filled_rows, output, scratch};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

pub(super) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{what}: input must be contiguous"),
        _ => candle_core::bail!("{what}: input must be float32"),
    }
}

/// Reads a contiguous f32 CPU tensor (without copying).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> crate::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => Err(crate::Error::invalid("expected a contiguous float32 CPU tensor")),
    }
}

/// Runs `f` on the contiguous f32 data of a tensor.
pub(super) fn with<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(s) => Ok(f(slice(s, l, what)?)),
        _ => candle_core::bail!("{what}: only the CPU is supported"),
    }
}

fn threads() -> usize {
    rayon::current_num_threads()
}

/// Column sums of a `[rows, n]` matrix: partial sums of fixed row blocks in parallel, combined in
/// block order, so the result is the same whatever the thread scheduling (runs are reproducible).
fn column_sums(x: &[f32], n: usize) -> Vec<f32> {
    let rows = x.len() / n;
    let per = rows_per_task(rows, n);
    let partial: Vec<Vec<f32>> = x
        .par_chunks(per * n)
        .map(|c| {
            let mut s = vec![0f32; n];
            for r in c.chunks_exact(n) {
                for (a, b) in s.iter_mut().zip(r) {
                    *a += b;
                }
            }
            s
        })
        .collect();
    let mut out = vec![0f32; n];
    for p in partial {
        out.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    out
}

fn leading(shape: &Shape) -> (Vec<usize>, usize) {
    let d = shape.dims();
    (d[..d.len() - 1].to_vec(), *d.last().unwrap_or(&1))
}

/// `x·Wᵀ + b` for `x` `[m, k]` and `w` `[n, k]`: a new `[m, n]` buffer.
pub(super) fn linear_forward(x: &[f32], w: &[f32], b: &[f32], m: usize) -> Vec<f32> {
    let n = b.len();
    if n == 0 {
        return Vec::new();
    }
    let k = w.len() / n;
    let mut y = filled_rows(m * n, b);
    matmul_bt(Mat::dense(x, m, k), Mat::dense(w, n, k), &mut y, n, Acc::Add, 1.0, threads());
    y
}

/// The backward pass of `linear_forward`: `dx = dy·W` written into (or with `Acc::Add` added to)
/// `dx`; returns `(dW = dyᵀ·x, db = column sums of dy)`.
pub(super) fn linear_backward(x: &[f32], w: &[f32], dy: &[f32], m: usize, dx: &mut [f32], acc: Acc) -> (Vec<f32>, Vec<f32>) {
    let k = x.len() / m.max(1);
    let n = dy.len() / m.max(1);
    matmul_strided((m, k, n), dy, Strides::row_major(n), w, Strides::row_major(k), dx, k, acc, 1.0, threads());
    linear_weight_grads(x, dy, m)
}

/// The parameter gradients of `linear_forward` alone: `(dW = dyᵀ·x, db = column sums of dy)`.
fn linear_weight_grads(x: &[f32], dy: &[f32], m: usize) -> (Vec<f32>, Vec<f32>) {
    let k = x.len() / m.max(1);
    let n = dy.len() / m.max(1);
    let mut dw = scratch(n * k);
    matmul_strided((n, k, m), dy, Strides::transposed(n), x, Strides::row_major(k), &mut dw, k, Acc::Overwrite, 1.0, threads());
    (dw, column_sums(dy, n))
}

/// `y = x·Wᵀ + b` over the last dimension of `x`; `w` is `[out, in]`.
pub struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "amg-linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice(s1, l1, "linear x")?, slice(s2, l2, "linear w")?, slice(s3, l3, "linear b")?);
        let (lead, k) = leading(l1.shape());
        let (n, wk) = l2.shape().dims2()?;
        if wk != k || b.len() != n {
            candle_core::bail!("linear: x [.., {k}], w [{n}, {wk}], b [{}]", b.len());
        }
        let m: usize = lead.iter().product();
        let y = phase("t:linear", || linear_forward(x, w, b, m));
        let mut dims = lead;
        dims.push(n);
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, k) = w.dims2()?;
        let m = x.elem_count() / k;
        // An input that nothing upstream differentiates (the image patches): no dx to compute.
        let need_dx = x.track_op();
        let (dx, dw, db) = with(x, "linear x", |x| {
            with(w, "linear w", |w| {
                with(dy, "linear dy", |dy| {
                    phase("t:linear-bwd", || {
                        if need_dx {
                            let mut dx = output(m * k);
                            let (dw, db) = linear_backward(x, w, dy, m, &mut dx, Acc::Overwrite);
                            (Some(dx), dw, db)
                        } else {
                            let (dw, db) = linear_weight_grads(x, dy, m);
                            (None, dw, db)
                        }
                    })
                })
            })
        })???;
        let dx = dx.map(|dx| Tensor::from_vec(dx, x.shape(), x.device())).transpose()?;
        Ok((dx, Some(Tensor::from_vec(dw, (n, k), w.device())?), Some(Tensor::from_vec(db, n, w.device())?)))
    }
}

/// Layer norm over the last dimension with weight and bias.
pub struct LayerNorm {
    pub eps: f32,
}

simd_fn! {
    /// One row of the layer-norm backward: adds the row's `dx` (from `x`, `dy` and `w`) to `dx`;
    /// accumulates `dw`, `db`.
    fn ln_backward_row(x: &[f32], dy: &[f32], w: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32], db: &mut [f32]) {
        // The statistics as the forward pass computes them (`rows::layer_norm_rows`), and the two
        // sums in 16 lanes like them: a single running sum is a chain the compiler may not
        // reorder, so it would run one element at a time.
        let n = x.len();
        let (dy, w, dx, dw, db) = (&dy[..n], &w[..n], &mut dx[..n], &mut dw[..n], &mut db[..n]);
        let d = n as f32;
        let mean = lane_sum(x) / d;
        let var = lane_sq_dev(x, mean) / d;
        let rstd = 1.0 / (var + eps).sqrt();
        // Whole 16-lane chunks through `chunks_exact` (no bounds checks in the way of vectorising),
        // then the tail.
        let full = n / LANES * LANES;
        let (mut a1, mut a2) = ([0f32; LANES], [0f32; LANES]);
        let chunks = x[..full].chunks_exact(LANES).zip(dy[..full].chunks_exact(LANES)).zip(w[..full].chunks_exact(LANES));
        for (((xc, gc), wc), (dwc, dbc)) in chunks.zip(dw[..full].chunks_exact_mut(LANES).zip(db[..full].chunks_exact_mut(LANES))) {
            for l in 0..LANES {
                let xh = (xc[l] - mean) * rstd;
                let g = gc[l] * wc[l];
                a1[l] += g;
                a2[l] += g * xh;
                dwc[l] += gc[l] * xh;
                dbc[l] += gc[l];
            }
        }
        let (mut s1, mut s2) = (a1.iter().sum::<f32>(), a2.iter().sum::<f32>());
        for i in full..n {
            let xh = (x[i] - mean) * rstd;
            let g = dy[i] * w[i];
            s1 += g;
            s2 += g * xh;
            dw[i] += dy[i] * xh;
            db[i] += dy[i];
        }
        let (s1, s2) = (s1 / d, s2 / d);
        for (((&xv, &g), &wv), o) in x.iter().zip(dy).zip(w).zip(dx.iter_mut()) {
            let xh = (xv - mean) * rstd;
            *o += rstd * (g * wv - s1 - xh * s2);
        }
    }
}

/// The backward pass of layer norm over rows of `w.len()`: adds the input gradient to `dx` (zeroed
/// for a plain write; statistics recomputed from `x`), returns `(dw, db)`, summed over fixed row
/// blocks in block order (reproducible).
pub(super) fn layer_norm_backward(x: &[f32], dy: &[f32], w: &[f32], eps: f32, dx: &mut [f32]) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let per = rows_per_task(x.len() / d, d);
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(per * d)
        .zip(x.par_chunks(per * d))
        .zip(dy.par_chunks(per * d))
        .map(|((dxc, xc), dyc)| {
            let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
            for ((dxr, xr), dyr) in dxc.chunks_exact_mut(d).zip(xc.chunks_exact(d)).zip(dyc.chunks_exact(d)) {
                ln_backward_row(xr, dyr, w, eps, dxr, &mut dw, &mut db);
            }
            (dw, db)
        })
        .collect();
    // Combined in block order: reproducible whatever the scheduling.
    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
    for (pw, pb) in partial {
        dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
    }
    (dw, db)
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "amg-layer-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice(s1, l1, "layer norm x")?, slice(s2, l2, "layer norm w")?, slice(s3, l3, "layer norm b")?);
        let mut xc = x.to_vec();
        let mut y = output(x.len());
        phase("t:layer-norm", || layer_norm(&mut xc, None, w, b, self.eps, &mut y));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let (dx, dw, db) = with(x, "layer norm x", |x| {
            with(w, "layer norm w", |w| {
                with(dy, "layer norm dy", |dy| {
                    phase("t:layer-norm-bwd", || {
                        let mut dx = output(x.len());
                        let (dw, db) = layer_norm_backward(x, dy, w, self.eps, &mut dx);
                        (dx, dw, db)
                    })
                })
            })
        })???;
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), Some(Tensor::from_vec(dw, d, w.device())?), Some(Tensor::from_vec(db, d, w.device())?)))
    }
}

simd_fn! {
    fn gelu_and_grad_slice(x: &mut [f32], y: &mut [f32]) {
        for (o, v) in y.iter_mut().zip(x.iter_mut()) {
            (*o, *v) = math::gelu_and_grad(*v);
        }
    }
}

simd_fn! {
    fn mul_slice(a: &mut [f32], b: &[f32]) {
        for (a, &b) in a.iter_mut().zip(b) {
            *a *= b;
        }
    }
}

/// The exact GELU of every element of `x`, as a new buffer; `x` itself is replaced by the GELU's
/// derivative there — all that the backward pass needs of it, computed while the erfc the GELU
/// needs is at hand (the backward pass is then one multiplication, `mul_in_place`).
pub(super) fn gelu_keeping_grad(x: &mut [f32]) -> Vec<f32> {
    let mut y = scratch(x.len());
    y.par_chunks_mut(16384).zip(x.par_chunks_mut(16384)).for_each(|(o, i)| gelu_and_grad_slice(i, o));
    y
}

/// `a ⊙= b`, in parallel.
pub(super) fn mul_in_place(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(16384).zip(b.par_chunks(16384)).for_each(|(a, b)| mul_slice(a, b));
}

//! Row-wise kernels over `[rows, d]` row-major buffers, parallel over row blocks.

use super::{math, rows_per_task, simd_fn};
use rayon::prelude::*;

pub(crate) const LANES: usize = 16;

#[inline(always)]
pub(crate) fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let mut s = 0.0;
    for v in it.remainder() {
        s += v;
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
pub(crate) fn lane_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    let mut s = 0.0;
    for v in it.remainder() {
        s += (v - mean) * (v - mean);
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in it.remainder() {
        m = if v > m { v } else { m };
    }
    for &v in &acc {
        m = if v > m { v } else { m };
    }
    m
}

simd_fn! {
    /// One row: optionally `x += bias` (a pending residual bias), then `out = LN(x)·w + b`.
    fn layer_norm_row(x: &mut [f32], bias: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
        if let Some(bias) = bias {
            for (v, bb) in x.iter_mut().zip(bias) {
                *v += bb;
            }
        }
        let d = x.len() as f32;
        let mean = lane_sum(x) / d;
        let var = lane_sq_dev(x, mean) / d;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((o, &v), &wv), &bv) in out.iter_mut().zip(x.iter()).zip(w).zip(b) {
            *o = (v - mean) * rstd * wv + bv;
        }
    }
}

/// Layer norm of every row of `x` (`[rows, d]`) into `out`; when `residual_bias` is given it is
/// first added to `x` in place (folding the previous linear layer's bias into this pass).
pub fn layer_norm(x: &mut [f32], residual_bias: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    assert_eq!(x.len() % d, 0);
    assert_eq!(x.len(), out.len());
    let rows = rows_per_task(x.len() / d, d);
    x.par_chunks_mut(rows * d).zip(out.par_chunks_mut(rows * d)).for_each(|(xc, oc)| {
        for (xr, or) in xc.chunks_exact_mut(d).zip(oc.chunks_exact_mut(d)) {
            layer_norm_row(xr, residual_bias, w, b, eps, or);
        }
    });
}

simd_fn! {
    fn add_bias_rows(x: &mut [f32], bias: &[f32]) {
        for r in x.chunks_exact_mut(bias.len()) {
            for (v, b) in r.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

/// `row = GELU(row + bias)`, `math::GELU_LANES` elements at a time (see `math::gelu_lanes`).
#[inline(always)]
fn bias_gelu_row(row: &mut [f32], bias: &[f32]) {
    const W: usize = math::GELU_LANES;
    let mut rows = row.chunks_exact_mut(W);
    let mut biases = bias.chunks_exact(W);
    for (r, b) in (&mut rows).zip(&mut biases) {
        let mut x = [0f32; W];
        for i in 0..W {
            x[i] = r[i] + b[i];
        }
        math::gelu_lanes(&mut x);
        r.copy_from_slice(&x);
    }
    for (v, b) in rows.into_remainder().iter_mut().zip(biases.remainder()) {
        *v = math::gelu(*v + b);
    }
}

simd_fn! {
    fn bias_gelu_rows(x: &mut [f32], bias: &[f32]) {
        for r in x.chunks_exact_mut(bias.len()) {
            bias_gelu_row(r, bias);
        }
    }
}

simd_fn! {
    /// `row = act(row + bias)`, act = GELU or identity; `row` and `bias` have the same length.
    pub fn bias_act_row(row: &mut [f32], bias: &[f32], gelu: bool) {
        if gelu {
            bias_gelu_row(row, bias);
        } else {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

/// `x[r, :] += bias` for every row, in parallel.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    let d = bias.len();
    let rows = rows_per_task(x.len() / d, d);
    x.par_chunks_mut(rows * d).for_each(|c| add_bias_rows(c, bias));
}

/// `x = GELU(x + bias)` for every row, in parallel.
pub fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    let d = bias.len();
    let rows = rows_per_task(x.len() / d, d);
    x.par_chunks_mut(rows * d).for_each(|c| bias_gelu_rows(c, bias));
}

simd_fn! {
    /// In-place softmax of each row of `x` (`[rows, n]`), single-threaded (callers parallelise).
    pub fn softmax_rows(x: &mut [f32], n: usize) {
        for r in x.chunks_exact_mut(n) {
            let m = lane_max(r);
            for v in r.iter_mut() {
                *v = math::exp(*v - m);
            }
            let inv = 1.0 / lane_sum(r);
            for v in r.iter_mut() {
                *v *= inv;
            }
        }
    }
}

simd_fn! {
    /// Softmax backward in place, row by row: `dp ⟵ p ⊙ (dp − Σ_j p_j·dp_j)`.
    pub fn softmax_backward_rows(p: &[f32], dp: &mut [f32], n: usize) {
        for (pr, dr) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)) {
            let mut acc = [0f32; LANES];
            let mut it = pr.chunks_exact(LANES).zip(dr.chunks_exact(LANES));
            for (a, b) in &mut it {
                for i in 0..LANES {
                    acc[i] += a[i] * b[i];
                }
            }
            let tail = (n / LANES) * LANES;
            let mut dot = acc.iter().sum::<f32>();
            for i in tail..n {
                dot += pr[i] * dr[i];
            }
            for (d, &pv) in dr.iter_mut().zip(pr) {
                *d = pv * (*d - dot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_matches_a_plain_formula() {
        let d = 37;
        let mut x: Vec<f32> = (0..5 * d).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.3).collect();
        let w: Vec<f32> = (0..d).map(|i| 1.0 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..d).map(|i| i as f32 * -0.02).collect();
        let bias: Vec<f32> = (0..d).map(|i| (i % 3) as f32).collect();
        let x0 = x.clone();
        let mut out = vec![0.0; x.len()];
        layer_norm(&mut x, Some(&bias), &w, &b, 1e-6, &mut out);
        for r in 0..5 {
            let row: Vec<f64> = (0..d).map(|i| x0[r * d + i] as f64 + bias[i] as f64).collect();
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            for i in 0..d {
                assert!((x[r * d + i] as f64 - row[i]).abs() < 1e-6);
                let e = (row[i] - mean) / (var + 1e-6).sqrt() * w[i] as f64 + b[i] as f64;
                assert!((out[r * d + i] as f64 - e).abs() < 1e-5, "{} vs {e}", out[r * d + i]);
            }
        }
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let n = 23;
        let mut x: Vec<f32> = (0..3 * n).map(|i| (i as f32 * 0.7).sin() * 5.0).collect();
        let x0 = x.clone();
        softmax_rows(&mut x, n);
        for r in 0..3 {
            let m = x0[r * n..(r + 1) * n].iter().cloned().fold(f32::MIN, f32::max) as f64;
            let z: f64 = x0[r * n..(r + 1) * n].iter().map(|&v| (v as f64 - m).exp()).sum();
            for i in 0..n {
                let e = (x0[r * n + i] as f64 - m).exp() / z;
                assert!((x[r * n + i] as f64 - e).abs() < 1e-6);
            }
        }
    }
}

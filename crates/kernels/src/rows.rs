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

/// `R` rows of `x` (`[R, d]`): optionally `x += bias` (a pending residual bias), then
/// `out = LN(x)·w + b`. Each row's statistics are `lane_sum` / `lane_sq_dev` exactly (the backward
/// pass recomputes them so), bit for bit whatever `R`; taking several rows at once lets their
/// independent chains of dependent adds overlap. One row at a time, those chains (12 vector adds
/// and 16 scalar ones per sum for d = 192) leave the row waiting on latency; four rows at a time
/// was the fastest grouping.
#[inline(always)]
fn layer_norm_rows<const R: usize>(x: &mut [f32], bias: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    let (x, out, b) = (&mut x[..R * d], &mut out[..R * d], &b[..d]);
    if let Some(bias) = bias {
        for row in x.chunks_exact_mut(d) {
            for (v, bb) in row.iter_mut().zip(bias) {
                *v += bb;
            }
        }
    }
    let full = d / LANES * LANES;
    let df = d as f32;
    // Σ x, as `lane_sum` adds it: 16 lanes over the whole chunks, then the lanes in order, then
    // the tail.
    let mut acc = [[0f32; LANES]; R];
    for c in (0..full).step_by(LANES) {
        for (r, a) in acc.iter_mut().enumerate() {
            let s = &x[r * d + c..r * d + c + LANES];
            for i in 0..LANES {
                a[i] += s[i];
            }
        }
    }
    let mut mean = [0f32; R];
    for (r, m) in mean.iter_mut().enumerate() {
        let mut s = 0.0;
        for v in &x[r * d + full..(r + 1) * d] {
            s += v;
        }
        *m = (acc[r].iter().sum::<f32>() + s) / df;
    }
    // Σ (x − mean)², as `lane_sq_dev` adds it.
    let mut acc = [[0f32; LANES]; R];
    for c in (0..full).step_by(LANES) {
        for (r, a) in acc.iter_mut().enumerate() {
            let s = &x[r * d + c..r * d + c + LANES];
            for i in 0..LANES {
                let dv = s[i] - mean[r];
                a[i] += dv * dv;
            }
        }
    }
    let mut rstd = [0f32; R];
    for (r, rs) in rstd.iter_mut().enumerate() {
        let mut s = 0.0;
        for v in &x[r * d + full..(r + 1) * d] {
            s += (v - mean[r]) * (v - mean[r]);
        }
        let var = (acc[r].iter().sum::<f32>() + s) / df;
        *rs = 1.0 / (var + eps).sqrt();
    }
    for (r, (xr, or)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
        let (m, rs) = (mean[r], rstd[r]);
        for (((o, &v), &wv), &bv) in or.iter_mut().zip(xr).zip(w).zip(b) {
            *o = (v - m) * rs * wv + bv;
        }
    }
}

/// Rows taken together by `layer_norm_block`.
const LN_ROWS: usize = 4;

simd_fn! {
    /// `layer_norm_rows` over a block of whole rows, `LN_ROWS` at a time, then one at a time.
    fn layer_norm_block(x: &mut [f32], bias: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
        let d = w.len();
        let mut xs = x.chunks_exact_mut(LN_ROWS * d);
        let mut os = out.chunks_exact_mut(LN_ROWS * d);
        for (xc, oc) in (&mut xs).zip(&mut os) {
            layer_norm_rows::<LN_ROWS>(xc, bias, w, b, eps, oc);
        }
        for (xr, or) in xs.into_remainder().chunks_exact_mut(d).zip(os.into_remainder().chunks_exact_mut(d)) {
            layer_norm_rows::<1>(xr, bias, w, b, eps, or);
        }
    }
}

/// `layer_norm` on the calling thread alone (for a caller that already splits rows between threads).
pub fn layer_norm_here(x: &mut [f32], residual_bias: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    assert!(x.len().is_multiple_of(d) && x.len() == out.len() && b.len() == d && residual_bias.is_none_or(|r| r.len() == d), "layer norm sizes");
    layer_norm_block(x, residual_bias, w, b, eps, out);
}

/// Layer norm of every row of `x` (`[rows, d]`) into `out`; when `residual_bias` is given it is
/// first added to `x` in place (folding the previous linear layer's bias into this pass).
pub fn layer_norm(x: &mut [f32], residual_bias: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    assert_eq!(x.len() % d, 0);
    assert_eq!(x.len(), out.len());
    let rows = rows_per_task(x.len() / d, d);
    x.par_chunks_mut(rows * d).zip(out.par_chunks_mut(rows * d)).for_each(|(xc, oc)| layer_norm_block(xc, residual_bias, w, b, eps, oc));
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
    fn layer_norm_rows_together_match_one_row_bit_for_bit() {
        // 9 rows: two blocks of LN_ROWS and a single one; d with and without a 16-lane tail.
        for d in [37, 192] {
            let x0: Vec<f32> = (0..9 * d).map(|i| (i as f32 * 0.731).sin() * (1.0 + (i % 7) as f32)).collect();
            let w: Vec<f32> = (0..d).map(|i| 0.5 + (i as f32 * 0.3).cos()).collect();
            let b: Vec<f32> = (0..d).map(|i| (i as f32 * 0.17).sin()).collect();
            let bias: Vec<f32> = (0..d).map(|i| 0.1 * i as f32).collect();
            let (mut x, mut out) = (x0.clone(), vec![0f32; x0.len()]);
            layer_norm_block(&mut x, Some(&bias), &w, &b, 1e-6, &mut out);
            for (r, row0) in x0.chunks_exact(d).enumerate() {
                let row: Vec<f32> = row0.iter().zip(&bias).map(|(v, bb)| v + bb).collect();
                let mean = lane_sum(&row) / d as f32;
                let rstd = 1.0 / (lane_sq_dev(&row, mean) / d as f32 + 1e-6).sqrt();
                for i in 0..d {
                    assert_eq!(x[r * d + i].to_bits(), row[i].to_bits());
                    let e = (row[i] - mean) * rstd * w[i] + b[i];
                    assert_eq!(out[r * d + i].to_bits(), e.to_bits(), "d {d} row {r} col {i}");
                }
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

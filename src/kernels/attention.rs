//! Multi-head attention over packed projection buffers, one (image, head) pair per task.

use super::gemm::{matmul_bt, matmul_into_raw, Acc, Mat};
use super::rows::softmax_rows;
use super::SendPtr;
use rayon::prelude::*;
use std::cell::RefCell;

#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    /// Queries per image.
    pub n: usize,
    /// Keys (and values) per image.
    pub nk: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Where the operands live. Query row `b·n + i` of head `h` starts at `q[(b·n+i)·q_ld + h·hd]`;
/// key row `b·nk + j` at `kv[(b·nk+j)·kv_ld + k_off + h·hd]`, value likewise at `v_off`. Output row
/// `b·n + i` of head `h` goes to `out[(b·n+i)·out_ld + h·hd]`.
#[derive(Clone, Copy, Debug)]
pub struct AttnLayout {
    pub q_ld: usize,
    pub kv_ld: usize,
    pub k_off: usize,
    pub v_off: usize,
    pub out_ld: usize,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Receives the softmax probabilities of one (image, head) pair, `[n, nk]` row-major.
pub type ProbsSink<'a> = &'a (dyn Fn(usize, usize, &[f32]) + Sync);

/// softmax(scale·q·kᵀ)·v for every image and head.
pub fn attention(q: &[f32], kv: &[f32], out: &mut [f32], s: AttnShape, l: AttnLayout, scale: f32, sink: Option<ProbsSink>) {
    let AttnShape { batch, n, nk, heads, head_dim: hd } = s;
    assert!(batch == 0 || (batch * n - 1) * l.out_ld + heads * hd <= out.len(), "attention output out of bounds");
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..batch * heads).into_par_iter().for_each(|t| {
        let (b, h) = (t / heads, t % heads);
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.resize(n * nk, 0.0);
            let qm = Mat::new(&q[b * n * l.q_ld + h * hd..], n, hd, l.q_ld);
            let km = Mat::new(&kv[b * nk * l.kv_ld + l.k_off + h * hd..], nk, hd, l.kv_ld);
            let vm = Mat::new(&kv[b * nk * l.kv_ld + l.v_off + h * hd..], nk, hd, l.kv_ld);
            matmul_bt(qm, km, &mut scores, nk, Acc::Overwrite, scale, 1);
            softmax_rows(&mut scores, nk);
            if let Some(sink) = sink {
                sink(b, h, &scores);
            }
            let out_ptr = out_ptr;
            // SAFETY: the bounds were checked above; task (b, h) writes only rows b·n..(b+1)·n,
            // columns h·hd..(h+1)·hd, which no other task touches.
            unsafe { matmul_into_raw(Mat::dense(&scores, n, nk), vm, out_ptr.0.add(b * n * l.out_ld + h * hd), l.out_ld, 1.0) };
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_computation() {
        let (batch, n, nk, heads, hd) = (2, 5, 3, 2, 4);
        let q: Vec<f32> = (0..batch * n * heads * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let kv_ld = 2 * heads * hd + 1;
        let kv: Vec<f32> = (0..batch * nk * kv_ld).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0f32; batch * n * heads * hd];
        let s = AttnShape { batch, n, nk, heads, head_dim: hd };
        let l = AttnLayout { q_ld: heads * hd, kv_ld, k_off: 1, v_off: 1 + heads * hd, out_ld: heads * hd };
        attention(&q, &kv, &mut out, s, l, 0.5, None);
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..n {
                    let qi = |c: usize| q[(b * n + i) * heads * hd + h * hd + c] as f64;
                    let kj = |j: usize, c: usize| kv[(b * nk + j) * kv_ld + 1 + h * hd + c] as f64;
                    let vj = |j: usize, c: usize| kv[(b * nk + j) * kv_ld + 1 + heads * hd + h * hd + c] as f64;
                    let logits: Vec<f64> = (0..nk).map(|j| 0.5 * (0..hd).map(|c| qi(c) * kj(j, c)).sum::<f64>()).collect();
                    let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = logits.iter().map(|v| (v - m).exp()).sum();
                    for c in 0..hd {
                        let e: f64 = (0..nk).map(|j| (logits[j] - m).exp() / z * vj(j, c)).sum();
                        let got = out[(b * n + i) * heads * hd + h * hd + c] as f64;
                        assert!((got - e).abs() < 1e-5, "b{b} h{h} i{i} c{c}: {got} vs {e}");
                    }
                }
            }
        }
    }
}

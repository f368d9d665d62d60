//! Multi-head attention over packed projection buffers, one (image, head) pair per task.

use super::gemm::{gemm_raw, matmul_bt, matmul_into_raw, Acc, Mat, Strides};
use super::rows::{softmax_backward_rows, softmax_rows};
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
    static DSCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Receives the softmax probabilities of one (image, head) pair, `[n, nk]` row-major.
pub type ProbsSink<'a> = &'a (dyn Fn(usize, usize, &[f32]) + Sync);

/// softmax(scale·q·kᵀ)·v for every image and head. Work is split into (image, head, block of
/// query rows) tasks, so that a single image with few heads still keeps every core busy.
pub fn attention(q: &[f32], kv: &[f32], out: &mut [f32], s: AttnShape, l: AttnLayout, scale: f32, sink: Option<ProbsSink>) {
    let AttnShape { batch, n, heads, head_dim: hd, .. } = s;
    assert!(batch == 0 || (batch * n - 1) * l.out_ld + heads * hd <= out.len(), "attention output out of bounds");
    // With a probability sink, whole heads (the sink receives complete maps).
    let blocks = if sink.is_some() { 1 } else { query_blocks(batch * heads, n, rayon::current_num_threads()) };
    let rows = n.div_ceil(blocks);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..batch * heads * blocks).into_par_iter().for_each(|t| {
        let (bh, blk) = (t / blocks, t % blocks);
        let (b, h) = (bh / heads, bh % heads);
        let (r0, r1) = (blk * rows, ((blk + 1) * rows).min(n));
        // SAFETY: the bounds were checked above; this task writes only rows b·n+r0..b·n+r1,
        // columns h·hd..(h+1)·hd, which no other task touches.
        unsafe { attend(q, kv, out_ptr.get(), 0, s, l, scale, (b, h, r0..r1), sink) };
    });
}

/// `attention` for the query rows `rows` of the batch (row `b·n + i` is query i of image b) only,
/// on the calling thread: their output rows go to `out`, row `rows.start` first (row stride
/// `out_ld`). Keys and values are every image's, as in `attention`. What one thread of a pass
/// split by rows computes (see `engine`).
pub fn attention_rows(q: &[f32], kv: &[f32], out: &mut [f32], s: AttnShape, l: AttnLayout, scale: f32, rows: std::ops::Range<usize>) {
    let AttnShape { batch, n, heads, head_dim: hd, .. } = s;
    assert!(rows.start <= rows.end && rows.end <= batch * n, "query rows {rows:?} outside the batch's {}", batch * n);
    if rows.is_empty() {
        return;
    }
    assert!((rows.len() - 1) * l.out_ld + heads * hd <= out.len(), "attention output out of bounds");
    for b in rows.start / n..rows.end.div_ceil(n) {
        let (i0, i1) = (rows.start.max(b * n) - b * n, rows.end.min((b + 1) * n) - b * n);
        for h in 0..heads {
            // SAFETY: checked above: rows `rows` of the output lie in `out`, which this call owns.
            unsafe { attend(q, kv, out.as_mut_ptr(), rows.start, s, l, scale, (b, h, i0..i1), None) };
        }
    }
}

/// Queries `i` of image `b`, head `h` (`at`): scores, softmax, then their output rows, row `b·n + i`
/// at `out + (b·n + i − out_row0)·out_ld + h·hd`.
///
/// # Safety
/// Those output rows (the head's `hd` columns of each) must be valid for writes and written by no
/// one else meanwhile; `q` and `kv` are read through `Mat::new`, which checks their bounds.
#[allow(clippy::too_many_arguments)]
unsafe fn attend(
    q: &[f32],
    kv: &[f32],
    out: *mut f32,
    out_row0: usize,
    s: AttnShape,
    l: AttnLayout,
    scale: f32,
    at: (usize, usize, std::ops::Range<usize>),
    sink: Option<ProbsSink>,
) {
    let AttnShape { n, nk, head_dim: hd, .. } = s;
    let (b, h, r0, r1) = (at.0, at.1, at.2.start, at.2.end);
    if r0 >= r1 {
        return;
    }
    let m = r1 - r0;
    SCORES.with(|cell| {
        let mut scores = cell.borrow_mut();
        scores.resize(m * nk, 0.0);
        let qm = Mat::new(&q[(b * n + r0) * l.q_ld + h * hd..], m, hd, l.q_ld);
        let km = Mat::new(&kv[b * nk * l.kv_ld + l.k_off + h * hd..], nk, hd, l.kv_ld);
        let vm = Mat::new(&kv[b * nk * l.kv_ld + l.v_off + h * hd..], nk, hd, l.kv_ld);
        matmul_bt(qm, km, &mut scores, nk, Acc::Overwrite, scale, 1);
        softmax_rows(&mut scores, nk);
        if let Some(sink) = sink {
            sink(b, h, &scores);
        }
        // SAFETY: the caller's contract: these output rows are valid and ours.
        unsafe { matmul_into_raw(Mat::dense(&scores, m, nk), vm, out.add((b * n + r0 - out_row0) * l.out_ld + h * hd), l.out_ld, 1.0) };
    });
}

/// Query blocks per (image, head) for `threads` threads: the fewest (each task multiplies its own
/// copy of the keys, and a task has fixed costs) that give every thread the same number of tasks,
/// blocks of at least 32 rows; failing that, enough for ~4 tasks per thread. Splitting further to
/// balance the threads exactly cost more than it balanced (a ViT-Ti's 3 heads on 2 threads run
/// faster as 2 blocks per head than as 3).
fn query_blocks(pairs: usize, n: usize, threads: usize) -> usize {
    let most = n.div_ceil(32).max(1);
    (1..=most).find(|b| (pairs * b).is_multiple_of(threads)).unwrap_or_else(|| (4 * threads).div_ceil(pairs.max(1)).clamp(1, most))
}

/// Gradients of `attention` with respect to q, k and v, given the output gradient `dout` (laid out
/// as the output was). The probabilities are recomputed rather than stored. `dq` is laid out as
/// `q` and `dkv` as `kv` (same strides and column offsets); they may be one buffer (packed qkv),
/// since the columns they write are disjoint.
///
/// # Safety
/// `dq` and `dkv` must be valid for writes over the ranges the shape and layout describe, and not
/// accessed by anyone else during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_backward(q: &[f32], kv: &[f32], dout: &[f32], dq: *mut f32, dkv: *mut f32, s: AttnShape, l: AttnLayout, scale: f32) {
    let AttnShape { batch, n, nk, heads, head_dim: hd } = s;
    let (dq, dkv) = (SendPtr(dq), SendPtr(dkv));
    (0..batch * heads).into_par_iter().for_each(|t| {
        let (b, h) = (t / heads, t % heads);
        SCORES.with(|pc| {
            DSCORES.with(|dc| {
                let (mut p, mut dp) = (pc.borrow_mut(), dc.borrow_mut());
                p.resize(n * nk, 0.0);
                dp.resize(n * nk, 0.0);
                let q0 = b * n * l.q_ld + h * hd;
                let k0 = b * nk * l.kv_ld + l.k_off + h * hd;
                let v0 = b * nk * l.kv_ld + l.v_off + h * hd;
                let o0 = b * n * l.out_ld + h * hd;
                let qm = Mat::new(&q[q0..], n, hd, l.q_ld);
                let km = Mat::new(&kv[k0..], nk, hd, l.kv_ld);
                matmul_bt(qm, km, &mut p, nk, Acc::Overwrite, scale, 1);
                softmax_rows(&mut p, nk);
                let (row, col) = (Strides::row_major, Strides::transposed);
                // SAFETY: reads stay inside the `q`, `kv`, `dout`, `p` and `dp` slices (this
                // head's columns of rows b·n.. / b·nk.., as the layout describes, which the caller's
                // slices hold); writes go to this (b, h) task's own columns of `dq` and `dkv`, which
                // the caller guarantees valid and which no other task touches.
                unsafe {
                    // dP = dO·Vᵀ
                    gemm_raw((n, nk, hd), dout[o0..].as_ptr(), row(l.out_ld), kv[v0..].as_ptr(), col(l.kv_ld), dp.as_mut_ptr(), nk, Acc::Overwrite, 1.0, 1);
                    // dV = Pᵀ·dO
                    gemm_raw((nk, hd, n), p.as_ptr(), col(nk), dout[o0..].as_ptr(), row(l.out_ld), dkv.get().add(v0), l.kv_ld, Acc::Overwrite, 1.0, 1);
                    // dS = P ⊙ (dP − rowsum(P ⊙ dP)), then dQ = scale·dS·K and dK = scale·dSᵀ·Q.
                    softmax_backward_rows(&p, &mut dp, nk);
                    gemm_raw((n, hd, nk), dp.as_ptr(), row(nk), kv[k0..].as_ptr(), row(l.kv_ld), dq.get().add(q0), l.q_ld, Acc::Overwrite, scale, 1);
                    gemm_raw((nk, hd, n), dp.as_ptr(), col(nk), q[q0..].as_ptr(), row(l.q_ld), dkv.get().add(k0), l.kv_ld, Acc::Overwrite, scale, 1);
                }
            })
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_computation() {
        // Small, and one image with one head and many queries (split into query blocks).
        for shape in [(2, 5, 3, 2, 4), (1, 70, 9, 1, 8)] {
            check(shape);
        }
    }

    #[test]
    fn query_blocks_share_tasks_evenly() {
        // ViT-Ti, -S, -B at batch 1 on 2 threads; one head; 8 threads; few rows.
        assert_eq!(query_blocks(3, 197, 2), 2);
        assert_eq!(query_blocks(6, 197, 2), 1);
        assert_eq!(query_blocks(12, 197, 2), 1);
        assert_eq!(query_blocks(1, 197, 2), 2);
        assert_eq!(query_blocks(3, 197, 8), 7);
        assert_eq!(query_blocks(3, 20, 2), 1);
        assert_eq!(query_blocks(48, 197, 2), 1);
    }

    fn check((batch, n, nk, heads, hd): (usize, usize, usize, usize, usize)) {
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

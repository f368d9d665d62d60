//! Matrix products through the `gemm` crate (the kernels candle itself uses), called directly so
//! that strided operands, accumulation into the destination and the thread count are ours to set.

use rayon::prelude::*;

/// A row-major matrix view: `rows`×`cols`, consecutive rows `ld` elements apart.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl<'a> Mat<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        assert!(cols <= ld || rows <= 1);
        assert!(rows == 0 || (rows - 1) * ld + cols <= data.len(), "matrix view out of bounds");
        Mat { data, rows, cols, ld }
    }
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat::new(data, rows, cols, cols)
    }
}

/// How the product is combined with the destination.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Acc {
    /// `c = scale·a·b`
    Overwrite,
    /// `c += scale·a·b`
    Add,
}

/// What to do to the product's elements once computed, while they are still in cache.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    None,
    /// `+ bias[j]`
    Bias(&'a [f32]),
    /// `GELU(· + bias[j])`
    BiasGelu(&'a [f32]),
}

/// `c (m×n, row stride ldc) ⟵ scale·a·b` (or `+=`), with `a` m×k and `b` k×n, using `threads`
/// rayon threads (1 = the calling thread only).
pub fn matmul(a: Mat, b: Mat, c: &mut [f32], ldc: usize, acc: Acc, scale: f32, threads: usize) {
    matmul_then(a, b, c, ldc, acc, scale, threads, Epilogue::None)
}

/// `matmul` followed by an epilogue (bias, bias + GELU) on every element of the `m×n` result.
#[allow(clippy::too_many_arguments)]
pub fn matmul_then(a: Mat, b: Mat, c: &mut [f32], ldc: usize, acc: Acc, scale: f32, threads: usize, epi: Epilogue) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert!(m == 0 || (m - 1) * ldc + n <= c.len(), "destination out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    // Few rows (batch 1) but a large weight: the gemm crate's own split leaves cores idle
    // (measured ~240–295 GFLOP/s on 197-row products here); giving each thread its own block of
    // output columns, each run single-threaded, reaches ~300–310.
    if threads > 1 && m <= 256 && k * n >= 400_000 {
        // SAFETY: the bounds of all three operands were checked above (B's columns j0.. start at
        // b.data[j0]).
        unsafe { by_column_blocks((m, n, k), a, |j0| b.data[j0..].as_ptr(), Strides::row_major(b.ld), c, ldc, acc, scale, threads) };
    } else {
        // SAFETY: the bounds of all three operands were checked above; `gemm` reads `a` and `b` and
        // writes `c` only inside them.
        unsafe {
            gemm_raw((m, n, k), a.data.as_ptr(), Strides::row_major(a.ld), b.data.as_ptr(), Strides::row_major(b.ld), c.as_mut_ptr(), ldc, acc, scale, threads)
        };
    }
    match epi {
        Epilogue::None => {}
        Epilogue::Bias(bias) if ldc == n => super::rows::add_bias(&mut c[..m * n], bias),
        Epilogue::BiasGelu(bias) if ldc == n => super::rows::bias_gelu(&mut c[..m * n], bias),
        Epilogue::Bias(bias) | Epilogue::BiasGelu(bias) => {
            let gelu = matches!(epi, Epilogue::BiasGelu(_));
            c.par_chunks_mut(ldc).take(m).for_each(|row| super::rows::bias_act_row(&mut row[..n], bias, gelu));
        }
    }
}

/// `c (m×n) ⟵ scale·a·B` (or `+=`), each of `threads` threads taking its own block of output
/// columns (multiples of 16) and running a single-threaded product on it: for products of few
/// rows, whose split by the gemm crate itself leaves cores idle. `b_cols(j0)` is where column j0
/// of B starts; `sb` are B's strides.
///
/// # Safety
/// The caller has checked that `a`, B (k rows and n columns from `b_cols(0)` with strides `sb`) and
/// `c` (m rows of n values, `ldc` apart) are in bounds.
#[allow(clippy::too_many_arguments)]
unsafe fn by_column_blocks(
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b_cols: impl Fn(usize) -> *const f32 + Sync,
    sb: Strides,
    c: &mut [f32],
    ldc: usize,
    acc: Acc,
    scale: f32,
    threads: usize,
) {
    let block = n.div_ceil(threads).div_ceil(16) * 16;
    let cp = super::SendPtr(c.as_mut_ptr());
    (0..n.div_ceil(block)).into_par_iter().for_each(|t| {
        let j0 = t * block;
        let nb = block.min(n - j0);
        // SAFETY: in bounds by the caller's checks; block t writes only columns j0..j0+nb of `c`.
        unsafe { gemm_raw((m, nb, k), a.data.as_ptr(), Strides::row_major(a.ld), b_cols(j0), sb, cp.get().add(j0), ldc, acc, scale, 1) };
    });
}

/// The raw product for callers that write disjoint parts of one buffer from several threads.
///
/// # Safety
/// `c` must be valid for writes of an m×n matrix with row stride `ldc`, and no other thread may
/// access those elements during the call.
pub unsafe fn matmul_into_raw(a: Mat, b: Mat, c: *mut f32, ldc: usize, scale: f32) {
    assert_eq!(b.rows, a.cols, "inner dimensions differ");
    // SAFETY: `Mat::new` checked that each operand's rows×cols with its stride lie inside its
    // slice; `c` is the caller's contract, passed on unchanged.
    unsafe {
        gemm_raw(
            (a.rows, b.cols, a.cols),
            a.data.as_ptr(),
            Strides::row_major(a.ld),
            b.data.as_ptr(),
            Strides::row_major(b.ld),
            c,
            ldc,
            Acc::Overwrite,
            scale,
            1,
        )
    };
}

/// `a·bᵀ` where `b` is n×k row-major (so `bᵀ` is read with swapped strides).
pub fn matmul_bt(a: Mat, b: Mat, c: &mut [f32], ldc: usize, acc: Acc, scale: f32, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.rows);
    assert_eq!(b.cols, k, "inner dimensions differ");
    assert!(m == 0 || (m - 1) * ldc + n <= c.len(), "destination out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    // A batch of feature vectors (an LA part classifier: 32 rows × 751 classes): the gemm crate's
    // own split of so few rows runs at ~65 GFLOP/s here; each thread taking its own block of
    // output columns, single-threaded, ~105 (measured, 2 threads).
    if threads > 1 && m <= 64 && n >= 32 * threads {
        // SAFETY: bounds checked above; column j0 of bᵀ is row j0 of `b`, at b.data[j0·ld].
        unsafe { by_column_blocks((m, n, k), a, |j0| b.data[j0 * b.ld..].as_ptr(), Strides::transposed(b.ld), c, ldc, acc, scale, threads) };
        return;
    }
    // SAFETY: as in `matmul`; rhs element (i, j) is b[j·ld + i], inside `b` for i < k, j < n.
    unsafe {
        gemm_raw((m, n, k), a.data.as_ptr(), Strides::row_major(a.ld), b.data.as_ptr(), Strides::transposed(b.ld), c.as_mut_ptr(), ldc, acc, scale, threads)
    }
}

/// Strides of a matrix operand: element (i, j) is at `i·rs + j·cs`. Transposing swaps them.
#[derive(Clone, Copy, Debug)]
pub struct Strides {
    pub rs: usize,
    pub cs: usize,
}

impl Strides {
    pub fn row_major(ld: usize) -> Self {
        Strides { rs: ld, cs: 1 }
    }
    /// The transpose of a row-major matrix with leading dimension `ld`.
    pub fn transposed(ld: usize) -> Self {
        Strides { rs: 1, cs: ld }
    }
    fn last(self, rows: usize, cols: usize) -> usize {
        (rows - 1) * self.rs + (cols - 1) * self.cs
    }
}

/// Tells the gemm crate, once per process, not to copy the column operand of a single-threaded
/// product into its own packed layout (it does so by default whenever the product has more than
/// 8 × 6 rows). The inference engine's weights are stored as 64-column row-major panels
/// (`packed.rs`), which is already the layout the crate's AVX-512 kernel reads, so that copy only
/// streamed every panel twice per call (a visible share of a batch-1 pass under `perf`). Only
/// the copy changes, not the arithmetic: results are identical.
#[cfg(target_arch = "x86_64")]
fn read_panels_in_place() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| gemm::set_lhs_packing_threshold_single_thread(1 << 20));
}

/// The raw strided product: `c (m×n, row stride ldc) ⟵ scale·a·b` (or `+=`).
///
/// # Safety
/// `a`, `b` must be valid for reads and `c` for writes over the index ranges the dimensions and
/// strides describe, and no other thread may write the elements of `c` meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    sa: Strides,
    b: *const f32,
    sb: Strides,
    c: *mut f32,
    ldc: usize,
    acc: Acc,
    scale: f32,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    read_panels_in_place();
    if k == 0 {
        if acc == Acc::Overwrite {
            for i in 0..m {
                // SAFETY: row i of `c` (n elements from i·ldc) is inside the range the caller
                // guarantees valid and exclusively ours.
                unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), n) }.fill(0.0);
            }
        }
        return;
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the caller guarantees `a`, `b` readable and `c` writable (and not written by anyone
    // else) over exactly the strided ranges these dimensions describe, which is what `gemm` touches.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            acc == Acc::Add,
            a,
            sa.cs as isize,
            sa.rs as isize,
            b,
            sb.cs as isize,
            sb.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        )
    };
}

/// The general product with explicit strides, bounds-checked.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    dims: (usize, usize, usize),
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    c: &mut [f32],
    ldc: usize,
    acc: Acc,
    scale: f32,
    threads: usize,
) {
    let (m, n, k) = dims;
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || (sa.last(m, k) < a.len() && sb.last(k, n) < b.len()), "operand out of bounds");
    assert!((m - 1) * ldc + n <= c.len(), "destination out of bounds");
    // SAFETY: every index the product touches was bounds-checked above; `c` is borrowed mutably.
    unsafe { gemm_raw(dims, a.as_ptr(), sa, b.as_ptr(), sb, c.as_mut_ptr(), ldc, acc, scale, threads) }
}

/// Row-major transpose of an r×c matrix.
pub fn transpose(src: &[f32], r: usize, c: usize) -> Vec<f32> {
    assert_eq!(src.len(), r * c);
    let mut out = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = src[i * c + j];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_products_match_loops() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * 9).map(|i| i as f32 * 0.1).collect(); // ld 9
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32).cos()).collect();
        let bt = transpose(&b, k, n);
        let mut c1 = vec![1.0f32; m * 4];
        let mut c2 = c1.clone();
        matmul(Mat::new(&a, m, k, 9), Mat::dense(&b, k, n), &mut c1, 4, Acc::Add, 0.5, 2);
        matmul_bt(Mat::new(&a, m, k, 9), Mat::dense(&bt, n, k), &mut c2, 4, Acc::Add, 0.5, 1);
        for i in 0..m {
            for j in 0..n {
                let e: f32 = 1.0 + 0.5 * (0..k).map(|t| a[i * 9 + t] * b[t * n + j]).sum::<f32>();
                assert!((c1[i * 4 + j] - e).abs() < 1e-4);
                assert!((c2[i * 4 + j] - e).abs() < 1e-4);
            }
            assert_eq!(c1[i * 4 + 3], 1.0, "padding column untouched");
        }
    }

    #[test]
    fn few_rows_split_by_columns_match_loops() {
        // m ≤ 64 and n ≥ 32·threads: `matmul_bt` gives each thread its own block of columns
        // (n = 75 does not divide evenly into the 16-column-aligned blocks).
        let (m, k, n, ldc) = (5, 11, 75, 80);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.7).cos()).collect();
        for threads in [1, 2, 3] {
            for acc in [Acc::Overwrite, Acc::Add] {
                let mut c = vec![2.0f32; m * ldc];
                matmul_bt(Mat::dense(&a, m, k), Mat::dense(&bt, n, k), &mut c, ldc, acc, 1.0, threads);
                for i in 0..m {
                    for j in 0..n {
                        let dot: f32 = (0..k).map(|t| a[i * k + t] * bt[j * k + t]).sum();
                        let e = if acc == Acc::Add { 2.0 + dot } else { dot };
                        assert!((c[i * ldc + j] - e).abs() < 1e-4, "threads {threads} {acc:?} ({i}, {j})");
                    }
                    assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 2.0), "padding columns untouched");
                }
            }
        }
    }
}

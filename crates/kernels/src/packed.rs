//! Products with a constant right-hand side (the inference weights), stored once at load time as
//! 64-column panels (each k×64, contiguous).
//!
//! Why: at batch 1 a ViT's products have ~200 rows. The `gemm` crate then spends a sizeable share
//! of each call re-packing the row-major
//! weight, and its own split of the work between threads leaves cores idle. Here each thread takes
//! a contiguous run of panels and multiplies all rows by each panel with a single-threaded `gemm`
//! call, whose operand is already laid out the way its kernel reads it. Batches use the panels too
//! on x86_64; elsewhere, where the crate copies each panel per call, products of many rows take
//! the general product on a rebuilt row-major weight (see `LARGE_M`).

use super::bf16::{matmul_bf16, PackedBf16};
use super::gemm::{gemm_raw, matmul_then, Acc, Epilogue, Mat, Strides};
use super::int8::{abs_max, matmul_i8, PackedI8};
use super::part_bounds;
use super::SendPtr;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};

/// Columns per panel: the `gemm` crate's AVX-512 kernel width.
const NR: usize = 64;
/// Above this many rows `matmul_packed` rebuilds the row-major weight and calls the general gemm.
/// Not on x86_64, where the gemm crate reads the panels in place (`gemm::read_panels_in_place`):
/// there the panels were faster at every batch size. Elsewhere the crate copies
/// each panel on every call of more than 48 rows, and above 512 rows the general product won.
const LARGE_M: Option<usize> = if cfg!(target_arch = "x86_64") { None } else { Some(512) };

thread_local! {
    static UNPACKED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A k×n weight stored as panels of at most 64 columns.
pub struct PackedB {
    k: usize,
    n: usize,
    /// Column boundaries the panels never straddle (for products over a column range), with 0 and n.
    parts: Vec<usize>,
    /// `data[panel.offset + p·NR + j]` = B[p, panel.col + j] for j < panel.width, zero beyond.
    data: Vec<f32>,
    panels: Vec<Panel>,
    /// For `--precision bf16`: the weight in bfloat16 tiles instead (`data` and `panels` empty).
    bf16: Option<PackedBf16>,
    /// For an INT8 model: the weight in int8 panels instead (`data` and `panels` empty).
    int8: Option<PackedI8>,
    /// While calibrating INT8 input scales: the largest |value| of any left operand so far (its
    /// float32 bits; non-negative floats order as their bits do).
    input_max: Option<AtomicU32>,
}

#[derive(Clone, Copy)]
struct Panel {
    col: usize,
    width: usize,
    offset: usize,
}

impl PackedB {
    /// Packs the row-major k×n matrix `b`. Column ranges later asked of `matmul_packed` must start
    /// and end at 0, n or one of `parts`.
    pub fn new(b: &[f32], k: usize, n: usize, parts: &[usize]) -> PackedB {
        assert_eq!(b.len(), k * n, "weight size");
        let bounds = part_bounds(parts, n);
        let mut panels = Vec::new();
        for w in bounds.windows(2) {
            let mut col = w[0];
            while col < w[1] {
                let width = NR.min(w[1] - col);
                panels.push(Panel { col, width, offset: panels.len() * k * NR });
                col += width;
            }
        }
        let mut data = vec![0f32; panels.len() * k * NR];
        for pn in &panels {
            for p in 0..k {
                data[pn.offset + p * NR..pn.offset + p * NR + pn.width].copy_from_slice(&b[p * n + pn.col..p * n + pn.col + pn.width]);
            }
        }
        PackedB { k, n, parts: bounds, data, panels, bf16: None, int8: None, input_max: None }
    }

    /// Packs the row-major k×n matrix `b` for bfloat16 products (see `kernels::bf16`): products
    /// with this weight round their left operand to bfloat16 and accumulate in float32.
    pub fn new_bf16(b: &[f32], k: usize, n: usize, parts: &[usize]) -> PackedB {
        let packed = PackedBf16::new(b, k, n, parts);
        PackedB { k, n, parts: part_bounds(parts, n), data: Vec::new(), panels: Vec::new(), bf16: Some(packed), int8: None, input_max: None }
    }

    /// An INT8 weight (see `kernels::int8`): `q` `[n out][k in]` with its per-output `scales`, the
    /// left operand quantized per row or with `input_scale`.
    pub fn new_int8(q: &[i8], scales: &[f32], k: usize, n: usize, parts: &[usize], input_scale: Option<f32>) -> PackedB {
        let packed = PackedI8::new(q, scales, k, n, parts, input_scale);
        PackedB { k, n, parts: part_bounds(parts, n), data: Vec::new(), panels: Vec::new(), bf16: None, int8: Some(packed), input_max: None }
    }

    /// From now on, records the largest |value| of the left operands of products with this
    /// weight (`input_max`): the calibration of an INT8 model's static input scales.
    pub fn observe_inputs(&mut self) {
        self.input_max = Some(AtomicU32::new(0));
    }

    /// The largest |value| of a left operand seen since `observe_inputs`.
    pub fn input_max(&self) -> Option<f32> {
        self.input_max.as_ref().map(|m| f32::from_bits(m.load(Ordering::Relaxed)))
    }

    /// Columns `cols` of the weight as a row-major k×cols.len() matrix, written into `out`.
    fn unpack_into(&self, panels: &[Panel], col0: usize, ncols: usize, out: &mut Vec<f32>) {
        out.resize(self.k * ncols, 0.0);
        for pn in panels {
            let j0 = pn.col - col0;
            for p in 0..self.k {
                out[p * ncols + j0..p * ncols + j0 + pn.width].copy_from_slice(&self.data[pn.offset + p * NR..pn.offset + p * NR + pn.width]);
            }
        }
    }

    /// The weight back as a row-major k×n matrix (rounded to bfloat16 for a bfloat16 weight).
    pub fn to_row_major(&self) -> Vec<f32> {
        if let Some(b) = &self.bf16 {
            return b.to_row_major();
        }
        if let Some(b) = &self.int8 {
            return b.to_row_major();
        }
        let mut out = Vec::new();
        self.unpack_into(&self.panels, 0, self.n, &mut out);
        out
    }
}

/// One product for `matmul_packed_many`: `c[:, 0..cols.len()] (row stride ldc) ⟵ a·B[:, cols]` (or
/// `+=`), then the epilogue, whose bias is indexed from `cols.start`'s column as 0. `a` is m×k.
pub struct Product<'a> {
    pub a: Mat<'a>,
    pub b: &'a PackedB,
    pub cols: Range<usize>,
    pub c: &'a mut [f32],
    pub ldc: usize,
    pub acc: Acc,
    pub epi: Epilogue<'a>,
}

/// `c ⟵ a·B[:, cols]` (see `Product`), using `threads` threads.
#[allow(clippy::too_many_arguments)]
pub fn matmul_packed(a: Mat, b: &PackedB, cols: Range<usize>, c: &mut [f32], ldc: usize, acc: Acc, threads: usize, epi: Epilogue) {
    matmul_packed_many(vec![Product { a, b, cols, c, ldc, acc, epi }], threads);
}

/// A checked product's share: rows r0..r1 × panels `panels`.
struct Task<'a> {
    a: Mat<'a>,
    b: &'a PackedB,
    col0: usize,
    c: SendPtr,
    ldc: usize,
    acc: Acc,
    epi: Epilogue<'a>,
    rows: Range<usize>,
    panels: &'a [Panel],
}

/// Several independent products in one parallel region (one fork/join instead of one each: what
/// a token-pruned layer's query and key/value products need at batch 1).
pub fn matmul_packed_many(products: Vec<Product>, threads: usize) {
    let threads = threads.max(1);
    let mut groups = Vec::new();
    // Several products: their panel runs already give the threads enough to share.
    let share = products.len() == 1;
    for p in products {
        if let Some(max) = &p.b.input_max {
            let a = p.a;
            let seen = (0..a.rows).map(|r| abs_max(&a.data[r * a.ld..r * a.ld + a.cols])).fold(0f32, f32::max);
            max.fetch_max(seen.to_bits(), Ordering::Relaxed);
        }
        if let Some(b) = &p.b.bf16 {
            // Cut into tasks of its own; runs before the float32 ones.
            matmul_bf16(p.a, b, p.cols, p.c, p.ldc, p.acc, threads, p.epi);
            continue;
        }
        if let Some(b) = &p.b.int8 {
            matmul_i8(p.a, b, p.cols, p.c, p.ldc, p.acc, threads, p.epi);
            continue;
        }
        split(p, threads, share, &mut groups);
    }
    let run_group = |g: &Vec<Task>| g.iter().for_each(run);
    if threads == 1 || groups.len() <= 1 {
        groups.iter().for_each(run_group);
    } else {
        groups.par_iter().for_each(run_group);
    }
}

/// Checks a product and cuts it into groups of tasks, one group per parallel task. Alone
/// (`share`), a product whose panels divide evenly between the threads gives each a contiguous run
/// of panels × all rows; otherwise (e.g. 9 panels for a ViT-Ti's 576 qkv columns, 3 for its 192)
/// the panels × rows are dealt out in equal shares, panel by panel, so that no thread idles while
/// another finishes: a share may start and end part-way down a panel (two row ranges of it). Beside
/// other products, each run of panels is a group. Products with many rows run at once, on the
/// row-major weight (see the module notes).
fn split<'a>(p: Product<'a>, threads: usize, share: bool, groups: &mut Vec<Vec<Task<'a>>>) {
    let Product { a, b, cols, c, ldc, acc, epi } = p;
    let (m, k) = (a.rows, a.cols);
    let n = super::check_product(&a, b.k, &b.parts, &cols, c, ldc, &epi);
    if m == 0 || n == 0 {
        return;
    }
    let first = b.panels.iter().position(|p| p.col == cols.start).expect("a panel starts at every part boundary");
    let last = b.panels.iter().position(|p| p.col + p.width == cols.end).expect("a panel ends at every part boundary");
    let panels = &b.panels[first..=last];
    if LARGE_M.is_some_and(|large| m > large) {
        let mut w = UNPACKED.with(|cell| cell.take());
        b.unpack_into(panels, cols.start, n, &mut w);
        matmul_then(a, Mat::dense(&w, k, n), c, ldc, acc, 1.0, threads, epi);
        UNPACKED.with(|cell| cell.replace(w));
        return;
    }
    let cp = SendPtr(c.as_mut_ptr());
    let task = |rows: Range<usize>, panels| Task { a, b, col0: cols.start, c: cp, ldc, acc, epi, rows, panels };
    if !share || threads == 1 || panels.len() % threads == 0 {
        groups.extend(panels.chunks(panels.len().div_ceil(threads)).map(|ps| vec![task(0..m, ps)]));
        return;
    }
    // Equal shares of the panel-major order of (panel, row) units.
    let total = panels.len() * m;
    for t in 0..threads {
        let (mut u, end) = (t * total / threads, (t + 1) * total / threads);
        let mut group = Vec::new();
        while u < end {
            let (pi, r) = (u / m, u % m);
            let whole = if r == 0 { (end - u) / m } else { 0 };
            if whole > 0 {
                group.push(task(0..m, &panels[pi..pi + whole]));
                u += whole * m;
            } else {
                let r1 = m.min(r + (end - u));
                group.push(task(r..r1, &panels[pi..pi + 1]));
                u += r1 - r;
            }
        }
        if !group.is_empty() {
            groups.push(group);
        }
    }
}

/// At most this many result values of a task (256 KiB) are computed before the epilogue (bias,
/// GELU, see `run_rows`) has run over them, so that the product's operands and results stay in the
/// core's L2 cache between the two: a batch's rows are taken in chunks of at least
/// `EPILOGUE_ROWS` (at batch 16 this brought fc1 with its GELU close to fc2's time, profiled with
/// `AMG_PROFILE=1`). A batch-1 product (197 rows) stays whole: splitting it made fc1 slower.
const EPILOGUE_BLOCK: usize = 64 * 1024;
/// The fewest rows per chunk (see `EPILOGUE_BLOCK`).
const EPILOGUE_ROWS: usize = 192;

fn run(t: &Task) {
    let (r0, r1) = (t.rows.start, t.rows.end);
    let (Some(first), Some(last)) = (t.panels.first(), t.panels.last()) else { return };
    let m = r1 - r0;
    let rows = (EPILOGUE_BLOCK / (last.col + last.width - first.col).max(1)).max(EPILOGUE_ROWS);
    let chunks = if matches!(t.epi, Epilogue::None) || m < 2 * rows { 1 } else { m / rows };
    let per = m.div_ceil(chunks);
    for c0 in (r0..r1).step_by(per.max(1)) {
        run_rows(t, c0..r1.min(c0 + per));
    }
}

/// Rows `rows` of a task: each panel's product, then at once its epilogue (bias, GELU) over the
/// block just written (rows × at most 64 columns), while that is still in the core's nearest
/// caches, rather than over all of a task's columns after all its panels (which was slower at
/// both batch sizes, docs/performance.md).
fn run_rows(t: &Task, rows: Range<usize>) {
    let (r0, r1, k) = (rows.start, rows.end, t.a.cols);
    for pn in t.panels {
        let j0 = pn.col - t.col0;
        // SAFETY: `split` checked that reads stay inside `a` and writes inside `c`; the panel is
        // k×NR from pn.offset (allocated so at packing); this task alone writes its rows (r0..r1
        // among them) × its panels' columns.
        unsafe {
            let bp = t.b.data.as_ptr().add(pn.offset);
            gemm_raw(
                (r1 - r0, pn.width, k),
                t.a.data.as_ptr().add(r0 * t.a.ld),
                Strides::row_major(t.a.ld),
                bp,
                Strides::row_major(NR),
                t.c.0.add(r0 * t.ldc + j0),
                t.ldc,
                t.acc,
                1.0,
                1,
            );
        }
        if let Epilogue::Bias(bias) | Epilogue::BiasGelu(bias) = t.epi {
            let gelu = matches!(t.epi, Epilogue::BiasGelu(_));
            for r in r0..r1 {
                // SAFETY: as above: row r, this panel's columns belong to this task alone.
                let row = unsafe { std::slice::from_raw_parts_mut(t.c.0.add(r * t.ldc + j0), pn.width) };
                super::rows::bias_act_row(row, &bias[j0..j0 + pn.width], gelu);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::matmul;

    use crate::test_values as rand;

    #[test]
    fn equals_the_general_product_on_every_shape_edge() {
        // Rows not a multiple of the kernel's, columns not a multiple of the panel width, parts,
        // accumulate, one and two threads. Under Miri (which checks the raw-pointer writes) the
        // smaller shapes only: the interpreter is ~10⁴× slower.
        let all: &[(usize, usize, usize, &[usize])] = &[
            (1, 7, 5, &[]),
            (13, 64, 70, &[32]),
            (37, 33, 130, &[64]),
            (197, 96, 200, &[40, 120]),
            (400, 33, 64, &[]),
            (600, 40, 130, &[64]),
            (197, 48, 192, &[]),
            (50, 16, 96, &[]),
            // Enough rows that the epilogue runs in row chunks (`EPILOGUE_BLOCK`), the last shorter.
            (2500, 8, 70, &[]),
            (5000, 4, 40, &[]),
        ];
        for &(m, k, n, parts) in if cfg!(miri) { &all[..3] } else { all } {
            let a = rand(m * k, 1);
            let w = rand(k * n, 2);
            let bias = rand(n, 3);
            let pb = PackedB::new(&w, k, n, parts);
            assert_eq!(pb.to_row_major(), w);
            for win in part_bounds(parts, n).windows(2) {
                let cols = win[0]..win[1];
                let nc = cols.len();
                let wc: Vec<f32> = (0..k).flat_map(|p| w[p * n + cols.start..p * n + cols.end].to_vec()).collect();
                for threads in [1, 2, 3] {
                    for acc in [Acc::Overwrite, Acc::Add] {
                        let init = rand(m * (nc + 3), 4);
                        let mut want = init.clone();
                        matmul(Mat::dense(&a, m, k), Mat::dense(&wc, k, nc), &mut want, nc + 3, acc, 1.0, 1);
                        for r in 0..m {
                            for j in 0..nc {
                                want[r * (nc + 3) + j] += bias[cols.start + j];
                            }
                        }
                        let mut got = init.clone();
                        matmul_packed(Mat::dense(&a, m, k), &pb, cols.clone(), &mut got, nc + 3, acc, threads, Epilogue::Bias(&bias[cols.clone()]));
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "m {m} k {k} n {n} cols {cols:?} threads {threads} at {i}: {g} vs {w}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn products_run_together_equal_products_run_alone() {
        // A token-pruned layer: queries from every row, keys and values from some rows.
        let (m, mk, k, inner) = (33, 20, 48, 64);
        let x = rand(m * k, 5);
        let xk = rand(mk * k, 6);
        let w = rand(k * 3 * inner, 7);
        let bias = rand(3 * inner, 8);
        let pb = PackedB::new(&w, k, 3 * inner, &[inner, 2 * inner]);
        let (mut q1, mut kv1) = (vec![0f32; m * inner], vec![0f32; mk * 2 * inner]);
        matmul_packed(Mat::dense(&x, m, k), &pb, 0..inner, &mut q1, inner, Acc::Overwrite, 1, Epilogue::Bias(&bias[..inner]));
        matmul_packed(Mat::dense(&xk, mk, k), &pb, inner..3 * inner, &mut kv1, 2 * inner, Acc::Overwrite, 1, Epilogue::BiasGelu(&bias[inner..]));
        let (mut q2, mut kv2) = (vec![1f32; m * inner], vec![1f32; mk * 2 * inner]);
        matmul_packed_many(
            vec![
                Product { a: Mat::dense(&x, m, k), b: &pb, cols: 0..inner, c: &mut q2, ldc: inner, acc: Acc::Overwrite, epi: Epilogue::Bias(&bias[..inner]) },
                Product {
                    a: Mat::dense(&xk, mk, k),
                    b: &pb,
                    cols: inner..3 * inner,
                    c: &mut kv2,
                    ldc: 2 * inner,
                    acc: Acc::Overwrite,
                    epi: Epilogue::BiasGelu(&bias[inner..]),
                },
            ],
            2,
        );
        assert_eq!(q1, q2);
        assert_eq!(kv1, kv2);
    }
}

//! INT8 products: `c ⟵ a·W` with the weight stored as int8 per output channel and the float32
//! left operand quantized to int8 on the fly, the products summed exactly in int32 and the sums
//! turned back to float32 (docs/int8.md).
//!
//! The scheme is symmetric: a weight column j is `q_w[·, j]·s_w[j]` with `q_w` in -127..=127, an
//! activation row r is `q_a[r, ·]·s_a[r]`, `q_a = round(x / s_a)` (ties to even) clamped to ±127,
//! with `s_a` either the row's own `max|x| / 127` (dynamic, per token) or one calibrated scale for
//! the whole input (static). Then
//!
//! ```text
//! c[r, j] = ((Σ_k q_a[r, k]·q_w[k, j]) as f32 · s_a[r]) · s_w[j]
//! ```
//!
//! The integer sums are exact on every path (|Σ| ≤ k·127² < 2³¹ for k < 133 000), so every path —
//! AVX-512 VNNI, AVX-VNNI, plain AVX2, aarch64 SDOT, portable — gives the same bits; the float32
//! steps after the sum are the same operations in the same order on all of them (`store`).
//!
//! Layout: the weight in panels of 64 columns, each `[k/4][64][4]` bytes (four consecutive k of
//! one column side by side: what one lane of a 4-way int8 dot product reads), k padded to a
//! multiple of 4 and columns to 64 with zeros. The quantized rows are padded alike.
//!
//! How each path forms a 4-way dot product of one broadcast activation quad with a vector of
//! weight quads:
//! - VNNI (`vpdpbusd`) multiplies unsigned by signed bytes: the activations are offset by 128
//!   (`q_a + 128`, in 1..=255) and `128·Σ_k q_w[k, j]`, stored per column, subtracted at the end;
//! - plain AVX2: `vpmaddubsw(|q_a|, sign(q_w, q_a))` (pairs of products, at most 2·127² < 2¹⁵, so
//!   never saturating — this needs -128 excluded, which the symmetric scheme does), then
//!   `vpmaddwd` with ones to sum the pairs into int32;
//! - aarch64: `sdot` (signed by signed bytes);
//! - portable: the same sums in plain integer arithmetic.

use super::gemm::{Acc, Epilogue, Mat};
use super::{part_bounds, SendPtr};
use rayon::prelude::*;
use std::cell::Cell;
use std::ops::Range;
use std::sync::OnceLock;

/// Columns per panel.
pub const NR: usize = 64;
/// The largest quantized magnitude: values lie in -127..=127.
pub const QMAX: f32 = 127.0;
/// Rows the quantized left operand is padded to a multiple of (every path's tile height divides it).
const ROW_PAD: usize = 24;

/// The instructions an INT8 product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// AVX-512 VNNI (`vpdpbusd` on 512-bit vectors).
    Avx512Vnni,
    /// AVX-VNNI (`vpdpbusd` on 256-bit vectors, VEX-encoded: Intel Alder Lake and later, AMD Zen 5).
    AvxVnni,
    /// AVX2 without VNNI (`vpmaddubsw` + `vpmaddwd`).
    Avx2,
    /// aarch64 dot products (`sdot`: Cortex-A76/A78 and later, Apple M, Graviton 2+).
    Sdot,
    /// Plain integer arithmetic: any CPU.
    Portable,
}

impl Unit {
    /// The unit in reports (`amg bench`, `amg inspect`).
    pub fn describe(self) -> &'static str {
        match self {
            Unit::Avx512Vnni => "AVX-512 VNNI",
            Unit::AvxVnni => "AVX-VNNI",
            Unit::Avx2 => "AVX2 (no VNNI)",
            Unit::Sdot => "aarch64 SDOT",
            Unit::Portable => "portable integer code",
        }
    }

    /// The units this CPU can run, best first, `Portable` always and last. The tests run each.
    pub fn available() -> &'static [Unit] {
        static UNITS: OnceLock<Vec<Unit>> = OnceLock::new();
        UNITS.get_or_init(|| {
            let mut units = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                // The kernels are compiled with FMA too (the epilogue's float steps).
                let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
                if avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                    units.push(Unit::Avx512Vnni);
                }
                if avx2 && is_x86_feature_detected!("avxvnni") {
                    units.push(Unit::AvxVnni);
                }
                if avx2 {
                    units.push(Unit::Avx2);
                }
            }
            #[cfg(target_arch = "aarch64")]
            {
                if std::arch::is_aarch64_feature_detected!("dotprod") {
                    units.push(Unit::Sdot);
                }
            }
            units.push(Unit::Portable);
            units
        })
    }
}

/// The unit INT8 products use: the best this CPU has, or the one `AMG_ISA` asks for (`avx512`,
/// `avxvnni`, `avx2`, `portable`), never more than the CPU has: `avx2` means AVX2 without VNNI,
/// `avx512` allows AVX-512 VNNI, `portable` the plain code (on ARM too).
pub fn unit() -> Unit {
    static UNIT: OnceLock<Unit> = OnceLock::new();
    *UNIT.get_or_init(|| {
        let units = Unit::available();
        let allowed: &[Unit] = match std::env::var("AMG_ISA").ok().as_deref() {
            Some("portable") => &[Unit::Portable],
            Some("avx2") => &[Unit::Avx2],
            Some("avxvnni") => &[Unit::AvxVnni, Unit::Avx2],
            _ => units,
        };
        units.iter().copied().find(|u| allowed.contains(u)).unwrap_or(Unit::Portable)
    })
}

/// Symmetric per-output-channel quantization of a float32 weight `[n out][k in]` (row-major, as
/// checkpoints store it): for each output j, `s[j] = max_k |w[j, k]| / 127` (1 for an all-zero
/// row) and `q[j, k] = round(w[j, k] / s[j])` (ties to even), in -127..=127.
pub fn quantize_weight(w: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), n * k, "weight size");
    let mut q = vec![0i8; n * k];
    let mut s = vec![0f32; n];
    for ((row, out), scale) in w.chunks_exact(k.max(1)).zip(q.chunks_exact_mut(k.max(1))).zip(&mut s) {
        *scale = quantize_row(row, None, out);
    }
    (q, s)
}

/// Quantizes one row: `q = clamp(round(x / s), ±127)` with `s = fixed`, or `max|x| / 127` (1 when
/// every value is 0). Returns `s`. `q` may be longer than `x`; the rest is left as it is.
#[inline]
pub fn quantize_row(x: &[f32], fixed: Option<f32>, q: &mut [i8]) -> f32 {
    quantize_row_simd(x, fixed, q)
}

super::simd_fn! {
    /// The largest |value| of `x` (0 for an empty slice; NaNs are passed over).
    pub fn abs_max(x: &[f32]) -> f32 {
        // Sixteen running maxima, so that the loop vectorises.
        let mut m = [0f32; 16];
        let mut chunks = x.chunks_exact(16);
        for c in &mut chunks {
            for i in 0..16 {
                m[i] = m[i].max(c[i].abs());
            }
        }
        chunks.remainder().iter().fold(m.iter().fold(0f32, |a, &b| a.max(b)), |a, v| a.max(v.abs()))
    }
}

super::simd_fn! {
    fn quantize_row_simd(x: &[f32], fixed: Option<f32>, q: &mut [i8]) -> f32 {
        let s = match fixed {
            Some(s) => s,
            None => {
                let max = abs_max(x);
                if max > 0.0 && max.is_finite() {
                    max / QMAX
                } else {
                    1.0
                }
            }
        };
        for (o, &v) in q.iter_mut().zip(x) {
            *o = (v / s).round_ties_even().clamp(-QMAX, QMAX) as i8;
        }
        s
    }
}

#[derive(Clone, Copy, Debug)]
struct Panel {
    col: usize,
    width: usize,
}

/// A k×n weight in int8 panels with its per-column scales (and, for a statically quantized input,
/// the input's scale).
pub struct PackedI8 {
    k: usize,
    /// k rounded up to a multiple of 4.
    kp: usize,
    n: usize,
    /// Column boundaries the panels never straddle, with 0 and n.
    parts: Vec<usize>,
    panels: Vec<Panel>,
    /// Panel p's bytes at `p·kp·NR`: `[k/4][NR][4]`.
    data: Vec<i8>,
    /// Per panel, NR values: `128·Σ_k q_w[k, j]` (for the VNNI paths' offset), 0 beyond the width.
    comp: Vec<i32>,
    /// Per panel, NR values: the column's scale, 0 beyond the width.
    scale: Vec<f32>,
    /// The scale every row of the left operand is quantized with; `None`: each row's own.
    input_scale: Option<f32>,
}

impl PackedI8 {
    /// Packs the quantized weight `q` (`[n out][k in]` row-major, values in -127..=127) with its
    /// per-output scales. Column ranges later asked of a product must start and end at 0, n or one
    /// of `parts`. Panics on values or sizes outside that contract (model loading checks them first,
    /// with errors naming the tensor).
    pub fn new(q: &[i8], scales: &[f32], k: usize, n: usize, parts: &[usize], input_scale: Option<f32>) -> PackedI8 {
        assert_eq!(q.len(), n * k, "int8 weight size");
        assert_eq!(scales.len(), n, "int8 weight scales");
        assert!(q.iter().all(|&v| v != i8::MIN), "int8 weights must lie in -127..=127");
        let kp = k.div_ceil(4) * 4;
        let bounds = part_bounds(parts, n);
        let mut panels = Vec::new();
        for w in bounds.windows(2) {
            let mut col = w[0];
            while col < w[1] {
                let width = NR.min(w[1] - col);
                panels.push(Panel { col, width });
                col += width;
            }
        }
        let mut data = vec![0i8; panels.len() * kp * NR];
        let mut comp = vec![0i32; panels.len() * NR];
        let mut scale = vec![0f32; panels.len() * NR];
        for (p, pn) in panels.iter().enumerate() {
            let block = &mut data[p * kp * NR..(p + 1) * kp * NR];
            for j in 0..pn.width {
                let col = &q[(pn.col + j) * k..(pn.col + j + 1) * k];
                for (kk, &v) in col.iter().enumerate() {
                    block[((kk / 4) * NR + j) * 4 + kk % 4] = v;
                }
                comp[p * NR + j] = 128 * col.iter().map(|&v| i32::from(v)).sum::<i32>();
                scale[p * NR + j] = scales[pn.col + j];
            }
        }
        PackedI8 { k, kp, n, parts: bounds, panels, data, comp, scale, input_scale }
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn input_scale(&self) -> Option<f32> {
        self.input_scale
    }

    /// The weight the product multiplies by, `q_w·s_w`, as a row-major k×n float32 matrix.
    pub fn to_row_major(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for (p, pn) in self.panels.iter().enumerate() {
            for kk in 0..self.k {
                for j in 0..pn.width {
                    let v = self.data[p * self.kp * NR + ((kk / 4) * NR + j) * 4 + kk % 4];
                    out[kk * self.n + pn.col + j] = f32::from(v) * self.scale[p * NR + j];
                }
            }
        }
        out
    }
}

thread_local! {
    /// The quantized left operand of this thread's last product (kept to avoid reallocating).
    static QUANT: Cell<(Vec<i8>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// `c[:, 0..cols.len()] (row stride ldc) ⟵ a·W[:, cols]` (or `+=`), then the epilogue (bias indexed
/// from `cols.start` as 0), in INT8 on `unit()`, using `threads` threads.
#[allow(clippy::too_many_arguments)]
pub fn matmul_i8(a: Mat, b: &PackedI8, cols: Range<usize>, c: &mut [f32], ldc: usize, acc: Acc, threads: usize, epi: Epilogue) {
    matmul_i8_on(unit(), a, b, cols, c, ldc, acc, threads, epi)
}

/// As `matmul_i8`, on the given unit (which must be in `Unit::available()`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_i8_on(unit: Unit, a: Mat, b: &PackedI8, cols: Range<usize>, c: &mut [f32], ldc: usize, acc: Acc, threads: usize, epi: Epilogue) {
    assert!(Unit::available().contains(&unit), "{} is not available on this CPU", unit.describe());
    let (m, k) = (a.rows, a.cols);
    let n = super::check_product(&a, b.k, &b.parts, &cols, c, ldc, &epi);
    if m == 0 || n == 0 {
        return;
    }
    let first = b.panels.iter().position(|p| p.col == cols.start).expect("a panel starts at every part boundary");
    let last = b.panels.iter().position(|p| p.col + p.width == cols.end).expect("a panel ends at every part boundary");
    let threads = threads.max(1);

    // Quantize the left operand once, rows padded with zeros to a multiple of ROW_PAD.
    let (mut qa, mut sa) = QUANT.with(|cell| cell.take());
    let (kp, mp) = (b.kp, m.div_ceil(ROW_PAD) * ROW_PAD);
    qa.clear();
    qa.resize(mp * kp, 0);
    sa.clear();
    sa.resize(mp, 1.0);
    let quantize = |(r, (q, s)): (usize, (&mut [i8], &mut f32))| *s = quantize_row(&a.data[r * a.ld..r * a.ld + k], b.input_scale, q);
    if threads > 1 && m * k >= 1 << 16 {
        qa[..m * kp].par_chunks_mut(kp).zip(sa[..m].par_iter_mut()).enumerate().for_each(quantize);
    } else {
        qa[..m * kp].chunks_mut(kp).zip(sa[..m].iter_mut()).enumerate().for_each(quantize);
    }

    // Units of work: (panel, run of rows); each thread takes a contiguous share of them.
    let panels = first..=last;
    let np = panels.clone().count();
    let splits = if np >= 2 * threads || threads == 1 { 1 } else { (2 * threads).div_ceil(np) };
    let rows_per = m.div_ceil(splits).div_ceil(ROW_PAD) * ROW_PAD;
    let units: Vec<(usize, Range<usize>)> = panels.flat_map(|p| (0..m).step_by(rows_per).map(move |r0| (p, r0..(r0 + rows_per).min(m)))).collect();
    let cp = SendPtr(c.as_mut_ptr());
    let job = Job { unit, qa: &qa, sa: &sa, kp, b, col0: cols.start, c: cp, ldc, acc, epi };
    let run = |us: &[(usize, Range<usize>)]| {
        for (p, rows) in us {
            // SAFETY: the checks above keep every read inside `qa` (mp ≥ rows, padded) and the
            // panel, and every write inside `c`; units cover disjoint (rows × panel columns) blocks
            // of `c`, and each unit is run by one thread.
            unsafe { job.run(*p, rows.clone()) };
        }
    };
    if threads == 1 || units.len() == 1 {
        run(&units);
    } else {
        let per = units.len().div_ceil(threads);
        units.par_chunks(per).for_each(run);
    }
    QUANT.with(|cell| cell.set((qa, sa)));
}

/// One product's operands, shared by its units.
struct Job<'a> {
    unit: Unit,
    qa: &'a [i8],
    sa: &'a [f32],
    kp: usize,
    b: &'a PackedI8,
    col0: usize,
    c: SendPtr,
    ldc: usize,
    acc: Acc,
    epi: Epilogue<'a>,
}

impl Job<'_> {
    /// Rows `rows` × panel `p`: the int32 sums tile by tile on the job's unit, then `store`.
    ///
    /// # Safety
    /// `rows` lie inside the quantized operand's rows (padded to `ROW_PAD`), `p` is a panel of `b`
    /// inside the product's column range, and no other thread writes these rows × columns of `c`.
    unsafe fn run(&self, p: usize, rows: Range<usize>) {
        let w = self.b.data[p * self.kp * NR..(p + 1) * self.kp * NR].as_ptr();
        // SAFETY: forwarded (the unit was checked available by `matmul_i8_on`).
        unsafe {
            match self.unit {
                #[cfg(target_arch = "x86_64")]
                Unit::Avx512Vnni => x86::panel_avx512(self, p, w, rows),
                #[cfg(target_arch = "x86_64")]
                Unit::AvxVnni => x86::panel_avxvnni(self, p, w, rows),
                #[cfg(target_arch = "x86_64")]
                Unit::Avx2 => x86::panel_avx2(self, p, w, rows),
                #[cfg(target_arch = "aarch64")]
                Unit::Sdot => arm::panel_sdot(self, p, w, rows),
                _ => panel::<Portable, 4, 2>(self, p, w, rows),
            }
        }
    }

    /// Turns one tile's int32 sums (`rows` rows from `r0`, the panel's columns) into float32 and
    /// writes them, then runs the epilogue on them. The same operations in the same order on every
    /// unit: `((Σ − offset) as f32 · s_a[r]) · s_w[j]`.
    ///
    /// # Safety
    /// As `run`.
    #[inline(always)]
    unsafe fn store(&self, p: usize, tile: &[[i32; NR]], r0: usize, shifted: bool) {
        let pn = self.b.panels[p];
        let (comp, scale) = (&self.b.comp[p * NR..][..NR], &self.b.scale[p * NR..][..NR]);
        let j0 = pn.col - self.col0;
        for (i, t) in tile.iter().enumerate() {
            let r = r0 + i;
            let s = self.sa[r];
            // SAFETY: row r, columns j0..j0+width of `c` are this unit's (the caller's contract).
            let row = unsafe { std::slice::from_raw_parts_mut(self.c.get().add(r * self.ldc + j0), pn.width) };
            let off = if shifted { comp } else { &[0; NR] };
            for (((o, &sum), &off), &sw) in row.iter_mut().zip(t).zip(off).zip(scale) {
                let y = ((sum - off) as f32 * s) * sw;
                match self.acc {
                    Acc::Overwrite => *o = y,
                    Acc::Add => *o += y,
                }
            }
            if let Epilogue::Bias(bias) | Epilogue::BiasGelu(bias) = self.epi {
                super::rows::bias_act_row(row, &bias[j0..j0 + pn.width], matches!(self.epi, Epilogue::BiasGelu(_)));
            }
        }
    }
}

/// One way of forming 4-way int8 dot products, `LANES` int32 lanes at a time.
trait Dot {
    const LANES: usize;
    /// Whether activations are offset by 128 (the VNNI paths), to be corrected by `comp`.
    const SHIFTED: bool;
    type V: Copy;
    type A: Copy;
    /// # Safety
    /// The CPU has the unit's features (for every method).
    unsafe fn zero() -> Self::V;
    /// `LANES` columns' quads of weights (4·LANES bytes at `p`).
    /// # Safety
    /// `p` is valid for 4·LANES bytes.
    unsafe fn load(p: *const i8) -> Self::V;
    /// One row's quad of activations (4 bytes at `p`), in every lane.
    /// # Safety
    /// `p` is valid for 4 bytes.
    unsafe fn bcast(p: *const i8) -> Self::A;
    /// # Safety
    /// As `zero`.
    unsafe fn dot(acc: Self::V, a: Self::A, w: Self::V) -> Self::V;
    /// # Safety
    /// `out` is valid for `LANES` writes.
    unsafe fn store(v: Self::V, out: *mut i32);
}

/// Rows `rows` × panel `p` on `D`, in tiles of `MR` rows × `NV` vectors of columns.
///
/// # Safety
/// As `Job::run`, and the CPU has `D`'s features; `w` is panel p's first byte.
#[inline(always)]
unsafe fn panel<D: Dot, const MR: usize, const NV: usize>(job: &Job, p: usize, w: *const i8, rows: Range<usize>) {
    // A tile's columns divide a panel's, and its rows the row padding: every load and store
    // below stays inside its panel row, tile row and padded operand.
    const { assert!(NR.is_multiple_of(NV * D::LANES) && ROW_PAD.is_multiple_of(MR)) };
    let kp = job.kp;
    let width = job.b.panels[p].width;
    let nc = NV * D::LANES;
    let mut tile = [[0i32; NR]; MR];
    let mut r0 = rows.start;
    while r0 < rows.end {
        let a = job.qa[r0 * kp..].as_ptr();
        for j0 in (0..width).step_by(nc) {
            // SAFETY: the caller's CPU check.
            let zero = unsafe { D::zero() };
            let mut acc = [[zero; NV]; MR];
            let mut wv = [zero; NV];
            for k4 in 0..kp / 4 {
                for (v, wv) in wv.iter_mut().enumerate() {
                    // SAFETY: the panel holds kp/4 × NR quads; j0 + (v+1)·LANES ≤ NR.
                    *wv = unsafe { D::load(w.add((k4 * NR + j0 + v * D::LANES) * 4)) };
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row r0 + r < the padded row count (rows are padded to ROW_PAD, a
                    // multiple of MR, and r0 steps by MR from a multiple of ROW_PAD).
                    let av = unsafe { D::bcast(a.add(r * kp + k4 * 4)) };
                    for (acc, &wv) in acc.iter_mut().zip(&wv) {
                        // SAFETY: the caller's CPU check.
                        *acc = unsafe { D::dot(*acc, av, wv) };
                    }
                }
            }
            for (t, acc) in tile.iter_mut().zip(&acc) {
                for (v, &acc) in acc.iter().enumerate() {
                    // SAFETY: j0 + (v+1)·LANES ≤ NR, inside the tile row.
                    unsafe { D::store(acc, t.as_mut_ptr().add(j0 + v * D::LANES)) };
                }
            }
        }
        let live = MR.min(rows.end - r0);
        // SAFETY: forwarded.
        unsafe { job.store(p, &tile[..live], r0, D::SHIFTED) };
        r0 += MR;
    }
}

/// The reference arithmetic, in plain integers.
struct Portable;

impl Dot for Portable {
    const LANES: usize = 8;
    const SHIFTED: bool = false;
    type V = [i32; 8];
    type A = [i8; 4];
    unsafe fn zero() -> [i32; 8] {
        [0; 8]
    }
    unsafe fn load(p: *const i8) -> [i32; 8] {
        // Eight quads, packed into the lanes as bytes (unpacked by `dot`).
        let mut v = [0i32; 8];
        // SAFETY: the caller guarantees 32 readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(p, 32) };
        for (l, q) in v.iter_mut().zip(bytes.chunks_exact(4)) {
            *l = i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
        }
        v
    }
    unsafe fn bcast(p: *const i8) -> [i8; 4] {
        // SAFETY: the caller guarantees 4 readable bytes.
        unsafe { [*p, *p.add(1), *p.add(2), *p.add(3)] }
    }
    unsafe fn dot(acc: [i32; 8], a: [i8; 4], w: [i32; 8]) -> [i32; 8] {
        let mut out = acc;
        for (o, w) in out.iter_mut().zip(w) {
            let w = w.to_le_bytes();
            *o += (0..4).map(|t| i32::from(a[t]) * i32::from(w[t] as i8)).sum::<i32>();
        }
        out
    }
    unsafe fn store(v: [i32; 8], out: *mut i32) {
        // SAFETY: the caller guarantees 8 writable values.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out, 8) };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{panel, Dot, Job};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// The activation quad with the 128 offset for `vpdpbusd` (unsigned × signed bytes).
    #[inline(always)]
    fn shifted_quad(p: *const i8) -> i32 {
        // SAFETY: the caller (`Dot::bcast`) guarantees 4 readable bytes.
        let q = unsafe { p.cast::<i32>().read_unaligned() };
        q ^ (0x8080_8080u32 as i32)
    }

    pub(super) struct Avx512;
    impl Dot for Avx512 {
        const LANES: usize = 16;
        const SHIFTED: bool = true;
        type V = __m512i;
        type A = __m512i;
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn zero() -> __m512i {
            _mm512_setzero_si512()
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn load(p: *const i8) -> __m512i {
            // SAFETY: the caller guarantees 64 readable bytes.
            unsafe { _mm512_loadu_si512(p.cast()) }
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn bcast(p: *const i8) -> __m512i {
            _mm512_set1_epi32(shifted_quad(p))
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn dot(acc: __m512i, a: __m512i, w: __m512i) -> __m512i {
            _mm512_dpbusd_epi32(acc, a, w)
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn store(v: __m512i, out: *mut i32) {
            // SAFETY: the caller guarantees 16 writable values.
            unsafe { _mm512_storeu_si512(out.cast(), v) }
        }
    }

    pub(super) struct AvxVnni;
    impl Dot for AvxVnni {
        const LANES: usize = 8;
        const SHIFTED: bool = true;
        type V = __m256i;
        type A = __m256i;
        #[inline]
        #[target_feature(enable = "avx2,avxvnni")]
        unsafe fn zero() -> __m256i {
            _mm256_setzero_si256()
        }
        #[inline]
        #[target_feature(enable = "avx2,avxvnni")]
        unsafe fn load(p: *const i8) -> __m256i {
            // SAFETY: the caller guarantees 32 readable bytes.
            unsafe { _mm256_loadu_si256(p.cast()) }
        }
        #[inline]
        #[target_feature(enable = "avx2,avxvnni")]
        unsafe fn bcast(p: *const i8) -> __m256i {
            _mm256_set1_epi32(shifted_quad(p))
        }
        #[inline]
        #[target_feature(enable = "avx2,avxvnni")]
        unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(acc, a, w)
        }
        #[inline]
        #[target_feature(enable = "avx2,avxvnni")]
        unsafe fn store(v: __m256i, out: *mut i32) {
            // SAFETY: the caller guarantees 8 writable values.
            unsafe { _mm256_storeu_si256(out.cast(), v) }
        }
    }

    pub(super) struct Avx2;
    impl Dot for Avx2 {
        const LANES: usize = 8;
        const SHIFTED: bool = false;
        type V = __m256i;
        /// The quad, and its magnitudes.
        type A = (__m256i, __m256i);
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn zero() -> __m256i {
            _mm256_setzero_si256()
        }
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn load(p: *const i8) -> __m256i {
            // SAFETY: the caller guarantees 32 readable bytes.
            unsafe { _mm256_loadu_si256(p.cast()) }
        }
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn bcast(p: *const i8) -> (__m256i, __m256i) {
            // SAFETY: the caller guarantees 4 readable bytes.
            let a = _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() });
            (a, _mm256_abs_epi8(a))
        }
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn dot(acc: __m256i, (a, abs): (__m256i, __m256i), w: __m256i) -> __m256i {
            // |a|·(w·sign a) = a·w; pairs at most 2·127² (no saturation: -128 never occurs).
            let pairs = _mm256_maddubs_epi16(abs, _mm256_sign_epi8(w, a));
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn store(v: __m256i, out: *mut i32) {
            // SAFETY: the caller guarantees 8 writable values.
            unsafe { _mm256_storeu_si256(out.cast(), v) }
        }
    }

    /// # Safety
    /// As `Job::run`; the CPU has AVX-512 F/BW/VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn panel_avx512(job: &Job, p: usize, w: *const i8, rows: Range<usize>) {
        // SAFETY: forwarded.
        unsafe { panel::<Avx512, 6, 4>(job, p, w, rows) }
    }

    /// # Safety
    /// As `Job::run`; the CPU has AVX2 and AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni,fma")]
    pub(super) unsafe fn panel_avxvnni(job: &Job, p: usize, w: *const i8, rows: Range<usize>) {
        // SAFETY: forwarded.
        unsafe { panel::<AvxVnni, 6, 2>(job, p, w, rows) }
    }

    /// # Safety
    /// As `Job::run`; the CPU has AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn panel_avx2(job: &Job, p: usize, w: *const i8, rows: Range<usize>) {
        // SAFETY: forwarded.
        unsafe { panel::<Avx2, 4, 2>(job, p, w, rows) }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{panel, Dot, Job};
    use std::arch::aarch64::*;
    use std::arch::asm;
    use std::ops::Range;

    pub(super) struct Sdot;
    impl Dot for Sdot {
        const LANES: usize = 4;
        const SHIFTED: bool = false;
        type V = int32x4_t;
        type A = int8x16_t;
        #[inline]
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn zero() -> int32x4_t {
            vdupq_n_s32(0)
        }
        #[inline]
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn load(p: *const i8) -> int32x4_t {
            // SAFETY: the caller guarantees 16 readable bytes.
            unsafe { vreinterpretq_s32_s8(vld1q_s8(p)) }
        }
        #[inline]
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn bcast(p: *const i8) -> int8x16_t {
            // SAFETY: the caller guarantees 4 readable bytes.
            vreinterpretq_s8_s32(vdupq_n_s32(unsafe { p.cast::<i32>().read_unaligned() }))
        }
        #[inline]
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn dot(acc: int32x4_t, a: int8x16_t, w: int32x4_t) -> int32x4_t {
            let mut acc = acc;
            let w = vreinterpretq_s8_s32(w);
            // SAFETY: `sdot` only reads and writes these registers; the CPU has the dot-product
            // extension (the caller's contract).
            unsafe { asm!("sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b", acc = inout(vreg) acc, w = in(vreg) w, a = in(vreg) a, options(pure, nomem, nostack)) };
            acc
        }
        #[inline]
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn store(v: int32x4_t, out: *mut i32) {
            // SAFETY: the caller guarantees 4 writable values.
            unsafe { vst1q_s32(out, v) }
        }
    }

    /// # Safety
    /// As `Job::run`; the CPU has the dot-product extension.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn panel_sdot(job: &Job, p: usize, w: *const i8, rows: Range<usize>) {
        // SAFETY: forwarded.
        unsafe { panel::<Sdot, 4, 4>(job, p, w, rows) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::Mat;

    use crate::test_values as rand;

    /// The scheme written out directly: quantize, exact integer sums (i64), then the float steps.
    fn reference(a: &[f32], m: usize, k: usize, q: &[i8], s: &[f32], n: usize, fixed: Option<f32>) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            let row = &a[r * k..(r + 1) * k];
            let sa = fixed.unwrap_or_else(|| {
                let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                if max > 0.0 {
                    max / 127.0
                } else {
                    1.0
                }
            });
            let qa: Vec<i64> = row.iter().map(|&v| (v / sa).round_ties_even().clamp(-127.0, 127.0) as i64).collect();
            for j in 0..n {
                let sum: i64 = (0..k).map(|kk| qa[kk] * i64::from(q[j * k + kk])).sum();
                out[r * n + j] = ((sum as i32) as f32 * sa) * s[j];
            }
        }
        out
    }

    #[test]
    fn rounding_is_to_even_and_clamped() {
        let mut q = [0i8; 6];
        let s = quantize_row(&[0.5, 1.5, -2.5, 300.0, -300.0, 2.4999], Some(1.0), &mut q);
        assert_eq!((s, q), (1.0, [0, 2, -2, 127, -127, 2]));
        let s = quantize_row(&[0.0; 5], None, &mut q);
        assert_eq!((s, &q[..5]), (1.0, &[0i8; 5][..]));
        let (qw, sw) = quantize_weight(&[-2.54, 1.0, 0.0, 0.0], 2, 2);
        assert_eq!(qw, [-127, 50, 0, 0]);
        assert_eq!(sw, [2.54 / 127.0, 1.0]);
    }

    #[test]
    fn every_unit_equals_the_scheme_bit_for_bit() {
        // Rows not a multiple of any tile, k not a multiple of 4, columns not a multiple of a
        // panel, column parts, both input scales, overwrite and accumulate, one to three threads.
        let shapes: &[(usize, usize, usize, &[usize])] =
            &[(1, 7, 5, &[]), (13, 64, 70, &[32]), (37, 33, 130, &[64]), (197, 96, 200, &[40, 120]), (50, 16, 96, &[]), (400, 48, 64, &[])];
        eprintln!("units: {:?}", Unit::available());
        for &(m, k, n, parts) in shapes {
            let a: Vec<f32> = rand(m * k, 1).iter().enumerate().map(|(i, v)| if i % 97 == 5 { v * 40.0 } else { *v }).collect();
            let (q, s) = quantize_weight(&rand(n * k, 2), n, k);
            let bias = rand(n, 3);
            for fixed in [None, Some(0.004)] {
                let want_all = reference(&a, m, k, &q, &s, n, fixed);
                let pb = PackedI8::new(&q, &s, k, n, parts, fixed);
                for win in part_bounds(parts, n).windows(2) {
                    let cols = win[0]..win[1];
                    let nc = cols.len();
                    for &unit in Unit::available() {
                        for threads in [1, 2, 3] {
                            for acc in [Acc::Overwrite, Acc::Add] {
                                let init = rand(m * (nc + 3), 4);
                                let mut got = init.clone();
                                matmul_i8_on(unit, Mat::dense(&a, m, k), &pb, cols.clone(), &mut got, nc + 3, acc, threads, Epilogue::None);
                                for r in 0..m {
                                    for j in 0..nc {
                                        let y = want_all[r * n + cols.start + j];
                                        let want = if acc == Acc::Add { init[r * (nc + 3) + j] + y } else { y };
                                        let g = got[r * (nc + 3) + j];
                                        assert_eq!(
                                            g.to_bits(),
                                            want.to_bits(),
                                            "{unit:?} m {m} k {k} n {n} cols {cols:?} threads {threads} {acc:?} at ({r}, {j}): {g} vs {want}"
                                        );
                                    }
                                    assert_eq!(got[r * (nc + 3) + nc..(r + 1) * (nc + 3)], init[r * (nc + 3) + nc..(r + 1) * (nc + 3)], "outside the columns");
                                }
                                // The epilogue: the same as bias + GELU applied afterwards.
                                let mut with = got.clone();
                                let bias = &bias[cols.clone()];
                                matmul_i8_on(
                                    unit,
                                    Mat::dense(&a, m, k),
                                    &pb,
                                    cols.clone(),
                                    &mut with,
                                    nc + 3,
                                    Acc::Overwrite,
                                    threads,
                                    Epilogue::BiasGelu(bias),
                                );
                                let mut want = vec![0f32; m * (nc + 3)];
                                matmul_i8_on(Unit::Portable, Mat::dense(&a, m, k), &pb, cols.clone(), &mut want, nc + 3, Acc::Overwrite, 1, Epilogue::None);
                                for row in want.chunks_mut(nc + 3) {
                                    crate::rows::bias_act_row(&mut row[..nc], bias, true);
                                }
                                for r in 0..m {
                                    assert_eq!(with[r * (nc + 3)..r * (nc + 3) + nc], want[r * (nc + 3)..r * (nc + 3) + nc], "{unit:?} epilogue, row {r}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_packed_weight_is_the_quantized_one() {
        let (k, n) = (10, 70);
        let (q, s) = quantize_weight(&rand(n * k, 9), n, k);
        let w = PackedI8::new(&q, &s, k, n, &[20], None).to_row_major();
        for j in 0..n {
            for kk in 0..k {
                assert_eq!(w[kk * n + j], f32::from(q[j * k + kk]) * s[j]);
            }
        }
    }

    #[test]
    fn large_sums_stay_exact() {
        // Every product at its largest magnitude, k = 3072 (a ViT-B MLP): sums of ±49.5 million.
        let (m, k, n) = (5, 3072, 17);
        let a = vec![1.0f32; m * k];
        let q: Vec<i8> = (0..n * k).map(|i| if (i / k) % 2 == 0 { 127 } else { -127 }).collect();
        let s = vec![1.0; n];
        let pb = PackedI8::new(&q, &s, k, n, &[], None);
        for &unit in Unit::available() {
            let mut c = vec![0f32; m * n];
            matmul_i8_on(unit, Mat::dense(&a, m, k), &pb, 0..n, &mut c, n, Acc::Overwrite, 2, Epilogue::None);
            for (i, v) in c.iter().enumerate() {
                let sum = (127 * 127 * k) as f32 * (1.0 / 127.0);
                let want = if i % n % 2 == 0 { sum } else { -sum };
                assert_eq!(*v, want, "{unit:?} at {i}");
            }
        }
    }
}

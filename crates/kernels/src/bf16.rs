//! bfloat16 products for `--precision bf16` inference: weights stored once in bfloat16, the
//! activations rounded to bfloat16 on the way in, every product accumulated in float32.
//!
//! Three ways to compute them, the fastest the CPU has (`Unit`):
//! - the AMX tile unit (Intel Sapphire Rapids and later): `tdpbf16ps`, a 16×32 by 32×16 product
//!   into a 16×16 float32 tile, several times the float32 multiply-add rate;
//! - AVX-512 BF16 (`vdpbf16ps`: 16 lanes, each the float32 sum of two bfloat16 products): on this
//!   AMD CPUs (Zen 4 and later) it runs at twice the multiply-add rate of float32 FMAs, so
//!   bfloat16 products are worth having there; on Intel CPUs it runs at half the float32 rate, so
//!   it is used on AMD CPUs only (`unit`);
//! - float32 products of the same bfloat16-rounded operands (CPUs with neither, ARM, and wherever
//!   the element-wise kernels are asked to run below AVX-512, e.g. `AMG_ISA=portable`): slower
//!   than plain float32, but the same results up to the order of the float32 additions.
//!
//! The tests hold the three to float64 products of the rounded operands and to each other.
//!
//! Layout: the k×n weight is cut into blocks of 32 columns; each block holds, for every 32 rows of
//! k, two AMX "B" tiles (columns 0–15 and 16–31), each 16 rows of 16 bfloat16 pairs: tile row r,
//! pair j is (B[2r, j], B[2r+1, j]) — the pairing `tdpbf16ps` multiplies, and one tile row is the
//! 512-bit register `vdpbf16ps` multiplies by a broadcast pair of A. k and n are padded with zeros
//! to multiples of 32, so every tile is full.

use super::gemm::{matmul_then, Acc, Epilogue, Mat};
use super::SendPtr;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::OnceLock;

/// bfloat16 values per A-tile row and rows of k per block (one 64-byte tile row).
const KB: usize = 32;
/// Output rows and columns per block: 2 × 2 float32 tiles of 16 × 16.
const BLOCK: usize = 32;
/// u16 values in one 16-row × 64-byte tile.
const TILE: usize = 512;

/// `x` rounded to the nearest bfloat16 (ties to even), as its 16 bits. NaN stays NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// The float32 value of a bfloat16.
#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to bfloat16 and back: the value a bfloat16 product sees.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

super::simd_fn! {
    /// `dst[i]` ⟵ `src[i]` rounded to bfloat16, vectorised.
    fn to_bf16_row(src: &[f32], dst: &mut [u16]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = to_bf16(v);
        }
    }
}

/// A k×n weight in bfloat16 AMX tiles, split into column parts like `PackedB`.
pub struct PackedBf16 {
    k: usize,
    n: usize,
    /// Column boundaries the blocks never straddle (products over a column range), with 0 and n.
    parts: Vec<usize>,
    /// One per part: its first column, column count and tiles.
    segments: Vec<Segment>,
    /// The rounded weight as a row-major float32 k×n matrix, for the computation without AMX
    /// (built on first use).
    rounded: OnceLock<Vec<f32>>,
}

struct Segment {
    col0: usize,
    ncols: usize,
    /// `tiles[((jb·kblocks + kb)·2 + half)·TILE ..]`: block jb's columns jb·32 + half·16 ..+16,
    /// rows kb·32 ..+32 of k.
    tiles: Vec<u16>,
}

impl PackedBf16 {
    /// Rounds and packs the row-major k×n matrix `b`. Column ranges later asked of `matmul_bf16`
    /// must start and end at 0, n or one of `parts`.
    pub fn new(b: &[f32], k: usize, n: usize, parts: &[usize]) -> PackedBf16 {
        assert_eq!(b.len(), k * n, "weight size");
        let bounds = super::part_bounds(parts, n);
        let kblocks = k.div_ceil(KB);
        let segments = bounds
            .windows(2)
            .map(|w| {
                let (col0, ncols) = (w[0], w[1] - w[0]);
                let nblocks = ncols.div_ceil(BLOCK);
                let mut tiles = vec![0u16; nblocks * kblocks * 2 * TILE];
                for jb in 0..nblocks {
                    for kb in 0..kblocks {
                        for half in 0..2 {
                            let tile = &mut tiles[((jb * kblocks + kb) * 2 + half) * TILE..][..TILE];
                            for r in 0..16 {
                                for j in 0..16 {
                                    let col = jb * BLOCK + half * 16 + j;
                                    for q in 0..2 {
                                        let row = kb * KB + 2 * r + q;
                                        if col < ncols && row < k {
                                            tile[r * 32 + 2 * j + q] = to_bf16(b[row * n + col0 + col]);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                Segment { col0, ncols, tiles }
            })
            .collect();
        PackedBf16 { k, n, parts: bounds, segments, rounded: OnceLock::new() }
    }

    /// The rounded weight back as a row-major float32 k×n matrix.
    pub fn to_row_major(&self) -> Vec<f32> {
        let kblocks = self.k.div_ceil(KB);
        let mut out = vec![0f32; self.k * self.n];
        if self.n == 0 {
            return out;
        }
        for s in &self.segments {
            for (row, out_row) in out.chunks_exact_mut(self.n).enumerate() {
                for col in 0..s.ncols {
                    let (jb, half, j) = (col / BLOCK, (col % BLOCK) / 16, col % 16);
                    let (kb, r, q) = (row / KB, (row % KB) / 2, row % 2);
                    out_row[s.col0 + col] = from_bf16(s.tiles[((jb * kblocks + kb) * 2 + half) * TILE + r * 32 + 2 * j + q]);
                }
            }
        }
        out
    }
}

/// Where the bfloat16 products run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// The AMX tile unit (`tdpbf16ps`).
    Amx,
    /// AVX-512 BF16 dot products (`vdpbf16ps`).
    #[serde(rename = "avx512_bf16")]
    Avx512Bf16,
    /// float32 products of the bfloat16-rounded operands.
    Emulated,
}

impl Unit {
    /// The unit in reports (`amg bench --precision bf16`).
    pub fn describe(self) -> &'static str {
        match self {
            Unit::Amx => "AMX tiles",
            Unit::Avx512Bf16 => "AVX-512 BF16",
            Unit::Emulated => "no bfloat16 unit used on this CPU: emulated in float32, slower than float32",
        }
    }

    /// The units this CPU can run (`Emulated` always, and last). The tests run each.
    pub fn available() -> &'static [Unit] {
        static UNITS: OnceLock<Vec<Unit>> = OnceLock::new();
        UNITS.get_or_init(|| {
            let mut units = Vec::new();
            if amx_available() {
                units.push(Unit::Amx);
            }
            if super::isa() == super::Isa::Avx512 && dot::available() {
                units.push(Unit::Avx512Bf16);
            }
            units.push(Unit::Emulated);
            units
        })
    }
}

/// The unit `matmul_bf16` uses: AMX where the process can use it; else AVX-512 BF16 on AMD CPUs,
/// where `vdpbf16ps` runs at twice the float32 multiply-add rate; else the float32 emulation —
/// also on Intel CPUs that have AVX-512 BF16 without AMX (or without the kernel's permission to use
/// it), where `vdpbf16ps` runs at half the float32 rate, slower than the emulation. Both hardware units need the element-wise kernels at AVX-512 (so `AMG_ISA=avx2` or
/// `portable` turns them off too). Decided once per process (the vendor check is a CPUID, which
/// a virtual machine may trap: not something to run on every product).
pub fn unit() -> Unit {
    static UNIT: OnceLock<Unit> = OnceLock::new();
    *UNIT.get_or_init(|| {
        let has = |u| Unit::available().contains(&u);
        if has(Unit::Amx) {
            Unit::Amx
        } else if has(Unit::Avx512Bf16) && dot::amd() {
            Unit::Avx512Bf16
        } else {
            Unit::Emulated
        }
    })
}

/// Whether this process can use the AMX tile unit: the CPU has AMX-TILE and AMX-BF16, the
/// operating system saves the tile state, Linux granted this process the tile data (asked once),
/// and the element-wise kernels run at AVX-512 (so `AMG_ISA` turns AMX off with them).
pub fn amx_available() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| super::isa() == super::Isa::Avx512 && amx::enable())
}

/// `c[:, 0..cols.len()] (row stride ldc) ⟵ a·B[:, cols]` (or `+=`), then the epilogue (bias
/// indexed from `cols.start` as 0), with both operands rounded to bfloat16 and float32
/// accumulation; `threads` threads.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16(a: Mat, b: &PackedBf16, cols: Range<usize>, c: &mut [f32], ldc: usize, acc: Acc, threads: usize, epi: Epilogue) {
    matmul_bf16_on(unit(), a, b, cols, c, ldc, acc, threads, epi)
}

/// `matmul_bf16` on the given unit, which must be one of `Unit::available()`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16_on(unit: Unit, a: Mat, b: &PackedBf16, cols: Range<usize>, c: &mut [f32], ldc: usize, acc: Acc, threads: usize, epi: Epilogue) {
    assert!(Unit::available().contains(&unit), "bfloat16 unit {unit:?} not available on this CPU");
    let (m, k) = (a.rows, a.cols);
    let n = super::check_product(&a, b.k, &b.parts, &cols, c, ldc, &epi);
    if m == 0 || n == 0 {
        return;
    }
    if unit == Unit::Emulated {
        let w = b.rounded.get_or_init(|| b.to_row_major());
        let ar: Vec<f32> = (0..m).flat_map(|i| a.data[i * a.ld..i * a.ld + k].iter().map(|&v| round_bf16(v))).collect();
        matmul_then(Mat::dense(&ar, m, k), Mat::new(&w[cols.start..], k, n, b.n), c, ldc, acc, 1.0, threads, epi);
        return;
    }
    // The activations in bfloat16, rows padded to a multiple of 32 and k to a multiple of 32.
    let (mp, kp) = (m.div_ceil(BLOCK) * BLOCK, k.div_ceil(KB) * KB);
    let mut ab = vec![0u16; mp * kp];
    ab.par_chunks_mut(kp).take(m).enumerate().for_each(|(i, row)| to_bf16_row(&a.data[i * a.ld..i * a.ld + k], &mut row[..k]));
    let segs: Vec<&Segment> = b.segments.iter().filter(|s| s.col0 >= cols.start && s.col0 + s.ncols <= cols.end).collect();
    // Tasks: (segment, block of 32 rows, run of column blocks), a few per thread.
    let mut tasks = Vec::new();
    for (si, s) in segs.iter().enumerate() {
        let nblocks = s.ncols.div_ceil(BLOCK);
        let run = (nblocks * (mp / BLOCK)).div_ceil(4 * threads.max(1)).clamp(1, nblocks);
        for ib in 0..mp / BLOCK {
            for j0 in (0..nblocks).step_by(run) {
                tasks.push((si, ib, j0..(j0 + run).min(nblocks)));
            }
        }
    }
    let cp = SendPtr(c.as_mut_ptr());
    let job = |&(si, ib, ref jbs): &(usize, usize, Range<usize>)| {
        let s = segs[si];
        let rows = ib * BLOCK..((ib + 1) * BLOCK).min(m);
        let out_col0 = s.col0 - cols.start;
        let kblocks = kp / KB;
        let mut tile_out = [0f32; BLOCK * BLOCK];
        let tiles = (unit == Unit::Amx).then(amx::Tiles::configure);
        let a_rows = &ab[ib * BLOCK * kp..(ib + 1) * BLOCK * kp];
        for jb in jbs.clone() {
            let b_tiles = &s.tiles[jb * kblocks * 2 * TILE..(jb + 1) * kblocks * 2 * TILE];
            match &tiles {
                Some(tiles) => tiles.block(a_rows, kp, b_tiles, &mut tile_out),
                None => dot::block(a_rows, kp, b_tiles, rows.len(), &mut tile_out),
            }
            let ncols = BLOCK.min(s.ncols - jb * BLOCK);
            let j0 = out_col0 + jb * BLOCK;
            for (r, i) in rows.clone().enumerate() {
                // SAFETY: row i < m, columns j0..j0+ncols lie inside 0..n (the segment's block);
                // `matmul_bf16_on` checked that c holds m rows of n values ldc apart, and this task
                // alone writes rows of block ib × its column blocks.
                let dst = unsafe { std::slice::from_raw_parts_mut(cp.get().add(i * ldc + j0), ncols) };
                let src = &tile_out[r * BLOCK..r * BLOCK + ncols];
                match acc {
                    Acc::Overwrite => dst.copy_from_slice(src),
                    Acc::Add => dst.iter_mut().zip(src).for_each(|(d, s)| *d += s),
                }
                if let Epilogue::Bias(bias) | Epilogue::BiasGelu(bias) = epi {
                    super::rows::bias_act_row(dst, &bias[j0..j0 + ncols], matches!(epi, Epilogue::BiasGelu(_)));
                }
            }
        }
    };
    if threads <= 1 || tasks.len() <= 1 {
        tasks.iter().for_each(job);
    } else {
        tasks.par_iter().for_each(job);
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;

    /// The tile configuration `ldtilecfg` reads (palette 1): eight tiles of 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    static CONFIG: Config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// CPUID leaf 7 reports AMX-TILE and AMX-BF16, XCR0 has the tile state enabled, and Linux
    /// grants this process the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
    pub fn enable() -> bool {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // CPUID exists on every x86_64 CPU (leaf 7 is used only if the maximum leaf allows it).
        let (max_leaf, leaf1, leaf7) = (__cpuid(0).eax, __cpuid(1), __cpuid_count(7, 0));
        let osxsave = leaf1.ecx & (1 << 27) != 0;
        let amx = max_leaf >= 7 && leaf7.edx & (1 << 24) != 0 && leaf7.edx & (1 << 22) != 0;
        if !(osxsave && amx && cfg!(target_os = "linux")) {
            return false;
        }
        let (lo, _hi): (u32, u32);
        // SAFETY: XGETBV with ECX = 0 is available when CPUID.1:ECX.OSXSAVE is set (checked).
        unsafe { asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi, options(nomem, nostack, preserves_flags)) };
        if lo & (0b11 << 17) != 0b11 << 17 {
            return false;
        }
        let ret: i64;
        // SAFETY: the arch_prctl system call (158) with ARCH_REQ_XCOMP_PERM (0x1023) and feature 18
        // (XTILEDATA) only changes which state the kernel saves for this process; `syscall`
        // clobbers rcx and r11, declared here.
        unsafe { asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023i64, in("rsi") 18i64, lateout("rcx") _, lateout("r11") _, options(nostack)) };
        ret == 0
    }

    /// The tile unit configured on this thread (eight 16 × 64-byte tiles) until dropped. Made
    /// only after `amx_available` enabled the unit for this process.
    pub struct Tiles(std::marker::PhantomData<*const ()>);

    impl Tiles {
        pub fn configure() -> Tiles {
            // SAFETY: `amx_available` (the only way here) enabled the tile unit for this process;
            // ldtilecfg reads the 64-byte configuration and sets this thread's tile shapes. The
            // value is !Send, so it is dropped (tilerelease) on the thread that configured it.
            unsafe { asm!("ldtilecfg [{0}]", in(reg) &CONFIG as *const Config, options(nostack, readonly)) };
            Tiles(std::marker::PhantomData)
        }

        /// One 32×32 float32 block `out` (row-major) ⟵ A·B, with `a` 32 rows of `kp` bfloat16 (kp
        /// a multiple of 32) and `b` the block's kp/32 × 2 B tiles.
        pub fn block(&self, a: &[u16], kp: usize, b: &[u16], out: &mut [f32; 1024]) {
            block(a, kp, b, out)
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: returns this thread's tile unit to its initial state; no tile is in use.
            unsafe { asm!("tilerelease", options(nomem, nostack)) };
        }
    }

    fn block(a: &[u16], kp: usize, b: &[u16], out: &mut [f32; 1024]) {
        let kblocks = kp / 32;
        assert!(a.len() >= 32 * kp && b.len() >= kblocks * 2 * 512, "tile operands out of bounds");
        let stride = kp * 2;
        // SAFETY: the caller holds a `Tiles`: this thread's unit is configured with eight tiles of
        // 16 rows × 64 bytes. Each tileloadd reads 16 rows of 64 bytes: A rows 0..16 / 16..32 at
        // columns kb·32.. (inside `a`: 32 rows × kp, checked above), B tiles of 16 × 64
        // contiguous bytes (inside `b`, checked above). The stores write 16 rows × 64 bytes into
        // `out` at row stride 128 bytes: rows 0..32, 32 columns.
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nomem, nostack));
            for kb in 0..kblocks {
                let a0 = a.as_ptr().add(kb * 32);
                let a1 = a.as_ptr().add(16 * kp + kb * 32);
                let b0 = b.as_ptr().add(kb * 2 * 512);
                let b1 = b0.add(512);
                asm!(
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    "tileloadd tmm5, [{a1} + {s}*1]",
                    "tileloadd tmm6, [{b0} + {w}*1]",
                    "tileloadd tmm7, [{b1} + {w}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1, s = in(reg) stride, w = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            let o = out.as_mut_ptr();
            asm!(
                "tilestored [{o0} + {s}*1], tmm0",
                "tilestored [{o1} + {s}*1], tmm1",
                "tilestored [{o2} + {s}*1], tmm2",
                "tilestored [{o3} + {s}*1], tmm3",
                o0 = in(reg) o, o1 = in(reg) o.add(16), o2 = in(reg) o.add(16 * 32), o3 = in(reg) o.add(16 * 32 + 16), s = in(reg) 128usize,
                options(nostack),
            );
        }
    }
}

/// The AVX-512 BF16 kernel: a block's 32 columns are two registers of 16 lanes; each k pair
/// (2r, 2r+1) of a row of A, broadcast, is multiplied into both by `vdpbf16ps`. Rows go eight at a
/// time (16 accumulators, two B registers).
///
/// Each 32 values of k are summed from zero and then added to the running totals, rather than
/// accumulated in one chain over the whole of k: the long chain drifts from the float64 product of
/// the same bfloat16 operands, by one sign, several times as far as the float32 emulation does
/// (enough to move whole-model features visibly); short chains stay as close as the emulation.
#[cfg(target_arch = "x86_64")]
mod dot {
    use std::arch::x86_64::*;

    /// The CPU has AVX-512F and AVX-512 BF16.
    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }

    /// The CPU is AMD's (CPUID vendor "AuthenticAMD").
    pub fn amd() -> bool {
        // CPUID leaf 0 exists on every x86_64 CPU.
        let v = __cpuid(0);
        [v.ebx, v.edx, v.ecx].iter().flat_map(|r| r.to_le_bytes()).eq(*b"AuthenticAMD")
    }

    /// One 32×32 float32 block `out` (row-major) ⟵ A·B, as `amx::Tiles::block`, for the first
    /// `live` rows rounded up to a multiple of eight; the rest of `out` is left as it was.
    pub fn block(a: &[u16], kp: usize, b: &[u16], live: usize, out: &mut [f32; 1024]) {
        assert!(kp.is_multiple_of(32) && live <= 32, "block shape");
        assert!(a.len() >= 32 * kp && b.len() >= kp / 32 * 2 * 512, "block operands out of bounds");
        assert!(available(), "AVX-512 BF16 asked of a CPU without it");
        // SAFETY: the CPU has the features `block_impl` is compiled for (asserted above).
        unsafe { block_impl(a, kp, b, live, out) }
    }

    /// 32 bfloat16 values seen as the type `vdpbf16ps` takes.
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 64 bytes of plain SIMD data; every bit pattern is a valid value of each.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    fn block_impl(a: &[u16], kp: usize, b: &[u16], live: usize, out: &mut [f32; 1024]) {
        for g in (0..live).step_by(8) {
            let mut total = [[_mm512_setzero_ps(); 2]; 8];
            for kb in 0..kp / 32 {
                let mut acc = [[_mm512_setzero_ps(); 2]; 8];
                let tiles = &b[kb * 1024..(kb + 1) * 1024];
                for r in 0..16 {
                    // SAFETY: `tiles` holds 1024 u16 (bounds-checked slice): tile rows r of the
                    // two halves, 32 u16 = 64 bytes each, at r·32 and 512 + r·32.
                    let (b0, b1) = unsafe {
                        (
                            _mm512_loadu_si512(tiles.as_ptr().add(r * 32) as *const __m512i),
                            _mm512_loadu_si512(tiles.as_ptr().add(512 + r * 32) as *const __m512i),
                        )
                    };
                    let (b0, b1) = (bh(b0), bh(b1));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let p = (g + i) * kp + kb * 32 + 2 * r;
                        // SAFETY: g + i < 32 and kb·32 + 2r + 1 < kp, so p + 1 < 32·kp ≤ a.len()
                        // (asserted in `block`): the pair (a[p], a[p + 1]) as one 32-bit value.
                        let pair = unsafe { (a.as_ptr().add(p) as *const i32).read_unaligned() };
                        let av = bh(_mm512_set1_epi32(pair));
                        acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
                    }
                }
                for (t, a) in total.iter_mut().zip(&acc) {
                    t[0] = _mm512_add_ps(t[0], a[0]);
                    t[1] = _mm512_add_ps(t[1], a[1]);
                }
            }
            for (i, acc) in total.iter().enumerate() {
                let row = &mut out[(g + i) * 32..(g + i + 1) * 32];
                // SAFETY: `row` is 32 f32 = two 16-lane stores.
                unsafe {
                    _mm512_storeu_ps(row.as_mut_ptr(), acc[0]);
                    _mm512_storeu_ps(row.as_mut_ptr().add(16), acc[1]);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod dot {
    pub fn available() -> bool {
        false
    }
    pub fn amd() -> bool {
        false
    }
    pub fn block(_a: &[u16], _kp: usize, _b: &[u16], _live: usize, _out: &mut [f32; 1024]) {
        unreachable!("AVX-512 BF16 is never used off x86_64")
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub fn enable() -> bool {
        false
    }
    pub struct Tiles;
    impl Tiles {
        pub fn configure() -> Tiles {
            unreachable!("AMX is never enabled off x86_64")
        }
        pub fn block(&self, _a: &[u16], _kp: usize, _b: &[u16], _out: &mut [f32; 1024]) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::matmul;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = amg_core::rng::Rng::new(seed);
        (0..n).map(|_| rng.f32() - 0.5).collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // Values built from their bits: exactly representable ones stay, halfway ones go to the
        // even neighbour, others to the nearer one.
        for hi in [0x3f80u32, 0x3f81, 0xbf80, 0x4049, 0x0001] {
            let x = f32::from_bits(hi << 16);
            assert_eq!(to_bf16(x), hi as u16);
            let tie = f32::from_bits((hi << 16) | 0x8000);
            assert_eq!(to_bf16(tie), (hi + (hi & 1)) as u16, "tie above {hi:#x}");
            assert_eq!(to_bf16(f32::from_bits((hi << 16) | 0x7fff)), hi as u16);
            assert_eq!(to_bf16(f32::from_bits((hi << 16) | 0x8001)), (hi + 1) as u16);
        }
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn products_equal_float64_products_of_the_rounded_operands() {
        // Every unit this CPU has (AMX, AVX-512 BF16, and float32 from the rounded operands
        // everywhere), against a float64 product of the rounded operands: shapes with rows, k and
        // columns off the 32 multiples, parts, accumulate, epilogues, one and two threads.
        let shapes: &[(usize, usize, usize, &[usize])] = &[(1, 7, 5, &[]), (33, 64, 70, &[32]), (197, 192, 200, &[64, 128]), (40, 100, 33, &[])];
        let ways = Unit::available();
        for &(m, k, n, parts) in shapes {
            let a = rand(m * k, 1);
            let w = rand(k * n, 2);
            let bias = rand(n, 3);
            let pb = PackedBf16::new(&w, k, n, parts);
            let wr: Vec<f32> = w.iter().map(|&v| round_bf16(v)).collect();
            assert_eq!(pb.to_row_major(), wr);
            for win in crate::part_bounds(parts, n).windows(2) {
                let cols = win[0]..win[1];
                let nc = cols.len();
                for &unit in ways {
                    for threads in [1, 2] {
                        for (acc, gelu) in [(Acc::Overwrite, false), (Acc::Add, true)] {
                            let init = rand(m * (nc + 3), 4);
                            let mut got = init.clone();
                            let epi = if gelu { Epilogue::BiasGelu(&bias[cols.clone()]) } else { Epilogue::Bias(&bias[cols.clone()]) };
                            matmul_bf16_on(unit, Mat::dense(&a, m, k), &pb, cols.clone(), &mut got, nc + 3, acc, threads, epi);
                            for i in 0..m {
                                for j in 0..nc + 3 {
                                    let g = got[i * (nc + 3) + j];
                                    if j >= nc {
                                        assert_eq!(g, init[i * (nc + 3) + j], "column {j} past the product was written");
                                        continue;
                                    }
                                    let dot: f64 = (0..k).map(|p| round_bf16(a[i * k + p]) as f64 * wr[p * n + cols.start + j] as f64).sum();
                                    let mut want = dot + bias[cols.start + j] as f64;
                                    if acc == Acc::Add {
                                        want += init[i * (nc + 3) + j] as f64;
                                    }
                                    if gelu {
                                        want = crate::math::gelu(want as f32) as f64;
                                    }
                                    assert!(
                                        (g as f64 - want).abs() <= 2e-5 * (1.0 + want.abs()),
                                        "{unit:?} m {m} k {k} n {n} cols {cols:?} threads {threads} ({i}, {j}): {g} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bfloat16_products_stay_near_float32_ones() {
        // The rounding error of bfloat16 operands (2^-9 relative each) on a k = 384 product.
        let (m, k, n) = (50, 384, 96);
        let a = rand(m * k, 5);
        let w = rand(k * n, 6);
        let pb = PackedBf16::new(&w, k, n, &[]);
        let mut want = vec![0f32; m * n];
        matmul(Mat::dense(&a, m, k), Mat::dense(&w, k, n), &mut want, n, Acc::Overwrite, 1.0, 1);
        let mut got = vec![0f32; m * n];
        matmul_bf16(Mat::dense(&a, m, k), &pb, 0..n, &mut got, n, Acc::Overwrite, 2, Epilogue::None);
        let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        assert!(worst > 0.0 && worst < 2e-2 * scale, "worst {worst} of scale {scale}");
    }
}

//! CPU kernels: gemm (the `gemm` crate's AVX-512 kernels), fused, vectorised, multi-threaded
//! element-wise work (layer norm, bias + GELU, softmax, attention), and the same kernels as candle
//! custom ops with hand-written backward passes for training (`block`: a whole transformer block;
//! `autodiff`: the layers around the blocks).
//!
//! Element-wise kernels are written as plain loops over fixed-width lanes and compiled three
//! times — for AVX-512, for AVX2+FMA and portable — with the widest the CPU supports picked at run
//! time (`simd_fn!`), so one binary is fast on this project's AVX-512 machines and still runs
//! anywhere.
//!
//! This crate holds amg's SIMD code and all of its `unsafe` blocks but one (the memory map of a
//! safetensors file, in amg-model); every block states its invariant in a SAFETY comment.

// Unsafe operations inside an `unsafe fn` still need their own `unsafe` block and SAFETY comment.
#![deny(unsafe_op_in_unsafe_fn)]

use amg_core::{Error, Result};

pub mod alloc;
pub mod attention;
pub mod autodiff;
pub mod bf16;
pub mod block;
pub mod gemm;
pub mod int8;
pub mod math;
pub mod optim;
pub mod packed;
pub mod prof;
pub mod rows;

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// The widest instruction set the element-wise kernels use: the best the CPU has, or the one the
/// environment variable `AMG_ISA` (`avx512`, `avxvnni`, `avx2`, `portable`) asks for — never more
/// than the CPU has (`avxvnni` matters to the INT8 products, `int8::unit`; here it is `avx2`). Tests run every path this way; on other architectures it is always `Portable`.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect();
        match std::env::var("AMG_ISA").ok().as_deref() {
            Some("portable") => Isa::Portable,
            Some("avx2" | "avxvnni") if best != Isa::Portable => Isa::Avx2,
            _ => best,
        }
    })
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512bw")
        {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// Defines `pub fn $name(args)` whose body is compiled for AVX-512, AVX2+FMA and portable code,
/// dispatching on `isa()`.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                // `v4`/`v3` are `imp` compiled for AVX-512 / AVX2; they are unsafe only because
                // calling them on a CPU without those features is undefined behaviour.
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                match $crate::isa() {
                    // SAFETY: `isa()` verified the CPU supports these features.
                    $crate::Isa::Avx512 => return unsafe { v4($($arg),*) },
                    $crate::Isa::Avx2 => return unsafe { v3($($arg),*) },
                    $crate::Isa::Portable => {}
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// Runs `f` on one of rayon's pool threads (directly when already on one), so that the parallel
/// steps inside it fork from within the pool, whose other threads are still awake from the step
/// before, instead of each waking the pool from outside and putting the caller to sleep. A forward
/// pass (~100 parallel steps per image) or a training step (hundreds) is one such entry.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// A raw pointer that may cross threads; users guarantee disjoint access.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);

impl SendPtr {
    /// The pointer. A closure that calls this captures the whole `SendPtr` (which is `Send`), not
    /// its field (which is not).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: a `SendPtr` is only an address; sending or sharing it between threads is harmless by
// itself. Every dereference is inside an `unsafe` block whose SAFETY comment states why the
// threads' accesses through it are disjoint (each parallel task writes its own rows or columns).
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for SendPtr {}

/// Rows per parallel task for row-wise kernels: a few tasks per thread, not too small.
/// Below ~16k elements a task costs more to hand to another thread than to run.
pub(crate) fn rows_per_task(rows: usize, row_len: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let min_rows = (16384 / row_len.max(1)).max(1);
    rows.div_ceil(4 * threads).max(min_rows)
}

/// The checks a product with a packed weight (`k` rows, column boundaries `parts`) makes before it
/// touches memory: inner dimensions agree, the column range starts and ends on a boundary, the left
/// operand and the destination (`m` rows, `ldc` apart) hold what the product reads and writes, a
/// bias has one value per column. Panics otherwise (the callers' inputs come from checked models).
/// Returns the product's column count.
pub(crate) fn check_product(a: &gemm::Mat, k: usize, parts: &[usize], cols: &std::ops::Range<usize>, c: &[f32], ldc: usize, epi: &gemm::Epilogue) -> usize {
    let m = a.rows;
    assert_eq!(a.cols, k, "inner dimensions differ");
    assert!(parts.contains(&cols.start) && parts.contains(&cols.end) && cols.start <= cols.end, "column range {cols:?} not on a part boundary");
    let n = cols.len();
    assert!(m == 0 || (m - 1) * ldc + n <= c.len(), "destination out of bounds");
    assert!(m == 0 || (m - 1) * a.ld + k <= a.data.len(), "left operand out of bounds");
    if let gemm::Epilogue::Bias(bias) | gemm::Epilogue::BiasGelu(bias) = epi {
        assert_eq!(bias.len(), n, "bias length");
    }
    n
}

/// The column boundaries a product may start or end at: `parts` inside 0..n, with 0 and n, sorted.
pub(crate) fn part_bounds(parts: &[usize], n: usize) -> Vec<usize> {
    let mut bounds: Vec<usize> = parts.iter().copied().filter(|&p| p > 0 && p < n).collect();
    bounds.extend([0, n]);
    bounds.sort_unstable();
    bounds.dedup();
    bounds
}

/// Deterministic values in [-0.5, 0.5) for the kernels' tests (an LCG: no dependency).
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

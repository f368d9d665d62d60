//! Allocator tuning for tensor-sized buffers.
//!
//! A training step allocates and frees its activations and gradients — hundreds of buffers of up
//! to tens of MB — every step. Left alone, glibc serves them from per-thread arenas, whose heaps
//! are at most 64 MB and are mapped and unmapped as they fill and empty, and from fresh `mmap`s
//! above its (dynamic) mmap threshold; either way the memory goes back to the kernel at the end of
//! the step and comes back as page faults and kernel-zeroed pages in the next — hundreds of
//! thousands of faults per training step, even with only the thresholds raised. So the process keeps one
//! arena (every thread allocates from the main heap, which has no size limit), never maps buffers
//! separately, and never trims: after the first step, buffers are reused and a step faults no page.
//! The price is that the process keeps its peak heap until it exits, which suits a command-line
//! tool. (glibc caps M_MMAP_THRESHOLD at 32 MB and, once M_TRIM_THRESHOLD is set, stops adjusting
//! it; hence M_MMAP_MAX = 0 rather than a large threshold.)

use std::sync::Mutex;

/// Call once at start-up, before the worker threads allocate (idempotent, cheap). No-op off glibc.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::Once;
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only adjusts allocator parameters (each call is independent and
            // returns 0 if a value is refused, leaving glibc's default); it runs once (Once).
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 1);
                libc::mallopt(libc::M_MMAP_MAX, 0);
                // -1 is SIZE_MAX to glibc: never give the top of the heap back.
                libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
            }
        });
    }
}

/// An output buffer of `n` values for a kernel that overwrites it. Zeroed: handing out
/// uninitialised `f32`s from a safe function would be unsound, and the zeroing costs little next to
/// the products that fill these buffers. (Where it does not, `scratch` reuses a recycled buffer.)
pub fn output(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

/// `n` values that repeat `row` (`n` a multiple of its length): e.g. a bias broadcast over the rows
/// of a product's output, which the product then accumulates into — one pass over the output
/// instead of three (zeroing, product, bias). A recycled buffer is filled by all threads.
pub fn filled_rows(n: usize, row: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    let d = row.len();
    assert!(d > 0 && n.is_multiple_of(d), "{n} values do not hold whole rows of {d}");
    match pooled(n) {
        Some(mut v) => {
            let per = (16384 / d).max(1) * d;
            v.par_chunks_mut(per).for_each(|c| c.chunks_exact_mut(d).for_each(|r| r.copy_from_slice(row)));
            v
        }
        None => row.repeat(n / d),
    }
}

/// Buffers given back with `recycle`, for `scratch` to hand out again: a training step needs the
/// same sizes every step, and a recycled buffer spares the zeroing pass a fresh one costs (about
/// 15 MB per ViT-Ti block and step at 128x64 batch 32, i.e. ~185 MB of writes per step).
static POOL: Mutex<Pool> = Mutex::new(Pool { bufs: Vec::new(), bytes: 0 });

struct Pool {
    bufs: Vec<Vec<f32>>,
    bytes: usize,
}

/// The pool keeps at most this many buffers and bytes; beyond, the oldest are freed (so buffers of
/// sizes no longer asked for, e.g. after training when evaluation starts, do not stay).
const POOL_BUFFERS: usize = 512;
const POOL_BYTES: usize = 1 << 30;

/// Takes a recycled buffer of exactly `n` values, if there is one.
fn pooled(n: usize) -> Option<Vec<f32>> {
    // A poisoned lock only means a panic elsewhere while it was held; the list stays valid.
    let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let i = p.bufs.iter().rposition(|b| b.len() == n)?;
    let v = p.bufs.swap_remove(i);
    p.bytes -= n * 4;
    Some(v)
}

/// A buffer of `n` values whose contents are unspecified (but initialised: zeros, or what a
/// previous user left), for a kernel that writes every element before reading any. Reuses a
/// recycled buffer of that length when there is one.
pub fn scratch(n: usize) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    pooled(n).unwrap_or_else(|| output(n))
}

/// A copy of `x` (in a recycled buffer when there is one).
pub fn copied(x: &[f32]) -> Vec<f32> {
    match pooled(x.len()) {
        Some(mut v) => {
            v.copy_from_slice(x);
            v
        }
        None => x.to_vec(),
    }
}

/// Gives buffers back for `scratch` to reuse.
pub fn recycle(bufs: impl IntoIterator<Item = Vec<f32>>) {
    let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
    for v in bufs {
        if v.is_empty() || v.len() * 4 > POOL_BYTES {
            continue;
        }
        p.bytes += v.len() * 4;
        p.bufs.push(v);
        while p.bufs.len() > POOL_BUFFERS || p.bytes > POOL_BYTES {
            let old = p.bufs.remove(0);
            p.bytes -= old.len() * 4;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_and_recycled_buffers() {
        // A recycled buffer (stale values) and fresh ones of several sizes.
        recycle([vec![7.0; 3 * 4099]]);
        for n in [0, 3, 12, 3 * 4099, 3 << 16] {
            let v = filled_rows(n, &[1.0, 2.0, 3.0]);
            assert_eq!(v.len(), n);
            assert!(v.chunks(3).all(|r| r == [1.0, 2.0, 3.0]));
        }
        recycle([vec![7.0; 12_345], vec![8.0; 12_346]]);
        assert_eq!(scratch(12_345).len(), 12_345);
        assert_eq!(copied(&[5.0; 12_346]), vec![5.0; 12_346]);
        assert_eq!(scratch(12_347), vec![0.0; 12_347], "no buffer of that length: a fresh, zeroed one");
        let z = output(1 << 17);
        assert!(z.len() == 1 << 17 && z.iter().all(|&x| x == 0.0));
    }
}

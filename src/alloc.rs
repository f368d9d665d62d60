//! Allocator tuning for tensor-sized buffers.
//!
//! A training step allocates and frees its activations and gradients — hundreds of buffers of up
//! to tens of MB — every step. Left alone, glibc serves them from per-thread arenas, whose heaps
//! are at most 64 MB and are mapped and unmapped as they fill and empty, and from fresh `mmap`s
//! above its (dynamic) mmap threshold; either way the memory goes back to the kernel at the end of
//! the step and comes back as page faults and kernel-zeroed pages in the next: measured at ~370 000
//! faults (1.5 GB) and ~0.9 s of system time per ViT-Ti 256x128 batch-64 step on 2 cores, and still
//! ~170 000 per ViT-S 224 batch-32 step with only the thresholds raised. So the process keeps one
//! arena (every thread allocates from the main heap, which has no size limit), never maps buffers
//! separately, and never trims: after the first step, buffers are reused and a step faults no page.
//! The price is that the process keeps its peak heap until it exits, which suits a command-line
//! tool. (glibc caps M_MMAP_THRESHOLD at 32 MB and, once M_TRIM_THRESHOLD is set, stops adjusting
//! it; hence M_MMAP_MAX = 0 rather than a large threshold.)

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
/// the products that fill these buffers.
pub fn output(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

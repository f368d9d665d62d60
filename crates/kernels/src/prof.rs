//! Opt-in phase timing for inference and training: `AMG_PROFILE=1 amg bench …` prints where the time
//! of a forward pass or a training step goes. Off, it costs one relaxed atomic load per phase.
//! Phases that run on several threads at once (a batch's images in parallel, or the rows of a
//! batch smaller than the thread count) add up each thread's time, so the table gives shares of
//! the work, not of the wall-clock time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

static ENABLED: OnceLock<bool> = OnceLock::new();
static ACTIVE: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Vec<(&'static str, f64, u64)>> = Mutex::new(Vec::new());

fn enabled() -> bool {
    *ENABLED.get_or_init(|| {
        let on = std::env::var_os("AMG_PROFILE").is_some();
        ACTIVE.store(on, Ordering::Relaxed);
        on
    })
}

/// Times `f` under `name` when profiling is on.
#[inline]
pub fn phase<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    let dt = t.elapsed().as_secs_f64();
    let mut tot = TOTALS.lock().unwrap();
    match tot.iter_mut().find(|(n, _, _)| *n == name) {
        Some(e) => {
            e.1 += dt;
            e.2 += 1;
        }
        None => tot.push((name, dt, 1)),
    }
    r
}

/// Clears the accumulated times (e.g. after warm-up).
pub fn reset() {
    TOTALS.lock().unwrap().clear();
}

/// The accumulated table, largest first; empty when profiling is off.
pub fn report() -> String {
    let tot = TOTALS.lock().unwrap();
    let sum: f64 = tot.iter().map(|e| e.1).sum();
    let mut rows: Vec<_> = tot.clone();
    rows.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    rows.iter().map(|(n, t, c)| format!("{n:>14} {:>9.1} ms {:>5.1} % ({c} calls)\n", t * 1e3, 100.0 * t / sum.max(1e-12))).collect()
}

//! `amg bench`: measured inference throughput.

use crate::engine::{Engine, Want, Workspace};
use crate::error::Result;
use crate::rng::Rng;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub batch_size: usize,
    pub iters: usize,
    pub threads: usize,
    /// Median wall time of one batch.
    pub ms_per_batch: f64,
    pub img_per_s: f64,
}

/// Times `iters` forward passes of `batch` random images (after two warm-up passes) and reports
/// the median.
pub fn bench_inference(engine: &Engine, batch: usize, iters: usize, progress: bool) -> Result<BenchResult> {
    let mut rng = Rng::new(0);
    let input: Vec<f32> = (0..batch * engine.image_len()).map(|_| rng.normal() as f32).collect();
    let mut ws = Workspace::default();
    for _ in 0..2 {
        engine.forward(&input, batch, &mut ws, Want::default())?;
    }
    crate::kernels::prof::reset();
    let pb = crate::progress::bar(iters as u64, "bench", "batches");
    if !progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = std::time::Instant::now();
        engine.forward(&input, batch, &mut ws, Want::default())?;
        times.push(t.elapsed().as_secs_f64());
        pb.inc(1);
    }
    pb.finish_and_clear();
    eprint!("{}", crate::kernels::prof::report());
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    Ok(BenchResult { batch_size: batch, iters: times.len(), threads: rayon::current_num_threads(), ms_per_batch: med * 1e3, img_per_s: batch as f64 / med })
}

/// Loader throughput: decodes (and augments) up to `limit` images of `paths` in batches, with
/// nothing consuming them, and reports images per second.
pub fn bench_loader(paths: &[std::path::PathBuf], spec: &crate::model::config::InputSpec, augment: Option<crate::data::loader::Augment>, batch: usize, limit: usize) -> Result<f64> {
    use crate::data::loader::{for_each_batch, LoaderOptions};
    let n = paths.len().min(limit);
    let order: Vec<usize> = (0..n).collect();
    let opts = LoaderOptions { augment, ..LoaderOptions::inference(batch) };
    let t = std::time::Instant::now();
    let mut count = 0;
    for_each_batch(paths, &order, spec, &opts, |b| {
        count += b.len();
        Ok(())
    })?;
    Ok(count as f64 / t.elapsed().as_secs_f64())
}

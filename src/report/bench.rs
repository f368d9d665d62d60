//! `amg bench`: measured inference throughput, loader throughput and training-step time.

use candle_core::{Device, Tensor};
use crate::engine::{Engine, Want, Workspace};
use crate::error::Result;
use crate::kernels::prof;
use crate::model::vit::{Mode, Vit};
use crate::model::{weights::init_random, Arch, HeadConfig, ModelConfig, ModelFiles, Source};
use crate::rng::Rng;
use crate::train::loss::{la_loss, Distill, LossConfig};
use crate::train::optim::{OptimConfig, OptimKind, Optimizer};
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
pub fn bench_loader(paths: &[std::path::PathBuf], spec: &crate::preprocess::InputSpec, augment: Option<crate::data::loader::Augment>, batch: usize, limit: usize) -> Result<f64> {
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

#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    pub what: String,
    pub batch_size: usize,
    pub iters: usize,
    /// Median wall time of one step (forward, loss, backward, optimiser).
    pub ms_per_step: f64,
    pub steps_per_s: f64,
    pub img_per_s: f64,
    pub forward_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Times `iters` steps (after two warm-up steps) of `step`, which returns its forward time.
fn time_steps(iters: usize, progress: bool, mut step: impl FnMut() -> Result<f64>) -> Result<(f64, f64)> {
    for _ in 0..2 {
        step()?;
    }
    prof::reset();
    let pb = crate::progress::bar(iters as u64, "bench", "steps");
    if !progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut total, mut fwd) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(1) {
        let t = std::time::Instant::now();
        fwd.push(step()?);
        total.push(t.elapsed().as_secs_f64());
        pb.inc(1);
    }
    pb.finish_and_clear();
    eprint!("{}", prof::report());
    Ok((median(total), median(fwd)))
}

/// One LA-Transformer training step on random images: forward in training mode (BatchNorm batch
/// statistics, dropout 0.5), the sum of part cross-entropies, backward, AdamW.
pub fn bench_la_step(arch: Arch, (h, w): (usize, usize), batch: usize, classes: usize, iters: usize, progress: bool) -> Result<TrainBench> {
    let cfg = ModelConfig::new(arch, h, w, HeadConfig::la(classes), Source { format: "random".into(), ..Default::default() })?;
    let label = format!("LA {}{} {h}x{w}", cfg.arch.preset.clone().map(|p| format!("ViT-{p}")).unwrap_or_default(), "");
    let tensors = init_random(&cfg, 0);
    let dev = Device::Cpu;
    let mut model = Vit::new(&ModelFiles { config: cfg, tensors }, &dev)?;
    let mut rng = Rng::new(1);
    let x = Tensor::from_vec((0..batch * 3 * h * w).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (batch, 3, h, w), &dev)?;
    let labels = Tensor::from_vec((0..batch).map(|_| rng.below(classes) as u32).collect::<Vec<_>>(), batch, &dev)?;
    let mut opt = Optimizer::new(OptimConfig::new(OptimKind::Adamw, 1e-3));
    let loss_cfg = LossConfig { label_smoothing: 0.0, distill: Distill::None };
    let (step, fwd) = time_steps(iters, progress, || {
        let t = std::time::Instant::now();
        let out = model.forward(&x, Mode { train: true, dropout: 0.5, rng: Some(&mut rng), gates: None })?;
        let loss = la_loss(&out.logits, &labels, None, &loss_cfg)?;
        let f = t.elapsed().as_secs_f64();
        let grads = prof::phase("backward", || loss.total.backward())?;
        prof::phase("optimizer", || opt.step(&model.params, &grads, 1e-4))?;
        Ok(f)
    })?;
    Ok(TrainBench { what: label, batch_size: batch, iters, ms_per_step: step * 1e3, steps_per_s: 1.0 / step, img_per_s: batch as f64 / step, forward_ms: fwd * 1e3 })
}

/// The step of ../shared/peers/peer_train_toy.py: 6 pre-norm blocks (D=192, 3 heads, N=33,
/// B=32), loss = mean(y²), AdamW.
pub fn bench_toy_step(iters: usize, progress: bool) -> Result<TrainBench> {
    let arch = Arch { depth: 6, ..Arch::preset("tiny")? };
    // 128x64 gives 32 patches + CLS = 33 tokens.
    let cfg = ModelConfig::new(arch, 128, 64, HeadConfig::none(), Source { format: "random".into(), ..Default::default() })?;
    let tensors = init_random(&cfg, 0);
    let dev = Device::Cpu;
    let model = Vit::new(&ModelFiles { config: cfg, tensors }, &dev)?;
    let mut rng = Rng::new(1);
    let x = Tensor::from_vec((0..32 * 33 * 192).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (32, 33, 192), &dev)?;
    let mut opt = Optimizer::new(OptimConfig::new(OptimKind::Adamw, 1e-2));
    let (step, fwd) = time_steps(iters, progress, || {
        let t = std::time::Instant::now();
        let y = model.forward_blocks(x.clone(), &Mode::eval())?;
        let loss = y.sqr()?.mean_all()?;
        let f = t.elapsed().as_secs_f64();
        let grads = prof::phase("backward", || loss.backward())?;
        prof::phase("optimizer", || opt.step(&model.params, &grads, 1e-4))?;
        Ok(f)
    })?;
    Ok(TrainBench { what: "toy 6-block stack (B=32, N=33, D=192)".into(), batch_size: 32, iters, ms_per_step: step * 1e3, steps_per_s: 1.0 / step, img_per_s: 32.0 / step, forward_ms: fwd * 1e3 })
}

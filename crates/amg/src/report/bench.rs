//! `amg bench`: measured inference throughput, loader throughput and training-step time.

use crate::engine::{Engine, Input, Precision, Want, Workspace};
use crate::error::Result;
use crate::kernels::prof;
use crate::model::vit::{Mode, Vit};
use crate::model::{weights::init_random, Arch, HeadConfig, ModelConfig, ModelFiles, Source};
use crate::rng::Rng;
use crate::train::loss::{la_loss, Distill, LossConfig};
use crate::train::optim::{OptimConfig, OptimKind, Optimizer};
use candle_core::{Device, Tensor};
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
    let (images, cameras) = bench_input(engine, batch);
    let input = Input { images: &images, cameras: cameras.as_deref(), batch };
    let mut ws = Workspace::default();
    for _ in 0..2 {
        engine.run(input, &mut ws, Want::default(), None)?;
    }
    crate::kernels::prof::reset();
    let pb = crate::progress::bar(iters as u64, "bench", "batches", progress);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = std::time::Instant::now();
        engine.run(input, &mut ws, Want::default(), None)?;
        times.push(t.elapsed().as_secs_f64());
        crate::interrupt::check()?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    eprint!("{}", crate::kernels::prof::report());
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    Ok(BenchResult { batch_size: batch, iters: times.len(), threads: rayon::current_num_threads(), ms_per_batch: med * 1e3, img_per_s: batch as f64 / med })
}

/// The benchmark's input: `batch` images of standard-normal pixels (seed 0), and with SIE camera 0
/// for every image (it costs the same for any).
fn bench_input(engine: &Engine, batch: usize) -> (Vec<f32>, Option<Vec<usize>>) {
    let mut rng = Rng::new(0);
    let images: Vec<f32> = (0..batch * engine.image_len()).map(|_| rng.normal() as f32).collect();
    (images, engine.config().arch.sie.as_ref().map(|_| vec![0; batch]))
}

/// How far one engine's features are from another's on the benchmark's input.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureDiff {
    /// The largest difference of any feature element (features are unit vectors).
    pub max_abs_diff: f64,
    /// The lowest cosine similarity between an image's two features.
    pub min_cosine: f64,
}

fn feature_diff(a: &Engine, b: &Engine, batch: usize) -> Result<FeatureDiff> {
    let (images, cameras) = bench_input(a, batch);
    let input = Input { images: &images, cameras: cameras.as_deref(), batch };
    let fa = a.run(input, &mut Workspace::default(), Want::default(), None)?.features;
    let fb = b.run(input, &mut Workspace::default(), Want::default(), None)?.features;
    let dim = fa.len() / batch.max(1);
    let max_abs_diff = fa.iter().zip(&fb).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
    let min_cosine = fa
        .chunks_exact(dim)
        .zip(fb.chunks_exact(dim))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
            let norm = |v: &[f32]| v.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            dot / (norm(x) * norm(y))
        })
        .fold(1.0, f64::min);
    Ok(FeatureDiff { max_abs_diff, min_cosine })
}

/// Loader throughput: decodes (and augments) up to `limit` images of `paths` in batches, with
/// nothing consuming them, and reports images per second.
pub fn bench_loader(
    paths: &[std::path::PathBuf],
    spec: &crate::preprocess::InputSpec,
    augment: Option<crate::data::loader::Augment>,
    batch: usize,
    limit: usize,
) -> Result<f64> {
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

/// What `amg bench` prints: a model's inference throughput, and the loader's on a dataset.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub input: String,
    pub gmacs_per_image: f64,
    pub precision: Precision,
    /// With `Precision::Bf16`: where the products ran (`amx`, `avx512_bf16` or `emulated`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bf16_unit: Option<crate::kernels::bf16::Unit>,
    /// With `Precision::Bf16`: the features against float32's on the same input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_f32: Option<FeatureDiff>,
    #[serde(flatten)]
    pub result: BenchResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader_train_img_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader_test_img_per_s: Option<f64>,
}

/// Measures `files` (named `label`) at `batch` in `precision`, and the image loader on `data`'s
/// training split (with augmentation) and gallery (without) when given. In bfloat16 it also
/// compares the features with float32's on the benchmark's input.
pub fn bench_model(
    files: ModelFiles,
    label: &str,
    batch: usize,
    iters: usize,
    data: Option<&crate::data::Dataset>,
    precision: Precision,
    progress: bool,
) -> Result<BenchReport> {
    let (h, w) = (files.config().input.height, files.config().input.width);
    let macs = crate::model::cost::model_cost(files.config()).macs;
    let (mut train, mut test) = (None, None);
    if let Some(data) = data {
        let spec = files.config().input.clone();
        let paths = |s: &[crate::data::Sample]| s.iter().map(|x| x.path.clone()).collect::<Vec<_>>();
        train = Some(bench_loader(&paths(&data.train), &spec, Some(crate::data::loader::Augment::reid_default()), batch, 2000)?);
        test = Some(bench_loader(&paths(&data.gallery), &spec, None, batch, 2000)?);
    }
    let reference = (precision != Precision::F32).then(|| files.clone());
    let engine = Engine::with_precision(files, precision)?;
    let (bf16_unit, vs_f32) = match reference {
        None => (None, None),
        Some(f32_files) => (Some(crate::kernels::bf16::unit()), Some(feature_diff(&Engine::new(f32_files)?, &engine, batch)?)),
    };
    let result = bench_inference(&engine, batch, iters, progress)?;
    Ok(BenchReport {
        model: label.into(),
        input: format!("{h}x{w}"),
        gmacs_per_image: macs as f64 / 1e9,
        precision,
        bf16_unit,
        vs_f32,
        result,
        loader_train_img_per_s: train,
        loader_test_img_per_s: test,
    })
}

impl BenchReport {
    pub fn text(&self) -> String {
        let r = &self.result;
        let mut s = String::new();
        if let (Some(train), Some(test)) = (self.loader_train_img_per_s, self.loader_test_img_per_s) {
            s +=
                &format!("loader: {train:.0} img/s with training augmentation, {test:.0} img/s without (decode + resize + normalise, {} threads)\n", r.threads);
        }
        s += &format!(
            "{} {} batch {}: {:.1} ms/batch, {:.2} img/s ({:.0} GFLOP/s, {} threads, median of {})",
            self.model,
            self.input,
            r.batch_size,
            r.ms_per_batch,
            r.img_per_s,
            2.0 * self.gmacs_per_image * r.img_per_s,
            r.threads,
            r.iters
        );
        if let Some(d) = &self.vs_f32 {
            s += &format!(
                "\nbfloat16 products ({}); features against float32 on the same input: largest element difference {:.2e} (features have norm 1), lowest cosine similarity {:.6}",
                self.bf16_unit.unwrap_or(crate::kernels::bf16::Unit::Emulated).describe(),
                d.max_abs_diff,
                d.min_cosine
            );
        }
        s
    }
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
fn time_steps(iters: usize, progress: bool, mut step: impl FnMut() -> Result<f64> + Send) -> Result<(f64, f64)> {
    // Each step on one of the pool's threads, as training runs it (see `kernels::in_pool`).
    let mut step = move || crate::kernels::in_pool(&mut step);
    for _ in 0..2 {
        step()?;
    }
    prof::reset();
    let pb = crate::progress::bar(iters as u64, "bench", "steps", progress);
    let (mut total, mut fwd) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(1) {
        let t = std::time::Instant::now();
        fwd.push(step()?);
        total.push(t.elapsed().as_secs_f64());
        crate::interrupt::check()?;
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
    let params = init_random(&cfg, 0);
    let dev = Device::Cpu;
    let mut model = Vit::new(&ModelFiles::new(cfg, params)?, &dev)?;
    let trainable = model.trainable();
    let mut rng = Rng::new(1);
    let x = Tensor::from_vec((0..batch * 3 * h * w).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (batch, 3, h, w), &dev)?;
    let labels = Tensor::from_vec((0..batch).map(|_| rng.below(classes) as u32).collect::<Vec<_>>(), batch, &dev)?;
    let mut opt = Optimizer::new(OptimConfig::new(OptimKind::Adamw, 1e-3));
    let loss_cfg = LossConfig::ce(0.0, Distill::None);
    let (step, fwd) = time_steps(iters, progress, || {
        let t = std::time::Instant::now();
        let out = model.forward(&x, Mode { train: true, dropout: 0.5, rng: Some(&mut rng), gates: None, cameras: None })?;
        let loss = la_loss(&out.logits, &labels, None, &loss_cfg)?;
        let f = t.elapsed().as_secs_f64();
        let grads = prof::phase("backward", || model.backward(&loss.total))?;
        prof::phase("optimizer", || opt.step(&trainable, &grads, 1e-4))?;
        Ok(f)
    })?;
    Ok(TrainBench {
        what: label,
        batch_size: batch,
        iters,
        ms_per_step: step * 1e3,
        steps_per_s: 1.0 / step,
        img_per_s: batch as f64 / step,
        forward_ms: fwd * 1e3,
    })
}

/// The step of tools/bench/peer_train_toy.py: 6 pre-norm blocks (D=192, 3 heads, N=33,
/// B=32), loss = mean(y²), AdamW.
pub fn bench_toy_step(iters: usize, progress: bool) -> Result<TrainBench> {
    let arch = Arch { depth: 6, ..Arch::preset("tiny")? };
    // 128x64 gives 32 patches + CLS = 33 tokens.
    let cfg = ModelConfig::new(arch, 128, 64, HeadConfig::none(), Source { format: "random".into(), ..Default::default() })?;
    let params = init_random(&cfg, 0);
    let dev = Device::Cpu;
    let model = Vit::new(&ModelFiles::new(cfg, params)?, &dev)?;
    let trainable = model.trainable();
    let mut rng = Rng::new(1);
    let x = Tensor::from_vec((0..32 * 33 * 192).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (32, 33, 192), &dev)?;
    let mut opt = Optimizer::new(OptimConfig::new(OptimKind::Adamw, 1e-2));
    let (step, fwd) = time_steps(iters, progress, || {
        let t = std::time::Instant::now();
        let y = model.forward_blocks(x.clone(), &Mode::eval())?;
        let loss = y.sqr()?.mean_all()?;
        let f = t.elapsed().as_secs_f64();
        let grads = prof::phase("backward", || model.backward(&loss))?;
        prof::phase("optimizer", || opt.step(&trainable, &grads, 1e-4))?;
        Ok(f)
    })?;
    Ok(TrainBench {
        what: "toy 6-block stack (B=32, N=33, D=192)".into(),
        batch_size: 32,
        iters,
        ms_per_step: step * 1e3,
        steps_per_s: 1.0 / step,
        img_per_s: 32.0 / step,
        forward_ms: fwd * 1e3,
    })
}

impl TrainBench {
    pub fn text(&self) -> String {
        format!(
            "train step, {} batch {}: {:.1} ms/step ({:.1} ms forward), {:.2} steps/s, {:.1} img/s (median of {})",
            self.what, self.batch_size, self.ms_per_step, self.forward_ms, self.steps_per_s, self.img_per_s, self.iters
        )
    }
}

/// The machine's ceiling for single-precision products: `size`³ products through the `gemm` crate
/// (its own threaded general product, and amg's packed-weight product), best and median GFLOP/s.
#[derive(Debug, Clone, Serialize)]
pub struct GemmBench {
    pub size: usize,
    pub threads: usize,
    pub iters: usize,
    pub general_best_gflops: f64,
    pub general_median_gflops: f64,
    pub packed_best_gflops: f64,
    pub packed_median_gflops: f64,
}

impl GemmBench {
    /// The best either product reached: what the README calls the machine's ceiling.
    pub fn ceiling(&self) -> f64 {
        self.general_best_gflops.max(self.packed_best_gflops)
    }

    pub fn text(&self) -> String {
        format!(
            "float32 products {n}x{n}x{n}, {} threads: general {:.0} GFLOP/s best, {:.0} median; packed weight {:.0} best, {:.0} median (of {}); ceiling {:.0} GFLOP/s",
            self.threads,
            self.general_best_gflops,
            self.general_median_gflops,
            self.packed_best_gflops,
            self.packed_median_gflops,
            self.iters,
            self.ceiling(),
            n = self.size
        )
    }
}

/// The ceiling of INT8 products: `size`³ products of float32 rows (quantized per row, in the
/// timing) by an int8 weight, on the unit INT8 models use here.
#[derive(Debug, Clone, Serialize)]
pub struct Int8GemmBench {
    pub size: usize,
    pub threads: usize,
    pub iters: usize,
    pub unit: crate::kernels::int8::Unit,
    pub best_gops: f64,
    pub median_gops: f64,
}

impl Int8GemmBench {
    pub fn text(&self) -> String {
        format!(
            "int8 products {n}x{n}x{n} on {}, {} threads: {:.0} GOP/s best, {:.0} median (of {}; the rows' quantization included); ceiling {:.0} GOP/s",
            self.unit.describe(),
            self.threads,
            self.best_gops,
            self.median_gops,
            self.iters,
            self.best_gops,
            n = self.size
        )
    }
}

/// Times `iters` `size`³ INT8 products after one warm-up (see `Int8GemmBench`).
pub fn bench_gemm_int8(size: usize, iters: usize, progress: bool) -> Result<Int8GemmBench> {
    use crate::kernels::gemm::{Acc, Epilogue, Mat};
    use crate::kernels::int8::{matmul_i8, quantize_weight, unit, PackedI8};
    let n = size;
    if n > 8192 {
        return Err(crate::Error::invalid(format!("`gemm_size` {n}: at most 8192")));
    }
    let mut rng = Rng::new(0);
    let a: Vec<f32> = (0..n * n).map(|_| rng.normal() as f32).collect();
    let w: Vec<f32> = (0..n * n).map(|_| rng.normal() as f32).collect();
    let (q, s) = quantize_weight(&w, n, n);
    drop(w);
    let packed = PackedI8::new(&q, &s, n, n, &[], None);
    let mut c = vec![0f32; n * n];
    let threads = rayon::current_num_threads();
    let ops = 2.0 * (n as f64).powi(3);
    let pb = crate::progress::bar(iters as u64, "int8 gemm", "products", progress);
    let mut gops = Vec::new();
    for i in 0..=iters {
        let t = std::time::Instant::now();
        matmul_i8(Mat::dense(&a, n, n), &packed, 0..n, &mut c, n, Acc::Overwrite, threads, Epilogue::None);
        if i > 0 {
            gops.push(ops / t.elapsed().as_secs_f64() / 1e9);
            pb.inc(1);
        }
        crate::interrupt::check()?;
    }
    pb.finish_and_clear();
    Ok(Int8GemmBench { size: n, threads, iters, unit: unit(), best_gops: gops.iter().cloned().fold(0.0, f64::max), median_gops: median(gops) })
}

/// Times `iters` `size`³ float32 products of each kind, the two kinds alternating, after one
/// warm-up of each.
pub fn bench_gemm(size: usize, iters: usize, progress: bool) -> Result<GemmBench> {
    use crate::kernels::gemm::{matmul, Acc, Epilogue, Mat};
    use crate::kernels::packed::{matmul_packed, PackedB};
    let n = size;
    if n > 8192 {
        return Err(crate::Error::invalid(format!("`gemm_size` {n}: at most 8192 (three {n}x{n} float32 matrices must fit in memory)")));
    }
    let len = n * n;
    let mut rng = Rng::new(0);
    let a: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
    let packed = PackedB::new(&b, n, n, &[]);
    let mut c = vec![0f32; len];
    let threads = rayon::current_num_threads();
    let flop = 2.0 * (n as f64).powi(3);
    let pb = crate::progress::bar(2 * iters as u64, "gemm", "products", progress);
    let (mut general, mut packed_t) = (Vec::new(), Vec::new());
    for i in 0..=iters {
        let t = std::time::Instant::now();
        matmul(Mat::dense(&a, n, n), Mat::dense(&b, n, n), &mut c, n, Acc::Overwrite, 1.0, threads);
        let g = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        matmul_packed(Mat::dense(&a, n, n), &packed, 0..n, &mut c, n, Acc::Overwrite, threads, Epilogue::None);
        let p = t.elapsed().as_secs_f64();
        if i > 0 {
            general.push(flop / g / 1e9);
            packed_t.push(flop / p / 1e9);
            pb.inc(2);
        }
        crate::interrupt::check()?;
    }
    pb.finish_and_clear();
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    Ok(GemmBench {
        size: n,
        threads,
        iters,
        general_best_gflops: best(&general),
        general_median_gflops: median(general),
        packed_best_gflops: best(&packed_t),
        packed_median_gflops: median(packed_t),
    })
}

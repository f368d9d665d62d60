//! `amg quantize`: an INT8 model directory from a float32 one (docs/int8.md), and what it keeps:
//! the features of both on a dataset's query and gallery images, compared image by image (cosine)
//! and by the Re-ID metrics.

use crate::choice::Choice;
use crate::data::{Dataset, Sample};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::eval::{evaluate_split, extract, EvalOptions};
use crate::fsutil;
use crate::model::quant::{ActivationScales, Quantization, WEIGHT_SCHEME};
use crate::model::ModelFiles;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub activations: ActivationScales,
    /// Training images the static scales are calibrated on.
    pub calibration_images: usize,
    pub batch_size: usize,
    /// Picks the calibration images.
    pub seed: u64,
    pub force: bool,
    pub progress: bool,
}

/// The accuracy an INT8 model keeps.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    pub model: String,
    pub out: String,
    pub quantization: Quantization,
    pub float_fingerprint: String,
    pub int8_fingerprint: String,
    /// Query and gallery images compared.
    pub images: usize,
    /// Cosine of each image's INT8 feature with its float32 feature: the smallest and the mean.
    pub min_cosine: f64,
    pub mean_cosine: f64,
    /// The image with the smallest cosine.
    pub worst_image: String,
    pub float32: Metrics,
    pub int8: Metrics,
    /// Bytes of `model.safetensors`: the float32 model's and the INT8 model's.
    pub float_bytes: u64,
    pub int8_bytes: u64,
}

/// Quantizes the float32 model in `model_dir` and writes the INT8 model to `out` with `report.md`
/// and `report.json`. Everything that can be refused is refused before the long work.
pub fn quantize(model_dir: &Path, data: &Dataset, out: &Path, opts: &QuantizeOptions) -> Result<QuantizeReport> {
    let files = ModelFiles::load(model_dir)?;
    files.require_float("`amg quantize`")?;
    fsutil::clear_stale(out)?;
    if !fsutil::is_absent_or_empty(out)? && !opts.force {
        return Err(Error::file(out, "exists and is not empty; choose another `out` or give `force` to replace it"));
    }
    if data.query.is_empty() || data.gallery.is_empty() {
        return Err(Error::file(&data.root, "has no query or no gallery images: the accuracy the INT8 model keeps is measured on them"));
    }
    let calibration = match opts.activations {
        ActivationScales::Dynamic => None,
        ActivationScales::Static => {
            let n = opts.calibration_images;
            if n == 0 || data.train.len() < n {
                return Err(Error::invalid(format!(
                    "`calibration_images` is {n}, but {} has {} training images: give at most that many (and at least 1)",
                    data.root.display(),
                    data.train.len()
                )));
            }
            let mut order: Vec<usize> = (0..data.train.len()).collect();
            crate::rng::Rng::new(opts.seed).shuffle(&mut order);
            Some(order[..n].iter().map(|&i| data.train[i].clone()).collect::<Vec<Sample>>())
        }
    };
    let eval = EvalOptions { batch_size: opts.batch_size, flip: false, progress: opts.progress };
    let float_fingerprint = files.fingerprint();
    let scales = match &calibration {
        None => None,
        Some(images) => {
            let engine = Engine::calibrating(files.clone())?;
            extract(&engine, images, &eval, "calibrate")?;
            Some(engine.input_scales())
        }
    };
    let quantization = Quantization {
        weights: WEIGHT_SCHEME.into(),
        activations: opts.activations,
        calibration_images: calibration.as_ref().map(Vec::len),
        float_model: model_dir.display().to_string(),
        float_fingerprint: float_fingerprint.clone(),
    };
    let (mut config, params) = files.clone().into_parts();
    config.source.notes.push(format!("quantized to INT8: {}", quantization.describe()));
    let int8 = ModelFiles::int8(config, params, quantization.clone(), scales.as_ref())?;

    let samples: Vec<Sample> = data.query.iter().chain(&data.gallery).cloned().collect();
    let f32_engine = Engine::new(files)?;
    let int8_engine = Engine::new(int8.clone())?;
    let dim = f32_engine.config().feature_dim();
    let ff = extract(&f32_engine, &samples, &eval, "float32")?;
    let fq = extract(&int8_engine, &samples, &eval, "int8")?;
    let cos: Vec<f64> = ff.chunks_exact(dim).zip(fq.chunks_exact(dim)).map(|(a, b)| cosine(a, b)).collect();
    let (worst, min_cosine) = cos.iter().copied().enumerate().fold((0, f64::INFINITY), |(wi, wv), (i, v)| if v < wv { (i, v) } else { (wi, wv) });
    let mean_cosine = cos.iter().sum::<f64>() / cos.len() as f64;
    let nq = data.query.len() * dim;
    let metrics = |f: &[f32]| evaluate_split(&f[..nq], &f[nq..], dim, data);
    let (float32, int8_metrics) = (metrics(&ff)?, metrics(&fq)?);

    let float_bytes = std::fs::metadata(model_dir.join(crate::model::dir::WEIGHTS_FILE)).map(|m| m.len()).unwrap_or(0);
    let mut report = QuantizeReport {
        model: model_dir.display().to_string(),
        out: out.display().to_string(),
        quantization,
        float_fingerprint,
        int8_fingerprint: int8.fingerprint(),
        images: samples.len(),
        min_cosine,
        mean_cosine,
        worst_image: samples[worst].path.display().to_string(),
        float32,
        int8: int8_metrics,
        float_bytes,
        int8_bytes: 0,
    };
    int8.save_with(out, opts.force, |tmp| {
        report.int8_bytes = std::fs::metadata(tmp.join(crate::model::dir::WEIGHTS_FILE)).map(|m| m.len()).unwrap_or(0);
        fsutil::write_bytes_atomic(&tmp.join("report.json"), serde_json::to_string_pretty(&report).expect("serialisable").as_bytes())?;
        fsutil::write_bytes_atomic(&tmp.join("report.md"), markdown(&report).as_bytes())
    })?;
    Ok(report)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na * nb)
}

/// The summary `amg quantize` prints.
pub fn summary(r: &QuantizeReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "INT8 model {} from {}: {}", r.out, r.model, r.quantization.scheme());
    let _ = writeln!(s, "  feature cosine int8 vs float32 over {} images: min {:.5}, mean {:.5}", r.images, r.min_cosine, r.mean_cosine);
    let _ = writeln!(s, "             Rank-1      mAP     mINP");
    for (name, m) in [("float32", &r.float32), ("int8", &r.int8)] {
        let _ = writeln!(s, "  {name:<8} {:7.2} % {:7.2} % {:7.2} %", 100.0 * m.rank(1), 100.0 * m.map, 100.0 * m.minp);
    }
    let _ = writeln!(s, "  weights  {} → {} bytes", r.float_bytes, r.int8_bytes);
    s
}

fn markdown(r: &QuantizeReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# INT8 model\n");
    let _ = writeln!(s, "Made by `amg quantize` from the float32 model `{}` (fingerprint `{}`).\n", r.model, r.float_fingerprint);
    let _ = writeln!(s, "- weights: {} (the transformer blocks' qkv, projection, fc1 and fc2)", r.quantization.weights);
    let acts = match r.quantization.calibration_images {
        Some(n) => format!("{} — one scale per product, max|x|/127 over {n} training images", r.quantization.activations.name()),
        None => format!("{} — each token's own scale, max|x|/127, at run time", r.quantization.activations.name()),
    };
    let _ = writeln!(s, "- activations: {acts}");
    let _ = writeln!(s, "- float32: patch embedding, layer norms, attention, GELU, residual adds, the head");
    let _ = writeln!(s, "- fingerprint: `{}`; weights file {} bytes (float32 model: {})\n", r.int8_fingerprint, r.int8_bytes, r.float_bytes);
    let _ = writeln!(s, "## What it keeps\n");
    let _ = writeln!(
        s,
        "On the {} query and gallery images of the dataset, the INT8 feature of each image has cosine similarity **{:.5}** at worst (`{}`) and {:.5} on average with the float32 model's feature.\n",
        r.images, r.min_cosine, r.worst_image, r.mean_cosine
    );
    let _ = writeln!(s, "| model | Rank-1 | mAP | mINP |\n|---|---:|---:|---:|");
    for (name, m) in [("float32", &r.float32), ("INT8", &r.int8)] {
        let _ = writeln!(s, "| {name} | {:.2} % | {:.2} % | {:.2} % |", 100.0 * m.rank(1), 100.0 * m.map, 100.0 * m.minp);
    }
    let d = 100.0 * (r.int8.map - r.float32.map);
    let _ = writeln!(
        s,
        "\nINT8 changes mAP by {d:+.2} points and Rank-1 by {:+.2} points on these {} queries.",
        100.0 * (r.int8.rank(1) - r.float32.rank(1)),
        r.float32.total_queries
    );
    s
}

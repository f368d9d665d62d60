//! `amg embed`: images in, retrieval features out.

use crate::data::cameras::{batch_cameras, SideInfo};
use crate::data::loader::{for_each_batch, LoaderOptions};
use crate::engine::{Engine, Input, Want, Workspace};
use crate::error::Result;
use std::path::PathBuf;

pub struct EmbedResult {
    pub names: Vec<String>,
    /// `[names.len(), feature_dim]`
    pub features: Vec<f32>,
    pub feature_dim: usize,
    /// Files that could not be read, with the reason (only with `skip_bad`).
    pub skipped: Vec<(PathBuf, String)>,
    pub seconds: f64,
}

impl EmbedResult {
    /// One line: how many images, the output and its shape, the speed, and any skipped.
    pub fn summary(&self, out: &std::path::Path) -> String {
        format!(
            "embedded {} → {} [{} × {}] in {:.2} s ({:.1} img/s){}",
            crate::text::count(self.names.len(), "image"),
            out.display(),
            self.names.len(),
            self.feature_dim,
            self.seconds,
            self.names.len() as f64 / self.seconds,
            if self.skipped.is_empty() { String::new() } else { format!(", {} skipped", crate::text::count(self.skipped.len(), "unreadable image")) }
        )
    }
}

/// Names that identify each file: the file name, or the whole path where file names repeat.
pub fn display_names(files: &[PathBuf]) -> Vec<String> {
    let names: Vec<String> = files.iter().map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).collect();
    let unique: std::collections::HashSet<&String> = names.iter().collect();
    if unique.len() == names.len() {
        names
    } else {
        files.iter().map(|p| p.display().to_string()).collect()
    }
}

/// Embeds `files` in batches; decoding runs ahead of the model on a loader thread. A file that
/// cannot be decoded is an error naming it, unless `skip_bad`. For a model with SIE, each image's
/// camera comes from its file name, or `side` for all (checked for every file before any runs).
pub fn embed_files(engine: &Engine, files: &[PathBuf], batch_size: usize, skip_bad: bool, progress: bool, side: &SideInfo) -> Result<EmbedResult> {
    let cameras = crate::data::cameras::cameras_for(engine.config(), files, side)?;
    let pb = crate::progress::bar(files.len() as u64, "embed", "img", progress);
    let start = std::time::Instant::now();
    let order: Vec<usize> = (0..files.len()).collect();
    let opts = LoaderOptions { skip_bad, ..LoaderOptions::inference(batch_size) };
    let (mut kept, mut features, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    let mut ws = Workspace::default();
    for_each_batch(files, &order, &engine.config().input, &opts, |batch| {
        if !batch.is_empty() {
            let cams = batch_cameras(cameras.as_deref(), &batch.indices, 1);
            let out = engine.run(Input { images: &batch.inputs, cameras: cams.as_deref(), batch: batch.len() }, &mut ws, Want::default(), None)?;
            let fdim = engine.config().feature_dim();
            crate::eval::features::check_finite(&out.features, fdim, |r| format!("{}: the model's feature", files[batch.indices[r]].display()))?;
            features.extend_from_slice(&out.features);
        }
        pb.inc((batch.len() + batch.failed.len()) as u64);
        kept.extend(batch.indices);
        skipped.extend(batch.failed);
        Ok(())
    })?;
    pb.finish_and_clear();
    let all_names = display_names(files);
    Ok(EmbedResult {
        names: kept.iter().map(|&i| all_names[i].clone()).collect(),
        features,
        feature_dim: engine.config().feature_dim(),
        skipped,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One match of `amg search`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Match {
    pub rank: usize,
    pub name: String,
    pub score: f32,
}

/// The `top` gallery entries most similar (cosine) to `query` `[F]`.
pub fn search(query: &[f32], gallery: &[f32], names: &[String], top: usize) -> Vec<Match> {
    let dim = query.len();
    let mut scored: Vec<(f32, usize)> = gallery.chunks_exact(dim).enumerate().map(|(i, g)| (g.iter().zip(query).map(|(a, b)| a * b).sum::<f32>(), i)).collect();
    scored.sort_by(|a, b| (b.0 + 0.0).total_cmp(&(a.0 + 0.0)).then(a.1.cmp(&b.1)));
    scored.into_iter().take(top).enumerate().map(|(r, (s, i))| Match { rank: r + 1, name: names[i].clone(), score: s }).collect()
}

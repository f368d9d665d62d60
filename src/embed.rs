//! `amg embed`: images in, retrieval features out.

use crate::data::loader::{for_each_batch, LoaderOptions};
use crate::engine::{Engine, Want, Workspace};
use crate::error::Result;
use crate::tensor::{write_safetensors, HostTensor, TensorMap};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct EmbedResult {
    pub names: Vec<String>,
    /// `[names.len(), feature_dim]`
    pub features: Vec<f32>,
    pub feature_dim: usize,
    /// Files that could not be read, with the reason (only with `skip_bad`).
    pub skipped: Vec<(PathBuf, String)>,
    pub seconds: f64,
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
/// cannot be decoded is an error naming it, unless `skip_bad`.
pub fn embed_files(engine: &Engine, files: &[PathBuf], batch_size: usize, skip_bad: bool, progress: bool) -> Result<EmbedResult> {
    let pb = crate::progress::bar(files.len() as u64, "embed", "img");
    if !progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let start = std::time::Instant::now();
    let order: Vec<usize> = (0..files.len()).collect();
    let opts = LoaderOptions { skip_bad, ..LoaderOptions::inference(batch_size) };
    let (mut kept, mut features, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    let mut ws = Workspace::default();
    for_each_batch(files, &order, &engine.config().input, &opts, |batch| {
        if !batch.is_empty() {
            let out = engine.forward(&batch.inputs, batch.len(), &mut ws, Want::default())?;
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

/// Writes `features` `[N, F]` with the names as a JSON list in the metadata key `names`.
pub fn write_features(path: &Path, names: &[String], features: &[f32], dim: usize, extra: HashMap<String, String>) -> Result<()> {
    let mut t = TensorMap::new();
    t.insert("features".into(), HostTensor::new(vec![names.len(), dim], features.to_vec()));
    let mut meta = extra;
    meta.insert("names".into(), serde_json::to_string(names).expect("names serialise"));
    write_safetensors(path, &t, Some(meta))
}

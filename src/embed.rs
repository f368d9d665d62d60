//! `amg embed`: images in, retrieval features out.

use crate::engine::{Engine, Want, Workspace};
use crate::error::{Error, Result};
use crate::preprocess::{load_rgb, to_input};
use crate::tensor::{write_safetensors, HostTensor, TensorMap};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

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

/// Embeds `files` in batches. Decoding of the next batch runs on a loader thread while the model
/// runs the current one. A file that cannot be decoded is an error naming it, unless `skip_bad`.
pub fn embed_files(engine: &Engine, files: &[PathBuf], batch_size: usize, skip_bad: bool, progress: bool) -> Result<EmbedResult> {
    if batch_size == 0 {
        return Err(Error::invalid("--batch-size must be at least 1"));
    }
    let spec = engine.config().input.clone();
    let img_len = engine.image_len();
    let pb = crate::progress::bar(files.len() as u64, "embed", "img");
    if !progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let start = std::time::Instant::now();
    // (indices into `files`, their inputs, files that failed to decode)
    type Batch = (Vec<usize>, Vec<f32>, Vec<(PathBuf, String)>);
    let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(1);
    let mut kept = Vec::new();
    let mut features = Vec::new();
    let mut skipped = Vec::new();
    let mut ws = Workspace::default();
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(|| {
            let tx = tx; // owned by the loader, so the channel closes when it is done
            for (bi, chunk) in files.chunks(batch_size).enumerate() {
                let decoded: Vec<Result<Vec<f32>>> = chunk
                    .par_iter()
                    .map(|p| {
                        let img = load_rgb(p)?;
                        let mut v = vec![0f32; img_len];
                        to_input(&img, &spec, false, &mut v);
                        Ok(v)
                    })
                    .collect();
                let mut batch: Batch = (Vec::new(), Vec::with_capacity(chunk.len() * img_len), Vec::new());
                let mut msg = None;
                for (i, r) in decoded.into_iter().enumerate() {
                    match r {
                        Ok(v) => {
                            batch.0.push(bi * batch_size + i);
                            batch.1.extend(v);
                        }
                        Err(e) if skip_bad => batch.2.push((chunk[i].clone(), e.to_string())),
                        Err(e) => {
                            msg = Some(Err(e));
                            break;
                        }
                    }
                }
                let msg = msg.unwrap_or(Ok(batch));
                let stop = msg.is_err();
                if tx.send(msg).is_err() || stop {
                    return;
                }
            }
        });
        for msg in rx {
            let (idx, input, bad) = msg?;
            let n = idx.len();
            if n > 0 {
                let out = engine.forward(&input, n, &mut ws, Want::default())?;
                features.extend_from_slice(&out.features);
            }
            pb.inc((n + bad.len()) as u64);
            kept.extend(idx);
            skipped.extend(bad);
        }
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

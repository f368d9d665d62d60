//! Feature files: what `amg embed` writes and `amg eval --features` / `amg search` read — a
//! safetensors file with tensor `features` `[N, F]` and the image names as a JSON list in the
//! metadata key `names`, and the fingerprint of the model that computed them
//! (`model_fingerprint`, see `ModelFiles::fingerprint`) so that features of different models are
//! never ranked against each other.

use crate::data::dataset::parse_name;
use crate::error::{Error, Result};
use crate::tensor::{write_safetensors, HostTensor, TensorMap};
use std::collections::HashMap;
use std::path::Path;

/// Writes `features` `[N, F]` with the names as a JSON list in the metadata key `names`.
pub fn write_features(path: &Path, names: &[String], features: &[f32], dim: usize, extra: HashMap<String, String>) -> Result<()> {
    let mut t = TensorMap::new();
    t.insert("features".into(), HostTensor::new(vec![names.len(), dim], features.to_vec()));
    let mut meta = extra;
    meta.insert("names".into(), serde_json::to_string(names).expect("names serialise"));
    write_safetensors(path, &t, Some(meta))
}

/// Image names, features `[N, dim]` row-major, and `dim`.
pub type Features = (Vec<String>, Vec<f32>, usize);

/// Reads features written by `amg embed` (all entries, names as written).
pub fn read_features(path: &Path) -> Result<Features> {
    read_features_and_model(path).map(|(features, _)| features)
}

/// As `read_features`, with the fingerprint of the model that computed them when the file records
/// one (files written by other tools may not) — read from the same opening of the file.
pub fn read_features_and_model(path: &Path) -> Result<(Features, Option<String>)> {
    let st = crate::tensor::SafetensorsFile::open(path)?;
    let model = st.metadata().get(FINGERPRINT_KEY).cloned();
    let names: Vec<String> =
        serde_json::from_str(st.metadata().get("names").ok_or_else(|| Error::file(path, "no `names` metadata (expected a file written by `amg embed`)"))?)
            .map_err(|e| Error::file(path, format!("`names` metadata is not a JSON list of strings: {e}")))?;
    let t = st.all_f32()?.remove("features").ok_or_else(|| Error::tensor(path, "features", "missing"))?;
    let dim = match t.shape[..] {
        [n, dim] if n == names.len() => dim,
        _ => return Err(Error::tensor(path, "features", format!("shape {:?}, expected [{}, dim] (one row per name)", t.shape, names.len()))),
    };
    if dim == 0 {
        return Err(Error::tensor(path, "features", format!("shape {:?}: rows of 0 values cannot be ranked", t.shape)));
    }
    check_finite(&t.data, dim, |row| format!("{}: tensor `features`, row {row} ({})", path.display(), names[row]))?;
    Ok(((names, t.data, dim), model))
}

/// The metadata key holding the embedding model's fingerprint.
pub const FINGERPRINT_KEY: &str = "model_fingerprint";

/// Refuses to compare features of two different models: `a` and `b` are (file, recorded
/// fingerprint) pairs, or a model's own fingerprint with a description instead of a file.
pub fn check_same_model(a: (&str, Option<&str>), b: (&str, Option<&str>)) -> Result<()> {
    match (a.1, b.1) {
        (Some(x), Some(y)) if x != y => Err(Error::invalid(format!(
            "{} comes from model {x} but {} from model {y}: features of different models cannot be compared (embed both with the same model)",
            a.0, b.0
        ))),
        _ => Ok(()),
    }
}

/// Refuses NaN or infinite values in `[n, dim]` rows: ranking them would print metrics that mean
/// nothing. `row` names a row for the message (its file and image).
pub fn check_finite(values: &[f32], dim: usize, row: impl Fn(usize) -> String) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let r = i / dim.max(1);
        return Err(Error::invalid(format!("{}: value {} at column {} is not finite", row(r), values[i], i - r * dim.max(1))));
    }
    Ok(())
}

/// Features with the identity and camera each image's name gives (`0002_c1s1_000451_03.jpg`).
pub struct LabelledFeatures {
    /// `[n, dim]`
    pub features: Vec<f32>,
    pub dim: usize,
    pub pids: Vec<i64>,
    pub cams: Vec<i64>,
    /// The fingerprint of the model that computed them, if recorded.
    pub model: Option<String>,
}

/// Reads a features file written by `amg embed` for evaluation: junk images (identity −1) are
/// dropped; a name that does not parse as `<id>_c<camera>…` is an error naming it.
pub fn read_labelled(path: &Path) -> Result<LabelledFeatures> {
    let ((names, data, dim), model) = read_features_and_model(path)?;
    let mut out = LabelledFeatures { features: Vec::new(), dim, pids: Vec::new(), cams: Vec::new(), model };
    for (name, row) in names.iter().zip(data.chunks_exact(dim.max(1))) {
        let base = Path::new(name).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (pid, cam) = parse_name(&base).ok_or_else(|| Error::file(path, format!("name `{name}` does not parse as `<id>_c<camera>…`")))?;
        if pid == -1 {
            continue;
        }
        out.features.extend_from_slice(row);
        out.pids.push(pid);
        out.cams.push(cam);
    }
    Ok(out)
}

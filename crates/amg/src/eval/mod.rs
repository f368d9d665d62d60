//! `amg eval`: query and gallery features, ranked by cosine similarity under the standard
//! protocol (`metrics`).

pub mod features;
pub mod metrics;

use crate::data::loader::{for_each_batch, LoaderOptions, Views};
use crate::data::{Dataset, Sample};
use crate::engine::{Engine, Input, Want, Workspace};
use crate::error::{Error, Result};
use metrics::{evaluate_features, Labels, Metrics};
use std::path::Path;

/// torchreid's default CMC length.
pub const MAX_RANK: usize = 50;

#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    pub batch_size: usize,
    /// Average each image's feature with its mirror image's.
    pub flip: bool,
    pub progress: bool,
}

/// The feature of an image and its mirror: their mean, renormalised as the model normalises its
/// features (`groups` pieces: LA's parts each to norm 1/√P, a BNNeck feature as a whole), so the
/// result has the same form as a single view's feature.
pub fn average_views(a: &[f32], b: &[f32], groups: usize) -> Vec<f32> {
    let mut out: Vec<f32> = a.iter().zip(b).map(|(x, y)| 0.5 * (x + y)).collect();
    crate::model::head::normalise_parts(&mut out, groups, a.len() / groups.max(1));
    out
}

/// Features `[n, F]` of `samples`, in order (with SIE, each image's camera from its file name).
pub fn extract(engine: &Engine, samples: &[Sample], opts: &EvalOptions, what: &str) -> Result<Vec<f32>> {
    let paths: Vec<_> = samples.iter().map(|s| s.path.clone()).collect();
    let cameras = crate::data::cameras::cameras_for(engine.config(), &paths, &crate::data::cameras::SideInfo::FROM_NAMES)?;
    let order: Vec<usize> = (0..paths.len()).collect();
    let fdim = engine.config().feature_dim();
    let parts = engine.config().feature_groups().count;
    let pb = crate::progress::bar(paths.len() as u64, what, "img", opts.progress);
    let lopts = LoaderOptions { views: if opts.flip { Views::WithMirror } else { Views::Plain }, ..LoaderOptions::inference(opts.batch_size) };
    let mut feats = Vec::with_capacity(paths.len() * fdim);
    let mut ws = Workspace::default();
    for_each_batch(&paths, &order, &engine.config().input, &lopts, |batch| {
        let n = batch.len();
        let views = if opts.flip { 2 } else { 1 };
        let cams = crate::data::cameras::batch_cameras(cameras.as_deref(), &batch.indices, views);
        let out = engine.run(Input { images: &batch.inputs, cameras: cams.as_deref(), batch: views * n }, &mut ws, Want::default(), None)?;
        features::check_finite(&out.features, fdim, |r| format!("{}: the model's feature", paths[batch.indices[r % n]].display()))?;
        if opts.flip {
            for i in 0..n {
                feats.extend(average_views(&out.features[i * fdim..(i + 1) * fdim], &out.features[(n + i) * fdim..(n + i + 1) * fdim], parts));
            }
        } else {
            feats.extend_from_slice(&out.features);
        }
        pb.inc(n as u64);
        Ok(())
    })?;
    pb.finish_and_clear();
    Ok(feats)
}

fn labels(s: &[Sample]) -> (Vec<i64>, Vec<i64>) {
    (s.iter().map(|x| x.pid).collect(), s.iter().map(|x| x.camid).collect())
}

/// Evaluates a model on a dataset's query and gallery splits.
pub fn eval_model(engine: &Engine, data: &Dataset, opts: &EvalOptions) -> Result<Metrics> {
    let q = extract(engine, &data.query, opts, "query")?;
    let g = extract(engine, &data.gallery, opts, "gallery")?;
    evaluate_split(&q, &g, engine.config().feature_dim(), data)
}

/// The standard protocol on features `[n, dim]` of `data`'s query and gallery images, in order.
pub fn evaluate_split(q: &[f32], g: &[f32], dim: usize, data: &Dataset) -> Result<Metrics> {
    let (qp, qc) = labels(&data.query);
    let (gp, gc) = labels(&data.gallery);
    let l = Labels { q_pids: &qp, q_cams: &qc, g_pids: &gp, g_cams: &gc };
    evaluate_features(q, g, dim, &l, MAX_RANK).map_err(Error::invalid)
}

/// The raw-pixel baseline: each image bicubic-resized to `h`×`w`, normalised, flattened and scaled
/// to unit length; ranked by cosine similarity like a model's features.
pub fn eval_pixels(data: &Dataset, (h, w): (usize, usize), opts: &EvalOptions) -> Result<Metrics> {
    let spec = crate::preprocess::InputSpec { height: h, width: w, mean: crate::preprocess::IMAGENET_MEAN, std: crate::preprocess::IMAGENET_STD };
    let dim = 3 * h * w;
    let pixels = |samples: &[Sample], what: &str| -> Result<Vec<f32>> {
        let paths: Vec<_> = samples.iter().map(|s| s.path.clone()).collect();
        let order: Vec<usize> = (0..paths.len()).collect();
        let pb = crate::progress::bar(paths.len() as u64, what, "img", opts.progress);
        let mut out = Vec::with_capacity(paths.len() * dim);
        for_each_batch(&paths, &order, &spec, &LoaderOptions::inference(opts.batch_size.max(64)), |batch| {
            for v in batch.inputs.chunks_exact(dim) {
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                out.extend(v.iter().map(|x| x / n));
            }
            pb.inc(batch.len() as u64);
            Ok(())
        })?;
        pb.finish_and_clear();
        Ok(out)
    };
    let q = pixels(&data.query, "query")?;
    let g = pixels(&data.gallery, "gallery")?;
    let (qp, qc) = labels(&data.query);
    let (gp, gc) = labels(&data.gallery);
    evaluate_features(&q, &g, dim, &Labels { q_pids: &qp, q_cams: &qc, g_pids: &gp, g_cams: &gc }, MAX_RANK).map_err(Error::invalid)
}

/// Evaluates two feature files (query, gallery) written by `amg embed`.
pub fn eval_feature_files(query: &Path, gallery: &Path) -> Result<Metrics> {
    let q = features::read_labelled(query)?;
    let g = features::read_labelled(gallery)?;
    features::check_same_model((&query.display().to_string(), q.model.as_deref()), (&gallery.display().to_string(), g.model.as_deref()))?;
    if q.dim != g.dim {
        return Err(Error::invalid(format!("query features have {} dimensions, gallery features {}: not from the same model", q.dim, g.dim)));
    }
    let l = Labels { q_pids: &q.pids, q_cams: &q.cams, g_pids: &g.pids, g_cams: &g.cams };
    evaluate_features(&q.features, &g.features, q.dim, &l, MAX_RANK).map_err(Error::invalid)
}

//! AMG's head criterion (docs/method.md §2): the entropy of each head's mean attention map over
//! the calibration set. A head that spreads its attention almost uniformly carries little structure.
//!
//! Forward passes of the inference engine only. Every image counts once, the last smaller batch
//! too **[differs from the reference, which skips it]**; the entropy is the mean over queries of
//! −Σ_k Ā·log₂ Ā.

use super::{Calibration, HeadCriterion};
use crate::data::loader::{for_each_batch, LoaderOptions};
use crate::engine::{Engine, Input, Want, Workspace};
use crate::error::Result;
use std::sync::Mutex;

pub struct Entropy;

impl HeadCriterion for Entropy {
    fn name(&self) -> &'static str {
        "attention entropy"
    }

    fn score_heads(&mut self, c: Calibration) -> Result<Vec<Vec<f64>>> {
        let cfg = c.model.config();
        let (paths, _) = c.images()?;
        let engine = Engine::new(c.model.clone())?;
        let heads = cfg.attention_heads();
        // Sums of attention maps per (attention layer, kept head), in f64 (JPM's b2 summed over its
        // local groups).
        let sums: Vec<Vec<Mutex<Vec<f64>>>> = heads
            .iter()
            .enumerate()
            .map(|(l, h)| {
                let (nq, nk, _) = cfg.attention_shape(l);
                (0..h.len()).map(|_| Mutex::new(vec![0f64; nq * nk])).collect()
            })
            .collect();
        let cameras = crate::data::cameras::cameras_for(cfg, &paths, &crate::data::cameras::SideInfo::FROM_NAMES)?;
        let observe = |layer: usize, _img: usize, head: usize, probs: &[f32]| {
            let Some(slot) = sums.get(layer).and_then(|l| l.get(head)) else { return };
            let mut acc = slot.lock().unwrap_or_else(|e| e.into_inner());
            for (a, &p) in acc.iter_mut().zip(probs) {
                *a += p as f64;
            }
        };
        let pb = crate::progress::bar(paths.len() as u64, "entropy", "img", c.options.progress);
        let order: Vec<usize> = (0..paths.len()).collect();
        let mut ws = Workspace::default();
        for_each_batch(&paths, &order, &cfg.input, &LoaderOptions::inference(c.options.batch_size), |b| {
            let cams = crate::data::cameras::batch_cameras(cameras.as_deref(), &b.indices, 1);
            engine.run(Input { images: &b.inputs, cameras: cams.as_deref(), batch: b.len() }, &mut ws, Want::default(), Some(&observe))?;
            pb.inc(b.len() as u64);
            Ok(())
        })?;
        pb.finish_and_clear();
        let images = paths.len() as f64;
        Ok(sums
            .into_iter()
            .enumerate()
            .map(|(l, heads)| {
                let (nq, nk, per_image) = cfg.attention_shape(l);
                let maps = images * per_image as f64;
                heads
                    .into_iter()
                    .map(|m| {
                        let s = m.into_inner().unwrap_or_else(|e| e.into_inner());
                        let mut e = 0.0;
                        for row in s.chunks_exact(nk) {
                            for &v in row {
                                let a = v / maps;
                                if a > 0.0 {
                                    e -= a * a.log2();
                                }
                            }
                        }
                        e / nq as f64
                    })
                    .collect()
            })
            .collect())
    }
}

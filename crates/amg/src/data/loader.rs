//! Batches of model inputs, decoded and augmented in parallel (rayon) on a loader thread that
//! runs ahead of the model, so the model does not wait for images.
//!
//! Training augmentation follows the usual Re-ID recipe: bicubic resize, random horizontal flip,
//! zero-pad and random crop back to size, ImageNet normalisation, random erasing. Random draws
//! come from a generator derived from (seed, epoch, sample), so a batch is the same whatever the
//! thread scheduling.

use crate::error::{Error, Result};
use crate::preprocess::InputSpec;
use crate::preprocess::{load_rgb, to_input, Rgb8};
use crate::rng::Rng;
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Random horizontal flip with probability 0.5.
    pub flip: bool,
    /// Zero padding on every side before a random crop back to the input size (0: none).
    pub pad: usize,
    /// Probability of random erasing (Zhong et al.: area 2–40 %, aspect 0.3–3.3, filled with 0
    /// after normalisation, i.e. the mean colour).
    pub erase: f32,
}

impl Augment {
    pub fn reid_default() -> Self {
        Augment { flip: true, pad: 10, erase: 0.5 }
    }
}

/// What to produce per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Views {
    /// The image.
    Plain,
    /// The image, then (after all plain ones of the batch) its mirror image.
    WithMirror,
}

#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub augment: Option<Augment>,
    pub views: Views,
    pub seed: u64,
    pub epoch: u64,
    /// Skip undecodable images (reported in `Batch::failed`) instead of failing.
    pub skip_bad: bool,
}

impl LoaderOptions {
    pub fn inference(batch_size: usize) -> Self {
        LoaderOptions { batch_size, augment: None, views: Views::Plain, seed: 0, epoch: 0, skip_bad: false }
    }
}

pub struct Batch {
    /// Indices (into the path list) of the images in this batch, in input order.
    pub indices: Vec<usize>,
    /// `[views·n, 3, H, W]`
    pub inputs: Vec<f32>,
    pub failed: Vec<(PathBuf, String)>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Applies training augmentation to a decoded image, writing the model input into `out`.
pub fn augmented_input(img: &Rgb8, spec: &InputSpec, aug: &Augment, rng: &mut Rng, out: &mut [f32]) {
    let (h, w) = (spec.height, spec.width);
    let flip = aug.flip && rng.bool(0.5);
    to_input(img, spec, flip, out);
    if aug.pad > 0 {
        // Pad with black pixels (0 before normalisation), then crop at a random offset.
        let p = aug.pad;
        let (dy, dx) = (rng.below(2 * p + 1), rng.below(2 * p + 1));
        let src = out.to_vec();
        for c in 0..3 {
            let black = -spec.mean[c] / spec.std[c];
            for y in 0..h {
                for x in 0..w {
                    let (sy, sx) = ((y + dy) as isize - p as isize, (x + dx) as isize - p as isize);
                    out[c * h * w + y * w + x] =
                        if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w { src[c * h * w + sy as usize * w + sx as usize] } else { black };
                }
            }
        }
    }
    if aug.erase > 0.0 && rng.bool(aug.erase as f64) {
        let area = (h * w) as f64;
        for _ in 0..10 {
            let target = area * rng.range(0.02, 0.4);
            let aspect = (rng.range(0.3f64.ln(), (1.0 / 0.3f64).ln())).exp();
            let eh = (target * aspect).sqrt().round() as usize;
            let ew = (target / aspect).sqrt().round() as usize;
            if eh == 0 || ew == 0 || eh >= h || ew >= w {
                continue;
            }
            let (y0, x0) = (rng.below(h - eh + 1), rng.below(w - ew + 1));
            for c in 0..3 {
                for y in y0..y0 + eh {
                    out[c * h * w + y * w + x0..c * h * w + y * w + x0 + ew].fill(0.0);
                }
            }
            break;
        }
    }
}

/// Loads `order` (indices into `paths`) in batches and hands each to `consume`, decoding the next
/// batches on a loader thread meanwhile. A file that cannot be decoded is an error naming it,
/// unless `skip_bad`.
pub fn for_each_batch(paths: &[PathBuf], order: &[usize], spec: &InputSpec, opts: &LoaderOptions, mut consume: impl FnMut(Batch) -> Result<()>) -> Result<()> {
    if opts.batch_size == 0 {
        return Err(Error::invalid("`batch_size` must be at least 1"));
    }
    let img_len = 3 * spec.height * spec.width;
    let views = if opts.views == Views::WithMirror { 2 } else { 1 };
    let base = Rng::new(opts.seed).fork(opts.epoch);
    let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(2);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(|| {
            let tx = tx; // owned here, so the channel closes when the loader is done
            for chunk in order.chunks(opts.batch_size) {
                let decoded: Vec<Result<Vec<f32>>> = chunk
                    .par_iter()
                    .map(|&i| {
                        let img = load_rgb(&paths[i])?;
                        let mut v = vec![0f32; views * img_len];
                        match &opts.augment {
                            Some(aug) => augmented_input(&img, spec, aug, &mut base.fork(i as u64), &mut v[..img_len]),
                            None => to_input(&img, spec, false, &mut v[..img_len]),
                        }
                        if views == 2 {
                            to_input(&img, spec, true, &mut v[img_len..]);
                        }
                        Ok(v)
                    })
                    .collect();
                let mut batch =
                    Batch { indices: Vec::with_capacity(chunk.len()), inputs: Vec::with_capacity(chunk.len() * views * img_len), failed: Vec::new() };
                let mut mirrors = Vec::new();
                let mut msg = None;
                for (&i, r) in chunk.iter().zip(decoded) {
                    match r {
                        Ok(v) => {
                            batch.indices.push(i);
                            batch.inputs.extend_from_slice(&v[..img_len]);
                            if views == 2 {
                                mirrors.extend_from_slice(&v[img_len..]);
                            }
                        }
                        Err(e) if opts.skip_bad => batch.failed.push((paths[i].clone(), e.to_string())),
                        Err(e) => {
                            msg = Some(Err(e));
                            break;
                        }
                    }
                }
                batch.inputs.extend(mirrors);
                let msg = msg.unwrap_or(Ok(batch));
                let stop = msg.is_err();
                if tx.send(msg).is_err() || stop {
                    return;
                }
            }
        });
        for msg in rx {
            crate::interrupt::check()?;
            consume(msg?)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{IMAGENET_MEAN, IMAGENET_STD};

    fn spec() -> InputSpec {
        InputSpec { height: 32, width: 16, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    fn image() -> Rgb8 {
        let (h, w) = (32, 16);
        Rgb8 { width: w, height: h, data: (0..h * w * 3).map(|i| (i * 37 % 251) as u8).collect() }
    }

    #[test]
    fn flip_alone_gives_the_plain_or_the_mirrored_image() {
        let (img, s) = (image(), spec());
        let mut plain = vec![0f32; 3 * 32 * 16];
        let mut mirror = plain.clone();
        to_input(&img, &s, false, &mut plain);
        to_input(&img, &s, true, &mut mirror);
        let aug = Augment { flip: true, pad: 0, erase: 0.0 };
        let mut seen = (false, false);
        for seed in 0..40 {
            let mut out = vec![0f32; plain.len()];
            augmented_input(&img, &s, &aug, &mut Rng::new(seed), &mut out);
            if out == plain {
                seen.0 = true;
            } else {
                assert_eq!(out, mirror);
                seen.1 = true;
            }
        }
        assert!(seen.0 && seen.1);
    }

    #[test]
    fn pad_and_crop_shift_the_image_and_fill_black() {
        let (img, s) = (image(), spec());
        let mut plain = vec![0f32; 3 * 32 * 16];
        to_input(&img, &s, false, &mut plain);
        let aug = Augment { flip: false, pad: 4, erase: 0.0 };
        let black0 = -s.mean[0] / s.std[0];
        let mut shifted = 0;
        for seed in 0..20 {
            let mut out = vec![0f32; plain.len()];
            augmented_input(&img, &s, &aug, &mut Rng::new(seed), &mut out);
            // Some shift (dy, dx) in -4..=4 explains every pixel.
            let ok = (-4i32..=4).any(|dy| {
                (-4i32..=4).any(|dx| {
                    (0..32).all(|y| {
                        (0..16).all(|x| {
                            let (sy, sx) = (y + dy, x + dx);
                            let v = out[(y * 16 + x) as usize];
                            if (0..32).contains(&sy) && (0..16).contains(&sx) {
                                v == plain[(sy * 16 + sx) as usize]
                            } else {
                                v == black0
                            }
                        })
                    })
                })
            });
            assert!(ok, "seed {seed}");
            shifted += (out != plain) as usize;
        }
        assert!(shifted > 10);
    }

    #[test]
    fn erasing_zeroes_one_rectangle() {
        let (img, s) = (image(), spec());
        let mut plain = vec![0f32; 3 * 32 * 16];
        to_input(&img, &s, false, &mut plain);
        let aug = Augment { flip: false, pad: 0, erase: 1.0 };
        for seed in 0..20 {
            let mut out = vec![0f32; plain.len()];
            augmented_input(&img, &s, &aug, &mut Rng::new(seed), &mut out);
            let changed: Vec<usize> = (0..out.len()).filter(|&i| out[i] != plain[i]).collect();
            assert!(!changed.is_empty(), "seed {seed}: nothing erased");
            assert!(changed.iter().all(|&i| out[i] == 0.0));
            let (ys, xs): (Vec<usize>, Vec<usize>) = changed.iter().map(|&i| ((i % 512) / 16, i % 16)).unzip();
            let area = (ys.iter().max().unwrap() - ys.iter().min().unwrap() + 1) * (xs.iter().max().unwrap() - xs.iter().min().unwrap() + 1);
            assert!(area as f64 >= 0.02 * 512.0 * 0.5 && area as f64 <= 0.4 * 512.0 * 1.5, "area {area}");
        }
    }
}

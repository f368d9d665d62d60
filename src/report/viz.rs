//! `amg viz`: pictures of what the attention maps say and what pruning kept.
//!
//! - `head_entropy.png`: one cell per (layer, original head), rows = layers from the top; colour =
//!   entropy (dark = focused, bright = diffuse); removed heads are dark grey.
//! - `token_importance.png`: one patch grid per layer (left to right, then down), colour = the
//!   layer's normalised key importance; already-pruned positions are dark grey.
//! - `kept_tokens.png`: the same grids, white where the layer computes K/V for that patch, black where
//!   it does not.
//! - `attention.png` (with `--image`): rows = layers, columns = kept heads; each cell the image with
//!   the CLS query's attention over the kept keys laid over it.

use crate::draw::{viridis, Canvas, Color};
use crate::engine::{Engine, Want, Workspace};
use crate::error::{Error, Result};
use crate::model::ModelFiles;
use crate::preprocess::{load_rgb, to_input};
use crate::prune::analyze::Scores;
use crate::resample::resize_rgb8_pil;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const GREY: Color = [60, 60, 60];
const BACKGROUND: Color = [24, 24, 24];

fn normalise(v: &[Option<f64>]) -> Vec<Option<f64>> {
    let (lo, hi) = v.iter().flatten().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    v.iter().map(|x| x.map(|x| if hi > lo { (x - lo) / (hi - lo) } else { 0.5 })).collect()
}

/// Per-layer grids of the patches, coloured by `value(layer, patch index)` (row-major in the grid).
fn grids(files: &ModelFiles, value: impl Fn(usize, usize) -> Option<Color>) -> Canvas {
    let (gh, gw) = files.config.grid();
    let depth = files.config.arch.depth;
    let cell = (96 / gh.max(gw)).clamp(4, 16);
    let per_row = 6.min(depth);
    let rows = depth.div_ceil(per_row);
    let (bw, bh) = (gw * cell + 8, gh * cell + 8);
    let mut s = Canvas::new(per_row * bw + 8, rows * bh + 8, BACKGROUND);
    for l in 0..depth {
        let (ox, oy) = (8 + (l % per_row) * bw, 8 + (l / per_row) * bh);
        for p in 0..gh * gw {
            let c = value(l, p).unwrap_or(GREY);
            s.rect((ox + (p % gw) * cell) as i64, (oy + (p / gw) * cell) as i64, cell as i64 - 1, cell as i64 - 1, c);
        }
    }
    s
}

pub struct VizOutput {
    pub files: Vec<PathBuf>,
}

pub fn render(files: &ModelFiles, scores: Option<&Scores>, image: Option<&Path>, out: &Path) -> Result<VizOutput> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let cfg = &files.config;
    let mut written = Vec::new();

    if let Some(sc) = scores {
        if sc.head_entropy.len() != cfg.arch.depth || sc.token_importance.len() != cfg.arch.depth {
            return Err(Error::invalid(format!("the scores cover {} layers, the model has {}", sc.head_entropy.len(), cfg.arch.depth)));
        }
        // Head entropy, by original head index; heads the scores do not cover are grey.
        let all: Vec<f64> = sc.head_entropy.iter().flatten().copied().collect();
        let (lo, hi) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let cell = 24;
        let mut s = Canvas::new(cfg.arch.num_heads * cell + 8, cfg.arch.depth * cell + 8, BACKGROUND);
        for (l, ent) in sc.head_entropy.iter().enumerate() {
            let heads = sc.heads.get(l).cloned().unwrap_or_else(|| cfg.layers[l].heads.clone());
            for h in 0..cfg.arch.num_heads {
                let c = heads
                    .iter()
                    .position(|&x| x == h)
                    .and_then(|j| ent.get(j))
                    .map(|&e| viridis(if hi > lo { (e - lo) / (hi - lo) } else { 0.5 }))
                    .unwrap_or(GREY);
                s.rect((4 + h * cell) as i64, (4 + l * cell) as i64, cell as i64 - 2, cell as i64 - 2, c);
            }
        }
        let p = out.join("head_entropy.png");
        s.save_png(&p)?;
        written.push(p);
        let norm: Vec<Vec<Option<f64>>> = sc.token_importance.iter().map(|v| normalise(v)).collect();
        let p = out.join("token_importance.png");
        grids(files, |l, patch| norm[l].get(patch).copied().flatten().map(viridis)).save_png(&p)?;
        written.push(p);
    }
    let p = out.join("kept_tokens.png");
    let prefix = cfg.num_prefix();
    grids(files, |l, patch| Some(if cfg.layers[l].tokens.binary_search(&(prefix + patch)).is_ok() { [235, 235, 235] } else { [0, 0, 0] })).save_png(&p)?;
    written.push(p);

    if let Some(img_path) = image {
        let img = load_rgb(img_path)?;
        let (h, w) = (cfg.input.height, cfg.input.width);
        let mut input = vec![0f32; 3 * h * w];
        to_input(&img, &cfg.input, false, &mut input);
        let shown = resize_rgb8_pil(&img.data, img.height, img.width, h, w);
        let engine = Engine::new(files.clone())?;
        // The class token's (first query's) attention of every kept head: probs row 0.
        let maps: Mutex<Vec<Vec<Vec<f32>>>> = Mutex::new(cfg.layers.iter().map(|l| vec![Vec::new(); l.heads.len()]).collect());
        let observe = |layer: usize, _b: usize, head: usize, probs: &[f32]| {
            let nk = cfg.layers[layer].tokens.len();
            maps.lock().unwrap()[layer][head] = probs[..nk].to_vec();
        };
        engine.forward_observed(&input, 1, &mut Workspace::default(), Want::default(), Some(&observe))?;
        let maps = maps.into_inner().unwrap();
        let (gh, gw) = cfg.grid();
        let cols = cfg.layers.iter().map(|l| l.heads.len()).max().unwrap_or(1);
        let mut s = Canvas::new(cols * (w + 4) + 4, cfg.arch.depth * (h + 4) + 4, BACKGROUND);
        for (l, heads) in maps.iter().enumerate() {
            for (j, probs) in heads.iter().enumerate() {
                // Spread the attention over the patch grid (prefix keys excluded), then normalise.
                let mut grid = vec![0f64; gh * gw];
                for (&pos, &a) in cfg.layers[l].tokens.iter().zip(probs) {
                    if pos >= prefix {
                        grid[pos - prefix] = a as f64;
                    }
                }
                let max = grid.iter().cloned().fold(0.0, f64::max).max(1e-12);
                let (ox, oy) = (4 + j * (w + 4), 4 + l * (h + 4));
                for y in 0..h {
                    for x in 0..w {
                        let a = grid[(y * gh / h) * gw + x * gw / w] / max;
                        let heat = viridis(a);
                        let base = &shown[(y * w + x) * 3..][..3];
                        let (px, py) = ((ox + x) as i64, (oy + y) as i64);
                        s.set(px, py, [base[0], base[1], base[2]]);
                        s.blend(px, py, heat, 0.55);
                    }
                }
            }
        }
        let p = out.join("attention.png");
        s.save_png(&p)?;
        written.push(p);
    }
    Ok(VizOutput { files: written })
}

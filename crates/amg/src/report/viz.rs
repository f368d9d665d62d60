//! `amg viz`: pictures of what the attention maps say and what pruning kept. Each picture carries
//! a title, a line saying how to read it, numbered layers and heads, and a colour scale, so that it
//! can be read without the README.
//!
//! - `head_entropy.png` (with `--scores`): a layer × head grid; colour = the head criterion's score
//!   (AMG: attention entropy in bits — dark = focused, bright = diffuse); grey = a head this model
//!   does not have.
//! - `token_importance.png` (with `--scores`): one patch grid per layer; colour = the key's
//!   importance, normalised within the layer; grey = a key this model does not compute.
//! - `kept_tokens.png`: the same grids, white where the layer computes K/V for that patch, black
//!   where it does not.
//! - `attention.png` (with `--image`): rows = layers, columns = kept heads; each cell the image with
//!   the class token's attention over the kept keys laid over it.

use crate::draw::{text_width, viridis, Align, Canvas, Color, INK, WHITE};
use crate::engine::{Engine, Want, Workspace};
use crate::error::{Error, Result};
use crate::model::ModelFiles;
use crate::preprocess::{load_rgb, to_input, Rgb8};
use crate::prune::analyze::Scores;
use crate::resample::resize_rgb8_pil;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const GREY: Color = [150, 150, 150];
const WARN: Color = [190, 40, 30];
const TITLE: f32 = 17.0;
const NOTE: f32 = 12.5;
const SMALL: f32 = 11.5;

fn normalise(v: &[Option<f64>]) -> Vec<Option<f64>> {
    let (lo, hi) = v.iter().flatten().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    v.iter().map(|x| x.map(|x| if hi > lo { (x - lo) / (hi - lo) } else { 0.5 })).collect()
}

/// A picture's frame: a title, lines of explanation (warnings in red) and room for the body, a
/// colour scale and a legend below it.
struct Frame {
    title: String,
    notes: Vec<(String, Color)>,
}

impl Frame {
    fn header_height(&self) -> usize {
        34 + 18 * self.notes.len() + 8
    }
    fn min_width(&self) -> usize {
        let t = text_width(&self.title, TITLE);
        let n = self.notes.iter().map(|(s, _)| text_width(s, NOTE)).fold(0.0, f32::max);
        t.max(n).ceil() as usize + 32
    }
    fn draw(&self, c: &mut Canvas) {
        c.text(16, 10, &self.title, TITLE, INK, Align::Left);
        for (i, (s, color)) in self.notes.iter().enumerate() {
            c.text(16, 36 + 18 * i as i64, s, NOTE, *color, Align::Left);
        }
    }
}

/// Per-layer panels of the patch grid, each titled "layer l" and coloured by
/// `value(layer, patch index)` (row-major in the grid; `None`: grey), under `frame`; `footer`
/// draws the scale or legend in the space left at the bottom.
fn grids(files: &ModelFiles, frame: &Frame, value: impl Fn(usize, usize) -> Option<Color>, footer: impl FnOnce(&mut Canvas, i64, i64)) -> Canvas {
    let (gh, gw) = files.config().grid();
    let depth = files.config().arch.depth;
    let cell = (120 / gh.max(gw)).clamp(3, 14);
    let per_row = 6.min(depth);
    let rows = depth.div_ceil(per_row);
    let (bw, bh) = (gw * cell + 16, gh * cell + 24);
    let top = frame.header_height();
    let width = (per_row * bw + 32).max(frame.min_width()).max(360);
    let mut s = Canvas::new(width, top + rows * bh + 70, WHITE);
    frame.draw(&mut s);
    for l in 0..depth {
        let (ox, oy) = (16 + (l % per_row) * bw, top + (l / per_row) * bh);
        s.text(ox as i64, oy as i64, &format!("layer {l}"), SMALL, INK, Align::Left);
        let gy = oy + 16;
        for p in 0..gh * gw {
            let c = value(l, p).unwrap_or(GREY);
            s.rect((ox + (p % gw) * cell) as i64, (gy + (p / gw) * cell) as i64, cell as i64 - 1, cell as i64 - 1, c);
        }
        s.frame(ox as i64 - 1, gy as i64 - 1, (gw * cell + 1) as i64, (gh * cell + 1) as i64, INK);
    }
    footer(&mut s, 16, (top + rows * bh + 8) as i64);
    s
}

/// A legend entry: a swatch and its meaning; returns the x after it.
fn legend(c: &mut Canvas, x: i64, y: i64, color: Color, what: &str) -> i64 {
    c.rect(x, y + 2, 12, 12, color);
    c.frame(x, y + 2, 12, 12, INK);
    x + 18 + c.text(x + 18, y, what, NOTE, INK, Align::Left) + 18
}

/// A one-line description of the model the pictures are of.
fn model_line(files: &ModelFiles) -> String {
    let cfg = files.config();
    let attn = cfg.attention_heads();
    let heads: usize = attn.iter().map(|h| h.len()).sum();
    let keys: usize = cfg.layers.iter().map(|l| l.tokens.len()).sum();
    format!(
        "Model: {} layers{} × {} heads, {}x{} input ({} heads and {} key tokens kept of {} and {})",
        cfg.arch.depth,
        if cfg.arch.jpm.is_some() { " + JPM's b2" } else { "" },
        cfg.arch.num_heads,
        cfg.input.height,
        cfg.input.width,
        heads,
        keys,
        attn.len() * cfg.arch.num_heads,
        cfg.arch.depth * cfg.num_tokens()
    )
}

/// Warnings when the scores were computed on another plan than the model's (say, the unpruned
/// model's scores drawn over a pruned model).
pub fn scores_mismatch(files: &ModelFiles, sc: &Scores) -> Option<String> {
    let cfg = files.config();
    let heads_differ = sc.heads.iter().zip(cfg.attention_heads()).any(|(h, l)| h.as_slice() != l);
    let prefix = cfg.num_prefix();
    let keys_differ = sc.token_importance.iter().zip(&cfg.layers).any(|(t, l)| {
        let scored: Vec<usize> = t.iter().enumerate().filter(|(_, v)| v.is_some()).map(|(p, _)| p + prefix).collect();
        let kept: Vec<usize> = l.tokens.iter().copied().filter(|&p| p >= prefix).collect();
        scored != kept
    });
    (heads_differ || keys_differ).then(|| {
        "These scores were computed on a model with other heads or keys kept than this one (e.g. before pruning): grey marks what this model lacks.".to_string()
    })
}

pub struct VizOutput {
    pub files: Vec<PathBuf>,
    /// Things the pictures show that the user should know (also written on the pictures).
    pub warnings: Vec<String>,
}

/// Draws the pictures into the directory `out`, written as a whole (a non-empty `out` needs
/// `force`); the image is read and the scores checked before anything is drawn.
/// `side`: the image's camera (and viewpoint) for a model with SIE (default: from its file name).
pub fn render(
    files: &ModelFiles,
    scores: Option<&Scores>,
    image: Option<&Path>,
    side: &crate::data::cameras::SideInfo,
    out: &Path,
    force: bool,
) -> Result<VizOutput> {
    let cfg = files.config();
    let mut warnings = Vec::new();
    if let Some(sc) = scores {
        let attn = cfg.attention_heads().len();
        if sc.head_entropy.len() != attn || sc.token_importance.len() != cfg.arch.depth {
            return Err(Error::invalid(format!(
                "the scores cover {} attention layers ({} with key scores), the model has {attn} ({})",
                sc.head_entropy.len(),
                sc.token_importance.len(),
                cfg.arch.depth
            )));
        }
        warnings.extend(scores_mismatch(files, sc));
    }
    let camera = match image {
        Some(p) => crate::data::cameras::cameras_for(cfg, &[p.to_path_buf()], side)?.map(|c| c[0]),
        None => None,
    };
    let image = image.map(load_rgb).transpose()?;
    let mut names = Vec::new();
    crate::fsutil::write_dir_atomic(out, force, |tmp| {
        names = draw_all(files, scores, image.as_ref().map(|i| (i, camera)), tmp)?;
        Ok(())
    })?;
    Ok(VizOutput { files: names.into_iter().map(|n| out.join(n)).collect(), warnings })
}

fn draw_all(files: &ModelFiles, scores: Option<&Scores>, image: Option<(&Rgb8, Option<usize>)>, out: &Path) -> Result<Vec<&'static str>> {
    let mut written = Vec::new();
    if let Some(sc) = scores {
        head_scores(files, sc).save_png(&out.join("head_entropy.png"))?;
        written.push("head_entropy.png");
        token_scores(files, sc).save_png(&out.join("token_importance.png"))?;
        written.push("token_importance.png");
    }
    kept_tokens(files).save_png(&out.join("kept_tokens.png"))?;
    written.push("kept_tokens.png");
    if let Some(img) = image {
        attention(files, img.0, img.1)?.save_png(&out.join("attention.png"))?;
        written.push("attention.png");
    }
    Ok(written)
}

/// The layer × head grid of head scores.
fn head_scores(files: &ModelFiles, sc: &Scores) -> Canvas {
    let cfg = files.config();
    let attn = cfg.attention_heads();
    let (depth, heads) = (attn.len(), cfg.arch.num_heads);
    let entropy = sc.head_criterion.as_deref().is_none_or(|c| c == "attention entropy");
    let mut notes = vec![(model_line(files), INK)];
    notes.push((
        if entropy {
            "Attention entropy of each head over the calibration images: dark = focused, bright = diffuse. AMG removes the most diffuse heads first."
        } else {
            "Score of each head by the run's criterion; the lowest-scoring heads are removed first."
        }
        .to_string(),
        INK,
    ));
    notes.extend(scores_mismatch(files, sc).map(|w| (w, WARN)));
    let frame = Frame {
        title: if entropy { "Attention entropy per head".into() } else { format!("Head scores ({})", sc.head_criterion.clone().unwrap_or_default()) },
        notes,
    };
    let values: Vec<f64> = sc.head_entropy.iter().flatten().copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    let cell = (560 / heads.max(1)).clamp(14, 40);
    let (left, top) = (72usize, frame.header_height() + 36);
    let grid_w = heads * cell;
    let width = (left + grid_w + 32).max(frame.min_width()).max(420);
    let height = top + depth * cell + 96;
    let mut c = Canvas::new(width, height, WHITE);
    frame.draw(&mut c);
    c.text((left + grid_w / 2) as i64, top as i64 - 34, "head", NOTE, INK, Align::Center);
    for h in 0..heads {
        c.text((left + h * cell + cell / 2) as i64, top as i64 - 17, &h.to_string(), SMALL, INK, Align::Center);
    }
    c.text_up(12, (top + depth * cell / 2) as i64, "layer", NOTE, INK);
    for (l, kept) in attn.iter().enumerate() {
        c.text(left as i64 - 8, (top + l * cell + cell / 2) as i64 - 7, &cfg.attention_layer_name(l), SMALL, INK, Align::Right);
        let scored = sc.heads.get(l).cloned().unwrap_or_else(|| kept.to_vec());
        for h in 0..heads {
            let has = kept.contains(&h);
            let color = scored
                .iter()
                .position(|&x| x == h)
                .and_then(|j| sc.head_entropy.get(l)?.get(j))
                .filter(|_| has)
                .map(|&e| viridis(if hi > lo { (e - lo) / (hi - lo) } else { 0.5 }))
                .unwrap_or(GREY);
            c.rect((left + h * cell) as i64, (top + l * cell) as i64, cell as i64 - 2, cell as i64 - 2, color);
        }
    }
    let y = (top + depth * cell + 14) as i64;
    let label = if entropy { "entropy (bits)" } else { "score" };
    c.color_scale(left as i64, y, 240.min(grid_w.max(160)) as i64, 12, lo, hi, label, viridis);
    legend(&mut c, (left + 240.min(grid_w.max(160)) + 24) as i64, y + 16, GREY, "head not in this model");
    c
}

/// Per-layer grids of key-token scores.
fn token_scores(files: &ModelFiles, sc: &Scores) -> Canvas {
    let cfg = files.config();
    let prefix = cfg.num_prefix();
    let norm: Vec<Vec<Option<f64>>> = sc.token_importance.iter().map(|v| normalise(v)).collect();
    let mut notes = vec![(model_line(files), INK)];
    notes.push(("Importance of each patch as a key (first-order: |gradient of the loss w.r.t. a gate on the key|), normalised within each layer.".into(), INK));
    notes.push(("AMG removes the least important keys first, weighting deeper layers' scores down.".into(), INK));
    notes.extend(scores_mismatch(files, sc).map(|w| (w, WARN)));
    let title = match sc.token_criterion.as_deref() {
        None | Some("first-order key importance") => "Key-token importance per layer".to_string(),
        Some(other) => format!("Key-token scores per layer ({other})"),
    };
    let frame = Frame { title, notes };
    grids(
        files,
        &frame,
        |l, patch| {
            let kept = cfg.layers[l].tokens.binary_search(&(prefix + patch)).is_ok();
            norm[l].get(patch).copied().flatten().filter(|_| kept).map(viridis)
        },
        |c, x, y| {
            c.color_scale(x, y, 220, 12, 0.0, 1.0, "importance within the layer (0 = least, 1 = most)", viridis);
            legend(c, x + 250, y + 16, GREY, "key not computed by this model");
        },
    )
}

/// Per-layer grids of the keys each layer computes.
fn kept_tokens(files: &ModelFiles) -> Canvas {
    let cfg = files.config();
    let prefix = cfg.num_prefix();
    let (gh, gw) = cfg.grid();
    let notes = vec![
        (model_line(files), INK),
        (format!("Each grid is the {gh}x{gw} patch grid of one layer: white where the layer computes keys and values for that patch."), INK),
        ("Queries and the residual stream keep every token; only K and V shrink. Prefix tokens are always kept.".into(), INK),
    ];
    let frame = Frame { title: "Key tokens kept per layer".into(), notes };
    grids(
        files,
        &frame,
        |l, patch| Some(if cfg.layers[l].tokens.binary_search(&(prefix + patch)).is_ok() { [245, 245, 245] } else { [0, 0, 0] }),
        |c, x, y| {
            let x = legend(c, x, y, [245, 245, 245], "kept (K/V computed)");
            legend(c, x, y, [0, 0, 0], "removed");
        },
    )
}

/// The class token's attention of every kept head, over the image.
fn attention(files: &ModelFiles, img: &Rgb8, camera: Option<usize>) -> Result<Canvas> {
    let cfg = files.config();
    let prefix = cfg.num_prefix();
    let (h, w) = (cfg.input.height, cfg.input.width);
    let mut input = vec![0f32; 3 * h * w];
    to_input(img, &cfg.input, false, &mut input);
    let shown = resize_rgb8_pil(&img.data, img.height, img.width, h, w);
    let engine = Engine::new(files.clone())?;
    // The class token's (first query's) attention of every kept head: probs row 0.
    let maps: Mutex<Vec<Vec<Vec<f32>>>> = Mutex::new(cfg.layers.iter().map(|l| vec![Vec::new(); l.heads.len()]).collect());
    let observe = |layer: usize, _b: usize, head: usize, probs: &[f32]| {
        // The class token's maps over the image: JPM's b2 block (layer `depth`) is not drawn.
        let Some(plan) = cfg.layers.get(layer) else { return };
        let nk = plan.tokens.len();
        let mut m = maps.lock().unwrap_or_else(|e| e.into_inner());
        m[layer][head] = probs[..nk].to_vec();
    };
    let cameras = camera.map(|c| [c]);
    let input = crate::engine::Input { images: &input, cameras: cameras.as_ref().map(|c| c.as_slice()), batch: 1 };
    engine.run(input, &mut Workspace::default(), Want::default(), Some(&observe))?;
    let maps = maps.into_inner().unwrap_or_else(|e| e.into_inner());
    let (gh, gw) = cfg.grid();
    let cols = cfg.layers.iter().map(|l| l.heads.len()).max().unwrap_or(1);
    let notes = vec![
        (model_line(files), INK),
        ("Rows: layers; columns: the heads each layer keeps (original head number above each map).".into(), INK),
        ("Colour over the image: the class token's attention to each patch key, normalised per map; patches a layer does not compute are dark.".into(), INK),
    ];
    let frame = Frame { title: "Class-token attention per layer and head".into(), notes };
    // Small inputs are drawn enlarged (whole pixels) so that each map is big enough to read.
    let k = (128 / h.max(1)).max(1);
    let (ch, cw) = (h * k, w * k);
    let (left, top, gap) = (64usize, frame.header_height(), 18usize);
    let width = (left + cols * (cw + 6) + 16).max(frame.min_width());
    let height = top + cfg.arch.depth * (ch + gap) + 70;
    let mut s = Canvas::new(width, height, WHITE);
    frame.draw(&mut s);
    for (l, heads) in maps.iter().enumerate() {
        let oy = top + l * (ch + gap) + 14;
        s.text(left as i64 - 8, (oy + ch / 2) as i64 - 8, &format!("layer {l}"), SMALL, INK, Align::Right);
        for (j, probs) in heads.iter().enumerate() {
            // Spread the attention over the patch grid (prefix keys excluded), then normalise.
            let mut grid = vec![None; gh * gw];
            for (&pos, &a) in cfg.layers[l].tokens.iter().zip(probs) {
                if pos >= prefix {
                    grid[pos - prefix] = Some(a as f64);
                }
            }
            let max = grid.iter().flatten().cloned().fold(0.0, f64::max).max(1e-12);
            let ox = left + j * (cw + 6);
            let head = cfg.layers[l].heads.get(j).copied().unwrap_or(j);
            s.text((ox + cw / 2) as i64, oy as i64 - 14, &format!("head {head}"), SMALL, INK, Align::Center);
            for yy in 0..ch {
                for xx in 0..cw {
                    let (y, x) = (yy / k, xx / k);
                    let base = &shown[(y * w + x) * 3..][..3];
                    let (px, py) = ((ox + xx) as i64, (oy + yy) as i64);
                    s.set(px, py, [base[0], base[1], base[2]]);
                    match grid[(y * gh / h) * gw + x * gw / w] {
                        Some(a) => s.blend(px, py, viridis(a / max), 0.55),
                        None => s.blend(px, py, [0, 0, 0], 0.75),
                    }
                }
            }
        }
    }
    s.color_scale(left as i64, (height - 56) as i64, 220, 12, 0.0, 1.0, "attention / the map's maximum", viridis);
    Ok(s)
}

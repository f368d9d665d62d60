//! The one way amg draws a picture: an RGB canvas with rectangles, lines, images, colour maps and
//! anti-aliased text, saved as PNG (atomically). Plots, attention visualisations and contact sheets
//! all go through it.
//!
//! Text is set in DejaVu Sans, embedded in the binary (a 26 KB subset, `assets/fonts/`, made by
//! `tools/fixtures/subset_font.sh`): pictures need proper case, Greek letters and symbols (mAP, ViT-Ti, α, ×)
//! to read without the README, which a bitmap font cannot give, and PNG keeps them viewable
//! everywhere a README or report is read, with no font files or plotting libraries at run time.

use crate::error::Result;
use crate::fsutil;
use crate::preprocess::Rgb8;
use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::ImageEncoder;
use std::path::Path;
use std::sync::OnceLock;

pub type Color = [u8; 3];

pub const WHITE: Color = [255, 255, 255];
pub const BLACK: Color = [0, 0, 0];
pub const INK: Color = [40, 40, 40];
pub const GRID: Color = [225, 225, 225];

static FONT_DATA: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans-subset.ttf");

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    // The font is part of the binary and checked by a test; it cannot fail at run time.
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_DATA).expect("the embedded font parses"))
}

/// A line of text rendered to coverage values (0..1), `w`×`h`, baseline included.
struct TextMask {
    w: usize,
    h: usize,
    cov: Vec<f32>,
}

fn text_mask(s: &str, size: f32) -> TextMask {
    let f = font();
    let scaled = f.as_scaled(PxScale::from(size));
    let (ascent, descent) = (scaled.ascent(), scaled.descent());
    let w = text_width(s, size).ceil() as usize + 2;
    let h = (ascent - descent).ceil() as usize + 1;
    let mut cov = vec![0f32; w * h];
    let mut caret = 0.0f32;
    let mut prev = None;
    for c in s.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        prev = Some(id);
        let glyph = id.with_scale_and_position(size, point(caret, ascent));
        caret += scaled.h_advance(id);
        if let Some(outline) = f.outline_glyph(glyph) {
            let b = outline.px_bounds();
            outline.draw(|gx, gy, v| {
                let (x, y) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
                if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
                    let i = y as usize * w + x as usize;
                    cov[i] = cov[i].max(v.clamp(0.0, 1.0));
                }
            });
        }
    }
    TextMask { w, h, cov }
}

/// The advance width of `s` at `size` pixels.
pub fn text_width(s: &str, size: f32) -> f32 {
    let scaled = font().as_scaled(PxScale::from(size));
    let mut prev = None;
    let mut w = 0.0;
    for c in s.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            w += scaled.kern(p, id);
        }
        w += scaled.h_advance(id);
        prev = Some(id);
    }
    w
}

/// The height of a line of text at `size` pixels (ascent to descent).
pub fn text_height(size: f32) -> f32 {
    let scaled = font().as_scaled(PxScale::from(size));
    scaled.ascent() - scaled.descent()
}

/// Where text is anchored horizontally.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Center,
    Right,
}

pub struct Canvas {
    pub w: usize,
    pub h: usize,
    px: Vec<u8>,
}

impl Canvas {
    pub fn new(w: usize, h: usize, bg: Color) -> Self {
        let mut px = vec![0u8; w * h * 3];
        for p in px.chunks_exact_mut(3) {
            p.copy_from_slice(&bg);
        }
        Canvas { w, h, px }
    }

    fn index(&self, x: i64, y: i64) -> Option<usize> {
        (x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h).then(|| (y as usize * self.w + x as usize) * 3)
    }

    pub fn set(&mut self, x: i64, y: i64, c: Color) {
        if let Some(i) = self.index(x, y) {
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn get(&self, x: i64, y: i64) -> Option<Color> {
        self.index(x, y).map(|i| [self.px[i], self.px[i + 1], self.px[i + 2]])
    }

    /// Mixes `c` into the pixel with weight `a` (0: unchanged, 1: `c`).
    pub fn blend(&mut self, x: i64, y: i64, c: Color, a: f32) {
        if let Some(i) = self.index(x, y) {
            for (p, &new) in self.px[i..i + 3].iter_mut().zip(&c) {
                let old = *p as f32;
                *p = (old + (new as f32 - old) * a).round().clamp(0.0, 255.0) as u8;
            }
        }
    }

    pub fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Color) {
        for yy in y.max(0)..(y + h).min(self.h as i64) {
            for xx in x.max(0)..(x + w).min(self.w as i64) {
                self.set(xx, yy, c);
            }
        }
    }

    /// The outline of a rectangle, one pixel wide.
    pub fn frame(&mut self, x: i64, y: i64, w: i64, h: i64, c: Color) {
        self.line((x, y), (x + w - 1, y), c);
        self.line((x, y + h - 1), (x + w - 1, y + h - 1), c);
        self.line((x, y), (x, y + h - 1), c);
        self.line((x + w - 1, y), (x + w - 1, y + h - 1), c);
    }

    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Color) {
        let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for i in 0..=n {
            self.set(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n, c);
        }
    }

    /// Copies an image with its top-left corner at (x, y), clipped to the canvas.
    pub fn blit(&mut self, x: i64, y: i64, img: &Rgb8) {
        for yy in 0..img.height {
            for xx in 0..img.width {
                let s = (yy * img.width + xx) * 3;
                self.set(x + xx as i64, y + yy as i64, [img.data[s], img.data[s + 1], img.data[s + 2]]);
            }
        }
    }

    /// Text at `size` pixels with its top at `y`, anchored at `x` as `align` says. Returns the width.
    pub fn text(&mut self, x: i64, y: i64, s: &str, size: f32, c: Color, align: Align) -> i64 {
        let m = text_mask(s, size);
        let width = text_width(s, size).round() as i64;
        let x0 = match align {
            Align::Left => x,
            Align::Center => x - width / 2,
            Align::Right => x - width,
        };
        for yy in 0..m.h {
            for xx in 0..m.w {
                let a = m.cov[yy * m.w + xx];
                if a > 0.0 {
                    self.blend(x0 + xx as i64, y + yy as i64, c, a);
                }
            }
        }
        width
    }

    /// Text turned a quarter counter-clockwise (reading upwards, as a y-axis label), centred
    /// vertically on `cy`, with its left edge (the top of the letters) at `x`.
    pub fn text_up(&mut self, x: i64, cy: i64, s: &str, size: f32, c: Color) {
        let m = text_mask(s, size);
        let y0 = cy + m.w as i64 / 2;
        for yy in 0..m.h {
            for xx in 0..m.w {
                let a = m.cov[yy * m.w + xx];
                if a > 0.0 {
                    self.blend(x + yy as i64, y0 - xx as i64, c, a);
                }
            }
        }
    }

    /// A horizontal colour scale: `map` from `lo` (left) to `hi` (right), with `label` above and
    /// ticks at round values inside the range (the two ends when fewer than two fit).
    #[allow(clippy::too_many_arguments)]
    pub fn color_scale(&mut self, x: i64, y: i64, w: i64, h: i64, lo: f64, hi: f64, label: &str, map: fn(f64) -> Color) {
        self.text(x, y, label, 13.0, INK, Align::Left);
        let top = y + 18;
        for i in 0..w {
            let c = map(i as f64 / (w - 1).max(1) as f64);
            self.rect(x + i, top, 1, h, c);
        }
        self.frame(x, top, w, h, INK);
        let mut ticks = nice_ticks(lo, hi, 3);
        let mut digits = if ticks.len() > 1 { tick_decimals(ticks[1] - ticks[0]) } else { 0 };
        if ticks.len() < 2 || hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
            ticks = vec![lo, hi];
            digits = tick_decimals((hi - lo).abs().max(1e-6) / 10.0).min(4);
        }
        for v in ticks {
            let f = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
            let tx = x + ((w - 1) as f64 * f).round() as i64;
            let align = if f < 0.1 {
                Align::Left
            } else if f > 0.9 {
                Align::Right
            } else {
                Align::Center
            };
            self.line((tx, top + h), (tx, top + h + 3), INK);
            self.text(tx, top + h + 4, &format!("{v:.digits$}"), 12.0, INK, align);
        }
    }

    pub fn save_png(&self, path: &Path) -> Result<()> {
        fsutil::write_atomic(path, |f| {
            image::codecs::png::PngEncoder::new(f)
                .write_image(&self.px, self.w as u32, self.h as u32, image::ExtendedColorType::Rgb8)
                .map_err(std::io::Error::other)
        })
    }
}

/// Viridis-like colour map on [0, 1] (dark purple → teal → yellow); non-finite values map to 0.
pub fn viridis(t: f64) -> Color {
    const STOPS: [[f64; 3]; 5] = [[68.0, 1.0, 84.0], [59.0, 82.0, 139.0], [33.0, 145.0, 140.0], [94.0, 201.0, 98.0], [253.0, 231.0, 37.0]];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    [(a[0] + (b[0] - a[0]) * f) as u8, (a[1] + (b[1] - a[1]) * f) as u8, (a[2] + (b[2] - a[2]) * f) as u8]
}

/// Round tick values covering [lo, hi]: steps of 1, 2, 2.5 or 5 × 10^k, about `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    let scale = 10f64.powi(tick_decimals(step) as i32);
    (first..=last).map(|i| (i as f64 * step * scale).round() / scale).collect()
}

/// Decimals that show ticks `step` apart without clutter (0 for steps ≥ 1, 1 for 0.1…, …).
pub fn tick_decimals(step: f64) -> usize {
    if !(step.is_finite() && step > 0.0) {
        return 0;
    }
    let mut d = 0;
    while d < 6 && ((step * 10f64.powi(d as i32)).round() - step * 10f64.powi(d as i32)).abs() > 1e-6 {
        d += 1;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_font_renders_every_character_amg_writes() {
        for c in "mAP % ViT-Ti/16 αλτ ×−·→≈±≤≥√ 0123456789".chars().filter(|c| !c.is_whitespace()) {
            let m = text_mask(&c.to_string(), 20.0);
            assert!(m.cov.iter().any(|&v| v > 0.5), "no glyph for {c:?}");
        }
        // Lower case is not upper case.
        assert_ne!(text_mask("map", 20.0).cov, text_mask("MAP", 20.0).cov);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(8.2, 9.1, 5), vec![8.2, 8.4, 8.6, 8.8, 9.0]);
        let t = nice_ticks(0.0402, 0.0493, 4);
        assert!(t.iter().all(|v| ((v * 1e4).round() - v * 1e4).abs() < 1e-6), "{t:?}");
        assert_eq!(tick_decimals(0.25), 2);
        assert_eq!(tick_decimals(5.0), 0);
    }
}

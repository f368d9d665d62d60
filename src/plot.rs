//! A small raster plot (PNG) with a built-in 5×7 bitmap font: enough for labelled axes, points and
//! a legend, with no font files or plotting libraries at run time.

use crate::error::Result;
use crate::fsutil;
use image::ImageEncoder;
use std::path::Path;

/// 5×7 glyphs, one byte per row (low 5 bits, MSB on the left).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 17, 10, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        _ => [0; 7],
    }
}

pub type Color = [u8; 3];

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

    pub fn set(&mut self, x: i64, y: i64, c: Color) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Color) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Color) {
        let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for i in 0..=n {
            self.set(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n, c);
        }
    }

    /// Text with its top-left corner at (x, y), `scale` pixels per font pixel.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Color) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (1 << (4 - col)) != 0 {
                        self.rect(x + (i as i64 * 6 + col) * scale, y + row as i64 * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    pub fn text_width(s: &str, scale: i64) -> i64 {
        s.chars().count() as i64 * 6 * scale
    }

    pub fn save_png(&self, path: &Path) -> Result<()> {
        fsutil::write_atomic(path, |f| {
            image::codecs::png::PngEncoder::new(f).write_image(&self.px, self.w as u32, self.h as u32, image::ExtendedColorType::Rgb8).map_err(std::io::Error::other)
        })
    }
}

pub struct Point {
    pub label: String,
    pub x: f64,
    pub y: f64,
    pub color: Color,
}

/// A scatter plot with labelled axes and points.
pub fn scatter(path: &Path, title: &str, xlabel: &str, ylabel: &str, points: &[Point]) -> Result<()> {
    let (w, h) = (720usize, 480usize);
    let (left, right, top, bottom) = (90i64, 30i64, 50i64, 70i64);
    let mut c = Canvas::new(w, h, [255, 255, 255]);
    let (x0, x1) = range(points.iter().map(|p| p.x));
    let (y0, y1) = range(points.iter().map(|p| p.y));
    let pw = w as i64 - left - right;
    let ph = h as i64 - top - bottom;
    let px = |x: f64| left + ((x - x0) / (x1 - x0) * pw as f64).round() as i64;
    let py = |y: f64| top + ph - ((y - y0) / (y1 - y0) * ph as f64).round() as i64;
    let axis = [40, 40, 40];
    let grid = [225, 225, 225];
    // Enough decimals to tell the ticks apart.
    let decimals = |span: f64| (2.0 - (span / 4.0).log10().floor()).clamp(0.0, 6.0) as usize;
    let (dx, dy) = (decimals(x1 - x0), decimals(y1 - y0));
    for i in 0..=4 {
        let fx = x0 + (x1 - x0) * i as f64 / 4.0;
        let fy = y0 + (y1 - y0) * i as f64 / 4.0;
        c.line((px(fx), top), (px(fx), top + ph), grid);
        c.line((left, py(fy)), (left + pw, py(fy)), grid);
        let lx = format!("{fx:.dx$}");
        let tw = Canvas::text_width(&lx, 2);
        c.text((px(fx) - tw / 2).min(w as i64 - 2 - tw), top + ph + 8, &lx, 2, axis);
        let ly = format!("{fy:.dy$}");
        c.text(left - 8 - Canvas::text_width(&ly, 2), py(fy) - 7, &ly, 2, axis);
    }
    c.line((left, top + ph), (left + pw, top + ph), axis);
    c.line((left, top), (left, top + ph), axis);
    c.text((w as i64 - Canvas::text_width(title, 2)) / 2, 14, title, 2, axis);
    c.text(left + (pw - Canvas::text_width(xlabel, 2)) / 2, h as i64 - 28, xlabel, 2, axis);
    // The y label, horizontal, above the axis.
    c.text(8, top - 30, ylabel, 2, axis);
    let marks: Vec<(i64, i64)> = points.iter().map(|p| (px(p.x), py(p.y))).collect();
    for (p, &(x, y)) in points.iter().zip(&marks) {
        c.rect(x - 5, y - 5, 11, 11, p.color);
    }
    let widths: Vec<i64> = points.iter().map(|p| Canvas::text_width(&p.label, 2)).collect();
    for (p, (lx, ly)) in points.iter().zip(place_labels(&marks, &widths, [left, top, w as i64, top + ph])) {
        c.text(lx, ly, &p.label, 2, p.color);
    }
    c.save_png(path)
}

/// Where to draw each marker's label (14 px high, `widths[i]` wide): the first place — right,
/// left, then below or above either side — that stays inside `bounds` (x0, y0, x1, y1) and clear
/// of every marker and earlier label; the right (or left, at the edge) when none is clear.
fn place_labels(marks: &[(i64, i64)], widths: &[i64], bounds: [i64; 4]) -> Vec<(i64, i64)> {
    let boxed = |lx: i64, ly: i64, lw: i64| [lx - 2, ly - 2, lx + lw + 2, ly + 16];
    let mut taken: Vec<[i64; 4]> = marks.iter().map(|&(x, y)| [x - 6, y - 6, x + 6, y + 6]).collect();
    let mut out = Vec::with_capacity(marks.len());
    for (&(x, y), &lw) in marks.iter().zip(widths) {
        let candidates = [(x + 10, y - 7), (x - 10 - lw, y - 7), (x + 4, y + 10), (x + 4, y - 24), (x - 4 - lw, y + 10), (x - 4 - lw, y - 24)];
        let clear = |&(lx, ly): &(i64, i64)| {
            let r = boxed(lx, ly, lw);
            r[0] >= bounds[0] && r[1] >= bounds[1] && r[2] <= bounds[2] && r[3] <= bounds[3] && taken.iter().all(|t| r[2] <= t[0] || t[2] <= r[0] || r[3] <= t[1] || t[3] <= r[1])
        };
        let fallback = candidates[if x + 10 + lw < bounds[2] { 0 } else { 1 }];
        let (lx, ly) = candidates.iter().copied().find(clear).unwrap_or(fallback);
        taken.push(boxed(lx, ly, lw));
        out.push((lx, ly));
    }
    out
}

fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.15).max(1e-6 + hi.abs() * 0.05);
    (lo - pad, hi + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(a: [i64; 4], b: [i64; 4]) -> bool {
        !(a[2] <= b[0] || b[2] <= a[0] || a[3] <= b[1] || b[3] <= a[1])
    }

    #[test]
    fn labels_stay_clear_of_each_other_and_of_markers() {
        // The demo's layout that once printed two labels over each other: the unpruned point at
        // the right edge (its label goes left) and the AMG point just left of it at the same height.
        let marks = [(568, 130), (233, 123), (213, 337)];
        let widths: Vec<i64> = ["UNPRUNED VIT-TI", "AMG HEADS+TOKENS", "RANDOM HEADS+TOKENS"].iter().map(|s| Canvas::text_width(s, 2)).collect();
        let bounds = [90, 50, 720, 410];
        let places = place_labels(&marks, &widths, bounds);
        let boxes: Vec<[i64; 4]> = places.iter().zip(&widths).map(|(&(x, y), &w)| [x, y, x + w, y + 14]).collect();
        for (i, a) in boxes.iter().enumerate() {
            assert!(a[0] >= bounds[0] && a[2] <= bounds[2] && a[1] >= bounds[1] && a[3] <= bounds[3], "label {i} leaves the plot: {a:?}");
            for (j, b) in boxes.iter().enumerate().skip(i + 1) {
                assert!(!overlap(*a, *b), "labels {i} and {j} overlap: {a:?} {b:?}");
            }
            for &(x, y) in &marks {
                assert!(!overlap(*a, [x - 5, y - 5, x + 6, y + 6]), "label {i} covers the marker at ({x}, {y})");
            }
        }
    }
}

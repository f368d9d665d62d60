//! A scatter plot with labelled points, on the `draw` canvas: round ticks, a title, axis labels
//! and point labels that stay clear of each other.

use crate::draw::{nice_ticks, text_height, text_width, tick_decimals, Align, Canvas, Color, GRID, INK, WHITE};
use crate::error::Result;
use std::path::Path;

pub struct Point {
    pub label: String,
    pub x: f64,
    pub y: f64,
    pub color: Color,
}

const LABEL: f32 = 14.0;

/// A scatter plot with a title, labelled axes and labelled points, written as PNG.
pub fn scatter(path: &Path, title: &str, xlabel: &str, ylabel: &str, points: &[Point]) -> Result<()> {
    let (w, h) = (760usize, 500usize);
    let (left, right, top, bottom) = (84i64, 30i64, 52i64, 64i64);
    let mut c = Canvas::new(w, h, WHITE);
    let (x0, x1) = range(points.iter().map(|p| p.x));
    let (y0, y1) = range(points.iter().map(|p| p.y));
    let pw = w as i64 - left - right;
    let ph = h as i64 - top - bottom;
    let px = |x: f64| left + ((x - x0) / (x1 - x0) * pw as f64).round() as i64;
    let py = |y: f64| top + ph - ((y - y0) / (y1 - y0) * ph as f64).round() as i64;
    let (xt, yt) = (nice_ticks(x0, x1, 5), nice_ticks(y0, y1, 5));
    let step = |t: &[f64]| if t.len() > 1 { t[1] - t[0] } else { 1.0 };
    let (dx, dy) = (tick_decimals(step(&xt)), tick_decimals(step(&yt)));
    for &v in &xt {
        c.line((px(v), top), (px(v), top + ph), GRID);
        c.line((px(v), top + ph), (px(v), top + ph + 4), INK);
        c.text(px(v), top + ph + 7, &format!("{v:.dx$}"), 13.0, INK, Align::Center);
    }
    for &v in &yt {
        c.line((left, py(v)), (left + pw, py(v)), GRID);
        c.line((left - 4, py(v)), (left, py(v)), INK);
        c.text(left - 7, py(v) - 8, &format!("{v:.dy$}"), 13.0, INK, Align::Right);
    }
    c.line((left, top + ph), (left + pw, top + ph), INK);
    c.line((left, top), (left, top + ph), INK);
    c.text(w as i64 / 2, 14, title, 18.0, INK, Align::Center);
    c.text(left + pw / 2, h as i64 - 28, xlabel, 15.0, INK, Align::Center);
    c.text_up(12, top + ph / 2, ylabel, 15.0, INK);
    let marks: Vec<(i64, i64)> = points.iter().map(|p| (px(p.x), py(p.y))).collect();
    for (p, &(x, y)) in points.iter().zip(&marks) {
        c.rect(x - 5, y - 5, 11, 11, p.color);
    }
    let widths: Vec<i64> = points.iter().map(|p| text_width(&p.label, LABEL).ceil() as i64).collect();
    let lh = text_height(LABEL).ceil() as i64;
    for (p, (lx, ly)) in points.iter().zip(place_labels(&marks, &widths, lh, [left, top, w as i64, top + ph])) {
        c.text(lx, ly, &p.label, LABEL, p.color, Align::Left);
    }
    c.save_png(path)
}

/// Where to draw each marker's label (`lh` high, `widths[i]` wide): the first place — right, left,
/// then below or above either side — that stays inside `bounds` (x0, y0, x1, y1) and clear of
/// every marker and earlier label; the right (or left, at the edge) when none is clear.
fn place_labels(marks: &[(i64, i64)], widths: &[i64], lh: i64, bounds: [i64; 4]) -> Vec<(i64, i64)> {
    let boxed = |lx: i64, ly: i64, lw: i64| [lx - 2, ly - 2, lx + lw + 2, ly + lh + 2];
    let mut taken: Vec<[i64; 4]> = marks.iter().map(|&(x, y)| [x - 6, y - 6, x + 6, y + 6]).collect();
    let mut out = Vec::with_capacity(marks.len());
    for (&(x, y), &lw) in marks.iter().zip(widths) {
        let half = lh / 2;
        let candidates = [(x + 10, y - half), (x - 10 - lw, y - half), (x + 4, y + 10), (x + 4, y - 10 - lh), (x - 4 - lw, y + 10), (x - 4 - lw, y - 10 - lh)];
        let clear = |&(lx, ly): &(i64, i64)| {
            let r = boxed(lx, ly, lw);
            r[0] >= bounds[0]
                && r[1] >= bounds[1]
                && r[2] <= bounds[2]
                && r[3] <= bounds[3]
                && taken.iter().all(|t| r[2] <= t[0] || t[2] <= r[0] || r[3] <= t[1] || t[3] <= r[1])
        };
        let fallback = candidates[if x + 10 + lw < bounds[2] { 0 } else { 1 }];
        let (lx, ly) = candidates.iter().copied().find(clear).unwrap_or(fallback);
        taken.push(boxed(lx, ly, lw));
        out.push((lx, ly));
    }
    out
}

/// The data range with a margin, so points do not sit on the frame.
fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.filter(|x| x.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    if lo > hi {
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
        let widths: Vec<i64> = ["unpruned ViT-Ti", "AMG heads+tokens", "random heads+tokens"].iter().map(|s| text_width(s, LABEL).ceil() as i64).collect();
        let lh = text_height(LABEL).ceil() as i64;
        let bounds = [84, 52, 760, 436];
        let places = place_labels(&marks, &widths, lh, bounds);
        let boxes: Vec<[i64; 4]> = places.iter().zip(&widths).map(|(&(x, y), &w)| [x, y, x + w, y + lh]).collect();
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

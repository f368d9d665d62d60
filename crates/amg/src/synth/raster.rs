//! A tiny anti-aliased rasteriser for the synthetic benchmark: shapes are filled on a canvas
//! rendered at a multiple of the output size and box-filtered down.

pub type Rgb = [f32; 3];

/// How a shape is coloured: a flat colour, or a function of the canvas position (in output
/// pixels), for textures that move with the shape.
pub enum Paint<'a> {
    Solid(Rgb),
    Texture(&'a dyn Fn(f32, f32) -> Rgb),
}

impl Paint<'_> {
    #[inline]
    fn at(&self, x: f32, y: f32) -> Rgb {
        match self {
            Paint::Solid(c) => *c,
            Paint::Texture(f) => f(x, y),
        }
    }
}

pub struct Canvas {
    /// Output size.
    pub width: usize,
    pub height: usize,
    /// Supersampling factor.
    pub ss: usize,
    /// `[height·ss, width·ss, 3]`, linear 0..1 values.
    px: Vec<f32>,
}

impl Canvas {
    pub fn new(height: usize, width: usize, ss: usize) -> Self {
        Canvas { width, height, ss, px: vec![0.0; height * ss * width * ss * 3] }
    }

    fn w(&self) -> usize {
        self.width * self.ss
    }
    fn h(&self) -> usize {
        self.height * self.ss
    }

    /// Calls `inside(x, y)` (output-pixel coordinates of the sample centre) for every sample of
    /// the box `[x0, x1)×[y0, y1)` and paints those inside, with opacity `alpha`.
    fn fill_where(&mut self, bounds: (f32, f32, f32, f32), alpha: f32, paint: &Paint, inside: impl Fn(f32, f32) -> bool) {
        let s = self.ss as f32;
        let (w, h) = (self.w() as isize, self.h() as isize);
        let sx0 = ((bounds.0 * s).floor() as isize).clamp(0, w);
        let sx1 = ((bounds.1 * s).ceil() as isize).clamp(0, w);
        let sy0 = ((bounds.2 * s).floor() as isize).clamp(0, h);
        let sy1 = ((bounds.3 * s).ceil() as isize).clamp(0, h);
        let wu = w as usize;
        for sy in sy0..sy1 {
            let y = (sy as f32 + 0.5) / s;
            for sx in sx0..sx1 {
                let x = (sx as f32 + 0.5) / s;
                if inside(x, y) {
                    let c = paint.at(x, y);
                    let i = (sy as usize * wu + sx as usize) * 3;
                    for (p, ck) in self.px[i..i + 3].iter_mut().zip(c) {
                        *p = *p * (1.0 - alpha) + ck * alpha;
                    }
                }
            }
        }
    }

    pub fn fill_all(&mut self, paint: &Paint) {
        let (w, h) = (self.width as f32, self.height as f32);
        self.fill_where((0.0, w, 0.0, h), 1.0, paint, |_, _| true);
    }

    pub fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, paint: &Paint) {
        self.fill_where((x0, x1, y0, y1), 1.0, paint, |x, y| x >= x0 && x < x1 && y >= y0 && y < y1);
    }

    pub fn rect_alpha(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, alpha: f32, paint: &Paint) {
        self.fill_where((x0, x1, y0, y1), alpha, paint, |x, y| x >= x0 && x < x1 && y >= y0 && y < y1);
    }

    pub fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, paint: &Paint) {
        if rx <= 0.0 || ry <= 0.0 {
            return;
        }
        self.fill_where((cx - rx, cx + rx, cy - ry, cy + ry), 1.0, paint, |x, y| {
            let (dx, dy) = ((x - cx) / rx, (y - cy) / ry);
            dx * dx + dy * dy <= 1.0
        });
    }

    /// A thick segment with round ends.
    pub fn capsule(&mut self, (ax, ay): (f32, f32), (bx, by): (f32, f32), r: f32, paint: &Paint) {
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = (dx * dx + dy * dy).max(1e-9);
        let b = (ax.min(bx) - r, ax.max(bx) + r, ay.min(by) - r, ay.max(by) + r);
        self.fill_where(b, 1.0, paint, |x, y| {
            let t = (((x - ax) * dx + (y - ay) * dy) / len2).clamp(0.0, 1.0);
            let (px, py) = (ax + t * dx - x, ay + t * dy - y);
            px * px + py * py <= r * r
        });
    }

    /// A polygon (even-odd rule), vertices in order.
    pub fn polygon(&mut self, pts: &[(f32, f32)], paint: &Paint) {
        if pts.len() < 3 {
            return;
        }
        let xs = pts.iter().map(|p| p.0);
        let ys = pts.iter().map(|p| p.1);
        let b = (xs.clone().fold(f32::MAX, f32::min), xs.fold(f32::MIN, f32::max), ys.clone().fold(f32::MAX, f32::min), ys.fold(f32::MIN, f32::max));
        self.fill_where(b, 1.0, paint, |x, y| {
            let mut inside = false;
            let mut j = pts.len() - 1;
            for i in 0..pts.len() {
                let (xi, yi) = pts[i];
                let (xj, yj) = pts[j];
                if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                    inside = !inside;
                }
                j = i;
            }
            inside
        });
    }

    /// Applies `f` to every sample (e.g. lighting), given its output-pixel position.
    pub fn map(&mut self, f: impl Fn(f32, f32, Rgb) -> Rgb) {
        let s = self.ss as f32;
        let w = self.w();
        for (i, p) in self.px.chunks_exact_mut(3).enumerate() {
            let (sx, sy) = (i % w, i / w);
            let c = f((sx as f32 + 0.5) / s, (sy as f32 + 0.5) / s, [p[0], p[1], p[2]]);
            p.copy_from_slice(&c);
        }
    }

    /// Box blur of radius `r` output pixels (separable, two passes), for out-of-focus scenery.
    pub fn blur(&mut self, r: f32) {
        let rad = (r * self.ss as f32).round() as usize;
        if rad == 0 {
            return;
        }
        let (w, h) = (self.w(), self.h());
        let mut tmp = vec![0f32; self.px.len()];
        box_pass(&self.px, &mut tmp, (w, h), rad, true);
        box_pass(&tmp, &mut self.px, (w, h), rad, false);
    }

    /// Box-filters the supersampled canvas to the output size: `[height, width, 3]` in 0..1.
    pub fn resolve(&self) -> Vec<f32> {
        let (ss, w) = (self.ss, self.w());
        let mut out = vec![0f32; self.height * self.width * 3];
        let norm = 1.0 / (ss * ss) as f32;
        for y in 0..self.height {
            for x in 0..self.width {
                let mut acc = [0f32; 3];
                for dy in 0..ss {
                    for dx in 0..ss {
                        let i = ((y * ss + dy) * w + x * ss + dx) * 3;
                        for (a, p) in acc.iter_mut().zip(&self.px[i..i + 3]) {
                            *a += p;
                        }
                    }
                }
                for k in 0..3 {
                    out[(y * self.width + x) * 3 + k] = acc[k] * norm;
                }
            }
        }
        out
    }
}

pub fn hsv(h: f32, s: f32, v: f32) -> Rgb {
    let h = h.rem_euclid(1.0) * 6.0;
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

pub fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

pub fn scale(a: Rgb, k: f32) -> Rgb {
    [a[0] * k, a[1] * k, a[2] * k]
}

/// One pass of a separable box blur of radius `rad` over an RGB float image (`w`×`h`), along x
/// (`horizontal`) or y, with edge pixels repeated.
fn box_pass(src: &[f32], dst: &mut [f32], (w, h): (usize, usize), rad: usize, horizontal: bool) {
    let norm = 1.0 / (2 * rad + 1) as f32;
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 3];
            for d in 0..=2 * rad {
                let i = if horizontal { (y * w + (x + d).saturating_sub(rad).min(w - 1)) * 3 } else { ((y + d).saturating_sub(rad).min(h - 1) * w + x) * 3 };
                for k in 0..3 {
                    acc[k] += src[i + k];
                }
            }
            let o = (y * w + x) * 3;
            for k in 0..3 {
                dst[o + k] = acc[k] * norm;
            }
        }
    }
}

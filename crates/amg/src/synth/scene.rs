//! Cameras and what surrounds the pedestrian: per-camera scenes, lighting, viewpoint habits and
//! image quality; occluders (cars, poles, boards, bushes, other people).

use super::person::{self, Person, Pose, View};
use super::raster::{hsv, mix, scale, Canvas, Paint, Rgb};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SceneKind {
    Street,
    Park,
    Hall,
    Road,
    Plaza,
    Parking,
}

const SCENES: [SceneKind; 6] = [SceneKind::Street, SceneKind::Park, SceneKind::Hall, SceneKind::Road, SceneKind::Plaza, SceneKind::Parking];

#[derive(Clone, Debug)]
pub struct Camera {
    pub scene: SceneKind,
    /// Scene colours.
    pub palette: [Rgb; 4],
    /// Illumination: overall gain, colour cast, gamma, and a vertical gradient strength.
    pub gain: f32,
    pub cast: Rgb,
    pub gamma: f32,
    pub gradient: f32,
    /// Image quality: the scene is rendered at 1/blur of the output size and upsampled.
    pub blur: f32,
    pub noise: f32,
    pub jpeg_quality: u8,
    /// How often this camera sees people from the front, back and side.
    pub views: [f32; 3],
    /// Person height as a fraction of the image height.
    pub scale: (f32, f32),
}

impl Camera {
    pub fn new(index: usize, rng: &mut Rng) -> Camera {
        let scene = SCENES[index % SCENES.len()];
        let base = rng.f32();
        let palette = [
            hsv(base, rng.range(0.05, 0.35) as f32, rng.range(0.35, 0.8) as f32),
            hsv(base + rng.range(0.2, 0.5) as f32, rng.range(0.05, 0.4) as f32, rng.range(0.25, 0.7) as f32),
            hsv(rng.f32(), rng.range(0.0, 0.3) as f32, rng.range(0.3, 0.9) as f32),
            hsv(rng.f32(), rng.range(0.3, 0.8) as f32, rng.range(0.3, 0.9) as f32),
        ];
        let cast_h = rng.f32();
        let cast_s = rng.range(0.0, 0.22) as f32;
        let cast = hsv(cast_h, cast_s, 1.0);
        let norm = (cast[0] + cast[1] + cast[2]) / 3.0;
        // Cameras favour a walking direction: mostly front, mostly back, or mostly side.
        let views = match index % 3 {
            0 => [0.6, 0.15, 0.25],
            1 => [0.15, 0.6, 0.25],
            _ => [0.2, 0.2, 0.6],
        };
        let near = rng.range(0.78, 0.92) as f32;
        Camera {
            scene,
            palette,
            gain: rng.range(0.65, 1.25) as f32,
            cast: scale(cast, 1.0 / norm),
            gamma: rng.range(0.8, 1.25) as f32,
            gradient: rng.range(-0.25, 0.25) as f32,
            blur: if rng.bool(0.5) { rng.range(1.0, 1.3) as f32 } else { rng.range(1.5, 2.2) as f32 },
            noise: rng.range(0.005, 0.03) as f32,
            jpeg_quality: rng.range(70.0, 95.0) as u8,
            views,
            scale: (near - 0.1, near + 0.06),
        }
    }

    pub fn sample_view(&self, rng: &mut Rng) -> View {
        let t = rng.f32() * (self.views[0] + self.views[1] + self.views[2]);
        if t < self.views[0] {
            View::Front
        } else if t < self.views[0] + self.views[1] {
            View::Back
        } else {
            View::Side
        }
    }
}

fn jitter(c: Rgb, rng: &mut Rng, amount: f32) -> Rgb {
    let k = 1.0 + rng.range(-amount as f64, amount as f64) as f32;
    [(c[0] * k).clamp(0.0, 1.0), (c[1] * k).clamp(0.0, 1.0), (c[2] * k).clamp(0.0, 1.0)]
}

/// Draws the camera's scene; `rng` places this image somewhere in it.
pub fn background(c: &mut Canvas, cam: &Camera, rng: &mut Rng) {
    let (w, h) = (c.width as f32, c.height as f32);
    let [p0, p1, p2, p3] = cam.palette;
    let horizon = h * rng.range(0.45, 0.65) as f32;
    let off = rng.range(0.0, 100.0) as f32;
    let noise_seed = rng.next_u64();
    let grain = move |x: f32, y: f32| -> f32 {
        // Cheap deterministic value noise for surface texture.
        let xi = (x * 1.7) as i64;
        let yi = (y * 1.7) as i64;
        let mut v = (xi.wrapping_mul(73_856_093) ^ yi.wrapping_mul(19_349_663) ^ noise_seed as i64) as u64;
        v ^= v >> 13;
        v = v.wrapping_mul(0x5bd1e995);
        ((v >> 40) & 0xff) as f32 / 255.0 - 0.5
    };
    match cam.scene {
        SceneKind::Street => {
            let wall = move |x: f32, y: f32| -> Rgb {
                let (wx, wy) = (((x + off) / (w * 0.45)).fract(), ((y + off * 0.3) / (h * 0.22)).fract());
                if wx > 0.2 && wx < 0.8 && wy > 0.25 && wy < 0.75 {
                    scale(p1, 0.5)
                } else {
                    scale(p0, 1.0 + 0.08 * grain(x, y))
                }
            };
            c.rect(0.0, 0.0, w, horizon, &Paint::Texture(&wall));
            let ground = move |x: f32, y: f32| -> Rgb {
                let tile = (((x + off) / (w * 0.3)).fract() < 0.05) || (((y - horizon) / (h * 0.08)).fract() < 0.06);
                scale(p2, if tile { 0.8 } else { 1.0 + 0.1 * grain(x, y) })
            };
            c.rect(0.0, horizon, w, h, &Paint::Texture(&ground));
        }
        SceneKind::Park => {
            let sky = mix(p2, [0.85, 0.9, 0.95], 0.6);
            c.rect(0.0, 0.0, w, horizon, &Paint::Solid(sky));
            for _ in 0..3 + rng.below(3) {
                let (tx, ty) = (rng.range(-0.2, 1.2) as f32 * w, horizon * rng.range(0.2, 0.8) as f32);
                let green = hsv(0.28 + rng.range(-0.05, 0.05) as f32, 0.55, rng.range(0.25, 0.5) as f32);
                c.rect(tx - 2.0, ty, tx + 2.0, horizon, &Paint::Solid([0.3, 0.2, 0.12]));
                c.ellipse(tx, ty, w * rng.range(0.2, 0.4) as f32, h * rng.range(0.1, 0.2) as f32, &Paint::Solid(green));
            }
            let grass = move |x: f32, y: f32| -> Rgb { scale(mix(p3, [0.25, 0.5, 0.2], 0.6), 1.0 + 0.25 * grain(x, y)) };
            c.rect(0.0, horizon, w, h, &Paint::Texture(&grass));
            let path_w = w * rng.range(0.3, 0.7) as f32;
            let px = rng.range(0.0, 1.0) as f32 * w;
            c.polygon(
                &[(px - path_w * 0.2, horizon), (px + path_w * 0.2, horizon), (px + path_w, h), (px - path_w, h)],
                &Paint::Solid(mix(p2, [0.7, 0.6, 0.45], 0.5)),
            );
        }
        SceneKind::Hall => {
            let wall = move |x: f32, y: f32| -> Rgb {
                let pillar = ((x + off) / (w * 0.6)).fract() < 0.15;
                scale(if pillar { p1 } else { mix(p0, [0.85, 0.8, 0.7], 0.5) }, 1.0 + 0.05 * grain(x, y))
            };
            c.rect(0.0, 0.0, w, horizon, &Paint::Texture(&wall));
            let floor = move |x: f32, y: f32| -> Rgb {
                let d = 1.0 + 3.0 * (y - horizon) / h;
                let cell = (((x - w / 2.0) / (w * 0.12 * d) + off).floor() as i64 + ((y - horizon) / (h * 0.05 * d)).floor() as i64).rem_euclid(2);
                if cell == 0 {
                    p2
                } else {
                    scale(p2, 0.75)
                }
            };
            c.rect(0.0, horizon, w, h, &Paint::Texture(&floor));
        }
        SceneKind::Road => {
            let far = move |x: f32, y: f32| -> Rgb {
                let b = ((x + off) / (w * 0.25)).floor() as i64;
                let top = horizon * (0.2 + 0.5 * (((b * 7919) % 10) as f32 / 10.0));
                if y > top {
                    scale(p0, 0.8 + 0.2 * (((b * 31) % 5) as f32 / 5.0))
                } else {
                    mix(p2, [0.8, 0.85, 0.9], 0.5)
                }
            };
            c.rect(0.0, 0.0, w, horizon, &Paint::Texture(&far));
            let asphalt = move |x: f32, y: f32| -> Rgb {
                let lane = ((x - w * 0.5).abs() < w * 0.03) && (((y + off) / (h * 0.12)).fract() < 0.5);
                if lane {
                    [0.9, 0.9, 0.85]
                } else {
                    scale([0.3, 0.3, 0.32], 1.0 + 0.2 * grain(x, y))
                }
            };
            c.rect(0.0, horizon, w, h, &Paint::Texture(&asphalt));
        }
        SceneKind::Plaza => {
            let glass = move |x: f32, y: f32| -> Rgb {
                let panel = ((x + off) / (w * 0.2)).fract() < 0.08 || ((y + off) / (h * 0.15)).fract() < 0.08;
                if panel {
                    scale(p1, 0.6)
                } else {
                    mix(p3, [0.5, 0.65, 0.75], 0.6 + 0.3 * (y / h))
                }
            };
            c.rect(0.0, 0.0, w, horizon, &Paint::Texture(&glass));
            let brick = move |x: f32, y: f32| -> Rgb {
                let row = ((y - horizon) / (h * 0.04)).floor() as i64;
                let shift = if row % 2 == 0 { 0.0 } else { 0.5 };
                let mortar = ((x + off) / (w * 0.15) + shift).fract() < 0.08 || ((y - horizon) / (h * 0.04)).fract() < 0.12;
                if mortar {
                    [0.7, 0.68, 0.62]
                } else {
                    scale(mix(p0, [0.55, 0.3, 0.22], 0.6), 1.0 + 0.15 * grain(x, y))
                }
            };
            c.rect(0.0, horizon, w, h, &Paint::Texture(&brick));
        }
        SceneKind::Parking => {
            c.rect(0.0, 0.0, w, horizon, &Paint::Solid(mix(p0, [0.6, 0.6, 0.62], 0.5)));
            let ground = move |x: f32, y: f32| -> Rgb { scale([0.45, 0.45, 0.47], 1.0 + 0.15 * grain(x, y)) };
            c.rect(0.0, horizon, w, h, &Paint::Texture(&ground));
            for _ in 0..2 + rng.below(2) {
                let cx = rng.range(-0.3, 1.3) as f32 * w;
                let cw = w * rng.range(0.5, 0.9) as f32;
                let col = hsv(rng.f32(), rng.range(0.2, 0.8) as f32, rng.range(0.3, 0.9) as f32);
                car(c, cx - cw / 2.0, horizon - h * 0.12, cw, h * 0.14, col);
            }
        }
    }
    // Some clutter: a sign, a bin, a distant pedestrian blob.
    for _ in 0..rng.below(3) {
        let (x, y0) = (rng.range(0.0, 1.0) as f32 * w, horizon * rng.range(0.5, 1.0) as f32);
        let col = jitter(hsv(rng.f32(), rng.range(0.2, 0.9) as f32, rng.range(0.3, 0.9) as f32), rng, 0.1);
        if rng.bool(0.5) {
            c.rect(x - 1.0, y0, x + 1.0, horizon + h * 0.1, &Paint::Solid([0.35, 0.35, 0.37]));
            c.rect(x - w * 0.08, y0 - h * 0.06, x + w * 0.08, y0, &Paint::Solid(col));
        } else {
            c.rect(x - w * 0.05, horizon + h * 0.02, x + w * 0.05, horizon + h * 0.12, &Paint::Solid(col));
        }
    }
}

fn car(c: &mut Canvas, x: f32, y: f32, w: f32, h: f32, col: Rgb) {
    let body = Paint::Solid(col);
    c.polygon(
        &[
            (x + w * 0.2, y),
            (x + w * 0.8, y),
            (x + w * 0.92, y + h * 0.4),
            (x + w, y + h * 0.45),
            (x + w, y + h * 0.85),
            (x, y + h * 0.85),
            (x, y + h * 0.45),
            (x + w * 0.08, y + h * 0.4),
        ],
        &body,
    );
    let glass = Paint::Solid(mix(scale(col, 0.3), [0.4, 0.5, 0.6], 0.5));
    c.polygon(&[(x + w * 0.24, y + h * 0.06), (x + w * 0.76, y + h * 0.06), (x + w * 0.86, y + h * 0.38), (x + w * 0.14, y + h * 0.38)], &glass);
    let wheel = Paint::Solid([0.06, 0.06, 0.06]);
    c.ellipse(x + w * 0.2, y + h * 0.85, h * 0.16, h * 0.16, &wheel);
    c.ellipse(x + w * 0.8, y + h * 0.85, h * 0.16, h * 0.16, &wheel);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Occluder {
    Car,
    Pole,
    Board,
    Bush,
    Person,
}

/// Covers about `coverage` of the pedestrian's box `(x0, y0, x1, y1)` with an occluder.
pub fn occlude(c: &mut Canvas, bbox: (f32, f32, f32, f32), coverage: f32, rng: &mut Rng) -> Occluder {
    let (x0, y0, x1, y1) = bbox;
    let (bw, bh) = (x1 - x0, y1 - y0);
    let (w, h) = (c.width as f32, c.height as f32);
    let kind = [Occluder::Car, Occluder::Pole, Occluder::Board, Occluder::Bush, Occluder::Person][rng.below(5)];
    let col = hsv(rng.f32(), rng.range(0.2, 0.85) as f32, rng.range(0.25, 0.9) as f32);
    match kind {
        Occluder::Car => {
            // Bottom part of the body behind a car.
            let top = y1 - coverage * bh;
            let cw = w * rng.range(1.2, 2.0) as f32;
            let cx = rng.range(-0.4, 0.4) as f32 * w + w / 2.0 - cw / 2.0;
            car(c, cx, top - 0.1 * bh, cw, (h - top) + 0.1 * bh + h * 0.05, col);
        }
        Occluder::Pole => {
            // A vertical bar across the body (a pole or a tree trunk).
            let pw = coverage * bw;
            let px = x0 + rng.range(0.0, 1.0) as f32 * (bw - pw * 0.5);
            let tex_col = if rng.bool(0.5) { [0.3, 0.22, 0.14] } else { scale(col, 0.6) };
            c.rect(px - pw / 2.0, 0.0, px + pw / 2.0, h, &Paint::Solid(tex_col));
        }
        Occluder::Board => {
            // A board or sign at body height.
            let bhgt = coverage * bh;
            let by = y0 + rng.range(0.15, 0.85) as f32 * (bh - bhgt);
            c.rect(-1.0, by, w + 1.0, by + bhgt, &Paint::Solid(col));
            c.rect(w * 0.1, by + bhgt * 0.2, w * 0.9, by + bhgt * 0.35, &Paint::Solid(scale(col, 0.5)));
        }
        Occluder::Bush => {
            let top = y1 - coverage * bh;
            let green = hsv(0.27 + rng.range(-0.06, 0.06) as f32, 0.6, rng.range(0.2, 0.45) as f32);
            for i in 0..6 {
                let cx = w * (i as f32 / 5.0) + rng.range(-3.0, 3.0) as f32;
                c.ellipse(cx, top + bh * 0.08, w * 0.22, bh * 0.12, &Paint::Solid(green));
            }
            c.rect(-1.0, top + bh * 0.08, w + 1.0, h + 1.0, &Paint::Solid(green));
        }
        Occluder::Person => {
            // Another pedestrian, closer to the camera, covering one side.
            let other = Person::random(rng);
            let side = if rng.bool(0.5) { 1.0 } else { -1.0 };
            let ox = (x0 + x1) / 2.0 + side * bw * (1.1 - 1.4 * coverage);
            let oh = bh * rng.range(1.0, 1.15) as f32;
            // 6.283 rather than TAU: kept so that generated benchmarks stay byte-identical across versions.
            #[allow(clippy::approx_constant)]
            let pose =
                Pose { view: [View::Front, View::Back, View::Side][rng.below(3)], phase: rng.range(0.0, 6.283) as f32, swing: rng.range(0.0, 0.5) as f32 };
            person::draw(c, &other, pose, ox, y0 - (oh - bh) * 0.5, oh);
        }
    }
    kind
}

/// Camera lighting over the whole image.
pub fn light(c: &mut Canvas, cam: &Camera, extra_gain: f32) {
    let h = c.height as f32;
    let (gain, cast, gamma, grad) = (cam.gain * extra_gain, cam.cast, cam.gamma, cam.gradient);
    c.map(|_, y, px| {
        let g = gain * (1.0 + grad * (y / h - 0.5));
        [
            ((px[0] * cast[0] * g).clamp(0.0, 1.0)).powf(gamma),
            ((px[1] * cast[1] * g).clamp(0.0, 1.0)).powf(gamma),
            ((px[2] * cast[2] * g).clamp(0.0, 1.0)).powf(gamma),
        ]
    });
}

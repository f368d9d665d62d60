//! Procedural pedestrians: an identity is a set of appearance attributes (skin, hair, clothing
//! colours and patterns, bags, build); an image of it adds a viewpoint and a walking pose.
//! Identities come in families that share most attributes and differ in one or two, so the
//! benchmark has look-alike distractors.

use super::raster::{hsv, mix, scale, Canvas, Paint, Rgb};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    Plain,
    HStripes {
        period: f32,
    },
    VStripes {
        period: f32,
    },
    Checker {
        period: f32,
    },
    /// Upper half one colour, lower half the other.
    TwoTone,
    /// A mark on the chest, visible from the front only: 0 disc, 1 square, 2 triangle.
    Logo {
        shape: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hair {
    Short,
    Long,
    Cap(Rgb),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bottom {
    Trousers,
    Shorts,
    Skirt,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bag {
    None,
    Backpack(Rgb),
    /// Strap across the chest, bag at the hip (on the given side, ±1).
    Shoulder(Rgb, f32),
    Handbag(Rgb),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Person {
    pub skin: Rgb,
    pub hair_color: Rgb,
    pub hair: Hair,
    pub top: Rgb,
    pub top2: Rgb,
    pub pattern: Pattern,
    pub long_sleeves: bool,
    /// An open jacket over the top: its colour shows at the sides and on the sleeves.
    pub jacket: Option<Rgb>,
    pub bottom: Rgb,
    pub bottom_kind: Bottom,
    pub shoes: Rgb,
    pub bag: Bag,
    /// Width factor.
    pub build: f32,
    /// Height factor.
    pub stature: f32,
}

/// Clothing colours: a named base hue/saturation/value, jittered per draw.
const PALETTE: [(f32, f32, f32, f32); 16] = [
    // (hue, saturation, value, weight)
    (0.0, 0.0, 0.12, 3.0),   // black
    (0.0, 0.0, 0.92, 2.0),   // white
    (0.0, 0.0, 0.55, 2.0),   // grey
    (0.62, 0.7, 0.35, 2.0),  // navy
    (0.58, 0.65, 0.75, 1.5), // blue
    (0.0, 0.8, 0.75, 1.5),   // red
    (0.33, 0.6, 0.5, 1.0),   // green
    (0.15, 0.8, 0.9, 0.8),   // yellow
    (0.1, 0.3, 0.8, 1.2),    // beige
    (0.07, 0.6, 0.4, 1.2),   // brown
    (0.92, 0.45, 0.9, 0.8),  // pink
    (0.78, 0.55, 0.55, 0.8), // purple
    (0.07, 0.85, 0.95, 0.7), // orange
    (0.12, 0.45, 0.6, 1.0),  // khaki
    (0.5, 0.6, 0.55, 0.7),   // teal
    (0.97, 0.7, 0.4, 0.8),   // maroon
];

fn palette_colour(rng: &mut Rng) -> Rgb {
    let total: f32 = PALETTE.iter().map(|p| p.3).sum();
    let mut t = rng.f32() * total;
    let mut pick = PALETTE[0];
    for p in PALETTE {
        if t < p.3 {
            pick = p;
            break;
        }
        t -= p.3;
    }
    let (h, s, v, _) = pick;
    hsv(h + rng.range(-0.025, 0.025) as f32, (s + rng.range(-0.08, 0.08) as f32).clamp(0.0, 1.0), (v * rng.range(0.85, 1.12) as f32).clamp(0.05, 1.0))
}

fn skin(rng: &mut Rng) -> Rgb {
    let tones = [[0.96, 0.80, 0.69], [0.87, 0.69, 0.55], [0.76, 0.57, 0.42], [0.55, 0.38, 0.26], [0.36, 0.24, 0.16]];
    let base = tones[rng.below(tones.len())];
    scale(base, rng.range(0.93, 1.05) as f32)
}

fn hair_colour(rng: &mut Rng) -> Rgb {
    let c = [[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.3, 0.15], [0.8, 0.65, 0.4], [0.6, 0.6, 0.6], [0.5, 0.2, 0.1]];
    let w = [4.0, 3.0, 1.5, 0.8, 0.5, 0.4];
    let mut t = rng.f64() * w.iter().sum::<f64>();
    for (i, wi) in w.iter().enumerate() {
        if t < *wi {
            return c[i];
        }
        t -= wi;
    }
    c[0]
}

fn pattern(rng: &mut Rng) -> Pattern {
    match rng.below(10) {
        0..=3 => Pattern::Plain,
        4 => Pattern::HStripes { period: rng.range(0.025, 0.05) as f32 },
        5 => Pattern::VStripes { period: rng.range(0.03, 0.055) as f32 },
        6 => Pattern::Checker { period: rng.range(0.03, 0.05) as f32 },
        7 => Pattern::TwoTone,
        _ => Pattern::Logo { shape: rng.below(3) as u8 },
    }
}

fn bag(rng: &mut Rng) -> Bag {
    match rng.below(10) {
        0..=4 => Bag::None,
        5 | 6 => Bag::Backpack(palette_colour(rng)),
        7 | 8 => Bag::Shoulder(palette_colour(rng), if rng.bool(0.5) { 1.0 } else { -1.0 }),
        _ => Bag::Handbag(palette_colour(rng)),
    }
}

impl Person {
    pub fn random(rng: &mut Rng) -> Person {
        let top = palette_colour(rng);
        let mut top2 = palette_colour(rng);
        if (top2[0] - top[0]).abs() + (top2[1] - top[1]).abs() + (top2[2] - top[2]).abs() < 0.3 {
            top2 = mix(top, if top[0] + top[1] + top[2] > 1.5 { [0.1, 0.1, 0.1] } else { [0.95, 0.95, 0.95] }, 0.7);
        }
        Person {
            skin: skin(rng),
            hair_color: hair_colour(rng),
            hair: match rng.below(10) {
                0..=5 => Hair::Short,
                6..=8 => Hair::Long,
                _ => Hair::Cap(palette_colour(rng)),
            },
            top,
            top2,
            pattern: pattern(rng),
            long_sleeves: rng.bool(0.55),
            jacket: if rng.bool(0.25) { Some(palette_colour(rng)) } else { None },
            bottom: palette_colour(rng),
            bottom_kind: match rng.below(10) {
                0..=6 => Bottom::Trousers,
                7 | 8 => Bottom::Shorts,
                _ => Bottom::Skirt,
            },
            shoes: if rng.bool(0.5) { palette_colour(rng) } else { [0.1, 0.1, 0.1] },
            bag: bag(rng),
            build: rng.range(0.85, 1.15) as f32,
            stature: rng.range(0.9, 1.04) as f32,
        }
    }

    /// A look-alike: the same person with one or two attributes changed.
    pub fn sibling(&self, rng: &mut Rng) -> Person {
        let mut p = self.clone();
        let changes = 1 + rng.below(2);
        let mut done = 0;
        while done < changes {
            match rng.below(8) {
                0 => p.bottom = palette_colour(rng),
                1 => p.shoes = palette_colour(rng),
                2 => p.bag = bag(rng),
                3 => p.pattern = pattern(rng),
                4 => p.top2 = palette_colour(rng),
                5 => {
                    p.hair = match p.hair {
                        Hair::Cap(_) => Hair::Short,
                        Hair::Short => Hair::Long,
                        Hair::Long => Hair::Cap(palette_colour(rng)),
                    }
                }
                6 => p.long_sleeves = !p.long_sleeves,
                _ => p.jacket = if p.jacket.is_some() { None } else { Some(palette_colour(rng)) },
            }
            if p != *self {
                done += 1;
            }
        }
        p
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Front,
    Back,
    /// Walking to the right of the image (mirror for the left).
    Side,
}

#[derive(Clone, Copy, Debug)]
pub struct Pose {
    pub view: View,
    /// Walking phase in radians.
    pub phase: f32,
    /// Swing amplitude in radians (0: standing).
    pub swing: f32,
}

/// The body's proportions, as fractions of the person's height `u` (`height × stature`) measured
/// from the top of the head; widths are half-widths, scaled by `build` in front and back views.
mod body {
    /// Heights of the shoulders, the hips and the soles.
    pub const SHOULDER_Y: f32 = 0.17;
    pub const HIP_Y: f32 = 0.5;
    pub const FOOT_Y: f32 = 0.985;
    /// Shoulder and hip half-widths in front/back view (times `build`) and in side view.
    pub const SHOULDER_HALF: f32 = 0.13;
    pub const SHOULDER_HALF_SIDE: f32 = 0.075;
    pub const HIP_HALF: f32 = 0.10;
    pub const HIP_HALF_SIDE: f32 = 0.07;
    /// Leg: the hip joints' offset from the centre line (front/back, times `build`; side), the
    /// thigh's radius, and how much of the stride a front/back view shows.
    pub const HIP_JOINT: f32 = 0.05;
    pub const HIP_JOINT_SIDE: f32 = 0.01;
    pub const LEG_RADIUS: f32 = 0.038;
    pub const LEG_SWING_FRONT: f32 = 0.15;
    /// Arm: its length (shoulder to hand), the upper arm's radius, and how much of the swing shows.
    pub const ARM_LENGTH: f32 = 0.34;
    pub const ARM_RADIUS: f32 = 0.029;
    pub const ARM_SWING_SIDE: f32 = 0.9;
    pub const ARM_SWING_FRONT: f32 = 0.1;
    /// Head: its centre's height and its half-width (front/back, side) and half-height; the neck's
    /// top and half-width.
    pub const HEAD_Y: f32 = 0.075;
    pub const HEAD_HALF: f32 = 0.055;
    pub const HEAD_HALF_SIDE: f32 = 0.05;
    pub const HEAD_HALF_HEIGHT: f32 = 0.066;
    pub const NECK_TOP_Y: f32 = 0.125;
    pub const NECK_HALF: f32 = 0.025;
    /// Where a skirt ends.
    pub const SKIRT_HEM_Y: f32 = 0.72;
}

/// Where a person stands and how: the frame every body part is drawn in.
struct Figure<'a> {
    p: &'a Person,
    /// Horizontal centre, top of the head, and the person's height in pixels.
    cx: f32,
    top: f32,
    u: f32,
    side: bool,
    front: bool,
    back: bool,
    /// Shoulder and hip half-widths, in pixels.
    shoulder: f32,
    hip: f32,
    /// Heights of the shoulders, hips and soles, in pixels.
    ys: f32,
    yh: f32,
    yf: f32,
    /// The limbs' swing this instant, in radians.
    swing: f32,
}

type Limb = ((f32, f32), (f32, f32), (f32, f32));

impl Figure<'_> {
    fn y(&self, f: f32) -> f32 {
        self.top + f * self.u
    }

    /// The top's colour at a pixel, its pattern in body coordinates (so it moves and scales with
    /// the person).
    fn top_colour(&self, x: f32, yy: f32) -> Rgb {
        let p = self.p;
        let (bx, by) = ((x - self.cx) / self.u, (yy - self.top) / self.u);
        let first = |cell: i32| if cell.rem_euclid(2) == 0 { p.top } else { p.top2 };
        match p.pattern {
            Pattern::Plain | Pattern::Logo { .. } => p.top,
            Pattern::HStripes { period } => first((by / period).floor() as i32),
            Pattern::VStripes { period } => first((bx / period).floor() as i32),
            Pattern::Checker { period } => first((bx / period).floor() as i32 + (by / period).floor() as i32),
            Pattern::TwoTone => {
                if by < 0.33 {
                    p.top
                } else {
                    p.top2
                }
            }
        }
    }

    /// A leg's hip joint, knee and foot; `dir` the side (−1 left, 1 right), `phase_sign` which way
    /// it swings. In front/back views the swing shows as a small spread.
    fn leg(&self, dir: f32, phase_sign: f32) -> Limb {
        let (u, side) = (self.u, self.side);
        let hip = (self.cx + dir * if side { body::HIP_JOINT_SIDE * u } else { body::HIP_JOINT * u * self.p.build }, self.yh);
        let ang = phase_sign * self.swing * if side { 1.0 } else { body::LEG_SWING_FRONT };
        let len = self.yf - self.yh;
        let knee = (hip.0 + (len * 0.5) * ang.sin() + dir * if side { 0.0 } else { 0.005 * u }, hip.1 + len * 0.5 * ang.cos());
        let foot = (knee.0 + (len * 0.5) * (ang * 0.6).sin(), knee.1 + len * 0.5 * (ang * 0.6).cos());
        (hip, knee, foot)
    }

    fn draw_leg(&self, c: &mut Canvas, (hip, knee, foot): Limb) {
        let (p, u, side) = (self.p, self.u, self.side);
        let (bottom, skin) = (Paint::Solid(p.bottom), Paint::Solid(p.skin));
        let lr = body::LEG_RADIUS * u;
        match p.bottom_kind {
            Bottom::Trousers => {
                c.capsule(hip, knee, lr, &bottom);
                c.capsule(knee, foot, lr * 0.85, &bottom);
            }
            Bottom::Shorts => {
                let mid = ((hip.0 + knee.0) / 2.0, (hip.1 + knee.1) / 2.0 + 0.04 * u);
                c.capsule(knee, foot, lr * 0.7, &skin);
                c.capsule(mid, knee, lr * 0.75, &skin);
                c.capsule(hip, mid, lr, &bottom);
            }
            Bottom::Skirt => {
                c.capsule(knee, foot, lr * 0.65, &skin);
                c.capsule(hip, knee, lr * 0.7, &skin);
            }
        }
        let fl = if side { 0.05 * u } else { 0.03 * u };
        c.ellipse(foot.0 + if side { 0.015 * u } else { 0.0 }, foot.1 - 0.005 * u, fl, 0.018 * u, &Paint::Solid(p.shoes));
    }

    /// Both legs, then the skirt or the pelvis over them.
    fn draw_legs(&self, c: &mut Canvas) {
        let (cx, u, wh, yh) = (self.cx, self.u, self.hip, self.yh);
        self.draw_leg(c, self.leg(-1.0, 1.0));
        self.draw_leg(c, self.leg(1.0, -1.0));
        let bottom = Paint::Solid(self.p.bottom);
        if self.p.bottom_kind == Bottom::Skirt {
            let kw = wh * 1.5;
            let hem = self.y(body::SKIRT_HEM_Y);
            c.polygon(&[(cx - wh, yh - 0.03 * u), (cx + wh, yh - 0.03 * u), (cx + kw, hem), (cx - kw, hem)], &bottom);
        } else {
            c.polygon(&[(cx - wh, yh - 0.04 * u), (cx + wh, yh - 0.04 * u), (cx + wh * 0.9, yh + 0.05 * u), (cx - wh * 0.9, yh + 0.05 * u)], &bottom);
        }
    }

    /// An arm's shoulder, elbow and hand (`dir` and `phase_sign` as for `leg`).
    fn arm(&self, dir: f32, phase_sign: f32) -> Limb {
        let (u, side, sw) = (self.u, self.side, self.swing);
        let sh = (self.cx + dir * if side { 0.0 } else { self.shoulder * 0.88 }, self.ys + 0.025 * u);
        let ang = -phase_sign * sw * if side { body::ARM_SWING_SIDE } else { body::ARM_SWING_FRONT } + if side { 0.0 } else { dir * 0.12 };
        let len = body::ARM_LENGTH * u;
        let el = (sh.0 + len * 0.5 * ang.sin(), sh.1 + len * 0.5 * ang.cos());
        let ang2 = ang + if side { 0.25 * sw.abs() } else { 0.0 };
        let hand = (el.0 + len * 0.5 * ang2.sin(), el.1 + len * 0.5 * ang2.cos());
        (sh, el, hand)
    }

    fn draw_arm(&self, c: &mut Canvas, (sh, el, hand): Limb) {
        let p = self.p;
        let ar = body::ARM_RADIUS * self.u;
        let (sleeve, skin) = (Paint::Solid(p.jacket.unwrap_or(p.top)), Paint::Solid(p.skin));
        c.capsule(el, hand, ar * 0.85, if p.long_sleeves { &sleeve } else { &skin });
        c.capsule(sh, el, ar, &sleeve);
        c.ellipse(hand.0, hand.1, ar * 0.9, ar, &skin);
    }

    /// The torso with its jacket, chest logo and whatever bag is in front of it.
    fn draw_torso(&self, c: &mut Canvas) {
        let (p, cx, u, side) = (self.p, self.cx, self.u, self.side);
        let (ws, wh, ys, yh) = (self.shoulder, self.hip, self.ys, self.yh);
        let top_tex = |x: f32, yy: f32| self.top_colour(x, yy);
        c.polygon(&[(cx - ws, ys), (cx + ws, ys), (cx + wh, yh), (cx - wh, yh)], &Paint::Texture(&top_tex));
        if let Some(j) = p.jacket {
            let jp = Paint::Solid(j);
            let f = if side { 0.6 } else { 0.35 };
            c.polygon(&[(cx - ws, ys), (cx - ws + f * ws, ys), (cx - wh + f * wh, yh), (cx - wh, yh)], &jp);
            if !side {
                c.polygon(&[(cx + ws - f * ws, ys), (cx + ws, ys), (cx + wh, yh), (cx + wh - f * wh, yh)], &jp);
            }
        }
        if let (Pattern::Logo { shape }, true) = (p.pattern, self.front) {
            let (lx, ly, r) = (cx, ys + 0.11 * u, 0.045 * u);
            let lp = Paint::Solid(p.top2);
            match shape {
                0 => c.ellipse(lx, ly, r, r, &lp),
                1 => c.rect(lx - r, ly - r, lx + r, ly + r, &lp),
                _ => c.polygon(&[(lx, ly - r), (lx + r, ly + r), (lx - r, ly + r)], &lp),
            }
        }
        match p.bag {
            Bag::Backpack(col) if self.back => c.rect(cx - ws * 0.75, ys + 0.03 * u, cx + ws * 0.75, ys + 0.27 * u, &Paint::Solid(col)),
            Bag::Backpack(col) if self.front => {
                // The straps.
                let s = Paint::Solid(scale(col, 0.8));
                c.rect(cx - ws * 0.65, ys, cx - ws * 0.45, yh - 0.1 * u, &s);
                c.rect(cx + ws * 0.45, ys, cx + ws * 0.65, yh - 0.1 * u, &s);
            }
            Bag::Shoulder(col, s) => {
                let d = if self.back { -s } else { s };
                c.capsule((cx - d * ws * 0.8, ys + 0.01 * u), (cx + d * wh * 1.1, yh - 0.02 * u), 0.012 * u, &Paint::Solid(scale(col, 0.7)));
                if !side || d > 0.0 {
                    c.rect(cx + d * wh * 1.1 - 0.06 * u, yh - 0.05 * u, cx + d * wh * 1.1 + 0.06 * u, yh + 0.07 * u, &Paint::Solid(col));
                }
            }
            _ => {}
        }
    }

    /// Neck, head, hair or cap.
    fn draw_head(&self, c: &mut Canvas) {
        let (p, cx, u, side, back) = (self.p, self.cx, self.u, self.side, self.back);
        let skin = Paint::Solid(p.skin);
        c.rect(cx - body::NECK_HALF * u, self.y(body::NECK_TOP_Y), cx + body::NECK_HALF * u, self.ys + 0.01 * u, &skin);
        let (hx, hy) = (cx + if side { 0.01 * u } else { 0.0 }, self.y(body::HEAD_Y));
        let (hrx, hry) = (if side { body::HEAD_HALF_SIDE } else { body::HEAD_HALF } * u, body::HEAD_HALF_HEIGHT * u);
        let hair = Paint::Solid(p.hair_color);
        if p.hair == Hair::Long {
            // Long hair falls behind the shoulders.
            let bx = if side { hx - 0.03 * u } else { hx };
            c.rect(bx - hrx, hy, bx + hrx * if side { 0.4 } else { 1.0 }, self.ys + 0.08 * u, &hair);
        }
        c.ellipse(hx, hy, hrx, hry, if back { &hair } else { &skin });
        match p.hair {
            Hair::Cap(col) => {
                let cp = Paint::Solid(col);
                c.ellipse(hx, hy - 0.02 * u, hrx * 1.05, hry * 0.75, &cp);
                let brim = if side { (hx, hx + hrx * 1.6) } else { (hx - hrx * 1.1, hx + hrx * 1.1) };
                if !back {
                    c.rect(brim.0, hy - 0.015 * u, brim.1, hy + 0.0, &cp);
                }
            }
            _ if !back => {
                // Hair on top (and at the back of the head in side view).
                c.polygon(
                    &[(hx - hrx, hy), (hx - hrx * 0.9, hy - hry * 0.7), (hx, hy - hry * 1.05), (hx + hrx * 0.9, hy - hry * 0.7), (hx + hrx, hy - hry * 0.15)],
                    &hair,
                );
                if side {
                    c.ellipse(hx - hrx * 0.5, hy, hrx * 0.55, hry * 0.9, &hair);
                }
            }
            _ => {}
        }
    }
}

/// Draws `p` with the top of the head at `top`, horizontally centred on `cx`, `height` pixels tall,
/// back to front: legs, the far arm and a backpack seen from the side, torso, arms, a handbag,
/// head.
pub fn draw(c: &mut Canvas, p: &Person, pose: Pose, cx: f32, top: f32, height: f32) {
    let u = height * p.stature;
    let side = pose.view == View::Side;
    let f = Figure {
        p,
        cx,
        top,
        u,
        side,
        front: pose.view == View::Front,
        back: pose.view == View::Back,
        shoulder: if side { body::SHOULDER_HALF_SIDE } else { body::SHOULDER_HALF * p.build } * u,
        hip: if side { body::HIP_HALF_SIDE } else { body::HIP_HALF * p.build } * u,
        ys: top + body::SHOULDER_Y * u,
        yh: top + body::HIP_Y * u,
        yf: top + body::FOOT_Y * u,
        swing: pose.swing * pose.phase.sin(),
    };
    f.draw_legs(c);
    let (far, near) = (f.arm(-1.0, 1.0), f.arm(1.0, -1.0));
    if side {
        if let Bag::Backpack(col) = p.bag {
            c.rect(cx - f.shoulder - 0.07 * u, f.ys + 0.02 * u, cx - f.shoulder + 0.02 * u, f.ys + 0.27 * u, &Paint::Solid(col));
        }
        f.draw_arm(c, far);
    }
    f.draw_torso(c);
    if !side {
        f.draw_arm(c, far);
    }
    f.draw_arm(c, near);
    if let Bag::Handbag(col) = p.bag {
        let (_, _, hand) = near;
        c.rect(hand.0 - 0.04 * u, hand.1, hand.0 + 0.04 * u, hand.1 + 0.09 * u, &Paint::Solid(col));
    }
    f.draw_head(c);
}

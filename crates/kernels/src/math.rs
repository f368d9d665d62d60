//! Branch-free float math that vectorises: exp and the exact (erf) GELU.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x with ~1 ulp error over the range that matters (inputs are clamped to [-87.3, 88]).
/// Written with integer bit tricks and fused multiply-adds only, so that it vectorises.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    // t = 1.5·2^23 + round(x·log2 e): the rounded integer sits in t's low mantissa bits.
    let t = x.mul_add(LOG2E, 12_582_912.0);
    let n = t - 12_582_912.0;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    // Cephes expf polynomial on |r| <= ln2/2.
    let p = 1.987_569_1e-4f32.mul_add(r, 1.398_2e-3).mul_add(r, 8.333_452e-3).mul_add(r, 4.166_579_6e-2).mul_add(r, 0.166_666_65).mul_add(r, 0.5);
    let er = (r * r).mul_add(p, 1.0 + r);
    let scale = f32::from_bits((ni.wrapping_add(127) << 23) as u32);
    er * scale
}

/// erfc(|z|) for z >= 0 (Numerical Recipes' Chebyshev fit, fractional error < 1.2e-7), in two
/// steps (`erfc_t`, then `erfc_from_t`) so that `gelu_lanes` can run each over many lanes at once.
#[inline(always)]
fn erfc_pos(z: f32) -> f32 {
    erfc_from_t(z, erfc_t(z))
}

#[inline(always)]
fn erfc_t(z: f32) -> f32 {
    1.0 / 0.5f32.mul_add(z, 1.0)
}

#[inline(always)]
fn erfc_from_t(z: f32, t: f32) -> f32 {
    let poly = 0.170_872_77f32
        .mul_add(t, -0.822_152_23)
        .mul_add(t, 1.488_515_9)
        .mul_add(t, -1.135_204)
        .mul_add(t, 0.278_868_07)
        .mul_add(t, -0.186_288_06)
        .mul_add(t, 0.096_784_18)
        .mul_add(t, 0.374_091_96)
        .mul_add(t, 1.000_023_7)
        .mul_add(t, -1.265_512_2);
    t * exp((-z).mul_add(z, poly))
}

/// erf(x). Near 0, 1 − erfc would cancel, so a Taylor polynomial is used there.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let c = erfc_pos(x.abs());
    let far = if x >= 0.0 { 1.0 - c } else { c - 1.0 };
    // 2/√π · (x − x³/3 + x⁵/10 − x⁷/42 + x⁹/216 − x¹¹/1320 + x¹³/9360); truncation < 5e-10 for |x| < 0.5.
    let z = x * x;
    let p = 1.0 + z * (-1.0 / 3.0 + z * (0.1 + z * (-1.0 / 42.0 + z * (1.0 / 216.0 + z * (-1.0 / 1320.0 + z * (1.0 / 9360.0))))));
    let near = std::f32::consts::FRAC_2_SQRT_PI * x * p;
    if x.abs() < 0.5 {
        near
    } else {
        far
    }
}

/// 1 + erf(x/√2) = 2·Φ(x): 2 − erfc(x/√2) for x ≥ 0, erfc(|x|/√2) below.
#[inline(always)]
fn one_plus_erf(x: f32) -> f32 {
    let u = x * std::f32::consts::FRAC_1_SQRT_2;
    from_erfc(u, erfc_pos(u.abs()))
}

#[inline(always)]
fn from_erfc(u: f32, c: f32) -> f32 {
    if u >= 0.0 {
        2.0 - c
    } else {
        c
    }
}

/// GELU with the exact erf form, 0.5·x·(1 + erf(x/√2)), as `torch.nn.GELU()` computes it.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * one_plus_erf(x)
}

/// Lanes `gelu_lanes` works on at once.
pub const GELU_LANES: usize = 64;

/// `gelu` of every lane, bit for bit, computed step by step over all lanes: each step's loop
/// compiles to four independent vector chains, which the CPU overlaps. One element at a time the
/// ~35 dependent operations per vector leave the floating-point units waiting on latency.
#[inline(always)]
pub fn gelu_lanes(x: &mut [f32; GELU_LANES]) {
    let mut u = [0f32; GELU_LANES];
    let mut t = [0f32; GELU_LANES];
    for i in 0..GELU_LANES {
        u[i] = x[i] * std::f32::consts::FRAC_1_SQRT_2;
    }
    for i in 0..GELU_LANES {
        t[i] = erfc_t(u[i].abs());
    }
    for i in 0..GELU_LANES {
        t[i] = erfc_from_t(u[i].abs(), t[i]);
    }
    for i in 0..GELU_LANES {
        x[i] = 0.5 * x[i] * from_erfc(u[i], t[i]);
    }
}

/// `(GELU(x), GELU'(x))` with GELU'(x) = Φ(x) + x·φ(x), sharing the erfc; the first is `gelu(x)`.
#[inline(always)]
pub fn gelu_and_grad(x: f32) -> (f32, f32) {
    let e = one_plus_erf(x);
    let pdf = 0.398_942_3 * exp(-0.5 * x * x);
    (0.5 * x * e, 0.5 * e + x * pdf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_ref(x: f64) -> f64 {
        // erf by its Taylor series (|x| < 3) or asymptotic complement; f64 is ample for a check.
        if x.abs() < 3.0 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            x.signum() * (1.0 - (-x * x).exp() / (x.abs() * std::f64::consts::PI.sqrt()) * (1.0 - 0.5 / (x * x) + 0.75 / (x * x * x * x)))
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let e = exp(x) as f64;
            let r = (x as f64).exp();
            worst = worst.max(((e - r) / r).abs());
        }
        assert!(worst < 3e-7, "max relative error {worst}");
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        let mut worst = 0f64;
        for i in -6000..=6000 {
            let x = i as f32 * 0.001 * 1.7;
            let r = erf_ref(x as f64);
            worst = worst.max((erf(x) as f64 - r).abs());
            let g = 0.5 * x as f64 * (1.0 + erf_ref(x as f64 / 2f64.sqrt()));
            assert!((gelu(x) as f64 - g).abs() < 3e-7 * (1.0 + g.abs()), "gelu({x})");
        }
        assert!(worst < 2.5e-7, "max abs erf error {worst}");
    }

    #[test]
    fn gelu_lanes_is_gelu_bit_for_bit() {
        // Both signs, near zero, the erfc/Taylor and clamping ranges, infinities and NaN.
        let mut xs: Vec<f32> = (-12000..=12000).map(|i| i as f32 * 0.00137).collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 80.0, -80.0, 1e6, -1e6, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MIN_POSITIVE]);
        for chunk in xs.chunks(GELU_LANES) {
            let mut lanes = [0.25f32; GELU_LANES];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let want: Vec<f32> = lanes.iter().map(|&x| gelu(x)).collect();
            gelu_lanes(&mut lanes);
            for (x, (g, w)) in chunk.iter().zip(lanes.iter().zip(&want)) {
                assert_eq!(g.to_bits(), w.to_bits(), "x={x}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn gelu_and_grad_gives_gelu() {
        for i in -6000..=6000 {
            let x = i as f32 * 0.0017;
            assert_eq!(gelu_and_grad(x).0, gelu(x), "x={x}");
        }
    }

    #[test]
    fn gelu_grad_matches_finite_difference() {
        for i in -40..=40 {
            let x = i as f64 * 0.1;
            let g = |x: f64| 0.5 * x * (1.0 + erf_ref(x / 2f64.sqrt()));
            let fd = (g(x + 1e-5) - g(x - 1e-5)) / 2e-5;
            assert!((gelu_and_grad(x as f32).1 as f64 - fd).abs() < 1e-5, "x={x}");
        }
    }
}

//! Branch-free float math that vectorises: exp and the exact (erf) GELU.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x with ~1 ulp error over the range that matters (inputs are clamped to [-87.3, 88]).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    // n = round(x·log2 e) by the 1.5·2^23 trick (exact for |x·log2 e| < 2^22).
    let n = (x * LOG2E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Cephes expf polynomial on |r| <= ln2/2.
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let er = 1.0 + r + r * r * p;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    er * scale
}

/// erfc(|z|) for z >= 0 (Numerical Recipes' Chebyshev fit, fractional error < 1.2e-7).
#[inline(always)]
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18 + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * exp(-z * z + poly)
}

/// erf(x).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let c = erfc_pos(x.abs());
    if x >= 0.0 {
        1.0 - c
    } else {
        c - 1.0
    }
}

/// GELU with the exact erf form, 0.5·x·(1 + erf(x/√2)), as `torch.nn.GELU()` computes it.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let u = x * std::f32::consts::FRAC_1_SQRT_2;
    let c = erfc_pos(u.abs());
    // 1 + erf(u) = 2 - erfc(u) for u >= 0, and erfc(|u|) for u < 0.
    let one_plus_erf = if u >= 0.0 { 2.0 - c } else { c };
    0.5 * x * one_plus_erf
}

/// d/dx GELU(x) = Φ(x) + x·φ(x).
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let u = x * std::f32::consts::FRAC_1_SQRT_2;
    let c = erfc_pos(u.abs());
    let cdf = 0.5 * if u >= 0.0 { 2.0 - c } else { c };
    let pdf = 0.398_942_3 * exp(-0.5 * x * x);
    cdf + x * pdf
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
    fn gelu_grad_matches_finite_difference() {
        for i in -40..=40 {
            let x = i as f64 * 0.1;
            let g = |x: f64| 0.5 * x * (1.0 + erf_ref(x / 2f64.sqrt()));
            let fd = (g(x + 1e-5) - g(x - 1e-5)) / 2e-5;
            assert!((gelu_grad(x as f32) as f64 - fd).abs() < 1e-5, "x={x}");
        }
    }
}

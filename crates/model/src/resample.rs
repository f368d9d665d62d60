//! Bicubic resampling as Pillow does it (`Image.resize(..., BICUBIC)`, used by torchvision's
//! `Resize` on PIL images) and as PyTorch's `F.interpolate(mode="bicubic", antialias=True)` does it
//! (used by timm's `resample_abs_pos_embed`). Both use the same separable filter windows: the cubic
//! kernel with a = -0.5, its support stretched by the scale when shrinking, weights renormalised at
//! the borders. Pillow then works in 8-bit fixed point, PyTorch in floating point; both are here.

/// Keys' cubic convolution kernel with a = -0.5 (Pillow's `bicubic_filter`).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output sample: the first input index and the normalised weights of its window.
#[derive(Debug, Clone)]
pub struct Windows {
    pub start: Vec<usize>,
    pub weights: Vec<Vec<f64>>,
}

/// Pillow's `precompute_coeffs` for an input of `in_size` samples resized to `out_size`.
pub fn bicubic_windows(in_size: usize, out_size: usize) -> Windows {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // `as i64` truncates toward zero, as C's (int) cast does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let mut w: Vec<f64> = (xmin..xmax).map(|x| cubic((x as f64 - center + 0.5) * ss)).collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            for v in &mut w {
                *v /= total;
            }
        }
        start.push(xmin);
        weights.push(w);
    }
    Windows { start, weights }
}

/// Resamples a float grid `[h, w, c]` (channels last) to `[oh, ow, c]` in floating point, as
/// `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` does.
pub fn resize_float_hwc(src: &[f32], h: usize, w: usize, c: usize, oh: usize, ow: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w * c);
    let wx = bicubic_windows(w, ow);
    let wy = bicubic_windows(h, oh);
    // Horizontal pass: [h, ow, c].
    let mut tmp = vec![0f64; h * ow * c];
    for y in 0..h {
        for (ox, (s, ws)) in wx.start.iter().zip(&wx.weights).enumerate() {
            let out = &mut tmp[(y * ow + ox) * c..(y * ow + ox + 1) * c];
            for (k, &wgt) in ws.iter().enumerate() {
                let row = &src[(y * w + s + k) * c..(y * w + s + k + 1) * c];
                for (o, &v) in out.iter_mut().zip(row) {
                    *o += wgt * v as f64;
                }
            }
        }
    }
    // Vertical pass: [oh, ow, c].
    let mut dst = vec![0f32; oh * ow * c];
    for (oy, (s, ws)) in wy.start.iter().zip(&wy.weights).enumerate() {
        for ox in 0..ow {
            let out = &mut dst[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
            for (ch, o) in out.iter_mut().enumerate() {
                let mut acc = 0f64;
                for (k, &wgt) in ws.iter().enumerate() {
                    acc += wgt * tmp[((s + k) * ow + ox) * c + ch];
                }
                *o = acc as f32;
            }
        }
    }
    dst
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `normalize_coeffs_8bpc`: weights as fixed-point integers.
fn fixed_point(ws: &[f64]) -> Vec<i32> {
    ws.iter()
        .map(|&w| {
            let v = w * (1u32 << PRECISION_BITS) as f64;
            (if w < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
        })
        .collect()
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an 8-bit RGB image (`[h, w, 3]`, row-major) exactly as Pillow's `Image.resize((ow, oh),
/// Image.BICUBIC)` (Pillow 13): two separable passes through an 8-bit intermediate, each skipped
/// when that size is unchanged. The horizontal pass goes first (over only the rows the vertical
/// pass reads) unless the height shrinks by more than twice as many pixels as the width does.
pub fn resize_rgb8_pil(src: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<u8> {
    assert_eq!(src.len(), h * w * 3);
    if h == oh && w == ow {
        return src.to_vec();
    }
    let wy = bicubic_windows(h, oh);
    if w == ow {
        return vertical_pass(src, w, &wy, 0);
    }
    let horizontal_first = !(h > oh && (h - oh) as i64 > 2 * (w as i64 - ow as i64));
    if !horizontal_first {
        let tmp = vertical_pass(src, w, &wy, 0);
        return horizontal_pass(&tmp, w, ow, 0, oh);
    }
    // Only rows [first, last) are read by the vertical pass.
    let (first, last) = if h != oh { (wy.start[0], wy.start[oh - 1] + wy.weights[oh - 1].len()) } else { (0, h) };
    let tmp = horizontal_pass(src, w, ow, first, last);
    if h == oh {
        tmp
    } else {
        vertical_pass(&tmp, ow, &wy, first)
    }
}

/// Pillow's `ImagingResampleHorizontal_8bpc` over source rows `first..last`.
fn horizontal_pass(src: &[u8], w: usize, ow: usize, first: usize, last: usize) -> Vec<u8> {
    let wx = bicubic_windows(w, ow);
    let kx: Vec<Vec<i32>> = wx.weights.iter().map(|ws| fixed_point(ws)).collect();
    let mut tmp = vec![0u8; (last - first) * ow * 3];
    for (y, out_row) in tmp.chunks_exact_mut(ow * 3).enumerate() {
        let row = &src[(first + y) * w * 3..(first + y + 1) * w * 3];
        for (ox, out) in out_row.chunks_exact_mut(3).enumerate() {
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (k, &wt) in kx[ox].iter().enumerate() {
                let p = &row[(wx.start[ox] + k) * 3..];
                for c in 0..3 {
                    acc[c] += p[c] as i32 * wt;
                }
            }
            for c in 0..3 {
                out[c] = clip8(acc[c]);
            }
        }
    }
    tmp
}

/// Pillow's `ImagingResampleVertical_8bpc` over an image whose first row is source row `y_first`.
fn vertical_pass(src: &[u8], w: usize, wy: &Windows, y_first: usize) -> Vec<u8> {
    let oh = wy.start.len();
    let ky: Vec<Vec<i32>> = wy.weights.iter().map(|ws| fixed_point(ws)).collect();
    let mut out = vec![0u8; oh * w * 3];
    for (oy, out_row) in out.chunks_exact_mut(w * 3).enumerate() {
        let s = wy.start[oy] - y_first;
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (k, &wt) in ky[oy].iter().enumerate() {
                acc += src[(s + k) * w * 3 + i] as i32 * wt;
            }
            *o = clip8(acc);
        }
    }
    out
}

/// Resamples a ViT position embedding `[1, prefix + gh*gw, d]` to a `nh`×`nw` grid as timm's
/// `resample_abs_pos_embed` does (bicubic, antialias, prefix tokens untouched).
pub fn resample_pos_embed(pos: &[f32], d: usize, prefix: usize, (gh, gw): (usize, usize), (nh, nw): (usize, usize)) -> Vec<f32> {
    assert_eq!(pos.len(), (prefix + gh * gw) * d);
    let mut out = pos[..prefix * d].to_vec();
    out.extend(resize_float_hwc(&pos[prefix * d..], gh, gw, d, nh, nw));
    out
}

/// Resamples a position embedding from grid `from` to grid `to` the way the model's family does
/// it, chosen by its source format name (`config.json`'s `source.format`, the importer's format
/// names): bilinearly for TransReID (its `resize_pos_embed`), bicubically as timm does for every
/// other. The importer and `amg train --img-size` both resample through this one choice. Returns
/// the resampled embedding and how it was done, for the model's notes.
pub fn resample_pos_embed_for(format: &str, pos: &[f32], d: usize, prefix: usize, from: (usize, usize), to: (usize, usize)) -> (Vec<f32>, &'static str) {
    if format == "transreid" {
        (resample_pos_embed_bilinear(pos, d, prefix, from, to), "bilinearly (as TransReID does)")
    } else {
        (resample_pos_embed(pos, d, prefix, from, to), "bicubically (as timm does)")
    }
}

/// For each output sample of a linear resize (`F.interpolate(mode="bilinear",
/// align_corners=False)`, no antialias): the two input indices and the second one's weight.
fn linear_taps(in_size: usize, out_size: usize) -> Vec<(usize, usize, f64)> {
    let scale = in_size as f64 / out_size as f64;
    (0..out_size)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_size - 1);
            let i1 = (i0 + 1).min(in_size - 1);
            (i0, i1, src - i0 as f64)
        })
        .collect()
}

/// Resamples a ViT position embedding `[1, prefix + gh*gw, d]` to `nh`×`nw` bilinearly, as
/// TransReID's `resize_pos_embed` does (`F.interpolate(mode="bilinear")`, prefix tokens untouched).
pub fn resample_pos_embed_bilinear(pos: &[f32], d: usize, prefix: usize, (gh, gw): (usize, usize), (nh, nw): (usize, usize)) -> Vec<f32> {
    assert_eq!(pos.len(), (prefix + gh * gw) * d);
    let grid = &pos[prefix * d..];
    let (ty, tx) = (linear_taps(gh, nh), linear_taps(gw, nw));
    let mut out = pos[..prefix * d].to_vec();
    for &(y0, y1, fy) in &ty {
        for &(x0, x1, fx) in &tx {
            let at = |y: usize, x: usize, c: usize| grid[(y * gw + x) * d + c] as f64;
            out.extend((0..d).map(|c| {
                let top = at(y0, x0, c) * (1.0 - fx) + at(y0, x1, c) * fx;
                let bottom = at(y1, x0, c) * (1.0 - fx) + at(y1, x1, c) * fx;
                (top * (1.0 - fy) + bottom * fy) as f32
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_sum_to_one_and_identity_is_exact() {
        for (i, o) in [(14, 16), (14, 8), (224, 64), (7, 7)] {
            let w = bicubic_windows(i, o);
            for ws in &w.weights {
                assert!((ws.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
        let img: Vec<u8> = (0..5 * 4 * 3).map(|v| (v * 7 % 256) as u8).collect();
        assert_eq!(resize_rgb8_pil(&img, 5, 4, 5, 4), img);
        // Same size in float: the cubic kernel is interpolating, so the grid is reproduced.
        let f: Vec<f32> = (0..6 * 5 * 2).map(|v| (v as f32).sin()).collect();
        let g = resize_float_hwc(&f, 6, 5, 2, 6, 5);
        for (a, b) in f.iter().zip(&g) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn constant_images_stay_constant() {
        let img = vec![77u8; 40 * 30 * 3];
        for (oh, ow) in [(17, 9), (80, 61), (40, 11), (7, 30)] {
            assert!(resize_rgb8_pil(&img, 40, 30, oh, ow).iter().all(|&v| v == 77), "{oh}x{ow}");
        }
    }
}

//! The Re-ID head's arithmetic that the inference engine and evaluation share (docs/method.md §1):
//! how part features become one retrieval feature, and LA's blend of the class token into a part.
//! Which tokens each part averages is `ModelConfig::part_tokens`.

/// Scales every `dim`-long part in `features` (one or more features of `parts` parts each) to norm
/// 1/√P, so each feature has unit length and an inner product of two features is the mean of their
/// parts' cosine similarities.
pub fn normalise_parts(features: &mut [f32], parts: usize, dim: usize) {
    let sqrt_p = (parts as f32).sqrt();
    for part in features.chunks_exact_mut(dim.max(1)) {
        let norm = part.iter().map(|v| v * v).sum::<f32>().sqrt();
        let s = 1.0 / (norm.max(1e-12) * sqrt_p);
        for v in part.iter_mut() {
            *v *= s;
        }
    }
}

/// LA-Transformer's classifier input for one part: g = (cls + λ·p) / (1 + λ).
pub fn la_blend(cls: &[f32], part: &[f32], lambda: f32, out: &mut [f32]) {
    for ((o, c), p) in out.iter_mut().zip(cls).zip(part) {
        *o = (c + lambda * p) / (1.0 + lambda);
    }
}

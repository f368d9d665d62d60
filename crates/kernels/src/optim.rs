//! The optimisers' element-wise updates, vectorised (training's `train::optim` calls them per chunk).

/// One Adam / AdamW step's constants (torch.optim's names: `step_size` = lr / (1 − β₁ᵗ),
/// `bc2_sqrt` = √(1 − β₂ᵗ)).
#[derive(Clone, Copy)]
pub struct AdamHyper {
    pub lr: f32,
    pub wd: f32,
    pub b1: f32,
    pub b2: f32,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub eps: f32,
    pub adamw: bool,
}

crate::simd_fn! {
    /// torch.optim.Adam / AdamW on one chunk, element by element in torch's order of operations
    /// (vectorised across elements only, so every result is the same as one at a time). The
    /// slices are cut to one length first, so that the loop has no bounds checks and vectorises:
    /// written with indexing into four slices of unknown lengths it ran one element at a time.
    pub fn adam_update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], h: AdamHyper) {
        let n = p.len().min(m.len()).min(v.len()).min(g.len());
        let (p, m, v, g) = (&mut p[..n], &mut m[..n], &mut v[..n], &g[..n]);
        for i in 0..n {
            let mut gi = g[i];
            if h.adamw {
                p[i] *= 1.0 - h.lr * h.wd;
            } else {
                gi += h.wd * p[i];
            }
            m[i] = h.b1 * m[i] + (1.0 - h.b1) * gi;
            v[i] = h.b2 * v[i] + (1.0 - h.b2) * gi * gi;
            p[i] -= h.step_size * m[i] / (v[i].sqrt() / h.bc2_sqrt + h.eps);
        }
    }
}

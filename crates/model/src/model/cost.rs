//! Cost accounting (docs/method.md §5): parameters, honest MACs (what this implementation computes), and
//! the paper's FLOP convention, side by side and never mixed.

use super::config::{HeadKind, ModelConfig};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerCost {
    pub layer: usize,
    pub heads: usize,
    pub key_tokens: usize,
    pub params: u64,
    pub msa_params: u64,
    pub macs: u64,
    pub paper_flops: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelCost {
    pub layers: Vec<LayerCost>,
    /// Backbone parameters (patch embedding, tokens, blocks, final norm).
    pub params: u64,
    /// Classifier parameters of the LA head (0 for retrieval-only models); BN statistics excluded.
    pub head_params: u64,
    pub msa_params: u64,
    /// Honest multiply-accumulates per image, patch embedding included.
    pub macs: u64,
    /// The reference code's counter (§5): Q, K, V, output projection and attention products at the
    /// kept token count N_k, MLP at N, softmax H'·N_k², no patch embedding.
    pub paper_flops: u64,
    pub patch_embed_macs: u64,
}

/// One block's parameters, MSA parameters, honest MACs and paper FLOPs, with `h` heads, `n` query
/// tokens and `nk` key/value tokens.
fn block_cost(cfg: &ModelConfig, h: u64, n: u64, nk: u64) -> (u64, u64, u64, u64) {
    let a = &cfg.arch;
    let (d, m, hd) = (a.embed_dim as u64, a.mlp_dim as u64, a.head_dim as u64);
    let inner = h * hd;
    let bias = if a.qkv_bias { 3 * inner } else { 0 };
    let msa = 3 * inner * d + bias + inner * d + d;
    let mlp = d * m + m + m * d + d;
    let norms = 4 * d;
    let macs = n * d * inner + 2 * nk * d * inner + 2 * h * n * nk * hd + n * inner * d + 2 * n * d * m;
    let paper = 3 * nk * inner * d + 2 * nk * inner * nk + h * nk * nk + nk * inner * d + 2 * n * d * m;
    (msa + mlp + norms, msa, macs, paper)
}

pub fn model_cost(cfg: &ModelConfig) -> ModelCost {
    let a = &cfg.arch;
    let d = a.embed_dim as u64;
    let n = cfg.num_tokens() as u64;
    let np = cfg.num_patches() as u64;
    let p2 = (a.patch_size * a.patch_size) as u64;
    let mut layers = Vec::new();
    for (l, plan) in cfg.layers.iter().enumerate() {
        let (h, nk) = (plan.heads.len() as u64, plan.tokens.len() as u64);
        let (params, msa_params, macs, paper_flops) = block_cost(cfg, h, n, nk);
        layers.push(LayerCost { layer: l, heads: h as usize, key_tokens: nk as usize, params, msa_params, macs, paper_flops });
    }
    // JPM's b2 branch: a block (plus its norm) run once per local group on 1 + N/divide tokens.
    if let Some(j) = &a.jpm {
        let (t, h) = (cfg.jpm_tokens() as u64, j.heads.len() as u64);
        let (params, msa_params, macs, paper_flops) = block_cost(cfg, h, t, t);
        let runs = j.divide as u64;
        layers.push(LayerCost {
            layer: cfg.layers.len(),
            heads: h as usize,
            key_tokens: t as usize,
            params: params + 2 * d,
            msa_params,
            macs: runs * macs,
            paper_flops: runs * paper_flops,
        });
    }
    let patch_embed_macs = np * 3 * p2 * d;
    // Patch embedding (weight and bias), prefix tokens, position and camera embeddings.
    let sie = a.sie.as_ref().map_or(0, |s| s.rows() as u64 * d);
    let embed_params = d * 3 * p2 + d + cfg.num_prefix() as u64 * d + n * d + sie;
    let c = cfg.head.num_classes as u64;
    let head_params = match cfg.head.kind {
        HeadKind::None => 0,
        HeadKind::La => {
            let nb = cfg.head.bottleneck as u64;
            cfg.num_parts() as u64 * (d * nb + nb + 2 * nb + nb * c + c)
        }
        // BatchNorm weight and bias, classifier without bias.
        HeadKind::Bnneck => cfg.num_necks() as u64 * (2 * d + d * c),
    };
    ModelCost {
        params: embed_params + layers.iter().map(|l| l.params).sum::<u64>() + 2 * d,
        head_params,
        msa_params: layers.iter().map(|l| l.msa_params).sum(),
        macs: patch_embed_macs + layers.iter().map(|l| l.macs).sum::<u64>(),
        paper_flops: layers.iter().map(|l| l.paper_flops).sum(),
        patch_embed_macs,
        layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::Seg;
    use crate::model::weights::init_random;
    use crate::model::{Arch, HeadConfig, Source};

    fn cfg(preset: &str) -> ModelConfig {
        ModelConfig::new(Arch::preset(preset).unwrap(), 224, 224, HeadConfig::none(), Source::default()).unwrap()
    }

    #[test]
    fn vit_base_is_17_56_gmacs() {
        // fvcore and timm report 17.56 GMACs for ViT-B/16 at 224 (docs/method.md §5).
        let c = model_cost(&cfg("base"));
        assert_eq!((c.macs as f64 / 1e7).round() / 100.0, 17.56);
    }

    #[test]
    fn parameter_count_matches_the_tensors() {
        let mut c = ModelConfig::new(Arch::preset("tiny").unwrap(), 256, 128, HeadConfig::la(11), Source::default()).unwrap();
        c.layers[1].heads = vec![0, 2];
        c.layers[4].tokens = vec![0, 5, 9];
        let t = init_random(&c, 0);
        let cost = model_cost(&c);
        let in_head = |k: &crate::model::params::Key| matches!(k.segs()[0], Seg::Name("parts" | "necks"));
        assert_eq!(cost.params as usize, t.num_params(|k| !in_head(k)));
        assert_eq!(cost.head_params as usize, t.num_params(in_head));
        assert_eq!(cost.msa_params as usize, t.num_params(|k| k.segs().contains(&Seg::Name("attn"))));
    }

    #[test]
    fn transreid_parameter_count_matches_the_tensors() {
        use crate::model::config::{Jpm, NeckFeat, Sie};
        // Overlapping patches, SIE, JPM (b2 counted with its norm) and five BNNecks.
        let arch = Arch {
            patch_stride: Some(12),
            sie: Some(Sie::per_camera(6, Sie::TRANSREID_COEFFICIENT)),
            jpm: Some(Jpm::transreid()),
            ..Arch::preset("tiny").unwrap()
        };
        let c = ModelConfig::new(arch, 256, 128, HeadConfig::bnneck(9, NeckFeat::Before), Source::default()).unwrap();
        assert_eq!((c.grid(), c.num_tokens(), c.jpm_tokens()), ((21, 10), 211, 53));
        let t = init_random(&c, 0);
        let cost = model_cost(&c);
        let in_head = |k: &crate::model::params::Key| k.segs()[0] == Seg::Name("necks");
        assert_eq!(cost.params as usize, t.num_params(|k| !in_head(k)));
        assert_eq!(cost.head_params as usize, t.num_params(in_head));
        // b2 runs 4 times on 1 + 210/4 = 53 tokens: per run, q/k/v and output projections
        // 4·n·D², scores and weighted values 2·n²·D, MLP 2·n·D·4D (D = 192).
        let b2 = cost.layers.last().unwrap();
        assert_eq!((b2.layer, b2.key_tokens), (12, 53));
        let (n, d) = (53u64, 192u64);
        assert_eq!(b2.macs, 4 * (4 * n * d * d + 2 * n * n * d + 8 * n * d * d));
    }

    #[test]
    fn savings_the_issue_quotes_for_vit_tiny() {
        // Removing 2 of 3 heads in every layer of ViT-Ti saves ~29 % of the honest MACs; the paper's
        // counter gives 0.87 GFLOPs for that model (docs/method.md §6).
        let base = cfg("tiny");
        let mut heads = base.clone();
        for l in &mut heads.layers {
            l.heads = vec![0];
        }
        let (b, h) = (model_cost(&base), model_cost(&heads));
        let saving = 1.0 - h.macs as f64 / b.macs as f64;
        assert!((saving - 0.28).abs() < 0.015, "saving {saving}");
        assert_eq!((h.paper_flops as f64 / 1e7).round() / 100.0, 0.87);
    }
}

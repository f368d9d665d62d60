//! `amg inspect`: what a model keeps and what it costs.

use super::human;
use crate::model::cost::{model_cost, ModelCost};
use crate::model::{ModelConfig, ModelFiles};
use serde::Serialize;
use std::fmt::Write;

#[derive(Serialize)]
pub struct Inspection<'a> {
    pub config: &'a ModelConfig,
    pub cost: ModelCost,
    /// An INT8 model's scales, per block (JPM's b2 last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int8: Option<Vec<BlockScales>>,
}

/// One block's INT8 scales: per product (qkv, proj, fc1, fc2) the smallest and largest weight
/// scale, and the input scale when it is static.
#[derive(Serialize)]
pub struct BlockScales {
    pub layer: String,
    pub products: Vec<ProductScales>,
}

#[derive(Serialize)]
pub struct ProductScales {
    pub product: &'static str,
    pub weight_scale_min: f32,
    pub weight_scale_max: f32,
    pub input_scale: Option<f32>,
}

/// `files`: the model's tensors, for an INT8 model's scales (the rest needs only `cfg`).
pub fn inspection<'a>(cfg: &'a ModelConfig, files: Option<&ModelFiles>) -> Inspection<'a> {
    Inspection { config: cfg, cost: model_cost(cfg), int8: files.and_then(int8_scales) }
}

fn int8_scales(files: &ModelFiles) -> Option<Vec<BlockScales>> {
    let q = files.int8_params()?;
    let block = |layer: String, b: &crate::model::quant::QBlock| BlockScales {
        layer,
        products: ["qkv", "proj", "fc1", "fc2"]
            .into_iter()
            .zip(b)
            .map(|(product, l)| ProductScales {
                product,
                weight_scale_min: l.scale.iter().copied().fold(f32::INFINITY, f32::min),
                weight_scale_max: l.scale.iter().copied().fold(0.0, f32::max),
                input_scale: l.input_scale,
            })
            .collect(),
    };
    let mut out: Vec<BlockScales> = q.blocks.iter().enumerate().map(|(i, b)| block(i.to_string(), b)).collect();
    out.extend(q.jpm.as_ref().map(|b| block("b2".into(), b)));
    Some(out)
}

/// The INT8 section of `amg inspect`: the scheme, then each block's scales.
pub fn render_int8(files: &ModelFiles) -> String {
    let (Some(q), Some(blocks)) = (&files.config().quantization, int8_scales(files)) else { return String::new() };
    let mut s = String::new();
    let _ = writeln!(s, "\nINT8: {}", q.describe());
    let _ = writeln!(s, "  weight scales per output channel (smallest–largest){}", if q.calibration_images.is_some() { "; × input scale" } else { "" });
    let _ = writeln!(s, "{:>5} {:>24} {:>24} {:>24} {:>24}", "layer", "qkv", "proj", "fc1", "fc2");
    for b in &blocks {
        let cells: Vec<String> = b
            .products
            .iter()
            .map(|p| {
                let w = format!("{:.2e}–{:.2e}", p.weight_scale_min, p.weight_scale_max);
                p.input_scale.map_or(w.clone(), |x| format!("{w} × {x:.2e}"))
            })
            .collect();
        let _ = writeln!(s, "{:>5} {:>24} {:>24} {:>24} {:>24}", b.layer, cells[0], cells[1], cells[2], cells[3]);
    }
    s
}

pub fn render(cfg: &ModelConfig) -> String {
    let c = model_cost(cfg);
    let a = &cfg.arch;
    let mut s = String::new();
    let arch = a.preset.clone().map(|p| format!("ViT-{p}")).unwrap_or_else(|| "ViT".into());
    let _ = writeln!(
        s,
        "{arch}/{}{}: D={} depth={} heads={}×{} MLP={} · input {}x{} ({}x{} patches, N={}){} · head: {}",
        a.patch_size,
        a.patch_stride.map(|s| format!(" (overlapping, stride {s})")).unwrap_or_default(),
        a.embed_dim,
        a.depth,
        a.num_heads,
        a.head_dim,
        a.mlp_dim,
        cfg.input.height,
        cfg.input.width,
        cfg.grid().0,
        cfg.grid().1,
        cfg.num_tokens(),
        a.sie.as_ref().map(|s| format!(" · SIE over {} (coefficient {})", s.describe(), s.coefficient)).unwrap_or_default(),
        cfg.describe_head()
    );
    let _ = writeln!(s, "source: {}", cfg.source.describe());
    for n in &cfg.source.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    if !cfg.source.command.is_empty() {
        let _ = writeln!(s, "  written by amg {}: {}", cfg.source.amg_version, cfg.source.command);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{:>5} {:>7} {:>10} {:>9} {:>9} {:>11} {:>12}", "layer", "heads", "key tokens", "params", "MSA", "MACs", "paper FLOPs");
    for l in &c.layers {
        // Past the blocks: JPM's b2, its MACs counted once per local group.
        let (label, n) = match &a.jpm {
            Some(j) if l.layer >= cfg.layers.len() => (format!("b2×{}", j.divide), cfg.jpm_tokens()),
            _ => (l.layer.to_string(), cfg.num_tokens()),
        };
        let heads = if l.heads == a.num_heads { format!("{}", l.heads) } else { format!("{}/{}", l.heads, a.num_heads) };
        let _ = writeln!(
            s,
            "{:>5} {:>7} {:>10} {:>9} {:>9} {:>11} {:>12}",
            label,
            heads,
            format!("{}/{}", l.key_tokens, n),
            human(l.params),
            human(l.msa_params),
            human(l.macs),
            human(l.paper_flops)
        );
    }
    let _ = writeln!(s);
    let head = match cfg.head.kind {
        crate::model::HeadKind::Bnneck => "BNNecks and ID classifiers",
        _ => "LA classifiers",
    };
    let _ = writeln!(s, "params        {:>10}  (backbone; {head} add {})", human(c.params), human(c.head_params));
    if a.jpm.is_some() {
        let _ = writeln!(s, "              the last block is JPM's global branch b1; its b2 copy runs once per local group");
    }
    let _ = writeln!(s, "MSA params    {:>10}", human(c.msa_params));
    let _ = writeln!(s, "MACs (honest) {:>10}  per image, patch embedding ({}) included — what amg computes", human(c.macs), human(c.patch_embed_macs));
    let _ = writeln!(s, "FLOPs (paper) {:>10}  the reference code's counter: projections and attention at N_k, no patch embedding", human(c.paper_flops));
    s
}

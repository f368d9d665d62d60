//! Structural pruning — the "how" of pruning, apart from any criterion: heads are removed by
//! slicing their rows out of the qkv projection and their columns out of the output projection
//! (AMG_SPEC §2.4); key/value tokens by shortening each layer's kept-position list (§3.4).

use super::{ModelConfig, ModelFiles};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use serde::{Deserialize, Serialize};

/// What to keep, per layer: original head indices and key/value token positions (0 = CLS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub heads: Vec<Vec<usize>>,
    pub tokens: Vec<Vec<usize>>,
}

impl Plan {
    /// The plan a model currently follows.
    pub fn of(cfg: &ModelConfig) -> Plan {
        Plan { heads: cfg.layers.iter().map(|l| l.heads.clone()).collect(), tokens: cfg.layers.iter().map(|l| l.tokens.clone()).collect() }
    }

    pub fn load(path: &std::path::Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid plan (expected {{\"heads\": [[…]…], \"tokens\": [[…]…]}}): {e}")))
    }

    /// Checks the plan against a model: depth, ranges, CLS kept, at least one head, and nothing
    /// asked back that the model has already removed. Lists are returned sorted.
    pub fn checked(&self, cfg: &ModelConfig) -> Result<Plan> {
        let depth = cfg.arch.depth;
        for (what, len) in [("heads", self.heads.len()), ("tokens", self.tokens.len())] {
            if len != depth {
                return Err(Error::invalid(format!("plan: `{what}` has {len} layers, the model has {depth}")));
            }
        }
        let mut out = self.clone();
        for l in 0..depth {
            for (what, list, current) in
                [("heads", &mut out.heads[l], &cfg.layers[l].heads), ("tokens", &mut out.tokens[l], &cfg.layers[l].tokens)]
            {
                list.sort_unstable();
                if let Some(w) = list.windows(2).find(|w| w[0] == w[1]) {
                    return Err(Error::invalid(format!("plan: layer {l} lists {what} index {} twice", w[0])));
                }
                if let Some(&i) = list.iter().find(|i| current.binary_search(i).is_err()) {
                    let bound = if what == "heads" { cfg.arch.num_heads } else { cfg.num_tokens() };
                    return Err(Error::invalid(if i >= bound {
                        format!("plan: layer {l} {what} index {i} is out of range 0..{bound}")
                    } else {
                        format!("plan: layer {l} {what} index {i} was already removed from this model and cannot be restored")
                    }));
                }
            }
            if out.heads[l].is_empty() {
                return Err(Error::invalid(format!("plan: layer {l} keeps no head; every layer needs at least one")));
            }
            if out.tokens[l].first() != Some(&0) {
                return Err(Error::invalid(format!("plan: layer {l} does not keep token 0 (CLS), which is never pruned")));
            }
        }
        Ok(out)
    }
}

/// Applies a plan: a new model whose removed heads are physically gone.
pub fn apply_plan(model: &ModelFiles, plan: &Plan) -> Result<ModelFiles> {
    let plan = plan.checked(&model.config)?;
    let mut cfg = model.config.clone();
    let mut tensors = model.tensors.clone();
    let hd = cfg.arch.head_dim;
    let d = cfg.arch.embed_dim;
    for l in 0..cfg.arch.depth {
        let cur = &model.config.layers[l].heads;
        let pos: Vec<usize> = plan.heads[l].iter().map(|h| cur.binary_search(h).expect("checked")).collect();
        if pos.len() != cur.len() {
            let inner = cur.len() * hd;
            let b = format!("blocks.{l}.attn");
            // qkv rows are [q heads | k heads | v heads], each head hd rows.
            let rows: Vec<usize> = (0..3).flat_map(|s| pos.iter().flat_map(move |&p| (s * inner + p * hd)..(s * inner + (p + 1) * hd))).collect();
            let w = &tensors[&format!("{b}.qkv.weight")];
            let data: Vec<f32> = rows.iter().flat_map(|&r| w.data[r * d..(r + 1) * d].iter().copied()).collect();
            tensors.insert(format!("{b}.qkv.weight"), HostTensor::new(vec![rows.len(), d], data));
            if let Some(bias) = tensors.get(&format!("{b}.qkv.bias")) {
                let data: Vec<f32> = rows.iter().map(|&r| bias.data[r]).collect();
                tensors.insert(format!("{b}.qkv.bias"), HostTensor::new(vec![rows.len()], data));
            }
            let pw = &tensors[&format!("{b}.proj.weight")];
            let cols: Vec<usize> = pos.iter().flat_map(|&p| (p * hd)..((p + 1) * hd)).collect();
            let data: Vec<f32> = (0..d).flat_map(|o| cols.iter().map(move |&c| pw.data[o * inner + c])).collect();
            tensors.insert(format!("{b}.proj.weight"), HostTensor::new(vec![d, cols.len()], data));
        }
        cfg.layers[l].heads = plan.heads[l].clone();
        cfg.layers[l].tokens = plan.tokens[l].clone();
    }
    cfg.validate()?;
    Ok(ModelFiles { config: cfg, tensors })
}

//! Structural pruning — the "how" of pruning, apart from any criterion: heads are removed by
//! slicing their rows out of the qkv projection and their columns out of the output projection
//! (docs/method.md §2.4); key/value tokens by shortening each layer's kept-position list (§3.4).

use super::params::BlockParams;
use super::{ModelConfig, ModelFiles};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use serde::{Deserialize, Serialize};

/// What to keep, per layer: original head indices and key/value token positions (the prefix
/// tokens, first in the sequence, always among them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub heads: Vec<Vec<usize>>,
    pub tokens: Vec<Vec<usize>>,
    /// JPM's b2 block: its kept heads (its keys are never pruned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jpm_heads: Option<Vec<usize>>,
}

impl Plan {
    /// The plan a model currently follows.
    pub fn of(cfg: &ModelConfig) -> Plan {
        Plan {
            heads: cfg.layers.iter().map(|l| l.heads.clone()).collect(),
            tokens: cfg.layers.iter().map(|l| l.tokens.clone()).collect(),
            jpm_heads: cfg.arch.jpm.as_ref().map(|j| j.heads.clone()),
        }
    }

    /// Kept heads per attention layer: the blocks', then JPM's b2 if the plan has it.
    pub fn head_lists(&self) -> Vec<Vec<usize>> {
        self.heads.iter().cloned().chain(self.jpm_heads.clone()).collect()
    }

    /// Sets the kept heads from `head_lists`' form.
    pub fn set_head_lists(&mut self, mut lists: Vec<Vec<usize>>) {
        if self.jpm_heads.is_some() && lists.len() > self.heads.len() {
            self.jpm_heads = lists.pop();
        }
        lists.truncate(self.heads.len());
        self.heads = lists;
    }

    pub fn load(path: &std::path::Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid plan (expected {{\"heads\": [[…]…], \"tokens\": [[…]…]}}): {e}")))
    }

    /// Checks the plan against a model: depth, ranges, prefix tokens kept, at least one head, and nothing
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
            for (what, list, current) in [("heads", &mut out.heads[l], &cfg.layers[l].heads), ("tokens", &mut out.tokens[l], &cfg.layers[l].tokens)] {
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
            if let Some(p) = (0..cfg.num_prefix()).find(|p| out.tokens[l].get(*p) != Some(p)) {
                return Err(Error::invalid(format!("plan: layer {l} does not keep token {p} ({}), which is never pruned", cfg.prefix_name(p))));
            }
            if out.tokens[l].is_empty() {
                return Err(Error::invalid(format!("plan: layer {l} keeps no key/value token")));
            }
        }
        match (&mut out.jpm_heads, &cfg.arch.jpm) {
            (None, _) => out.jpm_heads = cfg.arch.jpm.as_ref().map(|j| j.heads.clone()),
            (Some(_), None) => return Err(Error::invalid("plan: `jpm_heads` given, but the model has no JPM branch")),
            (Some(list), Some(j)) => {
                list.sort_unstable();
                if let Some(w) = list.windows(2).find(|w| w[0] == w[1]) {
                    return Err(Error::invalid(format!("plan: `jpm_heads` lists head {} twice", w[0])));
                }
                if list.is_empty() {
                    return Err(Error::invalid("plan: `jpm_heads` keeps no head; the b2 block needs at least one"));
                }
                if let Some(&i) = list.iter().find(|i| j.heads.binary_search(i).is_err()) {
                    return Err(Error::invalid(format!("plan: `jpm_heads` index {i} is out of range or already removed")));
                }
            }
        }
        Ok(out)
    }
}

/// Applies a plan: a new model whose removed heads are physically gone.
pub fn apply_plan(model: &ModelFiles, plan: &Plan) -> Result<ModelFiles> {
    model.require_float("pruning")?;
    let plan = plan.checked(&model.config)?;
    let mut out = model.clone();
    let hd = model.config.arch.head_dim;
    for (l, block) in out.params.blocks.iter_mut().enumerate() {
        keep_heads(block, &model.config.layers[l].heads, &plan.heads[l], hd);
        out.config.layers[l].heads = plan.heads[l].clone();
        out.config.layers[l].tokens = plan.tokens[l].clone();
    }
    if let (Some(b2), Some(j), Some(keep)) = (&mut out.params.jpm, &mut out.config.arch.jpm, &plan.jpm_heads) {
        keep_heads(&mut b2.block, &j.heads, keep, hd);
        j.heads = keep.clone();
    }
    out.config.validate()?;
    Ok(out)
}

/// Slices a block down from its current heads `cur` to `keep` (a checked subset).
fn keep_heads(block: &mut BlockParams<HostTensor>, cur: &[usize], keep: &[usize], hd: usize) {
    // Positions, among the model's kept heads, of the heads the plan keeps.
    let pos: Vec<usize> = keep.iter().filter_map(|h| cur.binary_search(h).ok()).collect();
    if pos.len() == cur.len() {
        return;
    }
    let inner = cur.len() * hd;
    // qkv rows are [q heads | k heads | v heads], each head hd rows; proj columns likewise.
    let rows: Vec<usize> = (0..3).flat_map(|s| pos.iter().flat_map(move |&p| (s * inner + p * hd)..(s * inner + (p + 1) * hd))).collect();
    let cols: Vec<usize> = pos.iter().flat_map(|&p| (p * hd)..((p + 1) * hd)).collect();
    block.qkv.weight = select_rows(&block.qkv.weight, &rows);
    block.qkv.bias = block.qkv.bias.as_ref().map(|b| select_rows(b, &rows));
    block.proj.weight = select_cols(&block.proj.weight, &cols);
}

/// Rows `rows` of a `[r, c]` (or `[r]`) tensor.
fn select_rows(t: &HostTensor, rows: &[usize]) -> HostTensor {
    let c: usize = t.shape[1..].iter().product();
    let data = rows.iter().flat_map(|&r| t.data[r * c..(r + 1) * c].iter().copied()).collect();
    let mut shape = t.shape.clone();
    shape[0] = rows.len();
    HostTensor::new(shape, data)
}

/// Columns `cols` of a `[r, c]` tensor.
fn select_cols(t: &HostTensor, cols: &[usize]) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let data = (0..r).flat_map(|o| cols.iter().map(move |&j| t.data[o * c + j])).collect();
    HostTensor::new(vec![r, cols.len()], data)
}

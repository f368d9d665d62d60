//! The selection policy, apart from any criterion: how per-layer scores are weighted so that they
//! compare across layers (docs/method.md §2.3, §3.3), and the global choice of what goes under a
//! budget. A criterion (`criteria`) produces the raw scores; surgery (`model::surgery`) removes
//! what is chosen here.

use crate::error::{Error, Result};
use crate::model::surgery::Plan;
use serde::{Deserialize, Serialize};

/// Head scores s = α·score over the candidate layers — those with more than one head left — with
/// α = 1, 1 + step, 1 + 2·step, … in depth order (AMG: step 0.02, docs/method.md §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadWeighting {
    pub step: f64,
}

impl HeadWeighting {
    pub const AMG: HeadWeighting = HeadWeighting { step: 0.02 };

    /// Weighted scores; `None` for the heads of non-candidate layers.
    pub fn apply(&self, scores: &[Vec<f64>]) -> Vec<Vec<Option<f64>>> {
        let mut alpha = 1.0;
        scores
            .iter()
            .map(|layer| {
                if layer.len() > 1 {
                    let s = layer.iter().map(|&e| Some(alpha * e)).collect();
                    alpha += self.step;
                    s
                } else {
                    vec![None; layer.len()]
                }
            })
            .collect()
    }
}

/// Token scores: per layer |I| divided by its L2 norm over the scored positions, times
/// (1 − decay·l) (AMG: decay 0.03, docs/method.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenWeighting {
    pub decay: f64,
}

impl TokenWeighting {
    pub const AMG: TokenWeighting = TokenWeighting { decay: 0.03 };

    /// Weighted scores; `None` where the position is already pruned.
    pub fn apply(&self, importance: &[Vec<Option<f64>>]) -> Vec<Vec<Option<f64>>> {
        importance
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let norm = layer.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
                let w = 1.0 - self.decay * l as f64;
                layer.iter().map(|v| v.map(|v| if norm > 0.0 { v.abs() / norm * w } else { 0.0 })).collect()
            })
            .collect()
    }
}

/// Removes the `n` heads with the highest scores (ties: earlier layer, then lower head first),
/// never a layer's last head. `scores[l][j]` belongs to `plan.head_lists()[l][j]` (the blocks,
/// then JPM's b2).
pub fn remove_heads(plan: &Plan, scores: &[Vec<Option<f64>>], n: usize) -> Result<Plan> {
    let lists = plan.head_lists();
    if scores.len() != lists.len() || scores.iter().zip(&lists).any(|(s, h)| s.len() != h.len()) {
        return Err(Error::invalid("head scores do not match the model's kept heads (were they computed for another model?)"));
    }
    let mut cand: Vec<(f64, usize, usize)> = Vec::new();
    for (l, layer) in scores.iter().enumerate() {
        for (j, s) in layer.iter().enumerate() {
            if let Some(s) = s {
                cand.push((*s, l, j));
            }
        }
    }
    cand.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut left: Vec<usize> = lists.iter().map(|h| h.len()).collect();
    let mut drop: Vec<Vec<bool>> = lists.iter().map(|h| vec![false; h.len()]).collect();
    let mut removed = 0;
    for (_, l, j) in cand {
        if removed == n {
            break;
        }
        if left[l] > 1 {
            drop[l][j] = true;
            left[l] -= 1;
            removed += 1;
        }
    }
    if removed < n {
        return Err(Error::invalid(format!("cannot remove {n} heads: only {removed} can go while every layer keeps one")));
    }
    let mut out = plan.clone();
    out.set_head_lists(lists.iter().zip(&drop).map(|(heads, d)| heads.iter().zip(d).filter(|(_, d)| !**d).map(|(h, _)| *h).collect()).collect());
    Ok(out)
}

/// Removes the `n` lowest-scoring key positions over all layers (ties: earlier layer, then lower
/// position first). `scores[l][k]` belongs to position `prefix + k`: prefix tokens are never scored,
/// so never removed.
pub fn remove_tokens(plan: &Plan, scores: &[Vec<Option<f64>>], prefix: usize, n: usize) -> Result<Plan> {
    if scores.len() != plan.tokens.len() {
        return Err(Error::invalid("token scores do not match the model's depth"));
    }
    let mut cand: Vec<(f64, usize, usize)> = Vec::new();
    for (l, layer) in scores.iter().enumerate() {
        for (k, s) in layer.iter().enumerate() {
            let pos = k + prefix;
            match s {
                Some(s) if plan.tokens[l].binary_search(&pos).is_ok() => cand.push((*s, l, pos)),
                Some(_) => return Err(Error::invalid(format!("token scores give layer {l} position {pos}, which the model no longer has"))),
                None => {}
            }
        }
    }
    if cand.len() < n {
        return Err(Error::invalid(format!("cannot remove {n} key tokens: only {} are left", cand.len())));
    }
    cand.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut out = plan.clone();
    for &(_, l, pos) in &cand[..n] {
        out.tokens[l].retain(|&p| p != pos);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(heads: Vec<Vec<usize>>, n: usize) -> Plan {
        let tokens = heads.iter().map(|_| (0..n).collect()).collect();
        Plan { heads, tokens, jpm_heads: None }
    }

    #[test]
    fn head_weights_count_only_candidate_layers() {
        // Layer 1 has one head left: it is skipped and does not advance α.
        let s = HeadWeighting::AMG.apply(&[vec![1.0, 2.0], vec![5.0], vec![1.0, 1.0]]);
        assert_eq!(s[0], vec![Some(1.0), Some(2.0)]);
        assert_eq!(s[1], vec![None]);
        assert_eq!(s[2], vec![Some(1.02), Some(1.02)]);
    }

    #[test]
    fn the_highest_scoring_heads_go_but_never_a_layers_last() {
        let p = plan(vec![vec![0, 1, 2], vec![0, 2], vec![1]], 5);
        // Scores per kept head; layer 1's two heads score highest.
        let scores = vec![vec![Some(0.5), Some(0.9), Some(0.1)], vec![Some(3.0), Some(2.0)], vec![None]];
        let out = remove_heads(&p, &scores, 2).unwrap();
        // 3.0 goes; 2.0 would empty layer 1, so the next highest, 0.9 (layer 0, head 1), goes.
        assert_eq!(out.heads, vec![vec![0, 2], vec![2], vec![1]]);
        assert!(remove_heads(&p, &scores, 4).is_err(), "only 3 heads can go");
    }

    #[test]
    fn token_scores_are_normalised_and_weighted_by_depth() {
        let s = TokenWeighting::AMG.apply(&[vec![Some(3.0), Some(-4.0), None], vec![Some(3.0), Some(4.0), Some(0.0)]]);
        assert_eq!(s[0], vec![Some(0.6), Some(0.8), None]);
        let w = 1.0 - 0.03;
        assert_eq!(s[1], vec![Some(0.6 * w), Some(0.8 * w), Some(0.0)]);
    }

    #[test]
    fn the_lowest_scoring_tokens_go_across_layers() {
        let p = Plan { heads: vec![vec![0], vec![0]], tokens: vec![vec![0, 1, 2, 3], vec![0, 1, 3]], jpm_heads: None };
        let scores = vec![vec![Some(0.5), Some(0.1), Some(0.7)], vec![Some(0.2), None, Some(0.05)]];
        let out = remove_tokens(&p, &scores, 1, 2).unwrap();
        assert_eq!(out.tokens, vec![vec![0, 1, 3], vec![0, 1]]);
        assert!(remove_tokens(&p, &scores, 1, 6).is_err());
    }

    #[test]
    fn token_scores_skip_every_prefix_token() {
        // Two prefix tokens (class and distillation): scores start at position 2, which goes first.
        let p = Plan { heads: vec![vec![0]], tokens: vec![vec![0, 1, 2, 3, 4]], jpm_heads: None };
        let out = remove_tokens(&p, &[vec![Some(0.1), Some(0.5), Some(0.9)]], 2, 1).unwrap();
        assert_eq!(out.tokens, vec![vec![0, 1, 3, 4]]);
        assert!(remove_tokens(&p, &[vec![Some(0.1), Some(0.5), Some(0.9)]], 2, 4).is_err(), "prefix tokens cannot go");
    }
}

//! The baseline criterion: every head's and every key's score drawn uniformly from [0, 1). It
//! goes through exactly the selection AMG's scores go through (the same layer weighting, the same
//! global ranking, a head per layer kept, prefix tokens never scored), so it differs from AMG only
//! in the scores (docs/method.md §3).

use super::{Calibration, HeadCriterion, TokenCriterion};
use crate::error::Result;

pub struct Random;

impl HeadCriterion for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn score_heads(&mut self, c: Calibration) -> Result<Vec<Vec<f64>>> {
        Ok(c.model.config().attention_heads().iter().map(|heads| heads.iter().map(|_| c.rng.f64()).collect()).collect())
    }
}

impl TokenCriterion for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn score_tokens(&mut self, c: Calibration) -> Result<Vec<Vec<Option<f64>>>> {
        let cfg = c.model.config();
        Ok(cfg.layers.iter().map(|l| (cfg.num_prefix()..cfg.num_tokens()).map(|p| l.tokens.binary_search(&p).ok().map(|_| c.rng.f64())).collect()).collect())
    }
}

//! Criteria — which heads and which key tokens to remove — one type each behind a small trait,
//! apart from the layer weighting that makes scores comparable across layers (`policy`) and from
//! the surgery that removes what was chosen (`model::surgery`). A new criterion (magnitude,
//! attention rollout, …) is one new file here and one line in `Criterion`.
//!
//! Every criterion sees the same calibration set: the training split in sorted file-name order,
//! without augmentation, the model in inference mode.

pub mod entropy;
pub mod random;
pub mod taylor;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::ModelFiles;
use crate::rng::Rng;
use std::path::PathBuf;

/// How the calibration passes run.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    pub batch_size: usize,
    /// Use only the first N calibration images.
    pub limit: Option<usize>,
    pub progress: bool,
}

/// What a criterion may look at: the model as it is now, the data, and a random generator (the
/// random criterion's, seeded per run).
pub struct Calibration<'a> {
    pub model: &'a ModelFiles,
    pub data: &'a Dataset,
    pub options: &'a AnalyzeOptions,
    pub rng: &'a mut Rng,
}

impl Calibration<'_> {
    /// The calibration images and their training labels.
    pub fn images(&self) -> Result<(Vec<PathBuf>, Vec<u32>)> {
        let n = self.options.limit.unwrap_or(usize::MAX).min(self.data.train.len());
        if n == 0 {
            return Err(Error::invalid("`limit` 0: the calibration pass needs at least one image"));
        }
        let s = &self.data.train[..n];
        Ok((s.iter().map(|x| x.path.clone()).collect(), s.iter().map(|x| x.label as u32).collect()))
    }
}

/// Scores every kept head of every layer (`[layer][kept head]`, in the order of the layer's kept
/// heads). After the layer weighting, the highest-scoring heads are removed first.
pub trait HeadCriterion {
    fn name(&self) -> &'static str;
    fn score_heads(&mut self, c: Calibration) -> Result<Vec<Vec<f64>>>;
}

/// Scores every patch key position of every layer (`[layer][position − prefix tokens]`, `None`
/// where the layer no longer has that key). After the layer weighting, the lowest-scoring keys are
/// removed first.
pub trait TokenCriterion {
    fn name(&self) -> &'static str;
    fn score_tokens(&mut self, c: Calibration) -> Result<Vec<Vec<Option<f64>>>>;
}

crate::choice! {
    /// The criteria `amg prune --criterion` offers, each a head criterion and a token criterion.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Criterion {
        /// Attention-map guided: head entropy, first-order key importance.
        Amg = "amg" => "attention-map guided: head entropy, first-order key importance",
        /// The baseline: random scores through the same selection.
        Random = "random" => "the baseline: random scores through the same layer weighting and selection",
    }
}

impl Criterion {
    pub fn heads(self) -> Box<dyn HeadCriterion> {
        match self {
            Criterion::Amg => Box::new(entropy::Entropy),
            Criterion::Random => Box::new(random::Random),
        }
    }
    pub fn tokens(self) -> Box<dyn TokenCriterion> {
        match self {
            Criterion::Amg => Box::new(taylor::FirstOrder),
            Criterion::Random => Box::new(random::Random),
        }
    }
    /// As a report's title says it: "AMG", "random".
    pub fn title(self) -> &'static str {
        match self {
            Criterion::Amg => "AMG",
            Criterion::Random => "random",
        }
    }
}

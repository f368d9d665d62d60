//! `amg analyze`: what the attention maps say about each head and each key token — AMG's two
//! criteria (`criteria::entropy`, `criteria::taylor`) run on the calibration set, written as one
//! scores file.

use super::criteria::entropy::Entropy;
use super::criteria::taylor::FirstOrder;
use super::criteria::{Calibration, HeadCriterion, TokenCriterion};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::ModelFiles;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub use super::criteria::AnalyzeOptions;

/// Scores of every head and key token, as `amg analyze` and each pruning iteration write them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub batch_size: usize,
    pub images: usize,
    /// Per attention layer (the blocks, then JPM's b2), the head criterion's score of each kept
    /// head (in the order of `heads`): AMG's is the attention entropy.
    pub head_entropy: Vec<Vec<f64>>,
    /// Per layer, the token criterion's score of each patch key position (position − prefix
    /// tokens; `None` where already pruned): AMG's is the first-order importance.
    pub token_importance: Vec<Vec<Option<f64>>>,
    /// Per attention layer, the original indices of the kept heads the entropies belong to.
    #[serde(default)]
    pub heads: Vec<Vec<usize>>,
    /// Which criteria produced the scores (absent in files from older versions: AMG's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_criterion: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_criterion: Option<String>,
}

impl Scores {
    /// Scores of zero for every kept head and key of `model`, criteria unnamed.
    pub fn zeros(model: &ModelFiles, o: &AnalyzeOptions, images: usize) -> Scores {
        let cfg = model.config();
        Scores {
            batch_size: o.batch_size,
            images,
            head_entropy: cfg.attention_heads().iter().map(|h| vec![0.0; h.len()]).collect(),
            token_importance: cfg
                .layers
                .iter()
                .map(|l| (cfg.num_prefix()..cfg.num_tokens()).map(|p| l.tokens.binary_search(&p).ok().map(|_| 0.0)).collect())
                .collect(),
            heads: cfg.attention_heads().iter().map(|h| h.to_vec()).collect(),
            head_criterion: None,
            token_criterion: None,
        }
    }

    pub fn load(path: &Path) -> Result<Scores> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid scores file: {e}")))
    }

    /// One line: what was scored, over how many images, written where.
    pub fn summary(&self, out: &Path) -> String {
        format!(
            "scores of {} and {} over {} → {}",
            crate::text::count(self.head_entropy.iter().map(|l| l.len()).sum::<usize>(), "head"),
            crate::text::count(self.token_importance.iter().flatten().flatten().count(), "key token"),
            crate::text::count(self.images, "image"),
            out.display()
        )
    }
}

/// Both AMG analyses.
pub fn analyze(files: &ModelFiles, data: &Dataset, o: &AnalyzeOptions) -> Result<Scores> {
    if o.batch_size == 0 {
        return Err(Error::invalid("`batch_size` must be at least 1"));
    }
    let images = o.limit.unwrap_or(usize::MAX).min(data.train.len());
    let mut rng = Rng::new(0);
    let mut scores = Scores::zeros(files, o, images);
    let (mut heads, mut tokens) = (Entropy, FirstOrder);
    scores.head_entropy = heads.score_heads(Calibration { model: files, data, options: o, rng: &mut rng })?;
    scores.token_importance = tokens.score_tokens(Calibration { model: files, data, options: o, rng: &mut rng })?;
    scores.head_criterion = Some(heads.name().into());
    scores.token_criterion = Some(tokens.name().into());
    Ok(scores)
}

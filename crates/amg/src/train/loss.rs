//! The training losses: LA-Transformer's (docs/method.md §1), TransReID's ID + triplet loss over
//! its BNNecks (docs/backbones.md §2.3–2.4), and the distillation terms (docs/method.md §4).

use crate::error::{Error, Result};
use candle_core::{DType, Tensor, D};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distill {
    None,
    /// Adds α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) / numel per part (summed KL over the batch
    /// divided by the number of logits), as the reference code's DeiT-style loss does.
    Soft {
        alpha: f64,
        tau: f64,
    },
    /// Adds α·CE(s, argmax t) per part.
    Hard {
        alpha: f64,
    },
}

crate::choice! {
    /// Which distillation term, without its weights (the command line's `--distill`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum DistillKind {
        None = "none" => "no distillation",
        Soft = "soft" => "α·τ²·KL(teacher ‖ student) at temperature τ",
        Hard = "hard" => "α·CE against the teacher's argmax",
    }
}

impl Distill {
    pub fn new(kind: DistillKind, alpha: f64, tau: f64) -> Distill {
        match kind {
            DistillKind::None => Distill::None,
            DistillKind::Soft => Distill::Soft { alpha, tau },
            DistillKind::Hard => Distill::Hard { alpha },
        }
    }

    pub fn kind(&self) -> DistillKind {
        match self {
            Distill::None => DistillKind::None,
            Distill::Soft { .. } => DistillKind::Soft,
            Distill::Hard { .. } => DistillKind::Hard,
        }
    }

    pub fn name(&self) -> &'static str {
        crate::choice::Choice::name(self.kind())
    }

    /// In words, for reports: "soft (α 0.2, τ 1)".
    pub fn describe(&self) -> String {
        match self {
            Distill::None => "none".into(),
            Distill::Soft { alpha, tau } => format!("soft (α {alpha}, τ {tau})"),
            Distill::Hard { alpha } => format!("hard (α {alpha})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    pub label_smoothing: f64,
    pub distill: Distill,
    /// TransReID's triplet loss with hard mining on the BNNeck inputs (BNNeck heads only).
    pub triplet: Option<Triplet>,
}

impl LossConfig {
    pub fn ce(label_smoothing: f64, distill: Distill) -> Self {
        LossConfig { label_smoothing, distill, triplet: None }
    }
}

/// The batch-hard triplet loss (Hermans et al.), as TransReID computes it: Euclidean distances,
/// for each anchor the farthest positive and the nearest negative, then a soft margin
/// log(1 + exp(d_ap − d_an)) (TransReID's `NO_MARGIN`, its configurations' choice) or a hinge
/// max(0, d_ap − d_an + margin).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Triplet {
    /// `None`: soft margin.
    pub margin: Option<f64>,
}

/// The loss and its parts, as scalars (0-d tensors; `total` carries the graph).
pub struct Loss {
    pub total: Tensor,
    pub ce: f64,
    pub distill: f64,
    pub triplet: f64,
}

/// The loss of a model's outputs: LA's sum over parts, or TransReID's over its BNNecks.
pub fn model_loss(
    head: crate::model::HeadKind,
    out: &crate::model::vit::Output,
    labels: &Tensor,
    teacher: Option<&[Tensor]>,
    cfg: &LossConfig,
) -> Result<Loss> {
    match head {
        crate::model::HeadKind::Bnneck => bnneck_loss(&out.logits, &out.parts, labels, teacher, cfg),
        _ => {
            if cfg.triplet.is_some() {
                return Err(Error::invalid("`loss` ce,triplet: the triplet loss is for BNNeck heads (TransReID); an LA head trains with cross-entropy"));
            }
            la_loss(&out.logits, labels, teacher, cfg)
        }
    }
}

/// Squared-distance-free batch-hard triplet loss of `features` `[B, D]` (see `Triplet`).
pub fn triplet_loss(features: &Tensor, labels: &[u32], t: Triplet) -> Result<Tensor> {
    let b = labels.len();
    let sq = features.sqr()?.sum_keepdim(1)?; // [B, 1]
    let gram = features.matmul(&features.t()?)?;
    let dist = (sq.broadcast_add(&sq.t()?)? - (gram * 2.0)?)?.clamp(1e-12, f64::MAX)?.sqrt()?;
    let same: Vec<f32> = (0..b * b).map(|i| f32::from(labels[i / b] == labels[i % b])).collect();
    let same = Tensor::from_vec(same, (b, b), features.device())?;
    // Hardest positive: max over same-identity pairs (the anchor itself included, at ~1e-6, as
    // in TransReID); hardest negative: min over the others. Masked entries are pushed out of reach.
    const FAR: f64 = 1e9;
    let ap = (&dist - ((1.0 - &same)? * FAR)?)?.max(1)?;
    let an = (&dist + (&same * FAR)?)?.min(1)?;
    let x = (ap - an)?;
    let per = match t.margin {
        // softplus(x) = log(1 + exp(x)), stably: max(x, 0) + log(1 + exp(−|x|)).
        None => (x.relu()? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?))?,
        Some(m) => (x + m)?.relu()?,
    };
    Ok(per.mean_all()?)
}

/// TransReID's loss over its BNNecks: ID = CE(global) alone, or with JPM ½·CE(global) + ½·mean of
/// the local CEs; the triplet term likewise on the BNNeck inputs `parts` `[B, 1+k, D]`;
/// distillation per neck, weighted as the CE.
pub fn bnneck_loss(logits: &[Tensor], parts: &Tensor, labels: &Tensor, teacher: Option<&[Tensor]>, cfg: &LossConfig) -> Result<Loss> {
    if logits.is_empty() {
        return Err(Error::invalid("the model has no ID classifier: it cannot be trained (give the BNNeck a classifier)"));
    }
    let k = logits.len();
    let weight = |i: usize| {
        if k == 1 {
            1.0
        } else if i == 0 {
            0.5
        } else {
            0.5 / (k - 1) as f64
        }
    };
    let scalar = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let mut total: Option<Tensor> = None;
    let mut add = |t: Tensor| -> Result<()> {
        total = Some(match total.take() {
            Some(a) => (a + t)?,
            None => t,
        });
        Ok(())
    };
    let (mut ce_sum, mut kd_sum, mut tri_sum) = (0.0, 0.0, 0.0);
    let label_vec = labels.to_vec1::<u32>()?;
    for (i, s) in logits.iter().enumerate() {
        let w = weight(i);
        let ce = (cross_entropy(s, labels, cfg.label_smoothing)? * w)?;
        ce_sum += scalar(&ce)?;
        add(ce)?;
        match (cfg.distill, teacher) {
            (Distill::None, _) => {}
            (_, None) => return Err(Error::invalid("distillation needs the teacher's logits")),
            (Distill::Soft { alpha, tau }, Some(t)) => {
                let kd = (soft_distillation(s, &t[i], tau)? * (alpha * w))?;
                kd_sum += scalar(&kd)?;
                add(kd)?;
            }
            (Distill::Hard { alpha }, Some(t)) => {
                let kd = (cross_entropy(s, &t[i].detach().argmax(D::Minus1)?, 0.0)? * (alpha * w))?;
                kd_sum += scalar(&kd)?;
                add(kd)?;
            }
        }
        if let Some(t) = cfg.triplet {
            let tri = (triplet_loss(&parts.narrow(1, i, 1)?.squeeze(1)?, &label_vec, t)? * w)?;
            tri_sum += scalar(&tri)?;
            add(tri)?;
        }
    }
    Ok(Loss { total: total.expect("at least one neck"), ce: ce_sum, distill: kd_sum, triplet: tri_sum })
}

/// Mean cross entropy of `logits` `[B, C]` against `labels` `[B]` (u32), with label smoothing ε:
/// (1 − ε)·NLL + ε·mean over classes of −log p, as `torch.nn.functional.cross_entropy`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let per = if smoothing > 0.0 {
        let smooth = logp.mean(D::Minus1)?.neg()?;
        ((nll * (1.0 - smoothing))? + (smooth * smoothing)?)?
    } else {
        nll
    };
    Ok(per.mean_all()?)
}

/// τ²·Σ p_t·(log p_t − log p_s) / numel.
pub fn soft_distillation(student: &Tensor, teacher: &Tensor, tau: f64) -> Result<Tensor> {
    let ls = candle_nn::ops::log_softmax(&(student / tau)?, D::Minus1)?;
    let lt = candle_nn::ops::log_softmax(&(teacher.detach() / tau)?, D::Minus1)?;
    let kl = (lt.exp()? * (lt - ls)?)?.sum_all()?;
    Ok((kl * (tau * tau / student.elem_count() as f64))?)
}

/// Σ over parts of the cross entropy, plus the distillation term when a teacher's logits are given.
pub fn la_loss(student: &[Tensor], labels: &Tensor, teacher: Option<&[Tensor]>, cfg: &LossConfig) -> Result<Loss> {
    if student.is_empty() {
        return Err(Error::invalid("the model has no classifier head: it cannot be trained (import an LA-Transformer or use `arch`)"));
    }
    let mut total: Option<Tensor> = None;
    let (mut ce_sum, mut kd_sum) = (0.0, 0.0);
    let mut add = |t: Tensor| -> Result<()> {
        total = Some(match total.take() {
            Some(a) => (a + t)?,
            None => t,
        });
        Ok(())
    };
    for (i, s) in student.iter().enumerate() {
        let ce = cross_entropy(s, labels, cfg.label_smoothing)?;
        ce_sum += ce.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        add(ce)?;
        match (cfg.distill, teacher) {
            (Distill::None, _) => {}
            (_, None) => return Err(Error::invalid("distillation needs the teacher's logits")),
            (Distill::Soft { alpha, tau }, Some(t)) => {
                let kd = soft_distillation(s, &t[i], tau)?;
                kd_sum += kd.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                add((kd * alpha)?)?;
            }
            (Distill::Hard { alpha }, Some(t)) => {
                let hard = t[i].detach().argmax(D::Minus1)?;
                let kd = cross_entropy(s, &hard, 0.0)?;
                kd_sum += kd.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                add((kd * alpha)?)?;
            }
        }
    }
    Ok(Loss { total: total.expect("at least one part"), ce: ce_sum, distill: kd_sum, triplet: 0.0 })
}

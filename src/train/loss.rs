//! LA-Transformer's training loss and the distillation terms (docs/method.md §1, §4).

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

/// Which distillation term, without its weights (the command line's `--distill`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistillKind {
    None,
    Soft,
    Hard,
}

impl crate::choice::Choice for DistillKind {
    const ALL: &'static [DistillKind] = &[DistillKind::None, DistillKind::Soft, DistillKind::Hard];
    fn name(self) -> &'static str {
        match self {
            DistillKind::None => "none",
            DistillKind::Soft => "soft",
            DistillKind::Hard => "hard",
        }
    }
    fn help(self) -> &'static str {
        match self {
            DistillKind::None => "no distillation",
            DistillKind::Soft => "α·τ²·KL(teacher ‖ student) at temperature τ",
            DistillKind::Hard => "α·CE against the teacher's argmax",
        }
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
}

/// The loss and its parts, as scalars (0-d tensors; `total` carries the graph).
pub struct Loss {
    pub total: Tensor,
    pub ce: f64,
    pub distill: f64,
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
        return Err(Error::invalid("the model has no classifier head: it cannot be trained (import an LA-Transformer or use --arch)"));
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
    Ok(Loss { total: total.expect("at least one part"), ce: ce_sum, distill: kd_sum })
}

//! Argument pieces several subcommands share.

use amg::choice::Choice;
use amg::train::loss::{Distill, DistillKind};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

/// A parser for the values of a library `Choice`, listing each with its help.
pub fn choice<T: Choice + Send + Sync + Clone>() -> impl TypedValueParser<Value = T> {
    let values = T::ALL.iter().map(|v| PossibleValue::new(v.name()).help(v.help()));
    // The parser admits only the listed names, so `parse` cannot fail here.
    PossibleValuesParser::new(values).map(|s| T::parse(&s).unwrap_or(T::ALL[0]))
}

/// `HxW` (e.g. 256x128) or one number for a square size.
pub fn size(s: &str) -> Result<(usize, usize), String> {
    amg::model::config::parse_size(s).map_err(|e| e.to_string())
}

#[derive(clap::Args)]
pub struct DistillArgs {
    /// Distillation from the teacher: soft (KL at temperature τ) or hard (CE on its argmax).
    #[arg(long = "distill", value_parser = choice::<DistillKind>(), default_value = "none")]
    pub kind: DistillKind,
    /// Weight of the distillation term.
    #[arg(long, default_value_t = 0.2)]
    pub alpha: f64,
    /// Softmax temperature of soft distillation.
    #[arg(long, default_value_t = 1.0)]
    pub tau: f64,
}

impl DistillArgs {
    pub fn get(&self) -> Distill {
        Distill::new(self.kind, self.alpha, self.tau)
    }
}

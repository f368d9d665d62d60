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

/// `--precision`: the number format of the inference engine's block products.
#[derive(clap::Args)]
pub struct PrecisionArg {
    /// Number format of the transformer blocks' products: f32, or bf16 (bfloat16 weights and
    /// inputs, float32 sums: fast on CPUs with AMX tiles and on AMD CPUs with AVX-512 BF16,
    /// emulated and slower elsewhere).
    #[arg(long, default_value = "f32", value_parser = choice::<amg::engine::Precision>())]
    pub precision: amg::engine::Precision,
}

impl PrecisionArg {
    /// The inference engine for `files` in this precision, with a warning when bfloat16 has no
    /// unit amg uses to run on.
    pub fn engine(&self, files: amg::model::ModelFiles) -> amg::Result<amg::engine::Engine> {
        self.warn_if_emulated();
        amg::engine::Engine::with_precision(files, self.precision)
    }

    /// Says so on stderr when bfloat16 is asked for and there is no unit amg uses to run it on.
    pub fn warn_if_emulated(&self) {
        if self.precision == amg::engine::Precision::Bf16 && amg::kernels::bf16::unit() == amg::kernels::bf16::Unit::Emulated {
            eprintln!(
                "warning: --precision bf16: this CPU (or AMG_ISA) offers no bfloat16 unit amg uses (AMX tiles; AVX-512 BF16 on AMD CPUs), so the bfloat16 products are emulated in float32: slower than --precision f32, with the results those units would give"
            );
        }
    }
}

/// `HxW`, e.g. 256x128.
pub fn size(s: &str) -> Result<(usize, usize), String> {
    amg::model::config::parse_size(s).map_err(|e| e.to_string())
}

// Numbers are checked when the command line is read, so that a wrong value stops the command
// before any work, with clap's usual message naming the option.

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim().parse::<T>().map_err(|_| format!("`{s}` is not a number"))
}

/// A finite number > 0 (learning rate, temperature, decay factor).
pub fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not > 0"))
    }
}

/// A finite number ≥ 0 (weight decay, warm-up epochs).
pub fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not ≥ 0"))
    }
}

/// A fraction in [0, 1): budgets, label smoothing, dropout.
pub fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a fraction in [0, 1) (e.g. 0.3 for 30 %)"))
    }
}

/// A weight in [0, 1] (the distillation weight α).
pub fn weight(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not in [0, 1]"))
    }
}

/// Three finite numbers `R,G,B` (input mean and std); a std must be > 0, which `rgb_positive` checks.
pub fn rgb(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s.split(',').map(number::<f32>).collect::<Result<_, _>>()?;
    match v.as_slice() {
        [r, g, b] if v.iter().all(|x| x.is_finite()) => Ok([*r, *g, *b]),
        _ => Err(format!("`{s}`: expected three numbers R,G,B such as 0.5,0.5,0.5")),
    }
}

/// Three numbers `R,G,B`, each > 0 (a standard deviation).
pub fn rgb_positive(s: &str) -> Result<[f32; 3], String> {
    let v = rgb(s)?;
    if v.iter().all(|x| *x > 0.0) {
        Ok(v)
    } else {
        Err(format!("`{s}`: each standard deviation must be > 0"))
    }
}

/// `--camera` and `--view` for a model with a side information embedding (TransReID's SIE).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct SideInfoArgs {
    /// For a model with SIE: the camera index of every image (0 is c1); by default each
    /// Market/Duke file name gives its own.
    #[arg(long)]
    camera: Option<usize>,
    /// For a model whose SIE has viewpoints (TransReID's vehicle configurations): the viewpoint
    /// index of every image.
    #[arg(long)]
    view: Option<usize>,
}

impl SideInfoArgs {
    pub fn get(&self) -> amg::data::cameras::SideInfo {
        amg::data::cameras::SideInfo { camera: self.camera, view: self.view }
    }
}

/// A count ≥ 1 (epochs, iterations, batch size, images).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    let v: usize = number(s).map_err(|_| format!("`{s}` is not a whole number ≥ 1"))?;
    if v >= 1 {
        Ok(v)
    } else {
        Err("must be at least 1".into())
    }
}

#[derive(clap::Args)]
pub struct DistillArgs {
    /// Distillation from the teacher: soft (KL at temperature τ) or hard (CE on its argmax).
    #[arg(long = "distill", value_parser = choice::<DistillKind>(), default_value = "none")]
    pub kind: DistillKind,
    /// Weight of the distillation term, in [0, 1].
    #[arg(long, default_value_t = 0.2, value_parser = weight)]
    pub alpha: f64,
    /// Softmax temperature of soft distillation (> 0).
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    pub tau: f64,
}

impl DistillArgs {
    pub fn get(&self) -> Distill {
        Distill::new(self.kind, self.alpha, self.tau)
    }
}

/// Adds what was kept and how to resume to a Ctrl-C stop; other errors pass as they are.
pub fn on_interrupt<T>(r: amg::Result<T>, hint: impl FnOnce() -> String) -> anyhow::Result<T> {
    r.map_err(|e| match e {
        amg::Error::Interrupted => anyhow::Error::new(e).context(hint()),
        e => e.into(),
    })
}

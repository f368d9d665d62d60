use crate::args::{choice, size, DistillArgs};
use amg::data::loader::Augment;
use amg::data::Dataset;
use amg::model::{Arch, HeadConfig, ModelConfig, ModelFiles, Source};
use amg::train::optim::{OptimConfig, OptimKind};
use amg::train::run::{train, ResumeOverrides, Scheduler, Start, TrainOptions, TrainRequest};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Dataset root (its training split is used; query/gallery for --eval-every).
    #[arg(long)]
    data: PathBuf,
    /// Run directory: last/, best/, metrics.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Start from this model directory.
    #[arg(long, conflicts_with = "arch")]
    init: Option<PathBuf>,
    /// Or from random weights: tiny, small, base.
    #[arg(long)]
    arch: Option<String>,
    /// Input size HxW for --arch (default 224x224).
    #[arg(long, value_parser = size, requires = "arch")]
    img_size: Option<(usize, usize)>,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Learning rate (default 5e-4). On --resume it keeps the run's unless given.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, value_parser = choice::<OptimKind>(), default_value = "adamw")]
    optimizer: OptimKind,
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    #[arg(long, value_parser = choice::<Scheduler>(), default_value = "cosine")]
    scheduler: Scheduler,
    /// StepLR: epochs between decays.
    #[arg(long, default_value_t = 3)]
    step_size: usize,
    /// StepLR: decay factor.
    #[arg(long, default_value_t = 0.7)]
    gamma: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup_epochs: f64,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Dropout in the LA classifiers.
    #[arg(long, default_value_t = 0.5)]
    dropout: f32,
    /// Train without flip / pad-crop / random erasing.
    #[arg(long)]
    no_augment: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate Rank-1/mAP on query/gallery every N epochs (0: never).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Continue the run in --out from last/.
    #[arg(long, conflicts_with_all = ["init", "arch"])]
    resume: bool,
    /// Frozen teacher model directory for distillation.
    #[arg(long)]
    teacher: Option<PathBuf>,
    #[command(flatten)]
    distill: DistillArgs,
    /// Start over even if --out already holds a run.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    if !a.resume && a.init.is_none() && a.arch.is_none() {
        bail!("give --init MODEL_DIR, --arch tiny|small|base, or --resume");
    }
    let options = TrainOptions {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr.unwrap_or(5e-4),
        optim: OptimConfig::new(a.optimizer, a.weight_decay),
        scheduler: a.scheduler,
        step_size: a.step_size,
        gamma: a.gamma,
        warmup_epochs: a.warmup_epochs,
        label_smoothing: a.label_smoothing,
        distill: a.distill.get(),
        dropout: a.dropout,
        augment: if a.no_augment { None } else { Some(Augment::reid_default()) },
        seed: a.seed,
        eval_every: a.eval_every,
    };
    if !a.resume {
        amg::train::run::check_options(&options, a.teacher.is_some())?;
    }
    let data = Dataset::open(&a.data, None)?;
    eprint!("{}", data.summary());
    let start = if a.resume {
        Start::Resume(ResumeOverrides { epochs: Some(a.epochs), lr: a.lr })
    } else if let Some(dir) = &a.init {
        Start::Model(ModelFiles::load(dir)?, options)
    } else {
        let arch = a.arch.as_deref().unwrap_or("tiny");
        let (h, w) = a.img_size.unwrap_or((224, 224));
        let cfg = ModelConfig::new(Arch::preset(arch)?, h, w, HeadConfig::la(data.num_classes), Source { format: "init".into(), ..Default::default() })?;
        Start::Random(cfg, options)
    };
    let teacher = match &a.teacher {
        Some(t) => Some((ModelFiles::load(t)?, t.display().to_string())),
        None => None,
    };
    let req = TrainRequest { data: &data, run: &a.out, start, teacher, force: a.force, progress: true };
    let s = train(req, &mut |m| eprintln!("{m}"))?;
    if let Some((score, epoch)) = s.best {
        eprintln!("done: {} epochs; best {:.4} at epoch {epoch} → {}", s.epochs_done, score, a.out.join("best").display());
    }
    Ok(())
}

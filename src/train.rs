use crate::args::{at_least_one, choice, fraction, non_negative, on_interrupt, positive, size, DistillArgs};
use amg::data::loader::Augment;
use amg::data::Dataset;
use amg::model::config::{NeckFeat, Sie};
use amg::model::{Arch, HeadKind, ModelFiles};
use amg::train::loss::Triplet;
use amg::train::optim::{OptimConfig, OptimKind};
use amg::train::run::{train, FromScratch, ResumeOverrides, Scheduler, Start, TrainOptions, TrainRequest};
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
    /// Input size HxW: for --arch (default 224x224), or to fine-tune --init's model at another
    /// size (its position embedding resampled; LA part classifiers replaced when the grid's row
    /// count changes).
    #[arg(long, value_parser = size, conflicts_with = "resume")]
    img_size: Option<(usize, usize)>,
    /// Head for --arch: la (LA-Transformer's part classifiers) or bnneck (TransReID's).
    #[arg(long, value_parser = choice::<HeadChoice>(), default_value = "la", requires = "arch")]
    head: HeadChoice,
    /// For --arch: patch-embedding stride (TransReID's overlapping patches use 12 with 16-pixel
    /// patches); default the patch size.
    #[arg(long, value_parser = at_least_one, requires = "arch")]
    stride: Option<usize>,
    /// For --arch: a side information embedding over the dataset's cameras (TransReID's SIE).
    #[arg(long, requires = "arch")]
    sie: bool,
    /// SIE's coefficient (TransReID's SIE_COE).
    #[arg(long, default_value_t = Sie::TRANSREID_COEFFICIENT, requires = "sie")]
    sie_coefficient: f32,
    /// For --arch with --head bnneck: TransReID's jigsaw patch module (4 local features; shift 5,
    /// 2 shuffle groups).
    #[arg(long, requires = "arch")]
    jpm: bool,
    /// For --head bnneck: the retrieval feature before or after the BNNeck's BatchNorm.
    #[arg(long, value_parser = choice::<NeckFeat>(), default_value = "before")]
    neck_feat: NeckFeat,
    /// Loss: ce (cross-entropy) or ce,triplet (TransReID's ID + batch-hard triplet loss; BNNeck
    /// heads, needs --instances).
    #[arg(long, value_parser = choice::<LossChoice>(), default_value = "ce")]
    loss: LossChoice,
    /// Triplet margin (hinge); default TransReID's soft margin log(1 + exp(d_ap − d_an)).
    #[arg(long, value_parser = positive)]
    triplet_margin: Option<f64>,
    /// Images per identity in each batch (the P×K identity sampler; TransReID's NUM_INSTANCE
    /// is 4); default a plain shuffle.
    #[arg(long, value_parser = at_least_one)]
    instances: Option<usize>,
    /// Epochs to train (with --resume: the run's new total length).
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    epochs: usize,
    /// Images per optimiser step (at least 2: BatchNorm in training mode needs a batch).
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    batch_size: usize,
    /// Learning rate, > 0 (default 5e-4). On --resume it keeps the run's unless given.
    #[arg(long, value_parser = positive)]
    lr: Option<f64>,
    /// Optimiser.
    #[arg(long, value_parser = choice::<OptimKind>(), default_value = "adamw")]
    optimizer: OptimKind,
    /// Weight decay (decoupled for AdamW, L2 for Adam and SGD).
    #[arg(long, default_value_t = 0.05, value_parser = non_negative)]
    weight_decay: f64,
    /// Learning-rate schedule after the warm-up.
    #[arg(long, value_parser = choice::<Scheduler>(), default_value = "cosine")]
    scheduler: Scheduler,
    /// StepLR: epochs between decays.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    step_size: usize,
    /// StepLR: decay factor (> 0).
    #[arg(long, default_value_t = 0.7, value_parser = positive)]
    gamma: f64,
    /// Epochs of linear learning-rate warm-up (may be fractional).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    warmup_epochs: f64,
    /// Label smoothing of the cross-entropy, in [0, 1).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    label_smoothing: f64,
    /// Dropout in the LA classifiers, in [0, 1).
    #[arg(long, default_value_t = 0.5, value_parser = fraction)]
    dropout: f64,
    /// Train without flip / pad-crop / random erasing.
    #[arg(long)]
    no_augment: bool,
    /// Seed of the initialisation, data order, augmentation and dropout.
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
    if a.jpm && a.head != HeadChoice::Bnneck {
        bail!("--jpm: the jigsaw patch module goes with --head bnneck (TransReID)");
    }
    let options = options(&a);
    if !a.resume {
        amg::train::run::check_options(&options, a.teacher.is_some())?;
        amg::train::run::check_new_run_dir(&a.out, a.force)?;
    }
    // The models are read (and an unknown --arch refused) before the dataset, so that their
    // errors come before the dataset's summary.
    let init = init_model(&a)?;
    let arch = if a.resume || init.is_some() { None } else { Some(Arch::preset(a.arch.as_deref().unwrap_or("tiny"))?) };
    let teacher = match &a.teacher {
        Some(t) => Some((ModelFiles::load(t)?, t.display().to_string())),
        None => None,
    };
    let data = Dataset::open(&a.data, None)?;
    eprint!("{}", data.summary());
    let start = if a.resume {
        Start::Resume(ResumeOverrides { epochs: Some(a.epochs), lr: a.lr })
    } else if let Some(files) = init {
        Start::Model(files, options)
    } else {
        let arch = arch.ok_or_else(|| anyhow::anyhow!("give --init MODEL_DIR or --arch"))?;
        let model = FromScratch {
            arch,
            input: a.img_size.unwrap_or((224, 224)),
            bnneck: (a.head == HeadChoice::Bnneck).then_some(a.neck_feat),
            stride: a.stride,
            sie: a.sie.then_some(a.sie_coefficient),
            jpm: a.jpm,
        };
        Start::Random(model.config(&data)?, options)
    };
    let req = TrainRequest { data: &data, run: &a.out, start, teacher, force: a.force, progress: true };
    let existed = a.out.exists();
    let result = train(req, &mut |m| eprintln!("{m}"));
    if result.is_err() && !existed {
        let _ = std::fs::remove_dir(&a.out); // only if empty: a run that never finished an epoch
    }
    let s = on_interrupt(result, || {
        if a.out.join("last").join(amg::train::run::STATE_FILE).is_file() {
            format!(
                "{} keeps the last finished epoch (last/); continue with: amg train --data {} --out {} --resume",
                a.out.display(),
                a.data.display(),
                a.out.display()
            )
        } else {
            "no epoch had finished; nothing to resume".into()
        }
    })?;
    let epochs = amg::text::count(s.epochs_done, "epoch");
    match s.best {
        Some((score, epoch)) => println!(
            "trained {epochs}; best {} {:.2} % at epoch {epoch} → {} (last epoch → {})",
            s.best_by,
            100.0 * score,
            a.out.join("best").display(),
            a.out.join("last").display()
        ),
        None => println!("trained {epochs} → {}", a.out.join("last").display()),
    }
    Ok(())
}

/// The run's options as the arguments give them.
fn options(a: &Args) -> TrainOptions {
    TrainOptions {
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
        dropout: a.dropout as f32,
        augment: if a.no_augment { None } else { Some(Augment::reid_default()) },
        seed: a.seed,
        eval_every: a.eval_every,
        triplet: (a.loss == LossChoice::CeTriplet).then_some(Triplet { margin: a.triplet_margin }),
        instances: a.instances.unwrap_or(0),
    }
}

/// `--init`'s model, at `--img-size` when given; refused for `--loss ce,triplet` unless its head
/// is a BNNeck.
fn init_model(a: &Args) -> Result<Option<ModelFiles>> {
    let init = match (&a.init, a.img_size) {
        (Some(p), Some((h, w))) => Some(
            amg::model::ModelFiles::load_float(p, "`amg train --init`")?
                .at_input_size(h, w)
                .map_err(|e| anyhow::anyhow!("--init {} at --img-size {h}x{w}: {e}", p.display()))?,
        ),
        (p, _) => p.as_deref().map(|p| amg::model::ModelFiles::load_float(p, "`amg train --init`")).transpose()?,
    };
    if let (Some(m), Some(p)) = (&init, &a.init) {
        if a.loss == LossChoice::CeTriplet && m.config().head.kind != HeadKind::Bnneck {
            bail!("--loss ce,triplet: {} has {}; the triplet loss is for BNNeck heads (TransReID)", p.display(), m.config().describe_head());
        }
    }
    Ok(init)
}

amg::choice! {
    /// `--head` for a model trained from scratch.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum HeadChoice {
        La = "la" => "LA-Transformer: one classifier per row of patches",
        Bnneck = "bnneck" => "TransReID: BatchNorm neck and ID classifier on the class token",
    }
}

amg::choice! {
    /// `--loss`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum LossChoice {
        Ce = "ce" => "cross-entropy on every classifier (with --label-smoothing)",
        CeTriplet = "ce,triplet" => "TransReID's ID loss plus batch-hard triplet loss (BNNeck heads; needs --instances)",
    }
}

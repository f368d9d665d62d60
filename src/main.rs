//! The `amg` command line: argument parsing and error reporting; the work is in the library.

use amg::engine::Engine;
use amg::import::{import, ImportOptions, SourceFormat};
use amg::model::config::parse_size;
use amg::model::{Arch, HeadConfig, ModelConfig, ModelFiles, Source};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "amg", version, about = "Attention-map-guided pruning and fast CPU inference for ViT person re-identification")]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole pipeline on built-in synthetic data: benchmark, training, AMG and random pruning,
    /// one comparison table and a plot (≈ 6 minutes on 2 cores; --quick ≈ 1 minute).
    Demo(DemoArgs),
    /// Convert a timm / LA-Transformer / AMG-reference checkpoint into an amg model directory.
    Import(ImportArgs),
    /// Compute retrieval features of images.
    Embed(EmbedArgs),
    /// Find the gallery images most similar to a query image (features from `amg embed`).
    Search(SearchArgs),
    /// Show what a model keeps per layer and what it costs (params, MACs, paper FLOPs).
    Inspect(InspectArgs),
    /// Measure inference throughput.
    Bench(BenchArgs),
    /// Generate a synthetic Re-ID benchmark (Market-1501 layout), or a contact sheet of it.
    Synth(SynthArgs),
    /// Train or fine-tune an LA-Transformer (optionally distilling from a teacher).
    Train(TrainArgs),
    /// Score heads (attention entropy) and key tokens (first-order importance) on a calibration set.
    Analyze(AnalyzeArgs),
    /// Prune heads and key tokens (AMG), fine-tune with distillation, iterate; or apply a plan.
    Prune(PruneArgs),
    /// Pictures: head entropy, token importance, kept tokens, attention maps over an image.
    Viz(VizArgs),
    /// Evaluate Re-ID accuracy (CMC, mAP, mINP) on a dataset's query/gallery, or on feature files.
    Eval(EvalArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Output directory (replaced if it holds an earlier demo).
    #[arg(long, default_value = "amg-demo")]
    out: PathBuf,
    /// A much smaller run (for CI and a first look).
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct ImportArgs {
    /// Checkpoint format.
    #[arg(long = "from", value_enum)]
    from: SourceFormat,
    /// The checkpoint: .safetensors or a torch.save .pth (state dict bare or under state_dict/model).
    checkpoint: PathBuf,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Model input size HxW (multiples of 16); default: the checkpoint's. Position embeddings are
    /// resampled bicubically when the patch grid changes.
    #[arg(long, value_parser = parse_size_arg)]
    img_size: Option<(usize, usize)>,
    /// Heads per layer of the unpruned model (default: embed_dim / 64).
    #[arg(long)]
    heads: Option<usize>,
    /// The input size the checkpoint was trained at, if its patch grid is not square.
    #[arg(long, value_parser = parse_size_arg)]
    checkpoint_img_size: Option<(usize, usize)>,
    /// Replace --out if it exists and is not empty.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct EmbedArgs {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Image files and/or directories of images (JPEG, PNG).
    #[arg(long, num_args = 1.., required = true)]
    images: Vec<PathBuf>,
    /// Output .safetensors file: tensor `features` [N, F], metadata `names` (JSON list).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Skip images that cannot be decoded (and list them) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
}

#[derive(Args)]
struct SearchArgs {
    #[arg(long)]
    model: PathBuf,
    /// Gallery features written by `amg embed` with the same model.
    #[arg(long)]
    gallery: PathBuf,
    /// The query image.
    #[arg(long)]
    query: PathBuf,
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Print the matches as one JSON list.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InspectArgs {
    #[arg(long)]
    model: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Model directory to measure.
    #[arg(long, conflicts_with = "arch", required_unless_present_any = ["arch", "toy"])]
    model: Option<PathBuf>,
    /// Or an unpruned architecture with random weights: tiny, small, base.
    #[arg(long)]
    arch: Option<String>,
    /// Input size HxW for --arch (default 224x224).
    #[arg(long, value_parser = parse_size_arg, requires = "arch")]
    img_size: Option<(usize, usize)>,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Timed iterations (after 2 warm-up ones).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long)]
    json: bool,
    /// Measure training steps instead of inference (LA head with --classes identities).
    #[arg(long)]
    train: bool,
    /// With --train: the 6-block toy step of ../shared/peers/peer_train_toy.py.
    #[arg(long, requires = "train")]
    toy: bool,
    /// Identities of the LA head for --train.
    #[arg(long, default_value_t = 751)]
    classes: usize,
    /// Also measure the image loader on this dataset's training split (with augmentation) and
    /// gallery (without), at the model's input size.
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Args)]
struct TrainArgs {
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
    #[arg(long, value_parser = parse_size_arg, requires = "arch")]
    img_size: Option<(usize, usize)>,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Learning rate (default 5e-4). On --resume it keeps the run's unless given.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: amg::train::optim::OptimKind,
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    scheduler: amg::train::run::Scheduler,
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DistillKind {
    None,
    Soft,
    Hard,
}

#[derive(Args)]
struct DistillArgs {
    /// Distillation from the teacher: soft (KL at temperature τ) or hard (CE on its argmax).
    #[arg(long = "distill", value_enum, default_value = "none")]
    kind: DistillKind,
    /// Weight of the distillation term.
    #[arg(long, default_value_t = 0.2)]
    alpha: f64,
    /// Softmax temperature of soft distillation.
    #[arg(long, default_value_t = 1.0)]
    tau: f64,
}

impl DistillArgs {
    fn get(&self) -> amg::train::loss::Distill {
        match self.kind {
            DistillKind::None => amg::train::loss::Distill::None,
            DistillKind::Soft => amg::train::loss::Distill::Soft { alpha: self.alpha, tau: self.tau },
            DistillKind::Hard => amg::train::loss::Distill::Hard { alpha: self.alpha },
        }
    }
}

#[derive(Args)]
struct AnalyzeArgs {
    #[arg(long)]
    model: PathBuf,
    /// Dataset root; its training split (sorted by file name) is the calibration set.
    #[arg(long)]
    data: PathBuf,
    /// Output scores JSON.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Use only the first N calibration images.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Args)]
struct PruneArgs {
    #[arg(long)]
    model: PathBuf,
    /// Dataset root (calibration, fine-tuning, evaluation). Not needed with --plan.
    #[arg(long, required_unless_present = "plan")]
    data: Option<PathBuf>,
    /// Output model directory (with plan.json, scores/, report.md, report.json).
    #[arg(long)]
    out: PathBuf,
    /// Apply this plan ({"heads": [[…]…], "tokens": [[…]…]}) without fine-tuning.
    #[arg(long, conflicts_with_all = ["heads", "tokens", "criterion"])]
    plan: Option<PathBuf>,
    /// Fraction of all heads to remove.
    #[arg(long, default_value_t = 0.0)]
    heads: f64,
    /// Fraction of all key tokens to remove.
    #[arg(long, default_value_t = 0.0)]
    tokens: f64,
    #[arg(long, default_value_t = 1)]
    iters: usize,
    /// Fine-tuning epochs after each pruning iteration.
    #[arg(long, default_value_t = 0)]
    finetune_epochs: usize,
    /// Fine-tuning epochs at the end (StepLR: 3 epochs, γ 0.7).
    #[arg(long, default_value_t = 10)]
    final_epochs: usize,
    #[arg(long, value_enum)]
    criterion: Option<amg::prune::select::Criterion>,
    /// Frozen teacher for distillation (default with --distill: the unpruned --model).
    #[arg(long)]
    teacher: Option<PathBuf>,
    #[command(flatten)]
    distill: DistillArgs,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 1e-3)]
    weight_decay: f64,
    /// Calibration images (default: the whole training split).
    #[arg(long)]
    calib_limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct VizArgs {
    #[arg(long)]
    model: PathBuf,
    /// Scores from `amg analyze` (for the entropy and importance maps).
    #[arg(long)]
    scores: Option<PathBuf>,
    /// Output directory for the PNGs.
    #[arg(long)]
    out: PathBuf,
    /// An image to draw attention maps over.
    #[arg(long)]
    image: Option<PathBuf>,
}

#[derive(Args)]
struct SynthArgs {
    /// Output dataset root (Market-1501 layout).
    #[arg(long, required_unless_present = "preview")]
    out: Option<PathBuf>,
    /// Identities, half for training and half for testing.
    #[arg(long, default_value_t = 300)]
    ids: usize,
    #[arg(long, default_value_t = 6)]
    cams: usize,
    #[arg(long, default_value_t = 16)]
    images_per_id: usize,
    /// Occluded-Duke style: most queries and part of the gallery 20–50 % occluded.
    #[arg(long)]
    occluded: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image size HxW.
    #[arg(long, value_parser = parse_size_arg, default_value = "128x64")]
    size: (usize, usize),
    /// Write a contact sheet of samples to this PNG.
    #[arg(long)]
    preview: Option<PathBuf>,
    /// Replace --out if it exists and is not empty.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Model directory.
    #[arg(long, required_unless_present_any = ["features", "baseline"])]
    model: Option<PathBuf>,
    /// Dataset root (Market-1501, DukeMTMC-reID, Occluded-Duke or ImageFolder layout).
    #[arg(long, required_unless_present = "features")]
    data: Option<PathBuf>,
    /// Dataset layout (default: detected).
    #[arg(long, value_enum)]
    layout: Option<amg::data::Layout>,
    /// Evaluate features written by `amg embed` instead: QUERY.safetensors GALLERY.safetensors.
    #[arg(long, num_args = 2, value_names = ["QUERY", "GALLERY"], conflicts_with_all = ["model", "data", "baseline"])]
    features: Option<Vec<PathBuf>>,
    /// A model-free baseline instead of a model: `pixels` ranks raw 64x32 pixels by cosine similarity.
    #[arg(long, value_parser = ["pixels"], conflicts_with = "model")]
    baseline: Option<String>,
    /// Average each image's feature with its mirror image's.
    #[arg(long)]
    flip: bool,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_size_arg(s: &str) -> Result<(usize, usize), String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn load_model(dir: &PathBuf) -> Result<ModelFiles> {
    Ok(ModelFiles::load(dir)?)
}

fn run(cli: Cli) -> Result<()> {
    amg::alloc::tune();
    if let Some(t) = cli.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global().context("setting up the thread pool")?;
    }
    match cli.cmd {
        Cmd::Demo(a) => {
            let settings = amg::demo::DemoSettings::new(a.quick, a.seed);
            let mut log = |m: &str| eprintln!("{m}");
            let r = amg::demo::run(&a.out, &settings, &mut log)?;
            println!("{}", amg::demo::table(&r.rows));
            println!("report: {} (with accuracy_vs_macs.png) · took {:.0} s", a.out.join("report.md").display(), r.seconds);
        }
        Cmd::Import(a) => {
            let files = import(&ImportOptions {
                format: a.from,
                checkpoint: a.checkpoint.clone(),
                img_size: a.img_size,
                heads: a.heads,
                checkpoint_img_size: a.checkpoint_img_size,
            })?;
            files.save(&a.out, a.force)?;
            let c = &files.config;
            eprintln!(
                "imported {} ({}): {}x{} input, {} layers, {} heads kept of {}, {} key tokens kept of {} → {}",
                a.checkpoint.display(),
                a.from.name(),
                c.input.height,
                c.input.width,
                c.arch.depth,
                c.layers.iter().map(|l| l.heads.len()).sum::<usize>(),
                c.arch.depth * c.arch.num_heads,
                c.layers.iter().map(|l| l.tokens.len()).sum::<usize>(),
                c.arch.depth * c.num_tokens(),
                a.out.display()
            );
            for n in &c.source.notes {
                eprintln!("note: {n}");
            }
        }
        Cmd::Embed(a) => {
            let (files, non_images) = amg::preprocess::collect_images(&a.images)?;
            if files.is_empty() {
                bail!("no images found in {}", a.images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
            }
            if non_images > 0 {
                eprintln!("warning: skipped {non_images} non-image files");
            }
            if let Some(f) = files.iter().find(|f| std::fs::canonicalize(f).ok() == std::fs::canonicalize(&a.out).ok()) {
                bail!("--out {} is one of the input images; refusing to overwrite an input", f.display());
            }
            let engine = Engine::new(load_model(&a.model)?)?;
            let r = amg::embed::embed_files(&engine, &files, a.batch_size, a.skip_bad, true)?;
            for (p, why) in &r.skipped {
                eprintln!("skipped {}: {why}", p.display());
            }
            if r.names.is_empty() {
                bail!("no image could be read");
            }
            let meta = HashMap::from([("model".to_string(), a.model.display().to_string())]);
            amg::eval::features::write_features(&a.out, &r.names, &r.features, r.feature_dim, meta)?;
            eprintln!(
                "embedded {} images → {} [{} × {}] in {:.2}s ({:.1} img/s){}",
                r.names.len(),
                a.out.display(),
                r.names.len(),
                r.feature_dim,
                r.seconds,
                r.names.len() as f64 / r.seconds,
                if r.skipped.is_empty() { String::new() } else { format!(", {} skipped", r.skipped.len()) }
            );
        }
        Cmd::Search(a) => {
            let (names, gallery, dim) = amg::eval::features::read_features(&a.gallery)?;
            let engine = Engine::new(load_model(&a.model)?)?;
            if dim != engine.config().feature_dim() {
                bail!("{}: features have {dim} dimensions but the model gives {}: embed the gallery with this model", a.gallery.display(), engine.config().feature_dim());
            }
            let t = std::time::Instant::now();
            let input = amg::preprocess::load_input(&a.query, &engine.config().input, false)?;
            let out = engine.forward(&input, 1, &mut amg::engine::Workspace::default(), amg::engine::Want::default())?;
            let matches = amg::embed::search(&out.features, &gallery, &names, a.top);
            if a.json {
                println!("{}", serde_json::to_string(&matches)?);
            } else {
                for m in &matches {
                    println!("{:>3}  {:.4}  {}", m.rank, m.score, m.name);
                }
                eprintln!("{} gallery entries searched in {:.1} ms", names.len(), t.elapsed().as_secs_f64() * 1e3);
            }
        }
        Cmd::Inspect(a) => {
            let cfg = ModelConfig::load(&a.model.join(amg::model::dir::CONFIG_FILE))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&amg::report::inspect::inspection(&cfg))?);
            } else {
                print!("{}", amg::report::inspect::render(&cfg));
            }
        }
        Cmd::Bench(a) if a.train => {
            let r = if a.toy {
                amg::report::bench::bench_toy_step(a.iters, !a.json)?
            } else {
                let arch = Arch::preset(a.arch.as_deref().ok_or_else(|| anyhow::anyhow!("--train needs --arch tiny|small|base"))?)?;
                amg::report::bench::bench_la_step(arch, a.img_size.unwrap_or((224, 224)), a.batch_size, a.classes, a.iters, !a.json)?
            };
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "train step, {} batch {}: {:.1} ms/step ({:.1} ms forward), {:.2} steps/s, {:.1} img/s (median of {})",
                    r.what, r.batch_size, r.ms_per_step, r.forward_ms, r.steps_per_s, r.img_per_s, r.iters
                );
            }
        }
        Cmd::Bench(a) => {
            let (files, label) = match (&a.model, &a.arch) {
                (Some(dir), _) => (load_model(dir)?, dir.display().to_string()),
                (None, Some(arch)) => {
                    let (h, w) = a.img_size.unwrap_or((224, 224));
                    let cfg = ModelConfig::new(Arch::preset(arch)?, h, w, HeadConfig::none(), Source { format: "random".into(), ..Default::default() })?;
                    let tensors = amg::model::weights::init_random(&cfg, 0);
                    (ModelFiles { config: cfg, tensors }, format!("ViT-{arch} (random weights)"))
                }
                _ => unreachable!("clap requires --model or --arch"),
            };
            let (h, w) = (files.config.input.height, files.config.input.width);
            let macs = amg::model::cost::model_cost(&files.config).macs;
            let loader = match &a.data {
                Some(root) => {
                    let data = amg::data::Dataset::open(root, None)?;
                    let spec = files.config.input.clone();
                    let paths = |s: &[amg::data::Sample]| s.iter().map(|x| x.path.clone()).collect::<Vec<_>>();
                    let train = amg::report::bench::bench_loader(&paths(&data.train), &spec, Some(amg::data::loader::Augment::reid_default()), a.batch_size, 2000)?;
                    let test = amg::report::bench::bench_loader(&paths(&data.gallery), &spec, None, a.batch_size, 2000)?;
                    Some((train, test))
                }
                None => None,
            };
            let engine = Engine::new(files)?;
            let r = amg::report::bench::bench_inference(&engine, a.batch_size, a.iters, !a.json)?;
            if a.json {
                let mut v = serde_json::to_value(&r)?;
                v["model"] = label.into();
                v["input"] = format!("{h}x{w}").into();
                v["gmacs_per_image"] = (macs as f64 / 1e9).into();
                if let Some((train, test)) = loader {
                    v["loader_train_img_per_s"] = train.into();
                    v["loader_test_img_per_s"] = test.into();
                }
                println!("{v}");
            } else {
                if let Some((train, test)) = loader {
                    println!("loader: {train:.0} img/s with training augmentation, {test:.0} img/s without (decode + resize + normalise, {} threads)", rayon::current_num_threads());
                }
                println!(
                    "{label} {h}x{w} batch {}: {:.1} ms/batch, {:.2} img/s ({:.0} GFLOP/s, {} threads, median of {})",
                    r.batch_size,
                    r.ms_per_batch,
                    r.img_per_s,
                    2.0 * macs as f64 * r.img_per_s / 1e9,
                    r.threads,
                    r.iters
                );
            }
        }
        Cmd::Train(a) => {
            use amg::train::run::{train, Init, TrainOptions};
            let data = amg::data::Dataset::open(&a.data, None)?;
            eprint!("{}", data.summary());
            let distill = a.distill.get();
            if distill != amg::train::loss::Distill::None && a.teacher.is_none() && !a.resume {
                bail!("--distill {} needs --teacher MODEL_DIR", if a.distill.kind == DistillKind::Soft { "soft" } else { "hard" });
            }
            let options = TrainOptions {
                epochs: a.epochs,
                batch_size: a.batch_size,
                lr: a.lr.unwrap_or(5e-4),
                optim: amg::train::optim::OptimConfig::new(a.optimizer, a.weight_decay),
                scheduler: a.scheduler,
                step_size: a.step_size,
                gamma: a.gamma,
                warmup_epochs: a.warmup_epochs,
                label_smoothing: a.label_smoothing,
                distill,
                dropout: a.dropout,
                augment: if a.no_augment { None } else { Some(amg::data::loader::Augment::reid_default()) },
                seed: a.seed,
                eval_every: a.eval_every,
            };
            let init = if a.resume {
                Init::Resume
            } else if let Some(dir) = &a.init {
                Init::Model(load_model(dir)?)
            } else if let Some(arch) = &a.arch {
                let (h, w) = a.img_size.unwrap_or((224, 224));
                Init::Random(ModelConfig::new(Arch::preset(arch)?, h, w, HeadConfig::la(data.num_classes), Source { format: "init".into(), ..Default::default() })?)
            } else {
                bail!("give --init MODEL_DIR, --arch tiny|small|base, or --resume");
            };
            let teacher = match &a.teacher {
                Some(t) => Some((load_model(t)?, t.display().to_string())),
                None if a.resume => None,
                None => None,
            };
            let mut log = |m: &str| eprintln!("{m}");
            let overrides = amg::train::run::ResumeOverrides { epochs: Some(a.epochs), lr: a.lr };
            let s = train(&data, &a.out, init, Some(options), overrides, teacher, a.force, true, &mut log)?;
            if let Some((score, epoch)) = s.best {
                eprintln!("done: {} epochs; best {:.4} at epoch {epoch} → {}", s.epochs_done, score, a.out.join("best").display());
            }
        }
        Cmd::Analyze(a) => {
            let files = load_model(&a.model)?;
            let data = amg::data::Dataset::open(&a.data, None)?;
            eprint!("{}", data.summary());
            let s = amg::prune::analyze::analyze(&files, &data, &amg::prune::analyze::AnalyzeOptions { batch_size: a.batch_size, limit: a.limit, progress: true })?;
            amg::fsutil::write_bytes_atomic(&a.out, serde_json::to_string_pretty(&s)?.as_bytes())?;
            eprintln!("scores of {} heads and {} key tokens over {} images → {}", s.head_entropy.iter().map(|l| l.len()).sum::<usize>(), s.token_importance.iter().flatten().flatten().count(), s.images, a.out.display());
        }
        Cmd::Prune(a) => {
            let files = load_model(&a.model)?;
            if let Some(plan) = &a.plan {
                let plan = amg::model::surgery::Plan::load(plan)?;
                let pruned = amg::prune::prune_with_plan(&files, &plan, &a.out, a.force)?;
                let (b, p) = (amg::model::cost::model_cost(&files.config), amg::model::cost::model_cost(&pruned.config));
                eprintln!(
                    "applied the plan → {}: MACs {} → {} ({:+.1} %), params {} → {}",
                    a.out.display(),
                    amg::report::human(b.macs),
                    amg::report::human(p.macs),
                    100.0 * (p.macs as f64 / b.macs as f64 - 1.0),
                    amg::report::human(b.params),
                    amg::report::human(p.params)
                );
                return Ok(());
            }
            let data = amg::data::Dataset::open(a.data.as_ref().expect("clap requires --data"), None)?;
            eprint!("{}", data.summary());
            let distill = a.distill.get();
            if a.teacher.is_some() && a.distill.kind == DistillKind::None {
                bail!("--teacher is used for distillation: add --distill soft (or hard)");
            }
            let o = amg::prune::PruneOptions {
                heads: a.heads,
                tokens: a.tokens,
                iters: a.iters,
                finetune_epochs: a.finetune_epochs,
                final_epochs: a.final_epochs,
                criterion: a.criterion.unwrap_or(amg::prune::select::Criterion::Amg),
                seed: a.seed,
                distill,
                batch_size: a.batch_size,
                lr: a.lr,
                weight_decay: a.weight_decay,
                calib_limit: a.calib_limit,
                quick_report: false,
            };
            let teacher = match &a.teacher {
                Some(t) => Some(load_model(t)?),
                None => None,
            };
            let mut log = |m: &str| eprintln!("{m}");
            let (_, r) = amg::report::prune::prune_and_report(files, teacher, &data, &o, &a.out, a.force, &mut log)?;
            eprint!("{}", amg::report::prune::markdown(&r, &o));
        }
        Cmd::Viz(a) => {
            let files = load_model(&a.model)?;
            let scores = match &a.scores {
                Some(p) => Some(amg::prune::analyze::Scores::load(p)?),
                None => None,
            };
            let out = amg::report::viz::render(&files, scores.as_ref(), a.image.as_deref(), &a.out)?;
            for f in out.files {
                eprintln!("wrote {}", f.display());
            }
        }
        Cmd::Synth(a) => {
            let opts = amg::synth::SynthOptions { ids: a.ids, cams: a.cams, images_per_id: a.images_per_id, occluded: a.occluded, seed: a.seed, size: a.size };
            if let Some(p) = &a.preview {
                amg::synth::preview(&opts, p)?;
                eprintln!("contact sheet → {}", p.display());
            }
            if let Some(out) = &a.out {
                let t = std::time::Instant::now();
                let s = amg::synth::generate(&opts, out, a.force, true)?;
                eprintln!(
                    "synthetic benchmark → {} in {:.1}s: {} train images of {} ids; {} queries ({} occluded), {} gallery ({} occluded, {} distractors, {} junk) of {} ids",
                    out.display(),
                    t.elapsed().as_secs_f64(),
                    s.train_images,
                    s.train_ids,
                    s.query_images,
                    s.occluded_query,
                    s.gallery_images,
                    s.occluded_gallery,
                    s.distractors,
                    s.junk,
                    s.test_ids
                );
                eprint!("{}", amg::data::Dataset::open(out, None)?.summary());
            }
        }
        Cmd::Eval(a) => {
            let opts = amg::eval::EvalOptions { batch_size: a.batch_size, flip: a.flip, progress: true };
            let m = if let Some(f) = &a.features {
                amg::eval::eval_feature_files(&f[0], &f[1])?
            } else {
                let root = a.data.as_ref().expect("clap requires --data");
                let data = amg::data::Dataset::open(root, a.layout)?;
                eprint!("{}", data.summary());
                if data.skipped_files > 0 {
                    eprintln!("warning: skipped {} non-image files", data.skipped_files);
                }
                match (&a.model, &a.baseline) {
                    (Some(dir), _) => {
                        let engine = Engine::new(load_model(dir)?)?;
                        amg::eval::eval_model(&engine, &data, &opts)?
                    }
                    (None, Some(_)) => amg::eval::eval_pixels(&data, (64, 32), &opts)?,
                    _ => unreachable!("clap requires --model or --baseline"),
                }
            };
            if a.json {
                println!("{}", m.summary_json());
            } else {
                print!("{}", m.table());
            }
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

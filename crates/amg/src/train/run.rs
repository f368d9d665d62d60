//! `amg train`: training and fine-tuning (LA-Transformer, or TransReID-style with its ID + triplet
//! loss), with distillation, evaluation, and checkpoints that survive being killed at any moment.
//!
//! A run directory holds `last/` and `best/` (model directories; `last/` also carries the optimiser
//! moments and `train_state.json`) and `metrics.jsonl` (one line per finished epoch). Each of them
//! is written under a temporary name, fsynced and renamed, so whatever instant the process dies,
//! the previous checkpoint is intact; `--resume` continues from `last/` with the optimiser, the
//! schedule and the data order of the next epoch exactly as an uninterrupted run would have had.

use super::loss::{model_loss, Distill, LossConfig, Triplet};
use super::optim::{OptimConfig, Optimizer, Slot};
use crate::data::loader::{for_each_batch, Augment, LoaderOptions};
use crate::data::Dataset;
use crate::engine::{Engine, Input, Want, Workspace};
use crate::error::{Error, Result};
use crate::eval::{eval_model, EvalOptions};
use crate::fsutil;
use crate::model::config::{Arch, Jpm, NeckFeat, Sie, Source};
use crate::model::vit::{Mode, Vit};
use crate::model::weights::init_random;
use crate::model::{HeadConfig, HeadKind, ModelConfig, ModelFiles};
use crate::rng::Rng;
use crate::tensor::{write_safetensors, HostTensor, SafetensorsFile, TensorMap};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

crate::choice! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Scheduler {
        /// Multiply the learning rate by `gamma` every `step_size` epochs (StepLR).
        Step = "step" => "multiply the learning rate by gamma every step size of epochs (StepLR)",
        /// Cosine decay to zero over the run.
        Cosine = "cosine" => "cosine decay to zero over the run",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optim: OptimConfig,
    pub scheduler: Scheduler,
    pub step_size: usize,
    pub gamma: f64,
    pub warmup_epochs: f64,
    pub label_smoothing: f64,
    pub distill: Distill,
    pub dropout: f32,
    pub augment: Option<Augment>,
    pub seed: u64,
    /// Evaluate on query/gallery every N epochs (0: never; the last epoch is always evaluated if N > 0).
    pub eval_every: usize,
    /// TransReID's triplet loss next to the ID loss (BNNeck heads; `--loss ce,triplet`).
    #[serde(default)]
    pub triplet: Option<Triplet>,
    /// Images per identity in a batch (the P×K sampler, `--instances`); 0: a plain shuffle.
    #[serde(default)]
    pub instances: usize,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub ce: f64,
    pub distill: f64,
    #[serde(default)]
    pub triplet: f64,
    pub accuracy: f64,
    pub img_per_s: f64,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank1: Option<f64>,
    #[serde(rename = "mAP", skip_serializing_if = "Option::is_none")]
    pub map: Option<f64>,
    #[serde(rename = "mINP", skip_serializing_if = "Option::is_none")]
    pub minp: Option<f64>,
}

/// What `last/train_state.json` holds besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub options: TrainOptions,
    pub epochs_done: usize,
    pub optimizer_step: u64,
    /// The best score so far (mAP when evaluated, else training accuracy) and its epoch.
    pub best: Option<(f64, usize)>,
    pub history: Vec<EpochRecord>,
    pub data_root: String,
    pub teacher: Option<String>,
}

pub const STATE_FILE: &str = "train_state.json";
pub const OPTIM_FILE: &str = "optimizer.safetensors";

/// The learning rate at a fractional epoch position `t` (epochs done + fraction of this one).
pub fn learning_rate(o: &TrainOptions, epoch: usize, frac: f64) -> f64 {
    let t = epoch as f64 + frac;
    if o.warmup_epochs > 0.0 && t < o.warmup_epochs {
        return o.lr * (t + 1e-3).min(o.warmup_epochs) / o.warmup_epochs;
    }
    match o.scheduler {
        Scheduler::Step => o.lr * o.gamma.powi((epoch / o.step_size.max(1)) as i32),
        Scheduler::Cosine => {
            let span = (o.epochs as f64 - o.warmup_epochs).max(1e-9);
            let p = ((t - o.warmup_epochs) / span).clamp(0.0, 1.0);
            0.5 * o.lr * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }
}

/// The order in which epoch `epoch` visits the training set: a shuffle seeded by (seed, epoch), so
/// an interrupted run resumes with the same data order as an uninterrupted one.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ 0xDA7A).fork(epoch as u64).shuffle(&mut order);
    order
}

fn save_optimizer(path: &Path, opt: &Optimizer, shapes: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    let mut t = TensorMap::new();
    for (name, slot) in &opt.slots {
        let shape = shapes.get(name).cloned().unwrap_or_else(|| vec![slot.m.len()]);
        if !slot.m.is_empty() {
            t.insert(format!("m.{name}"), HostTensor::new(shape.clone(), slot.m.clone()));
        }
        if !slot.v.is_empty() {
            t.insert(format!("v.{name}"), HostTensor::new(shape, slot.v.clone()));
        }
    }
    write_safetensors(path, &t, None)
}

fn load_optimizer(path: &Path, cfg: OptimConfig, step: u64) -> Result<Optimizer> {
    let mut opt = Optimizer::new(cfg);
    opt.step = step;
    for (name, t) in SafetensorsFile::open(path)?.all_f32()? {
        let (which, pname) = name.split_once('.').ok_or_else(|| Error::tensor(path, &name, "expected m.<param> or v.<param>"))?;
        let slot: &mut Slot = opt.slots.entry(pname.to_string()).or_default();
        match which {
            "m" => slot.m = t.data,
            "v" => slot.v = t.data,
            _ => return Err(Error::tensor(path, &name, "expected m.<param> or v.<param>")),
        }
    }
    Ok(opt)
}

/// A resumed optimiser's state must belong to the model: every slot names a parameter and holds
/// one value per element (both moments for Adam), or resuming would silently reset or truncate it.
fn check_optimizer(opt: &Optimizer, files: &ModelFiles, path: &Path) -> Result<()> {
    let sizes: std::collections::HashMap<String, usize> = files.params().entries().into_iter().map(|(k, t)| (k.to_string(), t.numel())).collect();
    for (name, slot) in &opt.slots {
        let n = *sizes.get(name).ok_or_else(|| Error::tensor(path, format!("m.{name}"), "state for a parameter the model does not have"))?;
        let need_v = opt.cfg.kind != crate::train::optim::OptimKind::Sgd;
        for (which, v, needed) in [("m", &slot.m, true), ("v", &slot.v, need_v)] {
            if (needed || !v.is_empty()) && v.len() != n {
                return Err(Error::tensor(path, format!("{which}.{name}"), format!("{} values, the parameter has {n}", v.len())));
            }
        }
    }
    Ok(())
}

/// Writes `dir` (a checkpoint) atomically: the model, and optionally the optimiser and state.
fn write_checkpoint(dir: &Path, model: &ModelFiles, extra: Option<(&Optimizer, &TrainState)>) -> Result<()> {
    model.config().validate()?;
    fsutil::write_dir_atomic(dir, true, |tmp| {
        model.write_into(tmp)?;
        if let Some((opt, state)) = extra {
            let shapes = model.params().entries().into_iter().map(|(k, v)| (k.to_string(), v.shape.clone())).collect();
            save_optimizer(&tmp.join(OPTIM_FILE), opt, &shapes)?;
            fsutil::write_bytes_atomic(&tmp.join(STATE_FILE), serde_json::to_string_pretty(state).expect("state serialises").as_bytes())?;
        }
        Ok(())
    })
}

fn write_metrics(run: &Path, history: &[EpochRecord]) -> Result<()> {
    let text: String = history.iter().map(|r| serde_json::to_string(r).expect("record serialises") + "\n").collect();
    fsutil::write_bytes_atomic(&run.join("metrics.jsonl"), text.as_bytes())
}

/// Puts back a `last/` that a kill left half-renamed, and removes temporary leftovers.
fn recover(run: &Path) -> Result<()> {
    let entries: Vec<PathBuf> = match std::fs::read_dir(run) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Ok(()),
    };
    for p in entries {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for ckpt in ["last", "best"] {
            if name.starts_with(&format!(".{ckpt}.old-")) {
                if run.join(ckpt).exists() {
                    let _ = std::fs::remove_dir_all(&p);
                } else {
                    std::fs::rename(&p, run.join(ckpt)).map_err(|e| Error::io(&p, e))?;
                }
            } else if name.starts_with(&format!(".{ckpt}.tmp-")) {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
        if name.starts_with(".metrics.jsonl.tmp-") {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(())
}

/// A model to train from scratch: a preset architecture at an input size, with an LA head or
/// TransReID's BNNeck and, for TransReID, its overlapping patches, camera embedding and jigsaw
/// branch. The identity count and the cameras come from the training data.
#[derive(Debug, Clone)]
pub struct FromScratch {
    pub arch: Arch,
    /// Input height and width.
    pub input: (usize, usize),
    /// `Some` for TransReID's BNNeck head (with the feature it retrieves by), `None` for LA.
    pub bnneck: Option<NeckFeat>,
    /// Patch stride when the patches overlap (TransReID: `Arch::TRANSREID_STRIDE`).
    pub stride: Option<usize>,
    /// A side information embedding over the data's cameras, with this coefficient
    /// (TransReID: `Sie::TRANSREID_COEFFICIENT`).
    pub sie: Option<f32>,
    /// TransReID's jigsaw patch module (`Jpm::transreid()`); needs the BNNeck head.
    pub jpm: bool,
}

impl FromScratch {
    /// The LA-Transformer model of the paper: a preset with LA's part classifiers.
    pub fn la(arch: Arch, input: (usize, usize)) -> Self {
        FromScratch { arch, input, bnneck: None, stride: None, sie: None, jpm: false }
    }

    /// TransReID as its released configurations have it: stride-12 patches, SIE over the cameras,
    /// JPM, BNNeck retrieving the feature before the BatchNorm.
    pub fn transreid(arch: Arch, input: (usize, usize)) -> Self {
        FromScratch { arch, input, bnneck: Some(NeckFeat::Before), stride: Some(Arch::TRANSREID_STRIDE), sie: Some(Sie::TRANSREID_COEFFICIENT), jpm: true }
    }

    /// The configuration for training on `data` (its identities, and its cameras for SIE).
    pub fn config(self, data: &Dataset) -> Result<ModelConfig> {
        let mut arch = self.arch;
        if self.jpm && self.bnneck.is_none() {
            return Err(Error::invalid("the jigsaw patch module (JPM) goes with a BNNeck head (TransReID)"));
        }
        arch.patch_stride = self.stride.filter(|&s| s != arch.patch_size);
        // Cameras as the dataset's file names number them (c1 is index 0).
        arch.sie = self.sie.map(|coefficient| Sie::per_camera(data.num_cameras(), coefficient));
        arch.jpm = self.jpm.then(Jpm::transreid);
        let head = match self.bnneck {
            Some(neck_feat) => HeadConfig::bnneck(data.num_classes, neck_feat),
            None => HeadConfig::la(data.num_classes),
        };
        let (h, w) = self.input;
        ModelConfig::new(arch, h, w, head, Source { format: "init".into(), ..Default::default() })
    }
}

/// What a run starts from. (Made once per run, so the variants' sizes do not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Start {
    /// A model directory (its classifiers are replaced when the identity count differs).
    Model(ModelFiles, TrainOptions),
    /// Random weights for a configuration (timm-style initialisation).
    Random(crate::model::ModelConfig, TrainOptions),
    /// The run already in the output directory, continued from `last/`.
    Resume(ResumeOverrides),
}

/// What a resumed run may change: its length, and its learning rate.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResumeOverrides {
    pub epochs: Option<usize>,
    pub lr: Option<f64>,
}

/// A training run to do.
pub struct TrainRequest<'a> {
    pub data: &'a Dataset,
    /// The run directory: `last/`, `best/`, `metrics.jsonl`.
    pub run: &'a Path,
    pub start: Start,
    /// A frozen teacher for distillation, with a name for messages. A resumed run distils from the
    /// teacher it started with unless another is given.
    pub teacher: Option<(ModelFiles, String)>,
    /// Start over even if `run` already holds a run.
    pub force: bool,
    /// Show progress bars.
    pub progress: bool,
}

pub struct TrainSummary {
    pub epochs_done: usize,
    pub history: Vec<EpochRecord>,
    pub best: Option<(f64, usize)>,
    /// What `best` measures: "mAP" when the run evaluates, else "training accuracy".
    pub best_by: &'static str,
}

/// Replaces the classifiers with freshly initialised ones for `classes` identities: new BNNecks
/// for a BNNeck head, new LA classifiers otherwise.
fn with_new_classifiers(files: ModelFiles, classes: usize, seed: u64) -> Result<ModelFiles> {
    let (mut config, mut params) = files.into_parts();
    if config.head.kind == HeadKind::Bnneck {
        config.head.num_classes = classes;
        params.necks = init_random(&config, seed).necks;
        config.source.notes.push(format!("new BNNecks and ID classifiers for {classes} identities"));
    } else {
        let bottleneck = if config.head.kind == HeadKind::La { config.head.bottleneck } else { 256 };
        config.head = HeadConfig { bottleneck, ..HeadConfig::la(classes) };
        params.parts = init_random(&config, seed).parts;
        config.source.notes.push(format!("new LA classifiers for {classes} identities"));
    }
    ModelFiles::new(config, params)
}

/// Trains on `req.data`'s training split, writing checkpoints under `req.run`.
pub fn train(req: TrainRequest, log: &mut dyn FnMut(&str)) -> Result<TrainSummary> {
    let data = req.data;
    let (files, mut opt, mut state, teacher) = begin(req.start, req.run, data, req.teacher, req.force, log)?;
    let o = state.options.clone();
    let teacher = teacher_engine(&o, teacher, &files, data)?;
    let mut model = Vit::new(&files, &Device::Cpu)?;
    let trainable = model.trainable();
    let mut epochs = EpochRunner { data, o: &o, teacher: teacher.as_ref(), ws: Workspace::default(), progress: req.progress };
    for epoch in state.epochs_done..o.epochs {
        let mut rec = epochs.run(epoch, &mut model, &trainable, &mut opt, req.run)?;
        let current = model.to_files()?;
        if o.eval_every > 0 && ((epoch + 1) % o.eval_every == 0 || epoch + 1 == o.epochs) {
            let m = eval_model(&Engine::new(current.clone())?, data, &EvalOptions { batch_size: 64, flip: false, progress: req.progress })?;
            (rec.rank1, rec.map, rec.minp) = (Some(m.rank(1)), Some(m.map), Some(m.minp));
        }
        log(&epoch_line(&rec, o.epochs));
        // Best by mAP when the run evaluates, else (as LA-Transformer does) by training accuracy.
        let score = if o.eval_every > 0 { rec.map } else { Some(rec.accuracy) };
        state.history.push(rec);
        state.epochs_done = epoch + 1;
        state.optimizer_step = opt.step;
        let improved = match (score, state.best) {
            (Some(s), Some((b, _))) => s > b,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if let (true, Some(s)) = (improved, score) {
            state.best = Some((s, epoch + 1));
        }
        save_epoch(req.run, &current, &opt, &state, improved)?;
    }
    if state.epochs_done >= o.epochs {
        write_metrics(req.run, &state.history)?;
    }
    let best_by = if o.eval_every > 0 { "mAP" } else { "training accuracy" };
    Ok(TrainSummary { epochs_done: state.epochs_done, history: state.history, best: state.best, best_by })
}

/// Checks, before any work, that a new run may use `run`: absent or empty, or `force`.
pub fn check_new_run_dir(run: &Path, force: bool) -> Result<()> {
    if run.is_file() {
        return Err(Error::file(run, "exists and is a file; the run directory must be a directory"));
    }
    if run.join("last").exists() && !force {
        return Err(Error::file(run, "already holds a run (last/): give `resume` to continue it or `force` to start over"));
    }
    if !force && !fsutil::is_absent_or_empty(run)? {
        return Err(Error::file(run, "exists and is not empty (and holds no training run): choose another `out` or give `force`"));
    }
    Ok(())
}

/// Checks a new run's options before any work: distillation needs a teacher, BatchNorm a batch.
pub fn check_options(o: &TrainOptions, has_teacher: bool) -> Result<()> {
    if o.distill != Distill::None && !has_teacher {
        return Err(Error::invalid(format!("`distill` {} needs a `teacher` model", o.distill.name())));
    }
    if o.batch_size < 2 {
        return Err(Error::invalid("`batch_size` must be at least 2 (BatchNorm in training mode needs a batch)"));
    }
    if o.triplet.is_some() && o.instances < 2 {
        return Err(Error::invalid("`loss` ce,triplet needs positives in every batch: give `instances` K (≥ 2 images per identity; TransReID uses 4)"));
    }
    if o.instances > 0 && (!o.batch_size.is_multiple_of(o.instances) || o.batch_size < 2 * o.instances) {
        return Err(Error::invalid(format!(
            "`instances` {}: `batch_size` {} must be a multiple of it holding at least 2 identities",
            o.instances, o.batch_size
        )));
    }
    Ok(())
}

/// The model, optimiser and state a run starts from: a new run's, or the saved ones of the run
/// being resumed; and the teacher (a resumed run's own unless another was given).
#[allow(clippy::type_complexity)]
fn begin(
    start: Start,
    run: &Path,
    data: &Dataset,
    teacher: Option<(ModelFiles, String)>,
    force: bool,
    log: &mut dyn FnMut(&str),
) -> Result<(ModelFiles, Optimizer, TrainState, Option<(ModelFiles, String)>)> {
    let (files, opt, state) = match start {
        Start::Resume(overrides) => {
            recover(run)?;
            let last = run.join("last");
            let state_path = last.join(STATE_FILE);
            if !state_path.is_file() {
                return Err(Error::file(run, "nothing to resume: no last/train_state.json (start a run without `resume` first)"));
            }
            let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
            let mut state: TrainState = serde_json::from_str(&text).map_err(|e| Error::file(&state_path, format!("invalid training state: {e}")))?;
            state.options.epochs = overrides.epochs.unwrap_or(state.options.epochs);
            state.options.lr = overrides.lr.unwrap_or(state.options.lr);
            check_options(&state.options, teacher.is_some()).map_err(|e| Error::file(&state_path, e.to_string()))?;
            let files = ModelFiles::load(&last)?;
            let opt = load_optimizer(&last.join(OPTIM_FILE), state.options.optim, state.optimizer_step)?;
            check_optimizer(&opt, &files, &last.join(OPTIM_FILE))?;
            log(&format!("resuming {} after epoch {}", run.display(), state.epochs_done));
            (files, opt, state)
        }
        Start::Model(_, ref o) | Start::Random(_, ref o) => {
            check_options(o, teacher.is_some())?;
            check_new_run_dir(run, force)?;
            let (files, o) = match start {
                Start::Model(f, o) => (f, o),
                Start::Random(cfg, o) => {
                    let params = init_random(&cfg, o.seed);
                    (ModelFiles::new(cfg, params)?, o)
                }
                Start::Resume(_) => unreachable!("matched above"),
            };
            let files = if files.config().head.kind == HeadKind::None || files.config().head.num_classes != data.num_classes {
                with_new_classifiers(files, data.num_classes, o.seed ^ 0xC1A5)?
            } else {
                files
            };
            let mut files = files;
            let from = files.source_mut().clone();
            files.source_mut().format = "amg-train".into();
            files.source_mut().notes.push(format!(
                "trained by amg from {} on {}",
                if from.format == "init" { "random initialisation".to_string() } else { format!("`{}`", from.describe()) },
                data.root.display()
            ));
            std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
            let state = TrainState {
                options: o.clone(),
                epochs_done: 0,
                optimizer_step: 0,
                best: None,
                history: Vec::new(),
                data_root: data.root.display().to_string(),
                teacher: teacher.as_ref().map(|t| t.1.clone()),
            };
            (files, Optimizer::new(o.optim), state)
        }
    };
    let teacher = match (teacher, &state.teacher) {
        (Some(t), _) => Some(t),
        (None, Some(path)) if state.options.distill != Distill::None => Some((ModelFiles::load(Path::new(path))?, path.clone())),
        _ => None,
    };
    if files.config().head.num_classes != data.num_classes {
        return Err(Error::invalid(format!(
            "the model classifies {} identities but the training split has {}",
            files.config().head.num_classes,
            data.num_classes
        )));
    }
    check_options(&state.options, teacher.is_some())?;
    Ok((files, opt, state, teacher))
}

/// The frozen teacher's inference engine, when the run distils.
fn teacher_engine(o: &TrainOptions, teacher: Option<(ModelFiles, String)>, student: &ModelFiles, data: &Dataset) -> Result<Option<Engine>> {
    match (&o.distill, teacher) {
        (Distill::None, _) => Ok(None),
        (_, None) => Err(Error::invalid("distillation needs a `teacher` model")),
        (_, Some((t, name))) => {
            let same_head = t.config().head.kind == student.config().head.kind && t.config().num_necks() == student.config().num_necks();
            if !same_head || t.config().head.num_classes != data.num_classes || t.config().input != student.config().input {
                return Err(Error::invalid(format!(
                    "teacher {name}: needs the student's kind of head ({}) over the same {} identities and the same input",
                    student.config().describe_head(),
                    data.num_classes
                )));
            }
            Ok(Some(Engine::new(t)?))
        }
    }
}

/// Runs the epochs of one run: loader, forward, loss, backward, optimiser step.
struct EpochRunner<'a> {
    data: &'a Dataset,
    o: &'a TrainOptions,
    teacher: Option<&'a Engine>,
    /// The teacher's buffers.
    ws: Workspace,
    progress: bool,
}

impl EpochRunner<'_> {
    /// One epoch over the training split in the order `epoch_order` gives.
    fn run(&mut self, epoch: usize, model: &mut Vit, trainable: &BTreeMap<String, candle_core::Var>, opt: &mut Optimizer, run: &Path) -> Result<EpochRecord> {
        let (o, data, dev) = (self.o, self.data, Device::Cpu);
        let t0 = std::time::Instant::now();
        let paths: Vec<PathBuf> = data.train.iter().map(|s| s.path.clone()).collect();
        let labels: Vec<u32> = data.train.iter().map(|s| s.label as u32).collect();
        let spec = model.cfg.input.clone();
        let loss_cfg = LossConfig { label_smoothing: o.label_smoothing, distill: o.distill, triplet: o.triplet };
        let order = if o.instances > 0 {
            let ids: Vec<usize> = data.train.iter().map(|s| s.label).collect();
            crate::data::sampler::identity_order(&ids, o.instances, o.batch_size, o.seed, epoch)?
        } else {
            epoch_order(paths.len(), o.seed, epoch)
        };
        let steps_per_epoch = (order.len() / o.batch_size + usize::from(order.len() % o.batch_size >= 2)).max(1);
        let cameras = crate::data::cameras::cameras_for(&model.cfg, &paths, &crate::data::cameras::SideInfo::FROM_NAMES)?;
        let head = model.cfg.head.kind;
        let lopts = LoaderOptions { batch_size: o.batch_size, augment: o.augment, seed: o.seed, epoch: epoch as u64, ..LoaderOptions::inference(o.batch_size) };
        let pb = crate::progress::bar(order.len() as u64, &format!("epoch {}/{}", epoch + 1, o.epochs), "img", self.progress);
        let mut dropout_rng = Rng::new(o.seed ^ 0xD50).fork(epoch as u64);
        let (mut seen, mut correct, mut loss_sum, mut ce_sum, mut kd_sum, mut tri_sum, mut batches) = (0usize, 0usize, 0.0, 0.0, 0.0, 0.0, 0usize);
        let mut lr = o.lr;
        for_each_batch(&paths, &order, &spec, &lopts, |batch| {
            let b = batch.len();
            if b < 2 {
                return Ok(()); // a last batch of one cannot be batch-normalised
            }
            lr = learning_rate(o, epoch, batches as f64 / steps_per_epoch as f64);
            let x = Tensor::from_slice(&batch.inputs, (b, 3, spec.height, spec.width), &dev)?;
            let y: Vec<u32> = batch.indices.iter().map(|&i| labels[i]).collect();
            let yt = Tensor::from_vec(y.clone(), b, &dev)?;
            let cams = crate::data::cameras::batch_cameras(cameras.as_deref(), &batch.indices, 1);
            let teacher_logits = match self.teacher {
                Some(e) => {
                    let input = Input { images: &batch.inputs, cameras: cams.as_deref(), batch: b };
                    let out = e.run(input, &mut self.ws, Want { tokens: false, logits: true }, None)?;
                    let logits = out.logits.ok_or_else(|| Error::invalid("the teacher returned no logits"))?;
                    Some(logits.into_iter().map(|l| Tensor::from_vec(l, (b, data.num_classes), &dev)).collect::<candle_core::Result<Vec<_>>>()?)
                }
                None => None,
            };
            // Forward, backward and update on one of the pool's threads (see `kernels::in_pool`).
            let (out, loss, value) = crate::kernels::in_pool(|| -> Result<_> {
                let out = model.forward(&x, Mode { train: true, dropout: o.dropout, rng: Some(&mut dropout_rng), gates: None, cameras: cams.as_deref() })?;
                let loss = model_loss(head, &out, &yt, teacher_logits.as_deref(), &loss_cfg)?;
                let value = loss.total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !value.is_finite() {
                    return Err(Error::invalid(format!(
                        "the loss became {value} at epoch {}, batch {}: training stopped; the last good checkpoint is {} (try a lower `lr`)",
                        epoch + 1,
                        batches + 1,
                        run.join("last").display()
                    )));
                }
                let grads = model.backward(&loss.total)?;
                opt.step(trainable, &grads, lr)?;
                Ok((out, loss, value))
            })?;
            correct += correct_predictions(&out.logits, &y)?;
            seen += b;
            loss_sum += value;
            ce_sum += loss.ce;
            kd_sum += loss.distill;
            tri_sum += loss.triplet;
            batches += 1;
            pb.inc(b as u64 + batch.failed.len() as u64);
            // The bar's ETA covers this epoch; the message adds the whole run's, from this epoch's pace.
            let done = pb.position() as f64 / order.len().max(1) as f64;
            let per_epoch = t0.elapsed().as_secs_f64() / done.max(1e-9);
            let run_left = per_epoch * (1.0 - done) + per_epoch * (o.epochs - epoch - 1) as f64;
            pb.set_message(format!(
                "epoch {}/{} loss {:.3} acc {:.1} % · run ETA {}",
                epoch + 1,
                o.epochs,
                loss_sum / batches as f64,
                100.0 * correct as f64 / seen as f64,
                crate::text::duration(run_left)
            ));
            Ok(())
        })?;
        pb.finish_and_clear();
        let secs = t0.elapsed().as_secs_f64();
        let per_batch = |v: f64| v / batches.max(1) as f64;
        Ok(EpochRecord {
            epoch: epoch + 1,
            lr,
            loss: per_batch(loss_sum),
            ce: per_batch(ce_sum),
            distill: per_batch(kd_sum),
            triplet: per_batch(tri_sum),
            accuracy: correct as f64 / seen.max(1) as f64,
            img_per_s: seen as f64 / secs,
            seconds: secs,
            rank1: None,
            map: None,
            minp: None,
        })
    }
}

/// Correct identity predictions as LA-Transformer counts them: argmax of the summed part softmaxes.
fn correct_predictions(logits: &[Tensor], labels: &[u32]) -> Result<usize> {
    let mut score = candle_nn::ops::softmax_last_dim(&logits[0].detach())?;
    for l in &logits[1..] {
        score = (score + candle_nn::ops::softmax_last_dim(&l.detach())?)?;
    }
    let pred = score.argmax(1)?.to_vec1::<u32>()?;
    Ok(pred.iter().zip(labels).filter(|(a, b)| a == b).count())
}

fn epoch_line(rec: &EpochRecord, epochs: usize) -> String {
    format!(
        "epoch {}/{}: loss {:.4} (ce {:.4}, distill {:.4}{}) · training accuracy {:.2} % · lr {:.2e} · {:.0} img/s{}",
        rec.epoch,
        epochs,
        rec.loss,
        rec.ce,
        rec.distill,
        if rec.triplet > 0.0 { format!(", triplet {:.4}", rec.triplet) } else { String::new() },
        100.0 * rec.accuracy,
        rec.lr,
        rec.img_per_s,
        match (rec.rank1, rec.map) {
            (Some(r), Some(m)) => format!(" · Rank-1 {:.2} % mAP {:.2} %", 100.0 * r, 100.0 * m),
            _ => String::new(),
        }
    )
}

/// Writes the epoch's checkpoints. Order: best (if improved), then last (the resume point), then
/// metrics. A kill between any two leaves a consistent run: resume rewrites metrics.jsonl from
/// last/'s history.
fn save_epoch(run: &Path, current: &ModelFiles, opt: &Optimizer, state: &TrainState, improved: bool) -> Result<()> {
    if improved {
        write_checkpoint(&run.join("best"), current, None)?;
    }
    write_checkpoint(&run.join("last"), current, Some((opt, state)))?;
    write_metrics(run, &state.history)
}

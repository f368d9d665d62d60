//! `amg prune`: the AMG schedule (docs/method.md §4) — calibrate, score heads and key tokens by a
//! criterion (`criteria`), weight the scores per layer and remove the worst under the budget
//! (`policy`), fine-tune with distillation, iterate.

pub mod analyze;
pub mod criteria;
pub mod policy;

use crate::data::loader::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::surgery::{apply_plan, Plan};
use crate::model::ModelFiles;
use crate::rng::Rng;
use crate::train::loss::Distill;
use crate::train::optim::{OptimConfig, OptimKind};
use crate::train::run::{train, Scheduler, Start, TrainOptions, TrainRequest};
use analyze::Scores;
use criteria::{AnalyzeOptions, Calibration, Criterion, HeadCriterion, TokenCriterion};
use policy::{remove_heads, remove_tokens, HeadWeighting, TokenWeighting};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a pruning iteration removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Heads,
    Tokens,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Heads => "heads",
            Phase::Tokens => "tokens",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Fraction of all heads to remove (n = ⌊rate · depth · heads⌋).
    pub heads: f64,
    /// Fraction of all key tokens to remove (n = ⌊rate · depth · patches⌋).
    pub tokens: f64,
    pub iters: usize,
    pub finetune_epochs: usize,
    pub final_epochs: usize,
    pub criterion: Criterion,
    /// How head scores compare across layers.
    pub head_weighting: HeadWeighting,
    /// How key-token scores compare across layers.
    pub token_weighting: TokenWeighting,
    pub seed: u64,
    pub distill: Distill,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Calibration images (default: the whole training split).
    pub calib_limit: Option<usize>,
    /// Skip the report's accuracy and speed measurements.
    pub quick_report: bool,
}

impl PruneOptions {
    /// The reference settings (docs/method.md §4) with the given budgets.
    pub fn reference(heads: f64, tokens: f64) -> Self {
        PruneOptions {
            heads,
            tokens,
            iters: 1,
            finetune_epochs: 0,
            final_epochs: 10,
            criterion: Criterion::Amg,
            head_weighting: HeadWeighting::AMG,
            token_weighting: TokenWeighting::AMG,
            seed: 0,
            distill: Distill::None,
            batch_size: 32,
            lr: 1e-4,
            weight_decay: 1e-3,
            calib_limit: None,
            quick_report: false,
        }
    }
}

impl PruneOptions {
    /// Checks the options before any work: budgets are fractions, at least one iteration, and a
    /// teacher only with distillation.
    pub fn check(&self, has_teacher: bool) -> Result<()> {
        for (flag, r) in [("`heads`", self.heads), ("`tokens`", self.tokens)] {
            if !(0.0..1.0).contains(&r) {
                return Err(Error::invalid(format!("{flag} {r}: expected a fraction in [0, 1)")));
            }
        }
        if self.iters == 0 {
            return Err(Error::invalid("`iters` must be at least 1"));
        }
        if has_teacher && self.distill == Distill::None {
            return Err(Error::invalid("`teacher` is used for distillation: add `distill` soft (or hard)"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IterationRecord {
    pub phase: Phase,
    pub iteration: usize,
    pub removed: usize,
    pub heads_left: usize,
    pub key_tokens_left: usize,
    pub scores_file: String,
}

pub struct PruneSummary {
    pub plan: Plan,
    pub iterations: Vec<IterationRecord>,
}

/// Writes further files (a report, say) into the output directory before it is renamed into place:
/// called with the temporary directory, the original model, the pruned one and the log.
pub type Finish<'a> = &'a mut dyn FnMut(&Path, &ModelFiles, &ModelFiles, &mut dyn FnMut(&str)) -> Result<()>;

/// How many to remove at iteration `i` of `iters` so that the total is exactly `n`.
pub fn per_iteration(n: usize, iters: usize, i: usize) -> usize {
    n * (i + 1) / iters - n * i / iters
}

/// What to prune, with what, and where the result goes.
pub struct PruneRequest<'a> {
    pub model: ModelFiles,
    /// The distillation teacher (default, when the options distil: the unpruned model itself).
    pub teacher: Option<ModelFiles>,
    pub data: &'a Dataset,
    pub options: &'a PruneOptions,
    /// The pruned model directory, written atomically.
    pub out: &'a Path,
    /// Replace `out` if it exists and is not empty.
    pub force: bool,
    /// Continue the interrupted run kept in `partial_dir(out)`.
    pub resume: bool,
}

/// Where a run works until it is finished: `OUT.partial`, beside `OUT`. It holds the finished
/// iterations (the model after each, its scores, the fine-tuning runs) and `progress.json`; an
/// interrupted or failed run keeps it so that `--resume` continues from the last finished
/// iteration; a finished run is renamed to `OUT`.
pub fn partial_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "pruned".into());
    out.with_file_name(format!("{name}.partial"))
}

/// Checks, before any work, that a run may write `out`: a non-empty `out` needs `force`; an
/// interrupted run's `OUT.partial` needs `resume` (continue it) or `force` (start over); `resume`
/// needs one.
pub fn check_output(out: &Path, force: bool, resume: bool) -> Result<()> {
    if out.is_file() {
        return Err(Error::file(out, "exists and is a file; the output must be a directory"));
    }
    if !force && !crate::fsutil::is_absent_or_empty(out)? {
        return Err(Error::file(out, "exists and is not empty; choose another `out` or give `force` to replace it"));
    }
    let work = partial_dir(out);
    if resume && !resumable(out) {
        return Err(Error::file(&work, "nothing to resume: no interrupted run here (start the run without `resume`)"));
    }
    if !resume && !force && work.exists() {
        return Err(Error::file(&work, "holds an interrupted run of `amg prune`: add `resume` to continue it, or `force` to start over (or delete it)"));
    }
    Ok(())
}

/// Whether `partial_dir(out)` holds an unfinished run that `--resume` can continue.
pub fn resumable(out: &Path) -> bool {
    partial_dir(out).join(PROGRESS_FILE).is_file()
}

const PROGRESS_FILE: &str = "progress.json";
const CURRENT_DIR: &str = "current";

/// `progress.json` of an unfinished run.
#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    /// What the run was started with (options, model, data); a resumed run must match it.
    run: serde_json::Map<String, serde_json::Value>,
    /// The finished iterations, in order; the model after the last is in `current/`.
    iterations: Vec<IterationRecord>,
    /// Whether the final fine-tune finished (the model in `current/` is then the result).
    final_done: bool,
}

/// What identifies a run for `--resume`: every option that changes the result, the model's
/// fingerprint and the dataset.
fn run_key(o: &PruneOptions, model: &ModelFiles, teacher: Option<&ModelFiles>, data: &Dataset) -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "heads": o.heads, "tokens": o.tokens, "iters": o.iters, "finetune_epochs": o.finetune_epochs,
        "final_epochs": o.final_epochs, "criterion": crate::choice::Choice::name(o.criterion), "head_weighting": format!("{:?}", o.head_weighting),
        "token_weighting": format!("{:?}", o.token_weighting), "seed": o.seed, "distill": o.distill.describe(),
        "batch_size": o.batch_size, "lr": o.lr, "weight_decay": o.weight_decay, "calib_limit": o.calib_limit,
        "model": model.fingerprint(), "teacher": teacher.map(|t| t.fingerprint()), "data": data.root.display().to_string(),
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("an object literal"),
    }
}

impl Progress {
    fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(PROGRESS_FILE);
        if !path.is_file() {
            return Err(Error::file(dir, "nothing to resume: no progress.json (start the run without `resume`)"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("not a pruning run's progress: {e}")))
    }

    fn save(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(PROGRESS_FILE), self)
    }

    /// The resumed command must be the interrupted one: names every option that differs.
    fn check_same_run(&self, now: &serde_json::Map<String, serde_json::Value>, dir: &Path) -> Result<()> {
        let differ: Vec<String> = now
            .iter()
            .filter(|(k, v)| self.run.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: {} then, {v} now", self.run.get(k).map(|x| x.to_string()).unwrap_or_else(|| "unset".into())))
            .collect();
        if differ.is_empty() {
            Ok(())
        } else {
            Err(Error::file(dir, format!("`resume` continues the same run, but this command differs: {}", differ.join("; "))))
        }
    }
}

/// Chooses what each iteration removes: the criteria score the model as it is now (on the
/// calibration set), the weighting policy makes the scores comparable across layers, and the
/// global ranking picks the `k` to go.
struct Selector<'a> {
    o: &'a PruneOptions,
    data: &'a Dataset,
    heads: Box<dyn HeadCriterion>,
    tokens: Box<dyn TokenCriterion>,
    calib: AnalyzeOptions,
}

impl<'a> Selector<'a> {
    fn new(o: &'a PruneOptions, data: &'a Dataset) -> Self {
        let calib = AnalyzeOptions { batch_size: o.batch_size, limit: o.calib_limit, progress: true };
        Selector { o, data, heads: o.criterion.heads(), tokens: o.criterion.tokens(), calib }
    }

    /// The plan that removes `k` heads or key tokens from `model`, and the scores behind it (only
    /// the criterion of this phase runs). `step` numbers the iterations of the run: the random
    /// criterion draws from a generator seeded by (seed, step), so a resumed run draws what an
    /// uninterrupted one would have.
    fn select(&mut self, phase: Phase, model: &ModelFiles, k: usize, step: usize) -> Result<(Plan, Scores)> {
        let plan = Plan::of(model.config());
        let mut scores = Scores::zeros(model, &self.calib, self.o.calib_limit.unwrap_or(usize::MAX).min(self.data.train.len()));
        let mut rng = Rng::new(self.o.seed ^ 0x5C0E).fork(step as u64);
        let calib = Calibration { model, data: self.data, options: &self.calib, rng: &mut rng };
        let next = match phase {
            Phase::Heads => {
                scores.head_entropy = self.heads.score_heads(calib)?;
                scores.head_criterion = Some(self.heads.name().into());
                remove_heads(&plan, &self.o.head_weighting.apply(&scores.head_entropy), k)?
            }
            Phase::Tokens => {
                scores.token_importance = self.tokens.score_tokens(calib)?;
                scores.token_criterion = Some(self.tokens.name().into());
                remove_tokens(&plan, &self.o.token_weighting.apply(&scores.token_importance), model.config().num_prefix(), k)?
            }
        };
        Ok((next, scores))
    }
}

/// Fine-tuning between and after pruning iterations: the reference settings (Adam with L2 weight
/// decay; StepLR, 3 epochs, γ 0.7, for the final stage), distilling from the teacher if any.
struct FineTune<'a> {
    data: &'a Dataset,
    o: &'a PruneOptions,
    teacher: Option<&'a ModelFiles>,
}

impl FineTune<'_> {
    fn run(&self, model: ModelFiles, run: &Path, epochs: usize, final_stage: bool, log: &mut dyn FnMut(&str)) -> Result<ModelFiles> {
        if epochs == 0 {
            return Ok(model);
        }
        let o = self.o;
        // A BNNeck (TransReID) model fine-tunes with its own loss, ID + triplet over P×K batches
        // (4 images per identity, TransReID's NUM_INSTANCE), when the batch allows it.
        let transreid = model.config().head.kind == crate::model::HeadKind::Bnneck && o.batch_size.is_multiple_of(4) && o.batch_size >= 8;
        let opts = TrainOptions {
            epochs,
            batch_size: o.batch_size,
            lr: o.lr,
            // The reference: Adam with L2 weight decay; StepLR (3 epochs, γ 0.7) for the final fine-tune.
            optim: OptimConfig::new(OptimKind::Adam, o.weight_decay),
            scheduler: Scheduler::Step,
            step_size: if final_stage { 3 } else { usize::MAX },
            gamma: 0.7,
            warmup_epochs: 0.0,
            label_smoothing: 0.0,
            distill: o.distill,
            dropout: 0.5,
            augment: Some(Augment::reid_default()),
            seed: o.seed,
            eval_every: 0,
            triplet: transreid.then_some(crate::train::loss::Triplet { margin: None }),
            instances: if transreid { 4 } else { 0 },
        };
        let teacher = self.teacher.map(|t| (t.clone(), "the unpruned model".to_string()));
        // The pruned model's history gets one note for the whole schedule (see `run_schedule`),
        // not one per fine-tuning stage.
        let source = model.config().source.clone();
        train(TrainRequest { data: self.data, run, start: Start::Model(model, opts), teacher, force: true, progress: true }, log)?;
        let mut tuned = ModelFiles::load(&run.join("last"))?;
        *tuned.source_mut() = source;
        Ok(tuned)
    }
}

/// The control a pruned model is held against: the unpruned `model` fine-tuned exactly as `prune`
/// fine-tunes its result at the end — the same options, epochs, seed and teacher (the model itself
/// when the options distil) — so that what differs between the two comes from what was removed,
/// not from the extra training. Writes the run under `run` and returns its last epoch.
pub fn fine_tune_unpruned(model: &ModelFiles, data: &Dataset, o: &PruneOptions, run: &Path, log: &mut dyn FnMut(&str)) -> Result<ModelFiles> {
    let teacher = (o.distill != Distill::None).then_some(model);
    FineTune { data, o, teacher }.run(model.clone(), run, o.final_epochs, true, log)
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    crate::fsutil::write_bytes_atomic(path, serde_json::to_string_pretty(value).expect("serialisable").as_bytes())
}

/// Runs the whole schedule in `partial_dir(out)` and renames it to `out` when finished: the pruned
/// model directory plus `plan.json`, `scores/`, `stages/`, `iterations.json` and whatever `finish`
/// adds. An interrupted or failed run keeps its finished iterations there for `resume`.
pub fn prune(req: PruneRequest, log: &mut dyn FnMut(&str), finish: Finish) -> Result<PruneSummary> {
    let PruneRequest { model, teacher, data, options: o, out, force, resume } = req;
    o.check(teacher.is_some())?;
    check_output(out, force, resume)?;
    let cfg = model.config().clone();
    let depth = cfg.arch.depth;
    // Every attention layer's heads count, JPM's b2 included (docs/backbones.md §3).
    let n_heads = (o.heads * (cfg.attention_heads().len() * cfg.arch.num_heads) as f64).floor() as usize;
    let n_tokens = (o.tokens * (depth * cfg.num_patches()) as f64).floor() as usize;
    if n_heads == 0 && n_tokens == 0 {
        return Err(Error::invalid("nothing to prune: give `heads` and/or `tokens` budgets large enough to remove something"));
    }
    let teacher = if o.distill != Distill::None { Some(teacher.unwrap_or_else(|| model.clone())) } else { None };
    let key = run_key(o, &model, teacher.as_ref(), data);
    let work = partial_dir(out);
    crate::fsutil::clear_stale(&work)?;
    let mut progress = if resume {
        let p = Progress::load(&work)?;
        p.check_same_run(&key, &work)?;
        log(&format!("resuming from {}: {} finished", work.display(), crate::text::count(p.iterations.len(), "iteration")));
        p
    } else {
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?; // with --force (checked above)
        }
        std::fs::create_dir_all(work.join("scores")).map_err(|e| Error::io(work.join("scores"), e))?;
        let p = Progress { run: key, iterations: Vec::new(), final_done: false };
        p.save(&work)?;
        p
    };
    let original = model.clone();
    let result = run_schedule(&work, model, &original, teacher.as_ref(), data, o, (n_heads, n_tokens), &mut progress, log, finish);
    match result {
        Ok(plan) => {
            crate::fsutil::publish_dir(&work, out, force)?;
            Ok(PruneSummary { plan, iterations: progress.iterations })
        }
        Err(e) => {
            if progress.iterations.is_empty() {
                let _ = std::fs::remove_dir_all(&work); // nothing finished: nothing to resume
            }
            Err(e)
        }
    }
}

/// The schedule itself, in the work directory `work`, skipping the iterations `progress` lists
/// as finished and recording each one it finishes.
#[allow(clippy::too_many_arguments)]
fn run_schedule(
    work: &Path,
    model: ModelFiles,
    original: &ModelFiles,
    teacher: Option<&ModelFiles>,
    data: &Dataset,
    o: &PruneOptions,
    (n_heads, n_tokens): (usize, usize),
    progress: &mut Progress,
    log: &mut dyn FnMut(&str),
    finish: Finish,
) -> Result<Plan> {
    let mut selector = Selector::new(o, data);
    let tuner = FineTune { data, o, teacher };
    let saved = work.join(CURRENT_DIR);
    let mut current = if progress.iterations.is_empty() { model } else { ModelFiles::load(&saved)? };
    let mut step = 0;
    for (phase, n) in [(Phase::Heads, n_heads), (Phase::Tokens, n_tokens)] {
        for it in (0..o.iters).filter(|_| n > 0) {
            step += 1;
            if step <= progress.iterations.len() {
                continue; // finished before the interruption
            }
            let k = per_iteration(n, o.iters, it);
            let (next, scores) = selector.select(phase, &current, k, step)?;
            let file = format!("scores/{}-{:02}.json", phase.name(), it + 1);
            write_json(&work.join(&file), &scores)?;
            current = apply_plan(&current, &next)?;
            let rec = IterationRecord {
                phase,
                iteration: it + 1,
                removed: k,
                heads_left: next.head_lists().iter().map(|h| h.len()).sum(),
                key_tokens_left: next.tokens.iter().map(|t| t.len()).sum(),
                scores_file: file,
            };
            log(&format!(
                "{} {}/{}: removed {k} ({} heads, {} key tokens left; {} criterion)",
                phase.name(),
                it + 1,
                o.iters,
                rec.heads_left,
                rec.key_tokens_left,
                o.criterion.title()
            ));
            let stage = work.join("stages").join(format!("{}-{:02}", phase.name(), it + 1));
            current = tuner.run(current, &stage, o.finetune_epochs, false, log)?;
            current.save(&saved, true)?;
            progress.iterations.push(rec);
            progress.save(work)?;
        }
    }
    if !progress.final_done {
        current = tuner.run(current, &work.join("stages").join("final"), o.final_epochs, true, log)?;
        current.save(&saved, true)?;
        progress.final_done = true;
        progress.save(work)?;
    }
    current.source_mut().notes.push(format!(
        "pruned by amg ({} criterion): heads {:.0} %, key tokens {:.0} %, {}, {} + {} fine-tune epochs",
        o.criterion.title(),
        100.0 * o.heads,
        100.0 * o.tokens,
        crate::text::count(o.iters, "iteration"),
        o.finetune_epochs,
        o.final_epochs
    ));
    current.source_mut().format = "amg-prune".into();
    current.write_into(work)?;
    let plan = Plan::of(current.config());
    write_json(&work.join("plan.json"), &plan)?;
    write_json(&work.join("iterations.json"), &progress.iterations)?;
    finish(work, original, &current, log)?;
    // The work directory becomes the output: its resume state goes.
    std::fs::remove_dir_all(&saved).map_err(|e| Error::io(&saved, e))?;
    std::fs::remove_file(work.join(PROGRESS_FILE)).map_err(|e| Error::io(work.join(PROGRESS_FILE), e))?;
    Ok(plan)
}

/// Applies an explicit plan (no fine-tuning) and writes the model with its `plan.json`.
pub fn prune_with_plan(model: &ModelFiles, plan: &Plan, out: &Path, force: bool) -> Result<ModelFiles> {
    let checked = plan.checked(model.config())?;
    let mut pruned = apply_plan(model, &checked)?;
    pruned.source_mut().notes.push("pruned with an explicit plan (no fine-tuning)".into());
    pruned.save_with(out, force, |dir| write_json(&dir.join("plan.json"), &checked))?;
    Ok(pruned)
}

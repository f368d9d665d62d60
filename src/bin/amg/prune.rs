use crate::args::{choice, DistillArgs};
use amg::data::Dataset;
use amg::model::surgery::Plan;
use amg::model::ModelFiles;
use amg::prune::criteria::Criterion;
use amg::prune::policy::{HeadWeighting, TokenWeighting};
use amg::prune::{PruneOptions, PruneRequest};
use amg::report::prune::{markdown, plan_summary, prune_and_report};
use anyhow::{anyhow, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model to prune (a model directory).
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
    /// Pruning rounds (calibrate → remove → fine-tune), each removing its share of the budget.
    #[arg(long, default_value_t = 1)]
    iters: usize,
    /// Fine-tuning epochs after each pruning iteration.
    #[arg(long, default_value_t = 0)]
    finetune_epochs: usize,
    /// Fine-tuning epochs at the end (StepLR: 3 epochs, γ 0.7).
    #[arg(long, default_value_t = 10)]
    final_epochs: usize,
    /// What decides which heads and key tokens go.
    #[arg(long, value_parser = choice::<Criterion>(), default_value = "amg")]
    criterion: Criterion,
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
    /// Replace --out if it exists and is not empty.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    let files = ModelFiles::load(&a.model)?;
    if let Some(plan) = &a.plan {
        let plan = Plan::load(plan)?;
        let pruned = amg::prune::prune_with_plan(&files, &plan, &a.out, a.force)?;
        eprintln!("{}", plan_summary(&files, &pruned, &a.out));
        return Ok(());
    }
    let o = PruneOptions {
        heads: a.heads,
        tokens: a.tokens,
        iters: a.iters,
        finetune_epochs: a.finetune_epochs,
        final_epochs: a.final_epochs,
        criterion: a.criterion,
        head_weighting: HeadWeighting::AMG,
        token_weighting: TokenWeighting::AMG,
        seed: a.seed,
        distill: a.distill.get(),
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        calib_limit: a.calib_limit,
        quick_report: false,
    };
    o.check(a.teacher.is_some())?;
    let data = Dataset::open(a.data.as_ref().ok_or_else(|| anyhow!("--data is needed unless --plan is given"))?, None)?;
    eprint!("{}", data.summary());
    let teacher = a.teacher.as_ref().map(|t| ModelFiles::load(t)).transpose()?;
    let req = PruneRequest { model: files, teacher, data: &data, options: &o, out: &a.out, force: a.force };
    let (_, r) = prune_and_report(req, &mut |m| eprintln!("{m}"))?;
    eprint!("{}", markdown(&r, &o));
    Ok(())
}

use crate::args::{at_least_one, choice, fraction, non_negative, positive, DistillArgs};
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
    /// Fraction of all heads to remove, in [0, 1).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    heads: f64,
    /// Fraction of all key tokens to remove, in [0, 1).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    tokens: f64,
    /// Pruning rounds (calibrate → remove → fine-tune), each removing its share of the budget.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
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
    /// Images per batch (calibration and fine-tuning).
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    batch_size: usize,
    /// Fine-tuning learning rate (Adam), > 0.
    #[arg(long, default_value_t = 1e-4, value_parser = positive)]
    lr: f64,
    /// Fine-tuning L2 weight decay.
    #[arg(long, default_value_t = 1e-3, value_parser = non_negative)]
    weight_decay: f64,
    /// Calibration images (default: the whole training split).
    #[arg(long, value_parser = at_least_one)]
    calib_limit: Option<usize>,
    /// Seed of the random criterion, data order and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace --out if it exists and is not empty (and discard an interrupted run's OUT.partial).
    #[arg(long)]
    force: bool,
    /// Continue an interrupted run from its last finished iteration (kept in OUT.partial); give
    /// the same options as the interrupted command.
    #[arg(long, conflicts_with = "plan")]
    resume: bool,
}

pub fn run(a: Args) -> Result<()> {
    let files = amg::model::ModelFiles::load_float(&a.model, "`amg prune`")?;
    if let Some(plan) = &a.plan {
        let plan = Plan::load(plan)?;
        let pruned = amg::prune::prune_with_plan(&files, &plan, &a.out, a.force)?;
        println!("{}", plan_summary(&files, &pruned, &a.out));
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
    amg::prune::check_output(&a.out, a.force, a.resume)?;
    let teacher = a.teacher.as_ref().map(|t| ModelFiles::load(t)).transpose()?; // before the dataset: errors first
    let data = Dataset::open(a.data.as_ref().ok_or_else(|| anyhow!("--data is needed unless --plan is given"))?, None)?;
    eprint!("{}", data.summary());
    let req = PruneRequest { model: files, teacher, data: &data, options: &o, out: &a.out, force: a.force, resume: a.resume };
    // On a stop or an error, say whether finished iterations were kept for --resume.
    let (_, r) = prune_and_report(req, &mut |m| eprintln!("{m}")).map_err(|e| {
        let kept = amg::prune::resumable(&a.out);
        let hint = if kept {
            format!(
                "the finished iterations are kept in {}: run the same command with --resume to continue from there",
                amg::prune::partial_dir(&a.out).display()
            )
        } else {
            "no pruning iteration had finished; nothing was kept".into()
        };
        if kept || matches!(e, amg::Error::Interrupted) {
            anyhow::Error::new(e).context(hint)
        } else {
            e.into()
        }
    })?;
    print!("{}", markdown(&r, &o));
    println!("\npruned model → {} (report.md and report.json there)", a.out.display());
    Ok(())
}

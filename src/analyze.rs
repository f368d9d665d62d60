use amg::data::Dataset;
use amg::prune::analyze::{analyze, AnalyzeOptions};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory (with its ID classifiers, LA or BNNeck: key importance needs the training
    /// loss).
    #[arg(long)]
    model: PathBuf,
    /// Dataset root; its training split (sorted by file name) is the calibration set.
    #[arg(long)]
    data: PathBuf,
    /// Output scores JSON.
    #[arg(long)]
    out: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 32, value_parser = crate::args::at_least_one)]
    batch_size: usize,
    /// Use only the first N calibration images.
    #[arg(long, value_parser = crate::args::at_least_one)]
    limit: Option<usize>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    amg::fsutil::check_output_file(&a.out, a.force)?;
    let files = amg::model::ModelFiles::load_float(&a.model, "`amg analyze`")?;
    let data = Dataset::open(&a.data, None)?;
    eprint!("{}", data.summary());
    let s = analyze(&files, &data, &AnalyzeOptions { batch_size: a.batch_size, limit: a.limit, progress: true })?;
    amg::fsutil::write_bytes_atomic(&a.out, serde_json::to_string_pretty(&s)?.as_bytes())?;
    println!("{}", s.summary(&a.out));
    Ok(())
}

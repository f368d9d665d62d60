use crate::args::{at_least_one, choice};
use amg::data::{Dataset, Layout};
use amg::model::quant::ActivationScales;
use amg::quantize::{quantize, summary, QuantizeOptions};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The float32 model to quantize (a model directory).
    #[arg(long)]
    model: PathBuf,
    /// Dataset root: its query and gallery images measure what INT8 keeps; static scales are
    /// calibrated on its training images.
    #[arg(long)]
    data: PathBuf,
    /// Dataset layout (default: detected).
    #[arg(long, value_parser = choice::<Layout>())]
    layout: Option<Layout>,
    /// Output model directory (with report.md and report.json).
    #[arg(long)]
    out: PathBuf,
    /// How each product's input is scaled to int8.
    #[arg(long, value_parser = choice::<ActivationScales>(), default_value = "dynamic")]
    activations: ActivationScales,
    /// Training images the static scales are calibrated on (with --activations static).
    #[arg(long, value_parser = at_least_one)]
    calibration_images: Option<usize>,
    /// Picks the calibration images from the training split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per batch.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    batch_size: usize,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// Print exactly one JSON object (the report) on stdout.
    #[arg(long)]
    json: bool,
}

/// Calibration images when --activations static is given without a count.
const DEFAULT_CALIBRATION: usize = 256;

pub fn run(a: Args) -> Result<()> {
    let calibration_images = match (a.activations, a.calibration_images) {
        (ActivationScales::Dynamic, Some(_)) => bail!("--calibration-images applies to --activations static (dynamic scales need no calibration)"),
        (_, n) => n.unwrap_or(DEFAULT_CALIBRATION),
    };
    let data = Dataset::open(&a.data, a.layout)?;
    eprint!("{}", data.summary());
    let opts = QuantizeOptions { activations: a.activations, calibration_images, batch_size: a.batch_size, seed: a.seed, force: a.force, progress: true };
    let report = quantize(&a.model, &data, &a.out, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(())
}

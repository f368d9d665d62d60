use crate::args::choice;
use amg::data::{Dataset, Layout};
use amg::eval::{eval_feature_files, eval_model, eval_pixels, EvalOptions};
use amg::model::ModelFiles;
use anyhow::{anyhow, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory.
    #[arg(long, required_unless_present_any = ["features", "baseline"])]
    model: Option<PathBuf>,
    /// Dataset root (Market-1501, DukeMTMC-reID, Occluded-Duke or ImageFolder layout).
    #[arg(long, required_unless_present = "features")]
    data: Option<PathBuf>,
    /// Dataset layout (default: detected).
    #[arg(long, value_parser = choice::<Layout>())]
    layout: Option<Layout>,
    /// Evaluate features written by `amg embed` instead: QUERY.safetensors GALLERY.safetensors.
    #[arg(long, num_args = 2, value_names = ["QUERY", "GALLERY"], conflicts_with_all = ["model", "data", "baseline"])]
    features: Option<Vec<PathBuf>>,
    /// A model-free baseline instead of a model: `pixels` ranks raw 64x32 pixels by cosine similarity.
    #[arg(long, value_parser = ["pixels"], conflicts_with = "model")]
    baseline: Option<String>,
    /// Average each image's feature with its mirror image's.
    #[arg(long)]
    flip: bool,
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = crate::args::at_least_one)]
    batch_size: usize,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    precision: crate::args::PrecisionArg,
}

pub fn run(a: Args) -> Result<()> {
    let opts = EvalOptions { batch_size: a.batch_size, flip: a.flip, progress: true };
    let m = if let Some(f) = &a.features {
        eval_feature_files(&f[0], &f[1])?
    } else {
        // The model is read before the dataset, so that its errors come first.
        let engine = a.model.as_deref().map(|dir| ModelFiles::load(dir).and_then(|f| a.precision.engine(f))).transpose()?;
        let data = Dataset::open(a.data.as_ref().ok_or_else(|| anyhow!("--data is needed unless --features is given"))?, a.layout)?;
        eprint!("{}", data.summary());
        if data.skipped_files > 0 {
            eprintln!("warning: skipped {}", amg::text::count(data.skipped_files, "non-image file"));
        }
        match &engine {
            Some(engine) => eval_model(engine, &data, &opts)?,
            None => eval_pixels(&data, (64, 32), &opts)?,
        }
    };
    if a.json {
        println!("{}", m.summary_json());
    } else {
        print!("{}", m.table());
    }
    Ok(())
}

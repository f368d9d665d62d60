use amg::model::ModelFiles;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Image files and/or directories of images (JPEG, PNG).
    #[arg(long, num_args = 1.., required = true)]
    images: Vec<PathBuf>,
    /// Output .safetensors file: tensor `features` [N, F], metadata `names` (JSON list).
    #[arg(long)]
    out: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 32, value_parser = crate::args::at_least_one)]
    batch_size: usize,
    /// Skip images that cannot be decoded (and list them) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    #[command(flatten)]
    side: crate::args::SideInfoArgs,
    #[command(flatten)]
    precision: crate::args::PrecisionArg,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    let (files, non_images) = amg::preprocess::collect_images(&a.images)?;
    if files.is_empty() {
        bail!("no images found in {}", a.images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    if non_images > 0 {
        eprintln!("warning: skipped {}", amg::text::count(non_images, "non-image file"));
    }
    if let Some(f) = files.iter().find(|f| std::fs::canonicalize(f).ok() == std::fs::canonicalize(&a.out).ok()) {
        bail!("--out {} is one of the input images; refusing to overwrite an input", f.display());
    }
    amg::fsutil::check_output_file(&a.out, a.force)?;
    let model = ModelFiles::load(&a.model)?;
    let fingerprint = model.fingerprint();
    let engine = a.precision.engine(model)?;
    let r = amg::embed::embed_files(&engine, &files, a.batch_size, a.skip_bad, true, &a.side.get())?;
    for (_, why) in &r.skipped {
        eprintln!("skipped: {why}"); // the reason names the file
    }
    if r.names.is_empty() {
        bail!("no image could be read");
    }
    let meta = HashMap::from([
        ("model".to_string(), a.model.display().to_string()),
        (amg::eval::features::FINGERPRINT_KEY.to_string(), fingerprint),
        ("precision".to_string(), amg::choice::Choice::name(a.precision.precision).to_string()),
    ]);
    amg::eval::features::write_features(&a.out, &r.names, &r.features, r.feature_dim, meta)?;
    println!("{}", r.summary(&a.out));
    Ok(())
}

use amg::model::ModelFiles;
use amg::prune::analyze::Scores;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory.
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
    #[command(flatten)]
    side: crate::args::SideInfoArgs,
    /// Replace --out if it exists and is not empty.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.image.is_none() && a.side.get() != amg::data::cameras::SideInfo::FROM_NAMES {
        bail!("--camera / --view are the camera and viewpoint of --image: give the image to draw attention over");
    }
    let files = ModelFiles::load(&a.model)?;
    let scores = a.scores.as_ref().map(|p| Scores::load(p)).transpose()?;
    let out = amg::report::viz::render(&files, scores.as_ref(), a.image.as_deref(), &a.side.get(), &a.out, a.force)?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    for f in out.files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

use amg::engine::{Input, Want, Workspace};
use amg::model::ModelFiles;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Gallery features written by `amg embed` with the same model.
    #[arg(long)]
    gallery: PathBuf,
    /// The query image.
    #[arg(long)]
    query: PathBuf,
    /// How many matches to print.
    #[arg(long, default_value_t = 10, value_parser = crate::args::at_least_one)]
    top: usize,
    /// Print the matches as one JSON list.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    side: crate::args::SideInfoArgs,
    #[command(flatten)]
    precision: crate::args::PrecisionArg,
}

pub fn run(a: Args) -> Result<()> {
    let ((names, gallery, dim), recorded) = amg::eval::features::read_features_and_model(&a.gallery)?;
    let files = ModelFiles::load(&a.model)?;
    let fingerprint = files.fingerprint();
    let engine = a.precision.engine(files)?;
    if dim != engine.config().feature_dim() {
        bail!(
            "{}: features have {dim} dimensions but the model gives {}: embed the gallery with this model",
            a.gallery.display(),
            engine.config().feature_dim()
        );
    }
    let gallery_name = a.gallery.display().to_string();
    let model_name = format!("the query (embedded by --model {})", a.model.display());
    amg::eval::features::check_same_model((&gallery_name, recorded.as_deref()), (&model_name, Some(&fingerprint)))?;
    if recorded.is_none() {
        eprintln!("warning: {gallery_name} does not record which model computed it; make sure it was --model {}", a.model.display());
    }
    let cameras = amg::data::cameras::cameras_for(engine.config(), std::slice::from_ref(&a.query), &a.side.get())?;
    let t = std::time::Instant::now();
    let input = amg::preprocess::load_input(&a.query, &engine.config().input, false)?;
    let out = engine.run(Input { images: &input, cameras: cameras.as_deref(), batch: 1 }, &mut Workspace::default(), Want::default(), None)?;
    let matches = amg::embed::search(&out.features, &gallery, &names, a.top);
    if a.json {
        println!("{}", serde_json::to_string(&matches)?);
    } else {
        for m in &matches {
            println!("{:>3}  {:.4}  {}", m.rank, m.score, m.name);
        }
        eprintln!("{} gallery entries searched in {:.1} ms", names.len(), t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

use amg::model::{ModelConfig, ModelFiles};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = ModelConfig::load(&a.model.join(amg::model::dir::CONFIG_FILE))?;
    // An INT8 model's scales are in its tensors: loaded (and checked) only for those.
    let files = cfg.quantization.is_some().then(|| ModelFiles::load(&a.model)).transpose()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&amg::report::inspect::inspection(&cfg, files.as_ref()))?);
    } else {
        print!("{}", amg::report::inspect::render(&cfg));
        if let Some(f) = &files {
            print!("{}", amg::report::inspect::render_int8(f));
        }
    }
    Ok(())
}

use amg::model::ModelConfig;
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
    if a.json {
        println!("{}", serde_json::to_string_pretty(&amg::report::inspect::inspection(&cfg))?);
    } else {
        print!("{}", amg::report::inspect::render(&cfg));
    }
    Ok(())
}

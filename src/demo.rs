use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Output directory (replaced if it holds an earlier demo).
    #[arg(long, default_value = "amg-demo")]
    out: PathBuf,
    /// A much smaller run, from a tiny model trained from scratch (for CI and a first look).
    #[arg(long)]
    quick: bool,
    /// Seed of the pruning and fine-tuning (and, with --quick or --head transreid, of the data and
    /// the training from scratch).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The model to prune: la starts from the converged ViT-Ti base the repository ships;
    /// transreid trains a TransReID-style ViT-Ti from scratch first (about 15 minutes).
    #[arg(long, value_parser = crate::args::choice::<amg::demo::DemoHead>(), default_value = "la")]
    head: amg::demo::DemoHead,
    /// The converged base model directory to start from [default: assets/demo-base of the
    /// repository, found from the current directory or beside the binary's build folder].
    #[arg(long)]
    base: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let settings = if a.quick || a.head != amg::demo::DemoHead::La {
        if a.base.is_some() {
            bail!("--base: the demo starts from a base only in its full LA form (not with --quick or --head transreid)");
        }
        amg::demo::DemoSettings::with_head(a.quick, a.seed, a.head)
    } else {
        let base = match a.base {
            Some(b) => b,
            None => shipped_base()?,
        };
        amg::demo::DemoSettings::from_base(&base, a.seed)?
    };
    let r = amg::demo::run(&a.out, &settings, &mut |m| eprintln!("{m}"))?;
    println!("{}", amg::demo::table(&r.rows));
    println!("report: {} (with accuracy_vs_macs.png) · took {:.0} s", a.out.join("report.md").display(), r.seconds);
    Ok(())
}

/// The base the repository ships, `assets/demo-base`: under the current directory (the
/// repository's root, as the README runs the demo), else up from the binary's build folder
/// (`target/release/amg`).
fn shipped_base() -> Result<PathBuf> {
    let rel = Path::new("assets").join("demo-base");
    let mut tried = vec![rel.clone()];
    if rel.join("config.json").is_file() {
        return Ok(rel);
    }
    if let Some(root) = std::env::current_exe().ok().and_then(|e| e.parent()?.parent()?.parent().map(Path::to_path_buf)) {
        let p = root.join(&rel);
        if p.join("config.json").is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    bail!("the demo's base model is not at {}: run amg demo from the repository's root, or give --base DIR (or --quick)", list.join(" nor "))
}

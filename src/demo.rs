use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Output directory (replaced if it holds an earlier demo).
    #[arg(long, default_value = "amg-demo")]
    out: PathBuf,
    /// A much smaller run (for CI and a first look).
    #[arg(long)]
    quick: bool,
    /// Seed of the data, training and pruning.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The model to train and prune.
    #[arg(long, value_parser = crate::args::choice::<amg::demo::DemoHead>(), default_value = "la")]
    head: amg::demo::DemoHead,
}

pub fn run(a: Args) -> Result<()> {
    let settings = amg::demo::DemoSettings::with_head(a.quick, a.seed, a.head);
    let r = amg::demo::run(&a.out, &settings, &mut |m| eprintln!("{m}"))?;
    println!("{}", amg::demo::table(&r.rows));
    println!("report: {} (with accuracy_vs_macs.png) · took {:.0} s", a.out.join("report.md").display(), r.seconds);
    Ok(())
}

use crate::args::{at_least_one, size};
use amg::synth::SynthOptions;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Output dataset root (Market-1501 layout).
    #[arg(long, required_unless_present = "preview")]
    out: Option<PathBuf>,
    /// Identities, half for training and half for testing.
    #[arg(long, default_value_t = 300, value_parser = at_least_one)]
    ids: usize,
    /// Cameras.
    #[arg(long, default_value_t = 6, value_parser = at_least_one)]
    cams: usize,
    /// Images per identity.
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    images_per_id: usize,
    /// Occluded-Duke style: most queries and part of the gallery 20–50 % occluded.
    #[arg(long)]
    occluded: bool,
    /// Seed of everything drawn (people, cameras, occluders).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image size HxW.
    #[arg(long, value_parser = size, default_value = "128x64")]
    size: (usize, usize),
    /// Write a contact sheet of samples to this PNG.
    #[arg(long)]
    preview: Option<PathBuf>,
    /// Replace --out (and --preview) if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    let opts = SynthOptions { ids: a.ids, cams: a.cams, images_per_id: a.images_per_id, occluded: a.occluded, seed: a.seed, size: a.size };
    if let Some(p) = &a.preview {
        amg::fsutil::check_output_file(p, a.force)?;
        amg::synth::preview(&opts, p)?;
        println!("contact sheet → {}", p.display());
    }
    if let Some(out) = &a.out {
        let t = std::time::Instant::now();
        let s = amg::synth::generate(&opts, out, a.force, true)?;
        println!("{}", s.text(out, t.elapsed().as_secs_f64()));
        eprint!("{}", amg::data::Dataset::open(out, None)?.summary());
    }
    Ok(())
}

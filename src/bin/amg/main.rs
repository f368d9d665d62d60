//! The `amg` command line: argument parsing and error reporting. Each subcommand is a small file
//! that turns its arguments into a library call; the work is in the `amg` library.

mod analyze;
mod args;
mod bench;
mod demo;
mod embed;
mod eval;
mod export;
mod import;
mod inspect;
mod prune;
mod search;
mod synth;
mod train;
mod viz;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "amg", version, about = "Attention-map-guided pruning and fast CPU inference for ViT person re-identification")]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole pipeline on built-in synthetic data: benchmark, training, AMG and random pruning,
    /// one comparison table and a plot (≈ 6 minutes on 2 cores; --quick takes seconds).
    Demo(demo::Args),
    /// Convert a timm / LA-Transformer / AMG-reference checkpoint into an amg model directory.
    Import(import::Args),
    /// Write a model for other runtimes: ONNX (ONNX Runtime, TensorRT, OpenVINO), pruning kept.
    Export(export::Args),
    /// Compute retrieval features of images.
    Embed(embed::Args),
    /// Find the gallery images most similar to a query image (features from `amg embed`).
    Search(search::Args),
    /// Show what a model keeps per layer and what it costs (params, MACs, paper FLOPs).
    Inspect(inspect::Args),
    /// Measure inference throughput (or training-step time with --train).
    Bench(bench::Args),
    /// Generate a synthetic Re-ID benchmark (Market-1501 layout), or a contact sheet of it.
    Synth(synth::Args),
    /// Train or fine-tune an LA-Transformer (optionally distilling from a teacher).
    Train(train::Args),
    /// Score heads (attention entropy) and key tokens (first-order importance) on a calibration set.
    Analyze(analyze::Args),
    /// Prune heads and key tokens (AMG), fine-tune with distillation, iterate; or apply a plan.
    Prune(prune::Args),
    /// Pictures: head entropy, token importance, kept tokens, attention maps over an image.
    Viz(viz::Args),
    /// Evaluate Re-ID accuracy (CMC, mAP, mINP) on a dataset's query/gallery, or on feature files.
    Eval(eval::Args),
}

fn run(cli: Cli) -> Result<()> {
    amg::alloc::tune();
    if let Some(t) = cli.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global().context("setting up the thread pool")?;
    }
    match cli.cmd {
        Cmd::Demo(a) => demo::run(a),
        Cmd::Import(a) => import::run(a),
        Cmd::Export(a) => export::run(a),
        Cmd::Embed(a) => embed::run(a),
        Cmd::Search(a) => search::run(a),
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Synth(a) => synth::run(a),
        Cmd::Train(a) => train::run(a),
        Cmd::Analyze(a) => analyze::run(a),
        Cmd::Prune(a) => prune::run(a),
        Cmd::Viz(a) => viz::run(a),
        Cmd::Eval(a) => eval::run(a),
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

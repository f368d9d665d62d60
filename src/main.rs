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
mod quantize;
mod search;
mod synth;
mod train;
mod viz;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// The whole pipeline on built-in synthetic data: benchmark, base, AMG and random pruning, control,
    /// one comparison table and a plot (a few minutes on 2 cores from the converged base the
    /// repository ships; --quick, from a tiny model trained from scratch, about 30 seconds).
    Demo(demo::Args),
    /// Convert a timm / DeiT / LA-Transformer / AMG-reference / TransReID checkpoint into an amg model directory.
    Import(import::Args),
    /// Write a model for other runtimes: ONNX (ONNX Runtime, TensorRT, OpenVINO) or PyTorch, pruning kept.
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
    /// Train or fine-tune a model: LA-Transformer or TransReID-style (BNNeck, SIE, JPM; ID + triplet loss), optionally distilling.
    Train(train::Args),
    /// Score heads (attention entropy) and key tokens (first-order importance) on a calibration set.
    Analyze(analyze::Args),
    /// Prune heads and key tokens (AMG), fine-tune with distillation, iterate; or apply a plan.
    Prune(prune::Args),
    /// Write an INT8 model (int8 weights per channel, int8 products) and report the accuracy it keeps.
    Quantize(quantize::Args),
    /// Pictures: head entropy, token importance, kept tokens, attention maps over an image.
    Viz(viz::Args),
    /// Evaluate Re-ID accuracy (CMC, mAP, mINP) on a dataset's query/gallery, or on feature files.
    Eval(eval::Args),
}

/// candle's element-wise ops run on a pool of its own whose workers spin 25 000 times after each
/// op before sleeping; with rayon's threads on the same cores (every product here), that spinning
/// takes a core from the next product, so the spin is kept short. Its size follows --threads like rayon's. The user's own
/// settings of these variables win. Called first thing in `main`, before any thread exists.
fn tune_candle_pool(threads: Option<usize>) {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "64");
    }
    if let (Some(t), None) = (threads.filter(|&t| t > 0), std::env::var_os("CANDLE_NUM_THREADS")) {
        std::env::set_var("CANDLE_NUM_THREADS", t.to_string());
    }
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
        Cmd::Quantize(a) => quantize::run(a),
        Cmd::Viz(a) => viz::run(a),
        Cmd::Eval(a) => eval::run(a),
    }
}

/// The command line as clap reads it, with one change: a value may start with '-' when it is a
/// number (`--tokens -0.1` is the value -0.1, then refused by the option's range check, not an
/// unknown flag `-0`).
/// Also the subcommand's definition, whose flags error messages are written in.
fn parse() -> (Cli, clap::Command) {
    let mut cmd = Cli::command().allow_negative_numbers(true).mut_subcommands(|s| s.allow_negative_numbers(true));
    let matches = cmd.get_matches_mut();
    let sub = matches.subcommand_name().and_then(|n| cmd.find_subcommand(n)).cloned().unwrap_or_else(|| cmd.clone());
    (Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()), sub)
}

/// The library names a call's options in its own words, in backticks (`batch_size`, `force`):
/// here each becomes the flag that sets it (--batch-size, --force), where the command has one by
/// that name. Other backticked names (tensor keys, file names) are left as they are.
fn in_flags(message: &str, cmd: &clap::Command) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('`') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('`') else {
            rest = &rest[open..];
            break;
        };
        let name = &after[..close];
        let long = name.replace('_', "-");
        if cmd.get_arguments().any(|a| a.get_long() == Some(long.as_str())) {
            out.push_str("--");
            out.push_str(&long);
        } else {
            out.push('`');
            out.push_str(name);
            out.push('`');
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether the error is a stop the user asked for (Ctrl-C / SIGTERM).
fn interrupted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<amg::Error>(), Some(amg::Error::Interrupted)))
}

fn main() {
    let (cli, cmd) = parse();
    tune_candle_pool(cli.threads);
    // args_os: a file name that is not UTF-8 is recorded lossily, not a panic.
    amg::model::config::set_command(std::env::args_os().enumerate().map(|(i, a)| if i == 0 { "amg".into() } else { a.to_string_lossy().into_owned() }));
    if let Err(e) = amg::interrupt::install() {
        eprintln!("warning: {e}; Ctrl-C will stop amg without cleaning up");
    }
    if let Err(e) = run(cli) {
        if interrupted(&e) {
            // The command's context, if any, says what was kept and how to resume.
            let hint = e.to_string();
            if hint == "interrupted" {
                eprintln!("interrupted: nothing was written (any earlier output is as it was)");
            } else {
                eprintln!("interrupted: {}", in_flags(&hint, &cmd));
            }
            std::process::exit(130);
        }
        eprintln!("error: {}", in_flags(&format!("{e:#}"), &cmd));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_named_by_the_library_become_the_commands_flags() {
        let train = Cli::command().find_subcommand("train").cloned().unwrap();
        assert_eq!(in_flags("`batch_size` must be at least 2", &train), "--batch-size must be at least 2");
        assert_eq!(in_flags("give `resume` or `force`; key `blocks.0.attn` stays", &train), "give --resume or --force; key `blocks.0.attn` stays");
        assert_eq!(in_flags("an unclosed ` quote", &train), "an unclosed ` quote");
        // A name the command has no flag for is left as the library wrote it.
        assert_eq!(in_flags("`gemm_size` 9000", &train), "`gemm_size` 9000");
    }
}

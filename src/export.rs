use crate::args::choice;
use amg::export::{export, ExportFormat, ExportRequest, OnnxOutputs};
use amg::model::ModelFiles;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory to export.
    #[arg(long)]
    model: PathBuf,
    /// Output format.
    #[arg(long, value_parser = choice::<ExportFormat>(), default_value = "onnx")]
    format: ExportFormat,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// ONNX graph outputs, comma-separated: `features` (always), `logits` (the LA part logits).
    #[arg(long, value_delimiter = ',', default_value = "features")]
    outputs: Vec<String>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut outputs = OnnxOutputs::default();
    for o in &a.outputs {
        match o.trim() {
            "features" => {}
            "logits" => outputs.logits = true,
            other => bail!("--outputs: unknown output `{other}` (expected features, logits)"),
        }
    }
    amg::fsutil::check_output_file(&a.out, a.force)?;
    let files = ModelFiles::load(&a.model)?;
    let bytes = export(&ExportRequest { model: &files, format: a.format, outputs, out: &a.out, force: a.force })?;
    let c = &files.config();
    match a.format {
        ExportFormat::Onnx => println!(
            "exported {} → {} ({:.1} MB, ONNX opset {}): input images [batch, 3, {}, {}], output features [batch, {}]{}",
            a.model.display(),
            a.out.display(),
            bytes as f64 / 1e6,
            amg::export::onnx::OPSET,
            c.input.height,
            c.input.width,
            c.feature_dim(),
            if outputs.logits { format!(", logits [batch, {}, {}]", c.num_parts(), c.head.num_classes) } else { String::new() }
        ),
        ExportFormat::Pytorch => println!(
            "exported {} → {} ({:.1} MB, PyTorch checkpoint, AMG reference layout): load with torch.load(weights_only=True) or amg_torch.load (pip install ./python)",
            a.model.display(),
            a.out.display(),
            bytes as f64 / 1e6
        ),
    }
    Ok(())
}

//! `amg export`: the model out of amg — an ONNX graph for ONNX Runtime, TensorRT and OpenVINO, with
//! the pruning carried over.

pub mod onnx;

use crate::choice::Choice;
use crate::error::Result;
use crate::fsutil;
use crate::model::ModelFiles;
pub use onnx::OnnxOutputs;
use std::path::Path;

/// What `amg export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A standard ONNX model (opset 17).
    Onnx,
}

impl Choice for ExportFormat {
    const ALL: &'static [ExportFormat] = &[ExportFormat::Onnx];
    fn name(self) -> &'static str {
        match self {
            ExportFormat::Onnx => "onnx",
        }
    }
    fn help(self) -> &'static str {
        match self {
            ExportFormat::Onnx => "ONNX opset 17, standard operators only (ONNX Runtime, TensorRT, OpenVINO)",
        }
    }
}

/// An export to do.
pub struct ExportRequest<'a> {
    pub model: &'a ModelFiles,
    pub format: ExportFormat,
    pub outputs: OnnxOutputs,
    pub out: &'a Path,
    /// Replace `out` if it exists.
    pub force: bool,
}

/// Writes the export (under a temporary name, renamed when complete) and returns its size in bytes.
pub fn export(req: &ExportRequest) -> Result<u64> {
    fsutil::check_output_file(req.out, req.force)?;
    let bytes = match req.format {
        ExportFormat::Onnx => onnx::export_onnx(req.model, req.outputs)?,
    };
    fsutil::write_bytes_atomic(req.out, &bytes)?;
    Ok(bytes.len() as u64)
}

//! `amg export`: the model out of amg — an ONNX graph for ONNX Runtime, TensorRT and OpenVINO, and a
//! PyTorch checkpoint to fine-tune elsewhere, with the pruning carried over.

pub mod onnx;
pub mod pickle;
pub mod pytorch;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::ModelFiles;
pub use onnx::OnnxOutputs;
use std::path::Path;

crate::choice! {
    /// What `amg export` writes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ExportFormat {
        /// A standard ONNX model (opset 17).
        Onnx = "onnx" => "ONNX opset 17, standard operators only (ONNX Runtime, TensorRT, OpenVINO)",
        /// A PyTorch checkpoint (`torch.load(weights_only=True)`), AMG reference layout.
        Pytorch = "pytorch" => "a torch.save checkpoint in the AMG reference layout (the amg_torch Python package builds the model)",
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
    match req.format {
        ExportFormat::Onnx => fsutil::write_bytes_atomic(req.out, &onnx::export_onnx(req.model, req.outputs)?)?,
        ExportFormat::Pytorch => {
            if req.model.config().quantization.is_some() {
                return Err(Error::invalid(
                    "a PyTorch checkpoint holds float32 weights, and this is an INT8 model: export it as ONNX (QDQ form), or export the float32 model it was made from",
                ));
            }
            if req.outputs.logits {
                return Err(Error::invalid("`outputs` applies to ONNX graphs; a PyTorch checkpoint holds the whole model"));
            }
            pytorch::export_pytorch(req.model, req.out)?
        }
    }
    std::fs::metadata(req.out).map(|m| m.len()).map_err(|e| Error::io(req.out, e))
}

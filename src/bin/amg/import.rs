use crate::args::{choice, size};
use amg::import::{import, summary, ImportRequest, SourceFormat};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint format.
    #[arg(long = "from", value_parser = choice::<SourceFormat>())]
    from: SourceFormat,
    /// The checkpoint: .safetensors or a torch.save .pth (state dict bare or under state_dict/model).
    checkpoint: PathBuf,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Model input size HxW (multiples of 16); default: the checkpoint's. Position embeddings are
    /// resampled bicubically when the patch grid changes.
    #[arg(long, value_parser = size)]
    img_size: Option<(usize, usize)>,
    /// Heads per layer of the unpruned model (default: embed_dim / 64).
    #[arg(long)]
    heads: Option<usize>,
    /// The input size the checkpoint was trained at, if its patch grid is not square.
    #[arg(long, value_parser = size)]
    checkpoint_img_size: Option<(usize, usize)>,
    /// Replace --out if it exists and is not empty.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    let req = ImportRequest { format: a.from, checkpoint: a.checkpoint, img_size: a.img_size, heads: a.heads, checkpoint_img_size: a.checkpoint_img_size };
    let files = import(&req)?;
    files.save(&a.out, a.force)?;
    println!("{}", summary(&files, &req, &a.out));
    Ok(())
}

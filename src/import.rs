use crate::args::{at_least_one, choice, rgb, rgb_positive, size};
use amg::import::{import, summary, ImportRequest, SourceFormat, TransReidOptions};
use amg::model::config::NeckFeat;
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
    /// Model input size HxW (multiples of 16 for non-overlapping patches); default: the
    /// checkpoint's. Position embeddings are resampled when the patch grid changes (bicubically as
    /// timm does; bilinearly for TransReID, as it does).
    #[arg(long, value_parser = size)]
    img_size: Option<(usize, usize)>,
    /// Heads per layer of the unpruned model (default: embed_dim / 64; TransReID ViT-S: 8).
    #[arg(long)]
    heads: Option<usize>,
    /// The input size the checkpoint was trained at, if its patch grid is not square (TransReID:
    /// worked out when it is 256x128 or 384x128).
    #[arg(long, value_parser = size)]
    checkpoint_img_size: Option<(usize, usize)>,
    /// Stride of the patch embedding (default: the patch size; TransReID: 16 or 12, from the
    /// position embedding's patch count).
    #[arg(long, value_parser = at_least_one)]
    stride: Option<usize>,
    /// Input normalisation mean R,G,B (default ImageNet's; TransReID's 0.5,0.5,0.5).
    #[arg(long, value_parser = rgb, requires = "std")]
    mean: Option<[f32; 3]>,
    /// Input normalisation std R,G,B (default ImageNet's; TransReID's 0.5,0.5,0.5).
    #[arg(long, value_parser = rgb_positive, requires = "mean")]
    std: Option<[f32; 3]>,
    /// TransReID: SIE_COE, the weight of the camera embedding (not stored in checkpoints).
    #[arg(long, default_value_t = TransReidOptions::default().sie_coefficient, allow_negative_numbers = true)]
    sie_coefficient: f32,
    /// TransReID: viewpoints per camera in the SIE table (its SIE_VIEW vehicle configurations); the
    /// table's rows are cameras × viewpoints.
    #[arg(long, value_parser = at_least_one, default_value_t = TransReidOptions::default().sie_views)]
    sie_views: usize,
    /// TransReID: TEST.NECK_FEAT, the retrieval feature before or after the BNNeck's BatchNorm.
    #[arg(long, value_parser = choice::<NeckFeat>(), default_value = "before")]
    neck_feat: NeckFeat,
    /// TransReID JPM: SHIFT_NUM, where the shifted patch sequence starts.
    #[arg(long, value_parser = at_least_one, default_value_t = TransReidOptions::default().shift)]
    jpm_shift: usize,
    /// TransReID JPM: SHUFFLE_GROUP, how many runs the shifted patches are interleaved from.
    #[arg(long, value_parser = at_least_one, default_value_t = TransReidOptions::default().groups)]
    jpm_groups: usize,
    /// TransReID JPM: RE_ARRANGE, shift and shuffle the patches (true) or take consecutive runs.
    #[arg(long, default_value_t = TransReidOptions::default().rearrange, action = clap::ArgAction::Set)]
    jpm_rearrange: bool,
    /// Replace --out if it exists and is not empty.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    let req = ImportRequest {
        format: a.from,
        checkpoint: a.checkpoint,
        img_size: a.img_size,
        heads: a.heads,
        checkpoint_img_size: a.checkpoint_img_size,
        stride: a.stride,
        normalise: a.mean.zip(a.std),
        transreid: TransReidOptions {
            sie_coefficient: a.sie_coefficient,
            sie_views: a.sie_views,
            neck_feat: a.neck_feat,
            shift: a.jpm_shift,
            groups: a.jpm_groups,
            rearrange: a.jpm_rearrange,
        },
    };
    let files = import(&req)?;
    files.save(&a.out, a.force)?;
    println!("{}", summary(&files, &req, &a.out));
    Ok(())
}

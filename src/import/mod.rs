//! `amg import`: timm, LA-Transformer and AMG-reference checkpoints into a model directory.

use crate::error::{Error, Result};
use crate::model::{Arch, HeadConfig, LayerPlan, ModelConfig, ModelFiles, Source};
pub mod pth;

use pth::{read_checkpoint, PthFile};
use crate::resample::resample_pos_embed;
use crate::tensor::{shape_str, HostTensor, RawTensor, TensorMap};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceFormat {
    /// A timm VisionTransformer state dict (retrieval only; any classifier is dropped).
    Timm,
    /// LA-Transformer: `model.*` backbone plus `classifier{i}` part classifiers.
    LaTransformer,
    /// The AMG reference pruning code: LA-Transformer with pruned heads and `token_index` masks.
    Amg,
}

impl SourceFormat {
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Timm => "timm",
            SourceFormat::LaTransformer => "la-transformer",
            SourceFormat::Amg => "amg",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub format: SourceFormat,
    pub checkpoint: PathBuf,
    /// The model's input size; defaults to the checkpoint's own.
    pub img_size: Option<(usize, usize)>,
    /// Heads per layer of the unpruned model; defaults to embed_dim / 64.
    pub heads: Option<usize>,
    /// The input size the checkpoint was trained at, needed only when its patch grid is not square.
    pub checkpoint_img_size: Option<(usize, usize)>,
}

struct Ckpt<'a> {
    path: &'a Path,
    tensors: BTreeMap<String, RawTensor>,
    used: std::collections::BTreeSet<String>,
}

impl Ckpt<'_> {
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn raw(&mut self, name: &str) -> Result<RawTensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::tensor(self.path, name, "missing from the checkpoint"))?.clone();
        self.used.insert(name.to_string());
        Ok(t)
    }
    fn f32(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let raw = self.raw(name)?;
        if raw.shape != shape {
            return Err(Error::tensor(self.path, name, format!("shape {} but the model needs {}", shape_str(&raw.shape), shape_str(shape))));
        }
        let data = raw.to_f32().ok_or_else(|| Error::tensor(self.path, name, format!("expected a float tensor, found {}", raw.dtype.name())))?;
        Ok(HostTensor::new(raw.shape, data))
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.clone()).ok_or_else(|| Error::tensor(self.path, name, "missing from the checkpoint"))
    }
}

/// Reads a checkpoint and converts it into an amg model (not yet written anywhere).
pub fn import(opts: &ImportOptions) -> Result<ModelFiles> {
    let path = opts.checkpoint.as_path();
    let (mut tensors, pth) = read_checkpoint(path)?;
    // A state dict saved from nn.DataParallel prefixes every key with `module.`.
    if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with("module.")) {
        tensors = tensors.into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect();
    }
    let bb = match opts.format {
        SourceFormat::Timm => "",
        SourceFormat::LaTransformer | SourceFormat::Amg => "model.",
    };
    if !tensors.contains_key(&format!("{bb}patch_embed.proj.weight")) {
        let hint = match (opts.format, tensors.contains_key("patch_embed.proj.weight"), tensors.contains_key("model.patch_embed.proj.weight")) {
            (SourceFormat::Timm, _, true) => " (its keys start with `model.`: try --from la-transformer or --from amg)",
            (_, true, _) => " (its keys have no `model.` prefix: try --from timm)",
            _ => "",
        };
        return Err(Error::tensor(path, format!("{bb}patch_embed.proj.weight"), format!("missing: not a {} checkpoint{hint}", opts.format.name())));
    }
    let mut ck = Ckpt { path, tensors, used: Default::default() };

    // Architecture from the tensors.
    let pe = ck.shape(&format!("{bb}patch_embed.proj.weight"))?;
    if pe.len() != 4 || pe[1] != 3 || pe[2] != pe[3] {
        return Err(Error::tensor(path, format!("{bb}patch_embed.proj.weight"), format!("shape {}, expected [D, 3, p, p]", shape_str(&pe))));
    }
    let (d, p) = (pe[0], pe[2]);
    let depth = (0..).take_while(|l| ck.has(&format!("{bb}blocks.{l}.norm1.weight"))).count();
    if depth == 0 {
        return Err(Error::tensor(path, format!("{bb}blocks.0.norm1.weight"), "missing: the checkpoint has no transformer blocks"));
    }
    let mlp = ck.shape(&format!("{bb}blocks.0.mlp.fc1.weight"))?[0];
    let qkv_bias = ck.has(&format!("{bb}blocks.0.attn.qkv.bias"));
    let (num_heads, head_dim) = match opts.heads {
        Some(h) if h == 0 || d % h != 0 => return Err(Error::invalid(format!("--heads {h}: embed_dim {d} is not divisible by it"))),
        Some(h) if opts.format == SourceFormat::Amg && d / h != 64 => {
            return Err(Error::invalid(format!("--heads {h}: the AMG reference code uses 64-dim heads, so a {d}-wide model has {} heads", d / 64)))
        }
        Some(h) => (h, d / h),
        None if d % 64 == 0 => (d / 64, 64),
        None => return Err(Error::invalid(format!("embed_dim {d} is not a multiple of 64: give the number of heads with --heads"))),
    };
    let arch0 = Arch { preset: None, embed_dim: d, depth, num_heads, head_dim, mlp_dim: mlp, patch_size: p, ln_eps: 1e-6, qkv_bias };
    let arch = Arch { preset: arch0.infer_preset(), ..arch0 };

    // Grids: the checkpoint's (from its position embedding) and the requested one.
    let pos_shape = ck.shape(&format!("{bb}pos_embed"))?;
    if pos_shape.len() != 3 || pos_shape[0] != 1 || pos_shape[2] != d || pos_shape[1] < 2 {
        return Err(Error::tensor(path, format!("{bb}pos_embed"), format!("shape {}, expected [1, 1 + patches, {d}]", shape_str(&pos_shape))));
    }
    let ck_patches = pos_shape[1] - 1;
    let ck_grid = match opts.checkpoint_img_size {
        Some((h, w)) => {
            if h % p != 0 || w % p != 0 || (h / p) * (w / p) != ck_patches {
                return Err(Error::invalid(format!(
                    "--checkpoint-img-size {h}x{w} gives a {}x{} grid, but the checkpoint's position embedding has {ck_patches} patches",
                    h / p,
                    w / p
                )));
            }
            (h / p, w / p)
        }
        None => {
            let s = (ck_patches as f64).sqrt().round() as usize;
            if s * s != ck_patches {
                return Err(Error::invalid(format!(
                    "the checkpoint's position embedding has {ck_patches} patches, not a square grid: give its input size with --checkpoint-img-size HxW"
                )));
            }
            (s, s)
        }
    };
    let (height, width) = opts.img_size.unwrap_or((ck_grid.0 * p, ck_grid.1 * p));
    let grid = (height / p, width / p);

    let head = match opts.format {
        SourceFormat::Timm => HeadConfig::none(),
        _ => {
            let nparts = (0..).take_while(|i| ck.has(&format!("classifier{i}.add_block.0.weight"))).count();
            if nparts == 0 {
                return Err(Error::tensor(path, "classifier0.add_block.0.weight", "missing: an LA-Transformer checkpoint has one classifier per part"));
            }
            if nparts != grid.0 {
                return Err(Error::invalid(format!(
                    "the checkpoint has {nparts} part classifiers but a {height}x{width} input has {} patch rows: LA-Transformer needs one classifier per row, so choose an input with {nparts} rows ({} pixels high)",
                    grid.0,
                    nparts * p
                )));
            }
            let nb = ck.shape("classifier0.add_block.0.weight")?[0];
            let c = ck.shape("classifier0.classifier.0.weight")?[0];
            HeadConfig { bottleneck: nb, ..HeadConfig::la(c) }
        }
    };

    let mut notes = Vec::new();
    let mut cfg = ModelConfig::new(
        arch,
        height,
        width,
        head,
        Source { format: opts.format.name().into(), path: display_path(path), notes: vec![], amg_version: env!("CARGO_PKG_VERSION").into() },
    )?;

    // Per-layer plan: heads from the qkv shapes, tokens from `token_index` masks.
    let ck_n = ck_patches + 1;
    for l in 0..depth {
        let rows = ck.shape(&format!("{bb}blocks.{l}.attn.qkv.weight"))?[0];
        if rows % (3 * head_dim) != 0 || rows / (3 * head_dim) > num_heads || rows == 0 {
            return Err(Error::tensor(
                path,
                format!("{bb}blocks.{l}.attn.qkv.weight"),
                format!("has {rows} rows, expected 3 × (heads kept ≤ {num_heads}) × {head_dim}"),
            ));
        }
        let kept_heads = rows / (3 * head_dim);
        if kept_heads != num_heads && opts.format != SourceFormat::Amg {
            return Err(Error::tensor(
                path,
                format!("{bb}blocks.{l}.attn.qkv.weight"),
                format!("has {kept_heads} heads of {head_dim}, not {num_heads}: a head-pruned checkpoint is imported with --from amg (or give --heads)"),
            ));
        }
        cfg.layers[l].heads = (0..kept_heads).collect();
        let ti = format!("{bb}blocks.{l}.attn.token_index");
        if ck.has(&ti) {
            let mask = ck.raw(&ti)?;
            let m = mask.to_i64().ok_or_else(|| Error::tensor(path, &ti, format!("expected a bool mask, found {}", mask.dtype.name())))?;
            if m.len() != ck_n {
                return Err(Error::tensor(path, &ti, format!("has {} entries, expected {ck_n} (CLS + patches)", m.len())));
            }
            let kept: Vec<usize> = m.iter().enumerate().filter(|(_, &v)| v != 0).map(|(i, _)| i).collect();
            if kept.first() != Some(&0) {
                return Err(Error::tensor(path, &ti, "drops the CLS token (position 0), which is always kept"));
            }
            if kept.len() != ck_n {
                if opts.format != SourceFormat::Amg {
                    return Err(Error::tensor(path, &ti, "prunes tokens: import token-pruned checkpoints with --from amg"));
                }
                if grid != ck_grid {
                    return Err(Error::invalid(format!(
                        "layer {l} keeps only some token positions of the checkpoint's {}x{} grid; a token-pruned model cannot be resized to {height}x{width}",
                        ck_grid.0 * p,
                        ck_grid.1 * p
                    )));
                }
                cfg.layers[l].tokens = kept;
            }
        }
    }
    if opts.format == SourceFormat::Amg {
        if cfg.layers.iter().any(|l| l.heads.len() != num_heads) {
            notes.push(format!(
                "the reference checkpoint does not record which original heads were removed; kept heads are numbered 0..h' of the original {num_heads}"
            ));
        }
        if let Some(pth) = &pth {
            cross_check_reference_lists(pth, &cfg.layers)?;
        }
    }

    // Tensors.
    let mut out = TensorMap::new();
    for (name, shape) in crate::model::weights::expected_tensors(&cfg) {
        let src = source_name(&name, bb);
        let t = if name == "pos_embed" {
            let t = ck.f32(&src, &[1, ck_n, d])?;
            if grid != ck_grid {
                notes.push(format!("position embedding resampled bicubically from a {}x{} to a {}x{} patch grid", ck_grid.0, ck_grid.1, grid.0, grid.1));
                HostTensor::new(shape, resample_pos_embed(&t.data, d, ck_grid, grid))
            } else {
                t
            }
        } else {
            ck.f32(&src, &shape)?
        };
        out.insert(name, t);
    }
    // Tensors the model does not use must be known to be harmless.
    let unused: Vec<String> = ck.tensors.keys().filter(|k| !ck.used.contains(*k)).cloned().collect();
    for k in unused {
        let ignorable = k.ends_with("num_batches_tracked")
            || k.ends_with(".token_index")
            || k == format!("{bb}head.weight")
            || k == format!("{bb}head.bias")
            || (!bb.is_empty() && (k == "cls_token" || k == "pos_embed"));
        if k == "cls_token" || k == "pos_embed" {
            // LA-Transformer registers the backbone's cls_token/pos_embed a second time at the top.
            let alias = ck.tensors[&k].to_f32();
            let orig = ck.tensors.get(&format!("{bb}{k}")).and_then(|t| t.to_f32());
            if !bb.is_empty() && alias != orig {
                return Err(Error::tensor(path, &k, format!("differs from `{bb}{k}`, which it should alias in an LA-Transformer checkpoint")));
            }
        }
        if !ignorable {
            return Err(Error::tensor(
                path,
                &k,
                format!(
                    "not part of a plain ViT{} (layer scale, register tokens, q/k norms and other variants are not supported)",
                    if bb.is_empty() { "" } else { " + LA head" }
                ),
            ));
        }
    }
    cfg.source.notes = notes;
    let files = ModelFiles { config: cfg, tensors: out };
    crate::model::weights::check_tensors(&files.config, &files.tensors, path)?;
    Ok(files)
}

/// The checkpoint key for one of our tensor names.
fn source_name(name: &str, bb: &str) -> String {
    if let Some(rest) = name.strip_prefix("parts.") {
        let (i, tail) = rest.split_once('.').expect("parts.{i}.x");
        let t = match tail {
            "bottleneck.weight" => "add_block.0.weight",
            "bottleneck.bias" => "add_block.0.bias",
            "classifier.weight" => "classifier.0.weight",
            "classifier.bias" => "classifier.0.bias",
            bn => return format!("classifier{i}.add_block.1.{}", bn.trim_start_matches("bn.")),
        };
        format!("classifier{i}.{t}")
    } else {
        format!("{bb}{name}")
    }
}

/// The reference code also pickles per-layer `heads` (kept head counts) and `channels` (kept
/// token counts, CLS included); when present they must agree with the tensors.
fn cross_check_reference_lists(pth: &PthFile, layers: &[LayerPlan]) -> Result<()> {
    for (key, what, counts) in [
        ("heads", "heads kept", layers.iter().map(|l| l.heads.len()).collect::<Vec<_>>()),
        ("channels", "key tokens kept", layers.iter().map(|l| l.tokens.len()).collect()),
    ] {
        if let Some(list) = pth.int_list(key)? {
            if list.len() != counts.len() || list.iter().zip(&counts).any(|(a, b)| *a != *b as i64) {
                return Err(Error::file(
                    pth.path(),
                    format!("`{key}` lists {what} per layer as {list:?}, but the tensors give {counts:?}"),
                ));
            }
        }
    }
    Ok(())
}

fn display_path(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

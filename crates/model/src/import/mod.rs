//! `amg import`: timm, LA-Transformer and AMG-reference checkpoints into a model directory.
//!
//! The steps, in order: read the checkpoint's tensors (`.pth` through a restricted unpickler, or
//! safetensors); infer the architecture from their shapes; work out the checkpoint's patch grid
//! and the requested one; the head; the per-layer plan (kept heads from the qkv shapes, kept key
//! tokens from `token_index` masks); then take every tensor the model definition calls for under
//! the format's key scheme (`scheme`), resampling the position embedding when the grid changes,
//! and refuse any tensor left over that is not known to be harmless.

pub mod pickle_op;
pub mod pth;
pub mod scheme;

use crate::choice::Choice;
use crate::error::{Error, Result};
use crate::model::config::{grid_of, NeckFeat};
use crate::model::params::{Key, VitParams};
use crate::model::{Arch, HeadConfig, LayerPlan, ModelConfig, ModelFiles, Source};
use crate::resample::resample_pos_embed_for;
use crate::tensor::{shape_str, HostTensor, RawTensor};
use pth::{read_checkpoint, PthFile};
pub use scheme::{KeyScheme, SourceFormat};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What to import, and how.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub format: SourceFormat,
    pub checkpoint: PathBuf,
    /// The model's input size; defaults to the checkpoint's own.
    pub img_size: Option<(usize, usize)>,
    /// Heads per layer of the unpruned model; defaults to embed_dim / 64.
    pub heads: Option<usize>,
    /// The input size the checkpoint was trained at, needed only when its patch grid is not square.
    pub checkpoint_img_size: Option<(usize, usize)>,
    /// The patch embedding's stride (default: the patch size; TransReID: worked out from the
    /// position embedding's patch count at its usual input sizes).
    pub stride: Option<usize>,
    /// Input normalisation (mean, std per RGB channel); default ImageNet's, TransReID's 0.5.
    pub normalise: Option<([f32; 3], [f32; 3])>,
    /// What a TransReID checkpoint does not store.
    pub transreid: TransReidOptions,
}

/// TransReID training settings that its checkpoints do not record (defaults: its configurations').
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransReidOptions {
    /// `MODEL.SIE_COE`.
    pub sie_coefficient: f32,
    /// Viewpoints per camera in the SIE table (1: cameras only, TransReID's person configurations).
    pub sie_views: usize,
    /// `TEST.NECK_FEAT`.
    pub neck_feat: NeckFeat,
    /// `MODEL.SHIFT_NUM`, `MODEL.SHUFFLE_GROUP`, `MODEL.RE_ARRANGE`.
    pub shift: usize,
    pub groups: usize,
    pub rearrange: bool,
}

impl Default for TransReidOptions {
    fn default() -> Self {
        let jpm = crate::model::config::Jpm::transreid();
        TransReidOptions {
            sie_coefficient: crate::model::config::Sie::TRANSREID_COEFFICIENT,
            sie_views: 1,
            neck_feat: NeckFeat::Before,
            shift: jpm.shift,
            groups: jpm.groups,
            rearrange: jpm.rearrange,
        }
    }
}

/// TransReID's ViT configurations normalise with mean = std = 0.5 per channel.
pub const TRANSREID_NORMALISATION: ([f32; 3], [f32; 3]) = ([0.5; 3], [0.5; 3]);

impl ImportRequest {
    pub fn new(format: SourceFormat, checkpoint: impl Into<PathBuf>) -> Self {
        ImportRequest {
            format,
            checkpoint: checkpoint.into(),
            img_size: None,
            heads: None,
            checkpoint_img_size: None,
            stride: None,
            normalise: None,
            transreid: TransReidOptions::default(),
        }
    }
}

/// A checkpoint's tensors, looked up through its format's key scheme, remembering which were used.
struct Checkpoint<'a> {
    path: &'a Path,
    format: SourceFormat,
    scheme: KeyScheme,
    tensors: BTreeMap<String, RawTensor>,
    pth: Option<PthFile>,
    used: BTreeSet<String>,
    /// The keys of a model as deep as the checkpoint, for finding tensors by amg's name.
    keys: VitParams<Key>,
    /// The configuration an `amg export --format pytorch` checkpoint carries (`amg_config`).
    amg_config: Option<ModelConfig>,
    /// A factor folded into the query rows (TransReID's ViT-S attention scale), once known.
    q_scale: std::cell::Cell<Option<f32>>,
}

/// Patch grids: the checkpoint's (from its position embedding) and the model's, with the input
/// sizes they come from and the patch embedding's stride.
#[derive(Debug, Clone, Copy)]
struct Grids {
    checkpoint: (usize, usize),
    model: (usize, usize),
    model_size: (usize, usize),
    stride: usize,
}

/// Reads a checkpoint and converts it into an amg model (not yet written anywhere).
pub fn import(req: &ImportRequest) -> Result<ModelFiles> {
    let mut ck = Checkpoint::read(req)?;
    let mut notes = Vec::new();
    let mut arch = ck.architecture(req, &mut notes)?;
    let grids = ck.grids(req, &arch, &mut notes)?;
    arch.patch_stride = (grids.stride != arch.patch_size).then_some(grids.stride);
    ck.side_information(req, &mut arch)?;
    let head = ck.head(req, grids, arch.patch_size)?;
    let (h, w) = grids.model_size;
    let source = Source {
        format: req.format.name().into(),
        path: display_path(ck.path),
        notes: vec![],
        amg_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let mut cfg = ModelConfig::new(arch, h, w, head, source)?;
    if let Some((mean, std)) = req.normalise.or((req.format == SourceFormat::TransReid).then_some(TRANSREID_NORMALISATION)) {
        cfg.input.mean = mean;
        cfg.input.std = std;
    }
    ck.plan(&mut cfg, grids, &mut notes)?;
    ck.restore_amg_config(&mut cfg, grids, &mut notes)?;
    let params = ck.tensors(&cfg, grids, &mut notes)?;
    ck.check_unused()?;
    cfg.source.notes = notes;
    let files = ModelFiles { config: cfg, params, int8: None };
    files.params.check(&files.config, ck.path)?;
    Ok(files)
}

/// One line saying what was imported, and the notes the import made.
pub fn summary(files: &ModelFiles, req: &ImportRequest, out: &Path) -> String {
    let c = &files.config;
    let mut s = format!(
        "imported {} ({}): {}x{} input, {}{}{}, head {}, {} heads kept of {}, {} key tokens kept of {} → {}",
        req.checkpoint.display(),
        req.format,
        c.input.height,
        c.input.width,
        crate::text::count(c.arch.depth, "layer"),
        match (c.arch.class_token, c.arch.dist_token) {
            (true, true) => ", class and distillation tokens (DeiT)",
            (false, true) => ", distillation token",
            (true, false) => "",
            (false, false) => ", no class token",
        },
        match (&c.arch.patch_stride, &c.arch.sie) {
            (Some(s), Some(sie)) => format!(", overlapping patches (stride {s}), SIE over {}", sie.describe()),
            (Some(s), None) => format!(", overlapping patches (stride {s})"),
            (None, Some(sie)) => format!(", SIE over {}", sie.describe()),
            (None, None) => String::new(),
        },
        c.describe_head(),
        c.attention_heads().iter().map(|h| h.len()).sum::<usize>(),
        c.attention_heads().len() * c.arch.num_heads,
        c.layers.iter().map(|l| l.tokens.len()).sum::<usize>(),
        c.arch.depth * c.num_tokens(),
        out.display()
    );
    for n in &c.source.notes {
        s.push_str(&format!("\nnote: {n}"));
    }
    s
}

impl<'a> Checkpoint<'a> {
    /// Reads the tensors, strips a `module.` prefix (nn.DataParallel), and checks that the
    /// checkpoint looks like the format asked for.
    fn read(req: &'a ImportRequest) -> Result<Self> {
        let path = req.checkpoint.as_path();
        let (mut tensors, pth) = read_checkpoint(path)?;
        if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with("module.")) {
            tensors = tensors.into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect();
        }
        let scheme = req.format.scheme();
        let probe = VitParams::keys(1, 0, 0);
        let pe = scheme.key(&probe.patch_embed.weight);
        if !tensors.contains_key(&pe) {
            let timm = SourceFormat::Timm.scheme().key(&probe.patch_embed.weight);
            let la = SourceFormat::LaTransformer.scheme().key(&probe.patch_embed.weight);
            let hint = match (req.format, tensors.contains_key(&timm), tensors.contains_key(&la)) {
                (SourceFormat::Timm | SourceFormat::Deit, _, true) => " (its keys start with `model.`: try `from` la-transformer or `from` amg)",
                (_, true, _) => " (its keys have no `model.` prefix: try `from` timm)",
                _ => "",
            };
            return Err(Error::tensor(path, pe, format!("missing: not a {} checkpoint{hint}", req.format)));
        }
        let amg_config = match &pth {
            Some(p) => p
                .string("amg_config")?
                .map(|text| {
                    let c: ModelConfig =
                        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("`amg_config` is not an amg model configuration: {e}")))?;
                    c.validate().map_err(|e| Error::file(path, format!("`amg_config`: {e}")))?;
                    Ok::<_, Error>(c)
                })
                .transpose()?,
            None => None,
        };
        let mut ck = Checkpoint { path, format: req.format, scheme, tensors, pth, used: BTreeSet::new(), keys: probe, amg_config, q_scale: Default::default() };
        // Counted against the configuration limits, so a file listing a million blocks is refused
        // in linear time.
        use crate::model::config::{LIMIT_DEPTH, LIMIT_SIDE};
        let probe = VitParams::keys(LIMIT_DEPTH + 1, 0, 0);
        let mut depth = probe.blocks.iter().take_while(|b| ck.has(&b.norm1.weight)).count();
        if depth > LIMIT_DEPTH {
            return Err(Error::file(path, format!("more than {LIMIT_DEPTH} transformer blocks (`blocks.N.…`): not a model amg supports")));
        }
        if req.format == SourceFormat::TransReid && ck.tensors.contains_key("b1.0.norm1.weight") {
            // TransReID's base keeps the last block JPM never runs (b1 replaces it): amg's depth is
            // the base's. An amg export leaves that block out, so b1 adds one.
            if ck.amg_config.is_some() {
                depth += 1;
            }
            ck.scheme = ck.scheme.with_jpm(depth);
        }
        let necks = if req.format == SourceFormat::TransReid {
            let probe = VitParams::keys(0, 0, 65);
            probe.necks.iter().take_while(|n| ck.has(&n.bn.weight)).count()
        } else {
            0
        };
        let la = req.format.has_la_head() && ck.amg_config.as_ref().is_none_or(|c| c.head.kind == crate::model::HeadKind::La);
        let parts = if la {
            let probe = VitParams::keys(0, LIMIT_SIDE + 1, 0);
            let parts = probe.parts.iter().take_while(|p| ck.has(&p.bottleneck.weight)).count();
            if parts > LIMIT_SIDE {
                return Err(Error::file(path, format!("more than {LIMIT_SIDE} part classifiers: not a model amg supports")));
            }
            parts
        } else {
            0
        };
        ck.keys = VitParams::keys(depth, parts, necks);
        Ok(ck)
    }

    fn name(&self, key: &Key) -> String {
        self.scheme.key(key)
    }
    fn has(&self, key: &Key) -> bool {
        self.tensors.contains_key(&self.name(key))
    }
    fn shape(&self, key: &Key) -> Result<Vec<usize>> {
        let name = self.name(key);
        self.tensors.get(&name).map(|t| t.shape.clone()).ok_or_else(|| Error::tensor(self.path, name, "missing from the checkpoint"))
    }
    fn raw(&mut self, name: &str) -> Result<RawTensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::tensor(self.path, name, "missing from the checkpoint"))?.clone();
        self.used.insert(name.to_string());
        Ok(t)
    }
    /// The tensor at `key` as float32, which must have `shape`.
    fn f32(&mut self, key: &Key, shape: &[usize]) -> Result<HostTensor> {
        let name = self.name(key);
        let raw = self.raw(&name)?;
        if raw.shape != shape {
            return Err(Error::tensor(self.path, &name, format!("shape {} but the model needs {}", shape_str(&raw.shape), shape_str(shape))));
        }
        let data = raw.to_f32().ok_or_else(|| Error::tensor(self.path, &name, format!("expected a float tensor, found {}", raw.dtype.name())))?;
        let t = HostTensor::new(raw.shape, data);
        crate::tensor::check_finite_weights(&t, self.path, &name)?;
        Ok(t)
    }

    /// Width, depth, heads, MLP width and patch size from the tensors' shapes.
    fn architecture(&self, req: &ImportRequest, notes: &mut Vec<String>) -> Result<Arch> {
        let k = &self.keys;
        let pe = self.shape(&k.patch_embed.weight)?;
        if pe.len() != 4 || pe[1] != 3 || pe[2] != pe[3] {
            return Err(Error::tensor(self.path, self.name(&k.patch_embed.weight), format!("shape {}, expected [D, 3, p, p]", shape_str(&pe))));
        }
        let (d, p) = (pe[0], pe[2]);
        let Some(first) = k.blocks.first() else {
            return Err(Error::tensor(
                self.path,
                self.name(&VitParams::keys(1, 0, 0).blocks[0].norm1.weight),
                "missing: the checkpoint has no transformer blocks",
            ));
        };
        let mlp = self.shape(&first.fc1.weight)?[0];
        let qkv_bias = first.qkv.bias.as_ref().is_some_and(|b| self.has(b));
        // An amg export records its head count; the reference code's checkpoints use 64-dim heads;
        // TransReID's ViT-S (its only variant without a qkv bias) has 8 heads of 96 at width 768.
        // (An amg export has it folded already.)
        let transreid_small = req.format == SourceFormat::TransReid && !qkv_bias && self.amg_config.is_none();
        let recorded = self.amg_config.as_ref().map(|c| c.arch.num_heads).or((transreid_small && d == 768).then_some(8));
        let (num_heads, head_dim) = match req.heads.or(recorded) {
            Some(h) if h == 0 || d % h != 0 => return Err(Error::invalid(format!("`heads` {h}: embed_dim {d} is not divisible by it"))),
            Some(h) if req.format.may_be_pruned() && recorded.is_none() && d / h != 64 => {
                return Err(Error::invalid(format!("`heads` {h}: the AMG reference code uses 64-dim heads, so a {d}-wide model has {} heads", d / 64)))
            }
            Some(h) => (h, d / h),
            None if d % 64 == 0 => (d / 64, 64),
            None => return Err(Error::invalid(format!("embed_dim {d} is not a multiple of 64: give the number of heads with `heads`"))),
        };
        if transreid_small {
            // TransReID's ViT-S scales attention logits by embed_dim^-0.5, not head_dim^-0.5:
            // q·kᵀ·D^-½ = (c·q)·kᵀ·d_h^-½ with c = (d_h / D)^½, folded into the query rows.
            let c = (head_dim as f64 / d as f64).sqrt() as f32;
            notes.push(format!(
                "TransReID ViT-S (no qkv bias): {num_heads} heads of {head_dim}; its attention scale {d}^-0.5 is folded into the query rows (× {c:.6})"
            ));
            self.q_scale.set(Some(c));
        }
        let arch = Arch {
            preset: None,
            embed_dim: d,
            depth: k.blocks.len(),
            num_heads,
            head_dim,
            mlp_dim: mlp,
            patch_size: p,
            ln_eps: 1e-6,
            qkv_bias,
            class_token: k.cls_token.as_ref().is_some_and(|t| self.has(t)),
            dist_token: k.dist_token.as_ref().is_some_and(|t| self.has(t)),
            patch_stride: None,
            sie: None,
            jpm: None,
        };
        Ok(Arch { preset: arch.infer_preset(), ..arch })
    }

    /// The checkpoint's patch grid (from its position embedding, or `--checkpoint-img-size`) and
    /// the model's (`--img-size`, default the checkpoint's), and the stride.
    fn grids(&self, req: &ImportRequest, arch: &Arch, notes: &mut Vec<String>) -> Result<Grids> {
        let pos = &self.keys.pos_embed;
        let shape = self.shape(pos)?;
        let (d, p) = (arch.embed_dim, arch.patch_size);
        let prefix = usize::from(arch.class_token) + usize::from(arch.dist_token);
        if shape.len() != 3 || shape[0] != 1 || shape[2] != d || shape[1] <= prefix {
            return Err(Error::tensor(self.path, self.name(pos), format!("shape {}, expected [1, {prefix} + patches, {d}]", shape_str(&shape))));
        }
        if let Some(s) = req.stride {
            if s == 0 || s > p {
                return Err(Error::invalid(format!("`stride` {s}: expected 1 to the patch size {p}")));
            }
        }
        let patches = shape[1] - prefix;
        let exported = self.amg_config.as_ref().map(|c| ((c.input.height, c.input.width), c.arch.stride()));
        let fits = |(h, w): (usize, usize), s: usize| h >= p && w >= p && grid_of(h, w, p, s).0 * grid_of(h, w, p, s).1 == patches;
        let (ck_size, stride) = match (req.checkpoint_img_size, exported) {
            (Some(size), _) => {
                let s = req.stride.unwrap_or(p);
                if !fits(size, s) {
                    let (gh, gw) = grid_of(size.0.max(p), size.1.max(p), p, s);
                    return Err(Error::invalid(format!(
                        "`checkpoint_img_size` {}x{} at stride {s} gives a {gh}x{gw} grid, but the checkpoint's position embedding has {patches} patches",
                        size.0, size.1
                    )));
                }
                (size, s)
            }
            (None, Some((size, s))) => (size, req.stride.unwrap_or(s)),
            (None, None) if self.format == SourceFormat::TransReid => {
                // TransReID trains at 256x128 or 384x128 with stride 16 or 12: the patch count says which.
                let strides: Vec<usize> = match req.stride {
                    Some(s) => vec![s],
                    None => vec![p, p * 3 / 4],
                };
                let found: Vec<((usize, usize), usize)> =
                    [(256, 128), (384, 128)].into_iter().flat_map(|size| strides.iter().map(move |&s| (size, s))).filter(|&(size, s)| fits(size, s)).collect();
                match found.as_slice() {
                    [(size, s)] => {
                        let (gh, gw) = grid_of(size.0, size.1, p, *s);
                        notes.push(format!(
                            "trained at {}x{} with stride {s}, as the position embedding's {patches} patches ({gh}x{gw}) say; give `checkpoint_img_size` and `stride` otherwise",
                            size.0, size.1
                        ));
                        (*size, *s)
                    }
                    _ => {
                        return Err(Error::invalid(format!(
                            "the checkpoint's position embedding has {patches} patches, which TransReID's usual 256x128 and 384x128 inputs at stride {} do not give: give its input size with `checkpoint_img_size` HxW and its stride with `stride`",
                            strides.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" or ")
                        )))
                    }
                }
            }
            (None, None) => {
                let sq = (patches as f64).sqrt().round() as usize;
                if sq * sq != patches {
                    return Err(Error::invalid(format!(
                        "the checkpoint's position embedding has {patches} patches, not a square grid: give its input size with `checkpoint_img_size` HxW"
                    )));
                }
                let s = req.stride.unwrap_or(p);
                let side = (sq - 1) * s + p;
                ((side, side), s)
            }
        };
        let model_size = req.img_size.unwrap_or(ck_size);
        let (h, w) = model_size;
        if h < p || w < p || (stride == p && (h % p != 0 || w % p != 0)) {
            return Err(Error::invalid(format!("`img_size` {h}x{w} must be a positive multiple of the patch size {p} in both dimensions")));
        }
        Ok(Grids { checkpoint: grid_of(ck_size.0, ck_size.1, p, stride), model: grid_of(h, w, p, stride), model_size, stride })
    }

    /// TransReID's side information embedding: its camera count from `base.sie_embed`, its
    /// coefficient from the request (checkpoints do not store it).
    /// With JPM, the local feature count from the checkpoint's BNNecks (`bottleneck_1..k`).
    fn side_information(&self, req: &ImportRequest, arch: &mut Arch) -> Result<()> {
        if self.scheme_has_jpm() {
            let o = req.transreid;
            let divide = self.keys.necks.len().saturating_sub(1);
            if divide == 0 {
                return Err(Error::tensor(
                    self.path,
                    "bottleneck_1.weight",
                    "missing: a TransReID checkpoint with JPM (`b1.*`, `b2.*`) has a BNNeck per local feature",
                ));
            }
            arch.jpm = Some(crate::model::config::Jpm { shift: o.shift, groups: o.groups, divide, rearrange: o.rearrange, heads: vec![] });
        } else if self.keys.necks.len() > 1 {
            return Err(Error::tensor(self.path, "bottleneck_1.weight", "a local-feature BNNeck without the JPM branches `b1.*` and `b2.*`"));
        }
        let Some(key) = self.keys.sie_embed.as_ref().filter(|k| self.has(k)) else { return Ok(()) };
        let shape = self.shape(key)?;
        if shape.len() != 3 || shape[1] != 1 || shape[2] != arch.embed_dim || shape[0] == 0 {
            return Err(Error::tensor(self.path, self.name(key), format!("shape {}, expected [cameras, 1, {}]", shape_str(&shape), arch.embed_dim)));
        }
        let coefficient = req.transreid.sie_coefficient;
        if !coefficient.is_finite() {
            return Err(Error::invalid(format!("`sie_coefficient` {coefficient}: expected a finite number")));
        }
        // TransReID's table has a row per camera, or per (camera, viewpoint) when its configuration
        // set SIE_VIEW: the rows alone cannot tell, so viewpoints are a request (`--sie-views`).
        let views = req.transreid.sie_views;
        if views == 0 || !shape[0].is_multiple_of(views) {
            return Err(Error::tensor(self.path, self.name(key), format!("has {} rows, not a whole number of cameras × `sie_views` {views}", shape[0])));
        }
        arch.sie = Some(crate::model::config::Sie { cameras: shape[0] / views, views, coefficient });
        Ok(())
    }

    fn scheme_has_jpm(&self) -> bool {
        self.format == SourceFormat::TransReid && self.tensors.contains_key("b1.0.norm1.weight")
    }

    /// The LA head (one classifier per row of the model's patch grid), TransReID's BNNeck, or none
    /// for timm.
    fn head(&self, req: &ImportRequest, grids: Grids, p: usize) -> Result<HeadConfig> {
        if self.format == SourceFormat::TransReid {
            let Some(first) = self.keys.necks.first() else {
                return Err(Error::tensor(self.path, "bottleneck.weight", "missing: a TransReID checkpoint has its BNNeck (`bottleneck.*`)"));
            };
            let classes = match &first.classifier {
                Some(c) if self.has(&c.weight) => self.shape(&c.weight)?[0],
                _ => 0,
            };
            return Ok(HeadConfig::bnneck(classes, req.transreid.neck_feat));
        }
        if !self.format.has_la_head() || self.amg_config.as_ref().is_some_and(|c| c.head.kind == crate::model::HeadKind::None) {
            return Ok(HeadConfig::none());
        }
        let Some(first) = self.keys.parts.first() else {
            return Err(Error::tensor(
                self.path,
                self.name(&VitParams::keys(0, 1, 0).parts[0].bottleneck.weight),
                "missing: an LA-Transformer checkpoint has one classifier per part",
            ));
        };
        let nparts = self.keys.parts.len();
        if nparts != grids.model.0 {
            return Err(Error::invalid(format!(
                "the checkpoint has {nparts} part classifiers but a {}x{} input has {} patch rows: LA-Transformer needs one classifier per row, so choose an input with {nparts} rows ({} pixels high)",
                grids.model.0 * p,
                grids.model.1 * p,
                grids.model.0,
                nparts * p
            )));
        }
        let nb = self.shape(&first.bottleneck.weight)?[0];
        let c = self.shape(&first.classifier.weight)?[0];
        Ok(HeadConfig { bottleneck: nb, ..HeadConfig::la(c) })
    }

    /// Kept heads from each layer's qkv rows, kept key tokens from `token_index` masks (AMG
    /// reference checkpoints), cross-checked against the reference code's pickled counts.
    fn plan(&mut self, cfg: &mut ModelConfig, grids: Grids, notes: &mut Vec<String>) -> Result<()> {
        let (num_heads, head_dim) = (cfg.arch.num_heads, cfg.arch.head_dim);
        let ck_n = cfg.num_prefix() + grids.checkpoint.0 * grids.checkpoint.1;
        // The AMG reference code's checkpoints and amg's own exports may be pruned.
        let pruned_ok = self.format.may_be_pruned() || self.amg_config.is_some();
        for l in 0..cfg.arch.depth {
            let qkv = self.keys.blocks[l].qkv.weight.clone();
            let rows = self.shape(&qkv)?[0];
            if rows % (3 * head_dim) != 0 || rows / (3 * head_dim) > num_heads || rows == 0 {
                return Err(Error::tensor(self.path, self.name(&qkv), format!("has {rows} rows, expected 3 × (heads kept ≤ {num_heads}) × {head_dim}")));
            }
            let kept_heads = rows / (3 * head_dim);
            if kept_heads != num_heads && !pruned_ok {
                return Err(Error::tensor(
                    self.path,
                    self.name(&qkv),
                    format!("has {kept_heads} heads of {head_dim}, not {num_heads}: a head-pruned checkpoint is imported with `from` amg (or give `heads`)"),
                ));
            }
            cfg.layers[l].heads = (0..kept_heads).collect();
            let ti = self.scheme.token_index(&qkv);
            if !self.tensors.contains_key(&ti) {
                continue;
            }
            let mask = self.raw(&ti)?;
            let m = mask.to_i64().ok_or_else(|| Error::tensor(self.path, &ti, format!("expected a bool mask, found {}", mask.dtype.name())))?;
            if m.len() != ck_n {
                return Err(Error::tensor(self.path, &ti, format!("has {} entries, expected {ck_n} (prefix tokens + patches)", m.len())));
            }
            let kept: Vec<usize> = m.iter().enumerate().filter(|(_, &v)| v != 0).map(|(i, _)| i).collect();
            if (0..cfg.num_prefix()).any(|p| kept.get(p) != Some(&p)) {
                return Err(Error::tensor(self.path, &ti, "drops a prefix token (the class token, position 0), which is always kept"));
            }
            if kept.len() != ck_n {
                if !pruned_ok {
                    return Err(Error::tensor(self.path, &ti, "prunes tokens: import token-pruned checkpoints with `from` amg"));
                }
                if grids.model != grids.checkpoint {
                    let p = cfg.arch.patch_size;
                    return Err(Error::invalid(format!(
                        "layer {l} keeps only some token positions of the checkpoint's {}x{} grid; a token-pruned model cannot be resized to {}x{}",
                        grids.checkpoint.0 * p,
                        grids.checkpoint.1 * p,
                        cfg.input.height,
                        cfg.input.width
                    )));
                }
                cfg.layers[l].tokens = kept;
            }
        }
        if let (Some(j), Some(b2)) = (&mut cfg.arch.jpm, &self.keys.jpm) {
            let qkv = b2.block.qkv.weight.clone();
            let rows = self.shape(&qkv)?[0];
            let kept = rows / (3 * head_dim);
            if rows % (3 * head_dim) != 0 || kept == 0 || kept > num_heads || (kept != num_heads && !pruned_ok) {
                return Err(Error::tensor(self.path, self.name(&qkv), format!("has {rows} rows, expected 3 × {num_heads} heads × {head_dim}")));
            }
            j.heads = (0..kept).collect();
        }
        if pruned_ok {
            if cfg.layers.iter().any(|l| l.heads.len() != num_heads) {
                notes.push(format!(
                    "the reference checkpoint does not record which original heads were removed; kept heads are numbered 0..h' of the original {num_heads}"
                ));
            }
            if let Some(pth) = &self.pth {
                cross_check_reference_lists(pth, &cfg.layers)?;
            }
        }
        cfg.validate()
    }

    /// What an amg export recorded and the tensors cannot say: the original indices of the kept
    /// heads, the input normalisation, the LA blend weight and the provenance. Checked against what
    /// the tensors gave.
    fn restore_amg_config(&self, cfg: &mut ModelConfig, grids: Grids, notes: &mut Vec<String>) -> Result<()> {
        let Some(saved) = &self.amg_config else { return Ok(()) };
        let same_arch = (saved.arch.embed_dim, saved.arch.depth, saved.arch.num_heads, saved.arch.head_dim, saved.arch.mlp_dim, saved.arch.patch_size)
            == (cfg.arch.embed_dim, cfg.arch.depth, cfg.arch.num_heads, cfg.arch.head_dim, cfg.arch.mlp_dim, cfg.arch.patch_size);
        let same_plan =
            saved.layers.iter().zip(&cfg.layers).all(|(s, c)| s.heads.len() == c.heads.len() && (grids.model != grids.checkpoint || s.tokens == c.tokens));
        if !same_arch || !same_plan {
            return Err(Error::file(self.path, "`amg_config` does not describe the checkpoint's tensors (was the checkpoint changed after `amg export`?)"));
        }
        let same_branches = match (&saved.arch.jpm, &cfg.arch.jpm) {
            (Some(s), Some(c)) => s.heads.len() == c.heads.len(),
            (None, None) => true,
            _ => false,
        } && saved.arch.sie.as_ref().map(|s| s.rows()) == cfg.arch.sie.as_ref().map(|s| s.rows())
            && saved.head.kind == cfg.head.kind;
        if !same_branches {
            return Err(Error::file(
                self.path,
                "`amg_config` does not describe the checkpoint's SIE, JPM or head (was the checkpoint changed after `amg export`?)",
            ));
        }
        for (c, s) in cfg.layers.iter_mut().zip(&saved.layers) {
            c.heads = s.heads.clone();
        }
        // What TransReID's tensors do not say: the SIE coefficient, JPM's settings, the neck feature.
        cfg.arch.sie = saved.arch.sie.clone();
        cfg.arch.jpm = saved.arch.jpm.clone();
        cfg.head.neck_feat = saved.head.neck_feat;
        cfg.input.mean = saved.input.mean;
        cfg.input.std = saved.input.std;
        cfg.arch.ln_eps = saved.arch.ln_eps;
        cfg.head.lambda = saved.head.lambda;
        cfg.arch.preset = saved.arch.preset.clone();
        notes.retain(|n| !n.contains("does not record which original heads"));
        notes.push(format!("exported by amg {} from a model of format `{}`", saved.source.amg_version, saved.source.format));
        cfg.validate()
    }

    /// Every tensor the configuration calls for, by the format's keys; the position embedding is
    /// resampled when the patch grid changes.
    fn tensors(&mut self, cfg: &ModelConfig, grids: Grids, notes: &mut Vec<String>) -> Result<VitParams<HostTensor>> {
        let mut layout = VitParams::layout(cfg);
        let d = cfg.arch.embed_dim;
        let (prefix, (gh, gw)) = (cfg.num_prefix(), grids.checkpoint);
        layout.pos_embed = vec![1, prefix + gh * gw, d];
        let mut params = layout.try_map(&mut |key, shape| self.f32(key, shape))?;
        if grids.model != grids.checkpoint {
            let (data, how) = resample_pos_embed_for(self.format.name(), &params.pos_embed.data, d, prefix, grids.checkpoint, grids.model);
            notes.push(format!(
                "position embedding resampled {how} from a {}x{} to a {}x{} patch grid",
                grids.checkpoint.0, grids.checkpoint.1, grids.model.0, grids.model.1
            ));
            params.pos_embed = HostTensor::new(vec![1, cfg.num_tokens(), d], data);
        }
        if let Some(c) = self.q_scale.get() {
            // The query rows are the first third of every qkv weight (and bias).
            for block in params.blocks.iter_mut().chain(params.jpm.iter_mut().map(|j| &mut j.block)) {
                let q_rows = block.qkv.weight.shape[0] / 3;
                block.qkv.weight.data[..q_rows * d].iter_mut().for_each(|v| *v *= c);
                if let Some(b) = &mut block.qkv.bias {
                    b.data[..q_rows].iter_mut().for_each(|v| *v *= c);
                }
            }
        }
        Ok(params)
    }

    /// Tensors the model does not use must be known to be harmless.
    fn check_unused(&self) -> Result<()> {
        for (name, t) in self.tensors.iter().filter(|(k, _)| !self.used.contains(*k)) {
            if let Some(orig) = self.scheme.alias_of(name) {
                if self.tensors.get(&orig).and_then(|o| o.to_f32()) != t.to_f32() {
                    return Err(Error::tensor(self.path, name, format!("differs from `{orig}`, which it should alias in an LA-Transformer checkpoint")));
                }
            }
            if !self.scheme.ignorable(name) {
                return Err(Error::tensor(
                    self.path,
                    name,
                    format!(
                        "not part of a plain ViT{} (layer scale, register tokens, q/k norms and other variants are not supported)",
                        if self.scheme.is_prefixed() { " + LA head" } else { "" }
                    ),
                ));
            }
        }
        Ok(())
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
                return Err(Error::file(pth.path(), format!("`{key}` lists {what} per layer as {list:?}, but the tensors give {counts:?}")));
            }
        }
    }
    Ok(())
}

fn display_path(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

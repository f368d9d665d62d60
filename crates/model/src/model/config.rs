//! `config.json` of a model directory: the architecture, the input, and — per layer — which
//! attention heads and which key/value token positions are kept.

use crate::error::{Error, Result};
use crate::preprocess::{InputSpec, IMAGENET_MEAN, IMAGENET_STD};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FORMAT: &str = "amg-model";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    /// `tiny`, `small`, `base`, or absent for another width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    pub embed_dim: usize,
    pub depth: usize,
    /// Heads per layer in the unpruned model; kept heads are indices into `0..num_heads`.
    pub num_heads: usize,
    pub head_dim: usize,
    pub mlp_dim: usize,
    pub patch_size: usize,
    pub ln_eps: f64,
    pub qkv_bias: bool,
    /// A learned class token before the patches (timm's default; LA-Transformer blends it into
    /// every part).
    #[serde(default = "yes")]
    pub class_token: bool,
    /// DeiT's distillation token, after the class token.
    #[serde(default)]
    pub dist_token: bool,
    /// Stride of the patch embedding's convolution when it differs from the patch size: TransReID's
    /// overlapping patches (stride 12 with 16-pixel patches). Absent: non-overlapping patches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_stride: Option<usize>,
    /// TransReID's side information embedding (docs/backbones.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sie: Option<Sie>,
    /// TransReID's jigsaw patch module (docs/backbones.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jpm: Option<Jpm>,
}

/// Side information embedding: a learned vector per camera (or per camera and viewpoint), times
/// `coefficient`, added to every token after the position embedding. Which row each image takes —
/// `camera · views + view`, as TransReID indexes it — is an input of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sie {
    pub cameras: usize,
    /// Viewpoints per camera (TransReID's `SIE_VIEW`, its vehicle configurations); 1: cameras only.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub views: usize,
    /// TransReID's `SIE_COE` (not stored in its checkpoints; its configurations use 3.0).
    pub coefficient: f32,
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

impl Sie {
    /// TransReID's `SIE_COE` in its released configurations.
    pub const TRANSREID_COEFFICIENT: f32 = 3.0;

    /// One row per camera, no viewpoints (TransReID's person Re-ID configurations).
    pub fn per_camera(cameras: usize, coefficient: f32) -> Sie {
        Sie { cameras, views: 1, coefficient }
    }

    /// "6 cameras", or "20 cameras × 8 viewpoints".
    pub fn describe(&self) -> String {
        match self.views {
            1 => crate::text::count(self.cameras, "camera"),
            v => format!("{} × {}", crate::text::count(self.cameras, "camera"), crate::text::count(v, "viewpoint")),
        }
    }

    /// Rows of the embedding table: cameras × viewpoints.
    pub fn rows(&self) -> usize {
        self.cameras.saturating_mul(self.views)
    }
}

/// The jigsaw patch module: the last block is the global branch (b1); a second copy of it with its
/// own norm (b2) runs on `divide` groups of the shifted and shuffled patches, each group behind the
/// class token, and each group's class token is a local feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Jpm {
    /// TransReID's `SHIFT_NUM`: the patch sequence is rotated to start at position `shift`.
    pub shift: usize,
    /// `SHUFFLE_GROUP`: the rotated patches are interleaved from this many equal runs.
    pub groups: usize,
    /// `DEVIDE_LENGTH`: how many local groups (and local features).
    pub divide: usize,
    /// `RE_ARRANGE`: shift and shuffle (true) or take consecutive runs of patches (false).
    pub rearrange: bool,
    /// The b2 block's kept heads (its keys are never pruned: see `ModelConfig::validate`).
    pub heads: Vec<usize>,
}

impl Jpm {
    /// TransReID's released configuration: `SHIFT_NUM` 5, `SHUFFLE_GROUP` 2, `DEVIDE_LENGTH` 4,
    /// `RE_ARRANGE` true; every b2 head kept.
    pub fn transreid() -> Jpm {
        Jpm { shift: 5, groups: 2, divide: 4, rearrange: true, heads: vec![] }
    }
}

fn yes() -> bool {
    true
}

impl Arch {
    /// TransReID's patch stride in its released configurations: 16×16 patches overlapping by 4.
    pub const TRANSREID_STRIDE: usize = 12;

    pub fn preset(name: &str) -> Result<Arch> {
        let (d, h) = match name {
            "tiny" => (192, 3),
            "small" => (384, 6),
            "base" => (768, 12),
            other => return Err(Error::invalid(format!("unknown architecture `{other}`: expected tiny, small or base"))),
        };
        Ok(Arch {
            preset: Some(name.into()),
            embed_dim: d,
            depth: 12,
            num_heads: h,
            head_dim: 64,
            mlp_dim: 4 * d,
            patch_size: 16,
            ln_eps: 1e-6,
            qkv_bias: true,
            class_token: true,
            dist_token: false,
            patch_stride: None,
            sie: None,
            jpm: None,
        })
    }

    /// The patch embedding's stride: `patch_stride`, or the patch size.
    pub fn stride(&self) -> usize {
        self.patch_stride.unwrap_or(self.patch_size)
    }

    /// The preset name matching these dimensions, if any.
    pub fn infer_preset(&self) -> Option<String> {
        ["tiny", "small", "base"]
            .into_iter()
            .find(|p| {
                let a = Arch::preset(p).unwrap();
                (a.embed_dim, a.depth, a.num_heads, a.head_dim, a.mlp_dim, a.patch_size)
                    == (self.embed_dim, self.depth, self.num_heads, self.head_dim, self.mlp_dim, self.patch_size)
            })
            .map(String::from)
    }
}

/// What one layer keeps. Both lists are sorted and refer to the unpruned model: `heads` are
/// original head indices, `tokens` are key/value positions (the prefix tokens, first in the
/// sequence, are always kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerPlan {
    pub heads: Vec<usize>,
    pub tokens: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// Retrieval only: no classifiers.
    None,
    /// LA-Transformer: one classifier per row of the patch grid (docs/method.md §1).
    La,
    /// TransReID's BNNeck: the class token (and, with JPM, the local features) through a BatchNorm
    /// each, with an ID classifier after it (docs/backbones.md).
    Bnneck,
}

crate::choice! {
    /// Which side of the BNNeck's BatchNorm the retrieval feature is taken (TransReID's
    /// `TEST.NECK_FEAT`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
    #[serde(rename_all = "kebab-case")]
    pub enum NeckFeat {
        #[default]
        Before = "before" => "the class token itself (TransReID's released configurations)",
        After = "after" => "the class token after the BatchNorm",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    #[serde(rename = "type")]
    pub kind: HeadKind,
    #[serde(default)]
    pub num_classes: usize,
    #[serde(default)]
    pub bottleneck: usize,
    /// Weight of the part token against the CLS token in g_i = (cls + λ·p_i) / (1 + λ).
    #[serde(default)]
    pub lambda: f32,
    /// BNNeck only: the retrieval feature before or after the BatchNorm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neck_feat: Option<NeckFeat>,
}

impl HeadConfig {
    pub fn none() -> Self {
        HeadConfig { kind: HeadKind::None, num_classes: 0, bottleneck: 0, lambda: 0.0, neck_feat: None }
    }
    pub fn la(num_classes: usize) -> Self {
        HeadConfig { kind: HeadKind::La, num_classes, bottleneck: 256, lambda: 8.0, neck_feat: None }
    }
    pub fn bnneck(num_classes: usize, neck_feat: NeckFeat) -> Self {
        HeadConfig { kind: HeadKind::Bnneck, num_classes, bottleneck: 0, lambda: 0.0, neck_feat: Some(neck_feat) }
    }
}

/// Where a model came from: what made it, from which file, and its history in `notes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Source {
    /// `timm`, `la-transformer`, `amg` (imported); `init` (random weights); `amg-train`,
    /// `amg-prune` (made by amg from an earlier model, named in `notes`).
    pub format: String,
    /// The file or directory it was imported or derived from.
    #[serde(default)]
    pub path: String,
    /// Its history, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The amg version that wrote the model directory.
    #[serde(default)]
    pub amg_version: String,
    /// The command that wrote the model directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
}

static COMMAND: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the command line of this process (set once by the `amg` command line), written into
/// every model directory it saves.
pub fn set_command(args: impl IntoIterator<Item = String>) {
    let quoted: Vec<String> = args
        .into_iter()
        .map(|a| if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) { format!("'{}'", a.replace('\'', "'\\''")) } else { a })
        .collect();
    let _ = COMMAND.set(quoted.join(" "));
}

impl Source {
    /// The provenance as it is written: this amg's version and, when known, this process's command.
    pub fn stamped(&self) -> Source {
        let mut s = self.clone();
        s.amg_version = env!("CARGO_PKG_VERSION").into();
        if let Some(c) = COMMAND.get() {
            s.command = c.clone();
        }
        s
    }

    /// One line: the format and the path, if any.
    pub fn describe(&self) -> String {
        if self.path.is_empty() {
            self.format.clone()
        } else {
            format!("{} {}", self.format, self.path)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub format: String,
    pub format_version: u32,
    pub arch: Arch,
    pub input: InputSpec,
    pub layers: Vec<LayerPlan>,
    pub head: HeadConfig,
    pub source: Source,
    /// An INT8 model's scheme (`model::quant`); absent for float32 models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<super::quant::Quantization>,
}

impl ModelConfig {
    /// An unpruned model of `arch` at `height`×`width`.
    pub fn new(arch: Arch, height: usize, width: usize, head: HeadConfig, source: Source) -> Result<Self> {
        let mut cfg = ModelConfig {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            layers: Vec::new(),
            input: InputSpec { height, width, mean: IMAGENET_MEAN, std: IMAGENET_STD },
            arch,
            head,
            source,
            quantization: None,
        };
        cfg.check_input()?;
        let n = cfg.num_tokens();
        cfg.layers = (0..cfg.arch.depth).map(|_| LayerPlan { heads: (0..cfg.arch.num_heads).collect(), tokens: (0..n).collect() }).collect();
        if let Some(j) = &mut cfg.arch.jpm {
            j.heads = (0..cfg.arch.num_heads).collect();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rows and columns of patches: (side − patch) / stride + 1 each way (a convolution without
    /// padding; with overlapping patches a remainder at the bottom and right is not covered, as in
    /// TransReID).
    pub fn grid(&self) -> (usize, usize) {
        grid_of(self.input.height, self.input.width, self.arch.patch_size, self.arch.stride())
    }
    pub fn num_patches(&self) -> usize {
        let (h, w) = self.grid();
        h * w
    }
    /// Learned tokens before the patches (class token, distillation token): the first positions of
    /// the sequence, never pruned as keys, not part of the patch grid.
    pub fn num_prefix(&self) -> usize {
        usize::from(self.arch.class_token) + usize::from(self.arch.dist_token)
    }
    /// Tokens in the residual stream: prefix tokens + patches.
    pub fn num_tokens(&self) -> usize {
        self.num_prefix() + self.num_patches()
    }
    /// The sequence position of patch (row, column).
    pub fn patch_position(&self, row: usize, col: usize) -> usize {
        self.num_prefix() + row * self.grid().1 + col
    }
    /// LA parts: one per row of the patch grid (docs/method.md §1).
    pub fn num_parts(&self) -> usize {
        self.grid().0
    }
    /// BNNeck BatchNorms (and classifiers): the global feature's, then one per JPM local feature.
    pub fn num_necks(&self) -> usize {
        match self.head.kind {
            HeadKind::Bnneck => 1 + self.arch.jpm.as_ref().map_or(0, |j| j.divide),
            _ => 0,
        }
    }
    /// How the retrieval feature is laid out: `groups` pieces of `embed_dim`, normalised per piece
    /// (LA: each part to norm 1/√P) or as a whole (TransReID normalises the concatenation).
    pub fn feature_groups(&self) -> FeatureGroups {
        let d = self.arch.embed_dim;
        match self.head.kind {
            HeadKind::Bnneck => FeatureGroups { count: 1, dim: d * self.num_necks() },
            _ => FeatureGroups { count: self.num_parts(), dim: d },
        }
    }
    /// The JPM local groups: for each, the trunk-output positions b2 runs on — the class token, then
    /// that group's patches after TransReID's shift and shuffle (docs/backbones.md).
    pub fn jpm_groups(&self) -> Vec<Vec<usize>> {
        let Some(j) = &self.arch.jpm else { return Vec::new() };
        let n = self.num_tokens();
        let patches = n - 1;
        let order: Vec<usize> = if j.rearrange {
            // Rotate: positions shift..n, then 1..shift.
            let mut v: Vec<usize> = (j.shift..n).chain(1..j.shift).collect();
            if !v.len().is_multiple_of(j.groups) {
                // TransReID pads with the second-to-last token once (validated to be enough).
                v.push(v[v.len() - 2]);
            }
            // Interleave: view as [groups, len/groups], transpose.
            let per = v.len() / j.groups;
            (0..per).flat_map(|i| (0..j.groups).map(move |g| (g, i))).map(|(g, i)| v[g * per + i]).collect()
        } else {
            (1..n).collect()
        };
        let len = patches / j.divide;
        (0..j.divide).map(|k| std::iter::once(0).chain(order[k * len..(k + 1) * len].iter().copied()).collect()).collect()
    }
    /// Tokens in each JPM local sequence (class token + a group of patches).
    pub fn jpm_tokens(&self) -> usize {
        self.arch.jpm.as_ref().map_or(0, |j| 1 + (self.num_patches() / j.divide.max(1)))
    }
    /// The token positions LA part `i` averages: row `i` of the patch grid.
    pub fn part_tokens(&self, i: usize) -> std::ops::Range<usize> {
        self.patch_position(i, 0)..self.patch_position(i, 0) + self.grid().1
    }
    /// Length of the retrieval feature.
    pub fn feature_dim(&self) -> usize {
        let g = self.feature_groups();
        g.count * g.dim
    }
    pub fn is_pruned(&self) -> bool {
        let n = self.num_tokens();
        self.layers.iter().any(|l| l.heads.len() != self.arch.num_heads || l.tokens.len() != n)
            || self.arch.jpm.as_ref().is_some_and(|j| j.heads.len() != self.arch.num_heads)
    }

    pub(crate) fn check_input(&self) -> Result<()> {
        let (p, s) = (self.arch.patch_size, self.arch.stride());
        let (h, w) = (self.input.height, self.input.width);
        if p == 0 || s == 0 || s > p || h == 0 || w == 0 || h > LIMIT_SIDE || w > LIMIT_SIDE {
            return Err(Error::invalid(format!(
                "input size {h}x{w}, patch size {p}, stride {s}: sides must be positive and at most {LIMIT_SIDE}, the stride at most the patch size"
            )));
        }
        if s == p && (h % p != 0 || w % p != 0) {
            return Err(Error::invalid(format!(
                "input size {h}x{w} must be a positive multiple of the patch size {p} in both dimensions, at most {LIMIT_SIDE}"
            )));
        }
        if h < p || w < p {
            return Err(Error::invalid(format!("input size {h}x{w} is smaller than one {p}-pixel patch")));
        }
        Ok(())
    }

    /// Checks internal consistency; the message names the offending field.
    pub fn validate(&self) -> Result<()> {
        let a = &self.arch;
        if self.format != FORMAT {
            return Err(Error::invalid(format!("`format` is `{}`, expected `{FORMAT}`", self.format)));
        }
        if self.format_version != FORMAT_VERSION {
            return Err(Error::invalid(format!("`format_version` is {}, this amg reads version {FORMAT_VERSION}", self.format_version)));
        }
        if a.embed_dim == 0 || a.depth == 0 || a.num_heads == 0 || a.head_dim == 0 || a.mlp_dim == 0 || a.patch_size == 0 {
            return Err(Error::invalid("`arch`: every dimension must be positive"));
        }
        // Bounds far above any ViT, so that every size amg derives from them (tokens, weight shapes,
        // feature length) is computed without overflow, whatever a config file says.
        for (name, value, max) in [
            ("arch.embed_dim", a.embed_dim, LIMIT_WIDTH),
            ("arch.depth", a.depth, LIMIT_DEPTH),
            ("arch.num_heads", a.num_heads, LIMIT_HEADS),
            ("arch.head_dim", a.head_dim, LIMIT_WIDTH),
            ("arch.mlp_dim", a.mlp_dim, 4 * LIMIT_WIDTH),
            ("arch.patch_size", a.patch_size, LIMIT_SIDE),
            ("input.height", self.input.height, LIMIT_SIDE),
            ("input.width", self.input.width, LIMIT_SIDE),
            ("head.num_classes", self.head.num_classes, LIMIT_CLASSES),
            ("head.bottleneck", self.head.bottleneck, LIMIT_WIDTH),
        ] {
            if value > max {
                return Err(Error::invalid(format!("`{name}` is {value}, more than amg supports ({max})")));
            }
        }
        self.check_input()?;
        if self.layers.len() != a.depth {
            return Err(Error::invalid(format!("`layers` has {} entries, expected depth {}", self.layers.len(), a.depth)));
        }
        let n = self.num_tokens();
        for (l, plan) in self.layers.iter().enumerate() {
            if plan.heads.is_empty() {
                return Err(Error::invalid(format!("layer {l}: no attention head kept; every layer needs at least one")));
            }
            check_sorted_unique(&plan.heads, a.num_heads, &format!("layer {l}: `heads`"))?;
            check_sorted_unique(&plan.tokens, n, &format!("layer {l}: `tokens`"))?;
            if plan.tokens.is_empty() {
                return Err(Error::invalid(format!("layer {l}: `tokens` keeps no key/value position")));
            }
            if let Some(p) = (0..self.num_prefix()).find(|p| plan.tokens.get(*p) != Some(p)) {
                return Err(Error::invalid(format!("layer {l}: `tokens` must keep position {p} (a prefix token: {})", self.prefix_name(p))));
            }
        }
        if self.head.kind == HeadKind::La && (self.head.num_classes == 0 || self.head.bottleneck == 0) {
            return Err(Error::invalid("`head`: an LA head needs num_classes and bottleneck > 0"));
        }
        if self.head.kind == HeadKind::La && !a.class_token {
            return Err(Error::invalid("`head`: an LA head blends the class token into every part, but `arch.class_token` is false"));
        }
        if self.head.kind == HeadKind::Bnneck && (!a.class_token || self.head.neck_feat.is_none()) {
            return Err(Error::invalid("`head`: a BNNeck head needs `arch.class_token` and `head.neck_feat` (before or after)"));
        }
        if self.head.kind != HeadKind::Bnneck && self.head.neck_feat.is_some() {
            return Err(Error::invalid("`head.neck_feat` applies to a BNNeck head only"));
        }
        if let Some(sie) = &a.sie {
            if sie.cameras == 0 || sie.views == 0 || sie.rows() > LIMIT_CAMERAS || !sie.coefficient.is_finite() {
                return Err(Error::invalid(format!(
                    "`arch.sie`: {} cameras × {} viewpoints with coefficient {}; expected at least one of each, at most {LIMIT_CAMERAS} in all, and a finite coefficient",
                    sie.cameras, sie.views, sie.coefficient
                )));
            }
        }
        if let Some(j) = &a.jpm {
            self.check_jpm(j)?;
        }
        Ok(())
    }

    fn check_jpm(&self, j: &Jpm) -> Result<()> {
        if self.head.kind != HeadKind::Bnneck || self.num_prefix() != 1 {
            return Err(Error::invalid("`arch.jpm`: the jigsaw patch module needs a BNNeck head and exactly one prefix token (the class token)"));
        }
        if self.arch.depth < 2 {
            return Err(Error::invalid("`arch.jpm`: the jigsaw patch module needs at least 2 blocks (its branches copy the last)"));
        }
        let patches = self.num_patches();
        if j.divide == 0 || j.divide > patches || j.groups == 0 || j.groups > patches || (j.rearrange && (j.shift == 0 || j.shift > patches)) {
            return Err(Error::invalid(format!(
                "`arch.jpm`: divide {}, groups {}, shift {} do not fit {patches} patches (each must be 1..={patches})",
                j.divide, j.groups, j.shift
            )));
        }
        if j.rearrange && !patches.is_multiple_of(j.groups) && (patches < 2 || !(patches + 1).is_multiple_of(j.groups)) {
            return Err(Error::invalid(format!("`arch.jpm`: {patches} patches cannot be shuffled in {} groups (TransReID pads at most one patch)", j.groups)));
        }
        if j.heads.is_empty() {
            return Err(Error::invalid("`arch.jpm.heads`: the b2 block keeps no head; it needs at least one"));
        }
        check_sorted_unique(&j.heads, self.arch.num_heads, "`arch.jpm.heads`")
    }

    /// The kept heads of every attention layer: the blocks', then JPM's b2 (scored and pruned like
    /// any layer; docs/backbones.md §3).
    pub fn attention_heads(&self) -> Vec<&[usize]> {
        self.layers.iter().map(|l| l.heads.as_slice()).chain(self.arch.jpm.as_ref().map(|j| j.heads.as_slice())).collect()
    }
    /// For attention layer `l` (as `attention_heads` numbers them): queries and key/value tokens
    /// per sequence, and sequences per image (b2 runs once per local group).
    pub fn attention_shape(&self, l: usize) -> (usize, usize, usize) {
        match self.layers.get(l) {
            Some(plan) => (self.num_tokens(), plan.tokens.len(), 1),
            None => (self.jpm_tokens(), self.jpm_tokens(), self.arch.jpm.as_ref().map_or(1, |j| j.divide)),
        }
    }
    /// A short name of attention layer `l`: its index, or `b2` for JPM's local branch.
    pub fn attention_layer_name(&self, l: usize) -> String {
        if l < self.layers.len() {
            l.to_string()
        } else {
            "b2".into()
        }
    }

    /// The head in words, for summaries.
    pub fn describe_head(&self) -> String {
        let c = self.head.num_classes;
        match self.head.kind {
            HeadKind::None => "none (retrieval only)".into(),
            HeadKind::La => format!("LA, {} parts, {c} classes", self.num_parts()),
            HeadKind::Bnneck => format!(
                "BNNeck, feature {} the BatchNorm, {c} classes{}",
                self.head.neck_feat.map_or("before", |f| crate::choice::Choice::name(f)),
                match &self.arch.jpm {
                    Some(j) => format!(", JPM with {} local features", j.divide),
                    None => String::new(),
                }
            ),
        }
    }

    /// What prefix position `p` holds.
    pub fn prefix_name(&self, p: usize) -> &'static str {
        match (p, self.arch.class_token) {
            (0, true) => "the class token",
            _ => "the distillation token",
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: ModelConfig = serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid model config: {e}")))?;
        cfg.validate().map_err(|e| Error::file(path, e.to_string()))?;
        Ok(cfg)
    }

    /// The `config.json` text, with the provenance stamped (`Source::stamped`).
    pub fn to_json(&self) -> String {
        let stamped = ModelConfig { source: self.source.stamped(), ..self.clone() };
        serde_json::to_string_pretty(&stamped).expect("config serialises")
    }
}

/// Largest width (embedding, head, bottleneck) a config may state.
pub const LIMIT_WIDTH: usize = 1 << 16;
/// Most blocks.
pub const LIMIT_DEPTH: usize = 1 << 10;
/// Most heads per block.
pub const LIMIT_HEADS: usize = 1 << 10;
/// Largest input side and patch size, in pixels.
pub const LIMIT_SIDE: usize = 1 << 14;
/// Most identities a classifier may have.
pub const LIMIT_CLASSES: usize = 1 << 24;
/// Most cameras a side information embedding may have.
pub const LIMIT_CAMERAS: usize = 1 << 16;

/// The pieces of a retrieval feature: `count` pieces of `dim` values, each normalised on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureGroups {
    pub count: usize,
    pub dim: usize,
}

/// The patch grid of an `h`×`w` input (see `ModelConfig::grid`); callers have checked `h, w ≥ p`
/// and `s > 0`.
pub fn grid_of(h: usize, w: usize, p: usize, s: usize) -> (usize, usize) {
    let s = s.max(1);
    (h.saturating_sub(p) / s + 1, w.saturating_sub(p) / s + 1)
}

fn check_sorted_unique(v: &[usize], bound: usize, what: &str) -> Result<()> {
    for w in v.windows(2) {
        if w[0] >= w[1] {
            return Err(Error::invalid(format!("{what} must be sorted and without repeats (found {} before {})", w[0], w[1])));
        }
    }
    if let Some(&m) = v.last() {
        if m >= bound {
            return Err(Error::invalid(format!("{what}: index {m} is out of range 0..{bound}")));
        }
    }
    Ok(())
}

/// Parses `HxW` (e.g. `256x128`) or a single number for a square size.
/// Parses `HxW` (height × width, e.g. 256x128). Both are needed: one number would hide whether a
/// square or the usual tall Re-ID crop was meant.
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::invalid(format!("size `{s}`: expected height x width such as 256x128 or 224x224"));
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    let num = |p: &str| p.trim().parse::<usize>().ok().filter(|&v| v > 0).ok_or_else(bad);
    match parts.as_slice() {
        [h, w] => Ok((num(h)?, num(w)?)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let mut cfg = ModelConfig::new(Arch::preset("tiny").unwrap(), 224, 224, HeadConfig::none(), Source::default()).unwrap();
        assert_eq!(cfg.num_tokens(), 197);
        cfg.layers[3].tokens.remove(0);
        assert!(cfg.validate().unwrap_err().to_string().contains("layer 3: `tokens` must keep position 0 (a prefix token: the class token)"));
        cfg.layers[3].tokens.insert(0, 0);
        cfg.layers[2].heads = vec![];
        assert!(cfg.validate().unwrap_err().to_string().contains("layer 2: no attention head"));
        cfg.layers[2].heads = vec![0, 3];
        assert!(cfg.validate().unwrap_err().to_string().contains("index 3 is out of range 0..3"));
        assert!(ModelConfig::new(Arch::preset("tiny").unwrap(), 200, 224, HeadConfig::none(), Source::default()).is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256x128").unwrap(), (256, 128));
        // One number is refused: a square and the usual tall Re-ID crop must not be confused.
        assert!(parse_size("224").unwrap_err().to_string().contains("height x width"));
        assert!(parse_size("0x64").is_err());
        assert!(parse_size("2x3x4").is_err());
        assert!(parse_size("ax3").is_err());
    }
}

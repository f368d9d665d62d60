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
}

fn yes() -> bool {
    true
}

impl Arch {
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
        })
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
}

impl HeadConfig {
    pub fn none() -> Self {
        HeadConfig { kind: HeadKind::None, num_classes: 0, bottleneck: 0, lambda: 0.0 }
    }
    pub fn la(num_classes: usize) -> Self {
        HeadConfig { kind: HeadKind::La, num_classes, bottleneck: 256, lambda: 8.0 }
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
        };
        cfg.check_input()?;
        let n = cfg.num_tokens();
        cfg.layers = (0..cfg.arch.depth).map(|_| LayerPlan { heads: (0..cfg.arch.num_heads).collect(), tokens: (0..n).collect() }).collect();
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn grid(&self) -> (usize, usize) {
        (self.input.height / self.arch.patch_size, self.input.width / self.arch.patch_size)
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
    /// The token positions LA part `i` averages: row `i` of the patch grid.
    pub fn part_tokens(&self, i: usize) -> std::ops::Range<usize> {
        self.patch_position(i, 0)..self.patch_position(i, 0) + self.grid().1
    }
    /// Length of the retrieval feature.
    pub fn feature_dim(&self) -> usize {
        self.num_parts() * self.arch.embed_dim
    }
    pub fn is_pruned(&self) -> bool {
        let n = self.num_tokens();
        self.layers.iter().any(|l| l.heads.len() != self.arch.num_heads || l.tokens.len() != n)
    }

    fn check_input(&self) -> Result<()> {
        let p = self.arch.patch_size;
        let (h, w) = (self.input.height, self.input.width);
        if p == 0 || h == 0 || w == 0 || h % p != 0 || w % p != 0 || h > LIMIT_SIDE || w > LIMIT_SIDE {
            return Err(Error::invalid(format!(
                "input size {h}x{w} must be a positive multiple of the patch size {p} in both dimensions, at most {LIMIT_SIDE}"
            )));
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
        Ok(())
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

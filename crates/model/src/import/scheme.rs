//! How each checkpoint format names amg's tensors. amg's own key (`model::params::Key`, e.g.
//! `blocks.3.attn.qkv.weight` or `parts.2.bn.running_var`) is mapped to the checkpoint's key here
//! and nowhere else, so an importer reads exactly the tensors the model definition calls for.

use crate::choice::Choice;
use crate::model::params::{Key, Seg};
use std::fmt;

crate::choice! {
    /// Checkpoint formats amg reads.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SourceFormat {
        /// A timm VisionTransformer state dict (retrieval only; any classifier is dropped).
        Timm = "timm" => "a timm VisionTransformer state dict (retrieval only; any classifier is dropped)",
        /// A DeiT checkpoint: timm's layout, a distilled one with its distillation token.
        Deit = "deit" => "DeiT (timm's layout; a distilled one keeps its distillation token, drops head_dist)",
        /// LA-Transformer: `model.*` backbone plus `classifier{i}` part classifiers.
        LaTransformer = "la-transformer" => "LA-Transformer: `model.*` backbone plus `classifier{i}` part classifiers",
        /// The AMG reference pruning code: LA-Transformer with pruned heads and `token_index` masks.
        Amg = "amg" => "the AMG reference pruning code: LA-Transformer with pruned heads and `token_index` masks",
        /// TransReID: `base.*` backbone (overlapping patches, SIE), `bottleneck`/`classifier` BNNeck,
        /// with JPM also `b1.*`, `b2.*` and `bottleneck_1..4`/`classifier_1..4`.
        TransReid = "transreid" => "TransReID (ViT-B, ViT-S, DeiT-S; overlapping patches, SIE, JPM, BNNeck head)",
    }
}

impl SourceFormat {
    /// Whether the checkpoint carries LA part classifiers.
    pub fn has_la_head(self) -> bool {
        matches!(self, SourceFormat::LaTransformer | SourceFormat::Amg)
    }

    /// Whether the checkpoint may be head- or token-pruned.
    pub fn may_be_pruned(self) -> bool {
        self == SourceFormat::Amg
    }

    /// The key naming of this format.
    pub fn scheme(self) -> KeyScheme {
        match self {
            SourceFormat::Timm | SourceFormat::Deit => KeyScheme { backbone: "", transreid: false, jpm_last: None },
            SourceFormat::LaTransformer | SourceFormat::Amg => KeyScheme { backbone: "model.", transreid: false, jpm_last: None },
            SourceFormat::TransReid => KeyScheme { backbone: "base.", transreid: true, jpm_last: None },
        }
    }
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A checkpoint's key naming: the backbone's tensors under a prefix (timm's own names below it),
/// the LA classifiers as LA-Transformer writes them, TransReID's BNNecks and JPM branches as its
/// `build_transformer(_local)` registers them.
#[derive(Debug, Clone, Copy)]
pub struct KeyScheme {
    backbone: &'static str,
    transreid: bool,
    /// With JPM: the index of amg's last block, which is TransReID's `b1.0` (its `base.blocks`
    /// has one more block that the JPM model never runs).
    jpm_last: Option<usize>,
}

impl KeyScheme {
    /// The scheme of a TransReID checkpoint with JPM, whose amg model has `depth` blocks.
    pub fn with_jpm(self, depth: usize) -> KeyScheme {
        KeyScheme { jpm_last: depth.checked_sub(1), ..self }
    }

    /// The checkpoint key of amg's tensor `key`.
    pub fn key(&self, key: &Key) -> String {
        let rest = |from: usize| Key::from_segs(&key.segs()[from..]).to_string();
        match key.segs() {
            // TransReID: BNNeck i is `bottleneck` / `classifier` (global), `bottleneck_i` /
            // `classifier_i` (JPM's local features).
            [Seg::Name("necks"), Seg::Index(i), Seg::Name(module), ..] if self.transreid => {
                let name = if *module == "bn" { "bottleneck" } else { "classifier" };
                let suffix = if *i == 0 { String::new() } else { format!("_{i}") };
                format!("{name}{suffix}.{}", rest(3))
            }
            [Seg::Name("jpm"), Seg::Name(part), ..] if self.transreid => format!("b2.{}.{}", if *part == "block" { 0 } else { 1 }, rest(2)),
            [Seg::Name("blocks"), Seg::Index(i), ..] if self.jpm_last == Some(*i) => format!("b1.0.{}", rest(2)),
            [Seg::Name("norm"), ..] if self.jpm_last.is_some() => format!("b1.1.{}", rest(1)),
            // LA-Transformer's ClassBlock: add_block = [Linear, BatchNorm1d, Dropout], classifier = [Linear].
            [Seg::Name("parts"), Seg::Index(i), Seg::Name(module), Seg::Name(leaf)] => {
                let at = match *module {
                    "bottleneck" => "add_block.0",
                    "bn" => "add_block.1",
                    _ => "classifier.0",
                };
                format!("classifier{i}.{at}.{leaf}")
            }
            _ => format!("{}{key}", self.backbone),
        }
    }

    /// The AMG reference code's per-layer key mask, beside the block's attention.
    pub fn token_index(&self, qkv_weight: &Key) -> String {
        format!("{}.token_index", self.key(&qkv_weight.up().up()))
    }

    /// Checkpoint tensors that are not part of the model and may be left behind: BatchNorm step
    /// counters, token masks (read separately), timm's ImageNet classifier, and the top-level
    /// `cls_token` / `pos_embed` aliases LA-Transformer registers (checked to equal the backbone's).
    pub fn ignorable(&self, name: &str) -> bool {
        let transreid_unused = self.transreid
            && (name.starts_with("base.fc.")
                // JPM runs b1 and b2 (copies of the last block) instead of the base's last block and norm.
                || self.jpm_last.is_some_and(|last| name.starts_with("base.norm.") || name.starts_with(&format!("base.blocks.{last}."))));
        transreid_unused
            || name.ends_with("num_batches_tracked")
            || name.ends_with(".token_index")
            || name == format!("{}head.weight", self.backbone)
            || name == format!("{}head.bias", self.backbone)
            // DeiT's classifier on the distillation token.
            || name == format!("{}head_dist.weight", self.backbone)
            || name == format!("{}head_dist.bias", self.backbone)
            || self.alias_of(name).is_some()
    }

    /// For a top-level alias of a backbone tensor (LA-Transformer's `cls_token`, `pos_embed`), the
    /// backbone key it must equal.
    pub fn alias_of(&self, name: &str) -> Option<String> {
        (!self.backbone.is_empty() && (name == "cls_token" || name == "pos_embed")).then(|| format!("{}{name}", self.backbone))
    }

    pub fn is_prefixed(&self) -> bool {
        !self.backbone.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::VitParams;

    #[test]
    fn la_keys_follow_the_class_block_layout() {
        let k = VitParams::keys(2, 3, 0);
        let la = SourceFormat::LaTransformer.scheme();
        assert_eq!(la.key(&k.blocks[1].qkv.weight), "model.blocks.1.attn.qkv.weight");
        assert_eq!(la.key(&k.parts[2].bottleneck.weight), "classifier2.add_block.0.weight");
        assert_eq!(la.key(&k.parts[0].bn.running_var), "classifier0.add_block.1.running_var");
        assert_eq!(la.key(k.parts[1].classifier.bias.as_ref().unwrap()), "classifier1.classifier.0.bias");
        assert_eq!(la.token_index(&k.blocks[1].qkv.weight), "model.blocks.1.attn.token_index");
        assert_eq!(SourceFormat::Timm.scheme().key(&k.pos_embed), "pos_embed");
        assert!(la.ignorable("cls_token") && !SourceFormat::Timm.scheme().ignorable("cls_token"));
    }
}

//! The one description of a ViT Re-ID model's tensors: which there are, their shapes, and their
//! keys. Everything that touches weights derives from it — the model directory's tensor check,
//! random initialisation, the inference engine, the differentiable model, head surgery and the
//! checkpoint importers — so a new kind of tensor is added here once.
//!
//! The structs are generic over what a tensor is: `VitParams<Shape>` is a model's layout (built from
//! its configuration), `VitParams<HostTensor>` its weights, the differentiable model holds
//! `VitParams<Var>`. `try_map` walks the tree in a fixed order, handing each tensor over with its
//! `Key` — the path candle would write as `vb.pp("blocks").pp(3).pp("attn").pp("qkv")` — so the
//! key of every tensor is spelled in exactly one place: the `try_map` of the struct that holds it.
//! Names follow timm's `VisionTransformer` (`blocks.3.attn.qkv.weight`); the LA classifiers are
//! `parts.{i}.{bottleneck,bn,classifier}`.

use super::config::{HeadKind, ModelConfig};
use crate::error::{Error, Result};
use crate::tensor::{shape_str, HostTensor, TensorMap};
use std::fmt;
use std::path::Path;

/// A tensor's dimensions.
pub type Shape = Vec<usize>;

/// One step of a key path: a field name or an index into a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    Name(&'static str),
    Index(usize),
}

/// Where a tensor sits in the model, e.g. `blocks.3.attn.qkv.weight`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Key(Vec<Seg>);

impl Key {
    pub fn root() -> Key {
        Key(Vec::new())
    }
    /// A key from its segments.
    pub fn from_segs(segs: &[Seg]) -> Key {
        Key(segs.to_vec())
    }
    /// The key one field further down (candle's `vb.pp(name)`).
    pub fn pp(&self, name: &'static str) -> Key {
        let mut v = self.0.clone();
        v.push(Seg::Name(name));
        Key(v)
    }
    /// The key of item `i` of a list.
    pub fn at(&self, i: usize) -> Key {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        Key(v)
    }
    /// The key one level up (`blocks.0.attn` for `blocks.0.attn.qkv`).
    pub fn up(&self) -> Key {
        Key(self.0[..self.0.len().saturating_sub(1)].to_vec())
    }
    pub fn segs(&self) -> &[Seg] {
        &self.0
    }
    /// The last field name (`weight`, `bias`, `running_var`, …).
    pub fn leaf(&self) -> &'static str {
        match self.0.last() {
            Some(Seg::Name(n)) => n,
            _ => "",
        }
    }
    /// The field that holds the leaf (`qkv` for `blocks.0.attn.qkv.weight`).
    pub fn parent(&self) -> &'static str {
        match self.0.len().checked_sub(2).map(|i| self.0[i]) {
            Some(Seg::Name(n)) => n,
            _ => "",
        }
    }
    /// Parameters held fixed in training: the BNNecks' BatchNorm bias (TransReID freezes it at 0).
    pub fn is_frozen(&self) -> bool {
        matches!(self.segs(), [Seg::Name("necks"), Seg::Index(_), Seg::Name("bn"), Seg::Name("bias")])
    }
    /// BatchNorm running statistics: state the model keeps, not parameters it learns.
    pub fn is_buffer(&self) -> bool {
        matches!(self.leaf(), "running_mean" | "running_var")
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            match s {
                Seg::Name(n) => f.write_str(n)?,
                Seg::Index(j) => write!(f, "{j}")?,
            }
        }
        Ok(())
    }
}

/// The function `try_map` applies to every tensor.
pub type MapFn<'f, 'a, T, U> = dyn FnMut(&Key, &'a T) -> Result<U> + 'f;

/// `y = x·Wᵀ + b`; the patch embedding's convolution is one too (its weight `[D, 3, p, p]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Linear<T> {
    pub weight: T,
    pub bias: Option<T>,
}

impl<T> Linear<T> {
    pub fn try_map<'a, U>(&'a self, k: &Key, f: &mut MapFn<'_, 'a, T, U>) -> Result<Linear<U>> {
        Ok(Linear { weight: f(&k.pp("weight"), &self.weight)?, bias: self.bias.as_ref().map(|b| f(&k.pp("bias"), b)).transpose()? })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm<T> {
    pub weight: T,
    pub bias: T,
}

impl<T> LayerNorm<T> {
    pub fn try_map<'a, U>(&'a self, k: &Key, f: &mut MapFn<'_, 'a, T, U>) -> Result<LayerNorm<U>> {
        Ok(LayerNorm { weight: f(&k.pp("weight"), &self.weight)?, bias: f(&k.pp("bias"), &self.bias)? })
    }
}

/// BatchNorm1d with its running statistics (eps 1e-5, momentum 0.1: torch's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm<T> {
    pub weight: T,
    pub bias: T,
    pub running_mean: T,
    pub running_var: T,
}

impl BatchNorm<HostTensor> {
    /// Inference-mode BatchNorm as one affine map per channel, `y = x·scale + shift`.
    pub fn folded(&self) -> (Vec<f32>, Vec<f32>) {
        let eps = Self::EPS as f32;
        let scale: Vec<f32> = self.weight.data.iter().zip(&self.running_var.data).map(|(w, v)| w / (v + eps).sqrt()).collect();
        let shift = self.bias.data.iter().zip(&self.running_mean.data).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        (scale, shift)
    }
}

impl<T> BatchNorm<T> {
    pub const EPS: f64 = 1e-5;
    pub const MOMENTUM: f64 = 0.1;

    pub fn try_map<'a, U>(&'a self, k: &Key, f: &mut MapFn<'_, 'a, T, U>) -> Result<BatchNorm<U>> {
        Ok(BatchNorm {
            weight: f(&k.pp("weight"), &self.weight)?,
            bias: f(&k.pp("bias"), &self.bias)?,
            running_mean: f(&k.pp("running_mean"), &self.running_mean)?,
            running_var: f(&k.pp("running_var"), &self.running_var)?,
        })
    }
}

/// One pre-norm transformer block. A head-pruned block has only its kept heads' rows of `qkv`
/// (`[3·H'·d_h, D]`, q | k | v, each head's `d_h` rows in kept order) and columns of `proj`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockParams<T> {
    pub norm1: LayerNorm<T>,
    pub qkv: Linear<T>,
    pub proj: Linear<T>,
    pub norm2: LayerNorm<T>,
    pub fc1: Linear<T>,
    pub fc2: Linear<T>,
}

impl<T> BlockParams<T> {
    /// The block's four products, the ones an INT8 model quantizes (`model::quant`): qkv,
    /// projection, fc1, fc2.
    pub fn products(&self) -> [&Linear<T>; 4] {
        [&self.qkv, &self.proj, &self.fc1, &self.fc2]
    }
    pub fn products_mut(&mut self) -> [&mut Linear<T>; 4] {
        [&mut self.qkv, &mut self.proj, &mut self.fc1, &mut self.fc2]
    }

    pub fn try_map<'a, U>(&'a self, k: &Key, f: &mut MapFn<'_, 'a, T, U>) -> Result<BlockParams<U>> {
        let (attn, mlp) = (k.pp("attn"), k.pp("mlp"));
        Ok(BlockParams {
            norm1: self.norm1.try_map(&k.pp("norm1"), f)?,
            qkv: self.qkv.try_map(&attn.pp("qkv"), f)?,
            proj: self.proj.try_map(&attn.pp("proj"), f)?,
            norm2: self.norm2.try_map(&k.pp("norm2"), f)?,
            fc1: self.fc1.try_map(&mlp.pp("fc1"), f)?,
            fc2: self.fc2.try_map(&mlp.pp("fc2"), f)?,
        })
    }
}

/// One LA part classifier: Linear(D, nb) → BatchNorm1d(nb) → Dropout → Linear(nb, C)
/// (docs/method.md §1).
#[derive(Debug, Clone, PartialEq)]
pub struct PartParams<T> {
    pub bottleneck: Linear<T>,
    pub bn: BatchNorm<T>,
    pub classifier: Linear<T>,
}

impl<T> PartParams<T> {
    pub fn try_map<'a, U>(&'a self, k: &Key, f: &mut MapFn<'_, 'a, T, U>) -> Result<PartParams<U>> {
        Ok(PartParams {
            bottleneck: self.bottleneck.try_map(&k.pp("bottleneck"), f)?,
            bn: self.bn.try_map(&k.pp("bn"), f)?,
            classifier: self.classifier.try_map(&k.pp("classifier"), f)?,
        })
    }
}

/// One BNNeck: BatchNorm1d(D) (its bias frozen at zero in training, as TransReID does), then an ID
/// classifier Linear(D, C) without bias (absent for a retrieval-only neck).
#[derive(Debug, Clone, PartialEq)]
pub struct NeckParams<T> {
    pub bn: BatchNorm<T>,
    pub classifier: Option<Linear<T>>,
}

impl<T> NeckParams<T> {
    pub fn try_map<'a, U>(&'a self, k: &Key, f: &mut MapFn<'_, 'a, T, U>) -> Result<NeckParams<U>> {
        Ok(NeckParams { bn: self.bn.try_map(&k.pp("bn"), f)?, classifier: self.classifier.as_ref().map(|c| c.try_map(&k.pp("classifier"), f)).transpose()? })
    }
}

/// JPM's b2 branch: a copy of the last block with its own final norm.
#[derive(Debug, Clone, PartialEq)]
pub struct JpmParams<T> {
    pub block: BlockParams<T>,
    pub norm: LayerNorm<T>,
}

impl<T> JpmParams<T> {
    pub fn try_map<'a, U>(&'a self, k: &Key, f: &mut MapFn<'_, 'a, T, U>) -> Result<JpmParams<U>> {
        Ok(JpmParams { block: self.block.try_map(&k.pp("block"), f)?, norm: self.norm.try_map(&k.pp("norm"), f)? })
    }
}

/// The whole model: patch embedding, prefix tokens (class, distillation), position and camera
/// embeddings, the blocks, the final norm (with JPM: the last block and this norm are the global
/// branch b1), JPM's b2 branch, and the head: LA part classifiers or BNNecks (both empty for a
/// retrieval-only model).
#[derive(Debug, Clone, PartialEq)]
pub struct VitParams<T> {
    pub patch_embed: Linear<T>,
    /// `[1, 1, D]` each.
    pub cls_token: Option<T>,
    pub dist_token: Option<T>,
    /// `[1, N, D]`, prefix tokens first.
    pub pos_embed: T,
    /// `[cameras, 1, D]`: SIE's camera embeddings.
    pub sie_embed: Option<T>,
    pub blocks: Vec<BlockParams<T>>,
    pub norm: LayerNorm<T>,
    pub jpm: Option<JpmParams<T>>,
    pub parts: Vec<PartParams<T>>,
    pub necks: Vec<NeckParams<T>>,
}

impl<T> VitParams<T> {
    /// Applies `f` to every tensor, in a fixed order, with its key.
    pub fn try_map<'a, U>(&'a self, f: &mut MapFn<'_, 'a, T, U>) -> Result<VitParams<U>> {
        let k = Key::root();
        let blocks = k.pp("blocks");
        let parts = k.pp("parts");
        let necks = k.pp("necks");
        Ok(VitParams {
            patch_embed: self.patch_embed.try_map(&k.pp("patch_embed").pp("proj"), f)?,
            cls_token: self.cls_token.as_ref().map(|t| f(&k.pp("cls_token"), t)).transpose()?,
            dist_token: self.dist_token.as_ref().map(|t| f(&k.pp("dist_token"), t)).transpose()?,
            pos_embed: f(&k.pp("pos_embed"), &self.pos_embed)?,
            sie_embed: self.sie_embed.as_ref().map(|t| f(&k.pp("sie_embed"), t)).transpose()?,
            blocks: self.blocks.iter().enumerate().map(|(i, b)| b.try_map(&blocks.at(i), f)).collect::<Result<_>>()?,
            norm: self.norm.try_map(&k.pp("norm"), f)?,
            jpm: self.jpm.as_ref().map(|j| j.try_map(&k.pp("jpm"), f)).transpose()?,
            parts: self.parts.iter().enumerate().map(|(i, p)| p.try_map(&parts.at(i), f)).collect::<Result<_>>()?,
            necks: self.necks.iter().enumerate().map(|(i, p)| p.try_map(&necks.at(i), f)).collect::<Result<_>>()?,
        })
    }

    /// Infallible `try_map`.
    pub fn map<'a, U>(&'a self, mut f: impl FnMut(&Key, &'a T) -> U) -> VitParams<U> {
        self.try_map(&mut |k, t| Ok(f(k, t))).expect("infallible")
    }

    /// Every tensor with its key, in the fixed order.
    pub fn entries(&self) -> Vec<(Key, &T)> {
        let mut out = Vec::new();
        self.map(|k, t| out.push((k.clone(), t)));
        out
    }

    /// The prefix tokens in sequence order (class token first).
    pub fn prefix_tokens(&self) -> Vec<&T> {
        self.cls_token.iter().chain(&self.dist_token).collect()
    }
}

impl VitParams<Key> {
    /// The keys of a model with `depth` blocks, `parts` LA parts and `necks` BNNecks, every
    /// optional tensor included (SIE, JPM): for finding tensors in a checkpoint before its
    /// configuration is known.
    pub fn keys(depth: usize, parts: usize, necks: usize) -> VitParams<Key> {
        let lin = || Linear { weight: (), bias: Some(()) };
        let ln = || LayerNorm { weight: (), bias: () };
        let bn = || BatchNorm { weight: (), bias: (), running_mean: (), running_var: () };
        let block = || BlockParams { norm1: ln(), qkv: lin(), proj: lin(), norm2: ln(), fc1: lin(), fc2: lin() };
        let part = || PartParams { bottleneck: lin(), bn: bn(), classifier: lin() };
        let skeleton = VitParams {
            patch_embed: lin(),
            cls_token: Some(()),
            dist_token: Some(()),
            pos_embed: (),
            sie_embed: Some(()),
            blocks: (0..depth).map(|_| block()).collect(),
            norm: ln(),
            jpm: Some(JpmParams { block: block(), norm: ln() }),
            parts: (0..parts).map(|_| part()).collect(),
            necks: (0..necks).map(|_| NeckParams { bn: bn(), classifier: Some(lin()) }).collect(),
        };
        skeleton.map(|k, _| k.clone())
    }
}

fn linear(out: usize, inp: usize, bias: bool) -> Linear<Shape> {
    Linear { weight: vec![out, inp], bias: bias.then(|| vec![out]) }
}

fn norm(d: usize) -> LayerNorm<Shape> {
    LayerNorm { weight: vec![d], bias: vec![d] }
}

impl VitParams<Shape> {
    /// The tensors a configuration calls for, with their shapes.
    pub fn layout(cfg: &ModelConfig) -> VitParams<Shape> {
        let a = &cfg.arch;
        let (d, m, p) = (a.embed_dim, a.mlp_dim, a.patch_size);
        let block = |heads: usize| {
            let inner = heads * a.head_dim;
            BlockParams {
                norm1: norm(d),
                qkv: linear(3 * inner, d, a.qkv_bias),
                proj: linear(d, inner, true),
                norm2: norm(d),
                fc1: linear(m, d, true),
                fc2: linear(d, m, true),
            }
        };
        let bn = |n: usize| BatchNorm { weight: vec![n], bias: vec![n], running_mean: vec![n], running_var: vec![n] };
        let c = cfg.head.num_classes;
        let parts = match cfg.head.kind {
            HeadKind::La => {
                let nb = cfg.head.bottleneck;
                (0..cfg.num_parts()).map(|_| PartParams { bottleneck: linear(nb, d, true), bn: bn(nb), classifier: linear(c, nb, true) }).collect()
            }
            _ => Vec::new(),
        };
        let necks = (0..cfg.num_necks()).map(|_| NeckParams { bn: bn(d), classifier: (c > 0).then(|| linear(c, d, false)) }).collect();
        VitParams {
            patch_embed: Linear { weight: vec![d, 3, p, p], bias: Some(vec![d]) },
            cls_token: a.class_token.then(|| vec![1, 1, d]),
            dist_token: a.dist_token.then(|| vec![1, 1, d]),
            pos_embed: vec![1, cfg.num_tokens(), d],
            sie_embed: a.sie.as_ref().map(|s| vec![s.rows(), 1, d]),
            blocks: cfg.layers.iter().map(|plan| block(plan.heads.len())).collect(),
            norm: norm(d),
            jpm: a.jpm.as_ref().map(|j| JpmParams { block: block(j.heads.len()), norm: norm(d) }),
            parts,
            necks,
        }
    }
}

impl VitParams<HostTensor> {
    /// Takes the tensors `cfg` calls for out of `tensors`, by key. A missing, misshapen or extra
    /// tensor is an error naming it and both shapes; `path` is the file they came from.
    pub fn from_map(cfg: &ModelConfig, mut tensors: TensorMap, path: &Path) -> Result<Self> {
        let params = VitParams::layout(cfg).try_map(&mut |key, shape| {
            let name = key.to_string();
            match tensors.remove(&name) {
                None => Err(Error::tensor(path, &name, format!("missing (config.json calls for shape {})", shape_str(shape)))),
                Some(t) if &t.shape != shape => {
                    Err(Error::tensor(path, &name, format!("shape {} does not match config.json, which calls for {}", shape_str(&t.shape), shape_str(shape))))
                }
                Some(t) => {
                    crate::tensor::check_finite_weights(&t, path, &name)?;
                    Ok(t)
                }
            }
        })?;
        if let Some((name, t)) = tensors.iter().next() {
            return Err(Error::tensor(path, name, format!("unexpected tensor of shape {} that config.json does not call for", shape_str(&t.shape))));
        }
        Ok(params)
    }

    /// Checks every tensor against the shapes `cfg` calls for (a model built in memory, say).
    pub fn check(&self, cfg: &ModelConfig, path: &Path) -> Result<()> {
        let layout = VitParams::layout(cfg);
        let want = layout.entries();
        let have = self.entries();
        if want.len() != have.len() {
            let w: Vec<String> = want.iter().map(|(k, _)| k.to_string()).collect();
            let h: Vec<String> = have.iter().map(|(k, _)| k.to_string()).collect();
            let odd = h.iter().find(|n| !w.contains(n)).map(|n| (n.clone(), "is not called for by config.json"));
            let odd = odd.or_else(|| w.iter().find(|n| !h.contains(n)).map(|n| (n.clone(), "is missing")));
            let (name, what) = odd.unwrap_or_else(|| (String::new(), "differs in number"));
            return Err(Error::tensor(path, name, format!("{what} ({} tensors, config.json calls for {})", h.len(), w.len())));
        }
        for ((key, shape), (hkey, t)) in want.iter().zip(&have) {
            if key != hkey || *shape != &t.shape || t.data.len() != t.shape.iter().product::<usize>() {
                return Err(Error::tensor(
                    path,
                    hkey.to_string(),
                    format!("shape {} does not match config.json, which calls for {}", shape_str(&t.shape), shape_str(shape)),
                ));
            }
        }
        Ok(())
    }

    /// The tensors by name (for writing a safetensors file).
    pub fn to_map(&self) -> TensorMap {
        self.entries().into_iter().map(|(k, t)| (k.to_string(), t.clone())).collect()
    }

    /// Parameters, BatchNorm statistics excluded, of the tensors `include` selects.
    pub fn num_params(&self, include: impl Fn(&Key) -> bool) -> usize {
        self.entries().iter().filter(|(k, _)| include(k) && !k.is_buffer()).map(|(_, t)| t.numel()).sum()
    }
}

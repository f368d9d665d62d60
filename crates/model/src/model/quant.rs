//! INT8 models (docs/int8.md): the transformer blocks' four products (qkv, projection, fc1, fc2 —
//! `BlockParams::products`) with int8 weights, symmetric per output channel, and their inputs
//! quantized to int8 per token at run time or with one calibrated scale per product. Everything
//! else — patch embedding, layer norms, attention, GELU, residual adds, the head — stays float32.
//!
//! In a model directory: `config.json` records the scheme (`quantization`), and for each product
//! `<key>.weight` is int8 `[out, in]`, `<key>.weight_scale` float32 `[out]`, and with calibrated
//! scales `<key>.input_scale` float32 `[1]`. In memory, the model's float32 parameters hold the
//! weights the products multiply by (`q · scale`), so everything that reads a model's tensors sees
//! the INT8 model's function; `Int8Params` holds the integers and scales themselves.

use super::config::ModelConfig;
use super::params::{BlockParams, Linear, VitParams};
use crate::choice::Choice;
use crate::error::{Error, Result};
use crate::kernels::int8::quantize_weight;
use crate::tensor::{shape_str, DType, HostTensor, RawTensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

crate::choice! {
    /// How the input of each INT8 product gets its scale.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum ActivationScales {
        Dynamic = "dynamic" => "each token's own scale, max|x|/127, computed at run time",
        Static = "static" => "one scale per product, calibrated on training images (max|x|/127 over them)",
    }
}

/// The weights' scheme, the only one: int8 in -127..=127, one scale per output channel.
pub const WEIGHT_SCHEME: &str = "int8 symmetric per output channel";

/// `config.json`'s record of an INT8 model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// `WEIGHT_SCHEME`.
    pub weights: String,
    pub activations: ActivationScales,
    /// Training images the static scales were calibrated on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_images: Option<usize>,
    /// The float32 model it was made from, as given to `amg quantize`, and its fingerprint.
    pub float_model: String,
    pub float_fingerprint: String,
}

impl Quantization {
    /// The scheme in words: weights, then activation scales.
    pub fn scheme(&self) -> String {
        let acts = match (self.activations, self.calibration_images) {
            (ActivationScales::Static, Some(n)) => format!("static activation scales calibrated on {n} images"),
            (a, _) => format!("{} activation scales", a.name()),
        };
        format!("{} weights, {acts}", self.weights)
    }

    /// The scheme and the float32 model it was made from.
    pub fn describe(&self) -> String {
        format!("{}; from {} (fingerprint {})", self.scheme(), self.float_model, self.float_fingerprint)
    }
}

/// One product in INT8.
#[derive(Debug, Clone, PartialEq)]
pub struct QLinear {
    /// `[out, in]`, values in -127..=127.
    pub weight: Vec<i8>,
    /// `[out]`, finite and positive.
    pub scale: Vec<f32>,
    /// The input's calibrated scale (static scales), else `None`.
    pub input_scale: Option<f32>,
}

impl QLinear {
    /// The float32 weight the product multiplies by: `q · scale`, `[out, in]`.
    pub fn dequantized(&self) -> Vec<f32> {
        let k = self.weight.len() / self.scale.len().max(1);
        self.weight.chunks_exact(k.max(1)).zip(&self.scale).flat_map(|(row, &s)| row.iter().map(move |&q| f32::from(q) * s)).collect()
    }
}

/// A block's four products, in `BlockParams::products` order (qkv, proj, fc1, fc2).
pub type QBlock = [QLinear; 4];

/// The INT8 products of a model: one `QBlock` per block, and JPM's b2 block.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Params {
    pub blocks: Vec<QBlock>,
    pub jpm: Option<QBlock>,
}

/// The per-product input scales of a calibration, in the same order as `Int8Params`.
pub struct InputScales {
    pub blocks: Vec<[f32; 4]>,
    pub jpm: Option<[f32; 4]>,
}

fn quantize_block(b: &BlockParams<HostTensor>, scales: Option<[f32; 4]>) -> QBlock {
    let q = |i: usize, lin: &Linear<HostTensor>| {
        let (out, inp) = (lin.weight.shape[0], lin.weight.shape[1]);
        let (weight, scale) = quantize_weight(&lin.weight.data, out, inp);
        QLinear { weight, scale, input_scale: scales.map(|s| s[i]) }
    };
    let [a, b2, c, d] = b.products();
    [q(0, a), q(1, b2), q(2, c), q(3, d)]
}

/// Sets a block's product weights to what its INT8 form multiplies by.
fn dequantize_into(b: &mut BlockParams<HostTensor>, q: &QBlock) {
    for (lin, ql) in b.products_mut().into_iter().zip(q) {
        lin.weight.data = ql.dequantized();
    }
}

impl Int8Params {
    /// Quantizes a float32 model's products (per output channel) and sets its parameters to the
    /// weights the INT8 products multiply by. `inputs`: calibrated input scales (static), or none
    /// (dynamic).
    pub fn quantize(params: &mut VitParams<HostTensor>, inputs: Option<&InputScales>) -> Int8Params {
        // A block without a calibrated scale gets none, which the model's check then refuses.
        let blocks: Vec<QBlock> = params.blocks.iter().enumerate().map(|(i, b)| quantize_block(b, inputs.and_then(|s| s.blocks.get(i).copied()))).collect();
        let jpm = params.jpm.as_ref().map(|j| quantize_block(&j.block, inputs.and_then(|s| s.jpm)));
        for (b, q) in params.blocks.iter_mut().zip(&blocks) {
            dequantize_into(b, q);
        }
        if let (Some(j), Some(q)) = (&mut params.jpm, &jpm) {
            dequantize_into(&mut j.block, q);
        }
        Int8Params { blocks, jpm }
    }

    /// The blocks' products paired with the float32 parameters' linears (whose keys and shapes
    /// they share).
    fn paired<'a>(&'a self, params: &'a VitParams<HostTensor>) -> Vec<(&'a BlockParams<HostTensor>, &'a QBlock)> {
        let mut out: Vec<_> = params.blocks.iter().zip(&self.blocks).collect();
        if let (Some(j), Some(q)) = (&params.jpm, &self.jpm) {
            out.push((&j.block, q));
        }
        out
    }

    /// Checks the integers and scales against the model: one block each, shapes, values in
    /// -127..=127, scales finite and positive, an input scale exactly where the scheme has one.
    pub fn check(&self, q: &Quantization, params: &VitParams<HostTensor>, path: &Path) -> Result<()> {
        if self.blocks.len() != params.blocks.len() || self.jpm.is_some() != params.jpm.is_some() {
            return Err(Error::file(path, format!("{} INT8 blocks for a model of {} blocks", self.blocks.len(), params.blocks.len())));
        }
        let keys = params.map(|k, _| k.clone());
        let key_blocks = keys.blocks.iter().chain(keys.jpm.as_ref().map(|j| &j.block));
        for ((b, qb), kb) in self.paired(params).into_iter().zip(key_blocks) {
            for ((lin, ql), kl) in b.products().into_iter().zip(qb).zip(kb.products()) {
                let name = kl.weight.up().to_string();
                check_linear(ql, &lin.weight.shape, q.activations, path, &name)?;
            }
        }
        Ok(())
    }

    /// The tensors a model directory stores for them, by name (int8 weights, float32 scales).
    pub fn tensors(&self, params: &VitParams<HostTensor>) -> BTreeMap<String, RawTensor> {
        let keys = params.map(|k, _| k.clone());
        let key_blocks = keys.blocks.iter().chain(keys.jpm.as_ref().map(|j| &j.block));
        let mut out = BTreeMap::new();
        for ((b, qb), kb) in self.paired(params).into_iter().zip(key_blocks) {
            for ((lin, ql), kl) in b.products().into_iter().zip(qb).zip(kb.products()) {
                let base = kl.weight.up().to_string();
                let bytes = ql.weight.iter().map(|&v| v as u8).collect();
                out.insert(format!("{base}.weight"), RawTensor { dtype: DType::I8, shape: lin.weight.shape.clone(), bytes });
                out.insert(format!("{base}.weight_scale"), RawTensor::f32(vec![ql.scale.len()], &ql.scale));
                if let Some(s) = ql.input_scale {
                    out.insert(format!("{base}.input_scale"), RawTensor::f32(vec![1], &[s]));
                }
            }
        }
        out
    }

    /// Takes an INT8 model's integers and scales out of a file's tensors, leaving in their place
    /// the float32 weights they stand for (`q · scale`), ready for `VitParams::from_map`. Every
    /// tensor is checked before it is used: type, shape, value range, scales finite and positive.
    pub fn take_from(cfg: &ModelConfig, q: &Quantization, raw: &mut BTreeMap<String, RawTensor>, path: &Path) -> Result<Int8Params> {
        let layout = VitParams::layout(cfg);
        let keys = layout.map(|k, _| k.clone());
        let mut take_block = |lb: &BlockParams<Vec<usize>>, kb: &BlockParams<super::params::Key>| -> Result<QBlock> {
            let mut out = Vec::with_capacity(4);
            for (shape, key) in lb.products().into_iter().zip(kb.products()) {
                let base = key.weight.up().to_string();
                let (wname, sname, iname) = (format!("{base}.weight"), format!("{base}.weight_scale"), format!("{base}.input_scale"));
                let w = raw
                    .remove(&wname)
                    .ok_or_else(|| Error::tensor(path, &wname, format!("missing (an INT8 model stores it as int8 {})", shape_str(&shape.weight))))?;
                if w.dtype != DType::I8 || w.shape != shape.weight || !w.is_consistent() {
                    return Err(Error::tensor(
                        path,
                        &wname,
                        format!("expected int8 of shape {}, found {} of shape {}", shape_str(&shape.weight), w.dtype.name(), shape_str(&w.shape)),
                    ));
                }
                let out_dim = shape.weight[0];
                let scale = take_f32(raw, &sname, &[out_dim], path)?
                    .ok_or_else(|| Error::tensor(path, &sname, format!("missing (an INT8 model stores float32 {})", shape_str(&[out_dim]))))?;
                let input_scale = take_f32(raw, &iname, &[1], path)?.map(|v| v[0]);
                let ql = QLinear { weight: w.bytes.iter().map(|&b| b as i8).collect(), scale, input_scale };
                check_linear(&ql, &shape.weight, q.activations, path, &base)?;
                raw.insert(wname, RawTensor::f32(shape.weight.clone(), &ql.dequantized()));
                out.push(ql);
            }
            Ok(out.try_into().expect("four products"))
        };
        let blocks = layout.blocks.iter().zip(&keys.blocks).map(|(lb, kb)| take_block(lb, kb)).collect::<Result<Vec<_>>>()?;
        let jpm = match (&layout.jpm, &keys.jpm) {
            (Some(lj), Some(kj)) => Some(take_block(&lj.block, &kj.block)?),
            _ => None,
        };
        Ok(Int8Params { blocks, jpm })
    }

    /// Feeds every integer and scale to `eat` (for the model's fingerprint).
    pub fn hash_into(&self, eat: &mut impl FnMut(u32)) {
        for ql in self.blocks.iter().chain(&self.jpm).flatten() {
            ql.weight.chunks(4).for_each(|c| eat(c.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b as u8))));
            ql.scale.iter().for_each(|s| eat(s.to_bits()));
            eat(ql.input_scale.map_or(0, f32::to_bits));
        }
    }
}

/// Removes a float32 tensor of the given shape from `raw`: `None` if absent, an error naming it if
/// of another type or shape.
fn take_f32(raw: &mut BTreeMap<String, RawTensor>, name: &str, shape: &[usize], path: &Path) -> Result<Option<Vec<f32>>> {
    let Some(t) = raw.remove(name) else { return Ok(None) };
    if t.dtype != DType::F32 || t.shape != shape {
        return Err(Error::tensor(
            path,
            name,
            format!("expected float32 of shape {}, found {} of shape {}", shape_str(shape), t.dtype.name(), shape_str(&t.shape)),
        ));
    }
    t.to_f32().map(Some).ok_or_else(|| Error::tensor(path, name, "its data does not match its shape"))
}

fn check_linear(ql: &QLinear, shape: &[usize], acts: ActivationScales, path: &Path, name: &str) -> Result<()> {
    let (out, inp) = (shape[0], shape[1]);
    if ql.weight.len() != out * inp {
        return Err(Error::tensor(
            path,
            format!("{name}.weight"),
            format!("{} int8 values, the shape {} calls for {}", ql.weight.len(), shape_str(shape), out * inp),
        ));
    }
    if ql.weight.contains(&i8::MIN) {
        return Err(Error::tensor(path, format!("{name}.weight"), "holds -128: INT8 weights are symmetric, in -127..=127"));
    }
    if ql.scale.len() != out {
        return Err(Error::tensor(path, format!("{name}.weight_scale"), format!("{} scales for {out} output channels", ql.scale.len())));
    }
    if let Some((j, s)) = ql.scale.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::tensor(path, format!("{name}.weight_scale"), format!("scale {j} is {s}: scales must be finite and positive")));
    }
    match (acts, ql.input_scale) {
        (ActivationScales::Static, None) => Err(Error::tensor(path, format!("{name}.input_scale"), "missing: the model's activation scales are static")),
        (ActivationScales::Dynamic, Some(_)) => {
            Err(Error::tensor(path, format!("{name}.input_scale"), "present, but the model's activation scales are dynamic (config.json)"))
        }
        (_, Some(s)) if !(s.is_finite() && s > 0.0) => {
            Err(Error::tensor(path, format!("{name}.input_scale"), format!("is {s}: scales must be finite and positive")))
        }
        _ => Ok(()),
    }
}

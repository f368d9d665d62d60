//! ONNX export: the model as a standard opset-17 graph (no custom operators), so ONNX Runtime,
//! TensorRT and OpenVINO run it as it is.
//!
//! The graph is built from the model definition (`model::params`), one function per part of the
//! model, and its node names are the checkpoint keys of the weights they use (`blocks.3.attn.qkv`,
//! `parts.2.bn`), so a graph viewer shows the model a reader already knows. The pruning is carried
//! over as amg runs it: each layer has only its kept heads (smaller q/k/v and output-projection
//! weights), and a token-pruned layer gathers its kept rows of the normed input before the key/value
//! projection, so the runtime does none of the removed work (docs/method.md §3.4).
//!
//! An INT8 model (`model::quant`) is written in the QDQ form: each block product's input goes
//! through QuantizeLinear → DequantizeLinear with amg's scale (calibrated: a constant; per token:
//! computed in the graph from the row's max|x|, a per-axis scale), its int8 weight through
//! DequantizeLinear with the per-output-channel scales, then MatMul and the bias. Runtimes that
//! quantize (ONNX Runtime, TensorRT, OpenVINO) run products of constant scales on their int8
//! kernels; per-token scales they compute as written, in float (docs/int8.md).
//!
//! The protobuf messages are `onnx-protobuf`'s, written by the `protobuf` crate.

use crate::error::{Error, Result};
use crate::model::params::{BlockParams, JpmParams, Key, PartParams, VitParams};
use crate::model::quant::QBlock;
use crate::model::{HeadKind, ModelConfig, ModelFiles};
use crate::tensor::HostTensor;
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::dimension::Value as DimValue;
use onnx_protobuf::tensor_shape_proto::Dimension;
use onnx_protobuf::type_proto::{Tensor as TensorType, Value as TypeValue};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// The opset the graph uses: the first with LayerNormalization, supported by every major runtime.
pub const OPSET: i64 = 17;
/// ONNX IR version 8 goes with opset 17.
const IR_VERSION: i64 = 8;
/// A protobuf message cannot exceed 2 GiB; the weights are stored inside the model.
const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;

/// What the exported graph returns besides the retrieval feature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnnxOutputs {
    /// The LA classifiers' logits, `logits` `[batch, P, C]` (inference mode).
    pub logits: bool,
}

/// The model as ONNX protobuf bytes: input `images` `[batch, 3, H, W]` (normalised as the
/// metadata says), output `features` `[batch, P·D]` and, if asked, `logits` `[batch, P, C]`.
pub fn export_onnx(files: &ModelFiles, outputs: OnnxOutputs) -> Result<Vec<u8>> {
    let cfg = &files.config;
    files.check()?;
    let has_classifiers = files.has_classifiers();
    if outputs.logits && !has_classifiers {
        return Err(Error::invalid("`outputs` logits: this model has no classifier head (retrieval only)"));
    }
    let weight_bytes: u64 = files.params.entries().iter().map(|(_, t)| 4 * t.numel() as u64).sum();
    if weight_bytes > PROTOBUF_LIMIT - (64 << 20) {
        return Err(Error::invalid(format!(
            "the model's weights take {:.2} GB, more than an ONNX file can hold (protobuf's 2 GB limit); amg does not write external-data ONNX",
            weight_bytes as f64 / 1e9
        )));
    }
    let mut g = Builder::new(cfg);
    let keys = files.params.map(|k, _| k.clone());
    let mut x = g.embed(&files.params, &keys);
    let n = cfg.num_tokens();
    let mut trunk = None;
    for (l, ((block, bkeys), plan)) in files.params.blocks.iter().zip(&keys.blocks).zip(&cfg.layers).enumerate() {
        if l + 1 == cfg.layers.len() && cfg.arch.jpm.is_some() {
            trunk = Some(x.clone());
        }
        let keep = (plan.tokens.len() != n).then_some(plan.tokens.as_slice());
        let q = files.int8.as_ref().map(|i| &i.blocks[l]);
        x = g.block(&x, block, bkeys, q, plan.heads.len(), keep, n);
    }
    let tokens = g.layer_norm(&key_name(&keys.norm.weight.up()), &x, &files.params.norm.weight, &files.params.norm.bias);
    let tokens = g.unrows(&tokens, "tokens", n, cfg.arch.embed_dim);
    if cfg.head.kind == HeadKind::Bnneck {
        let locals = match (trunk, &files.params.jpm, &keys.jpm) {
            (Some(t), Some(p), Some(k)) => Some(g.jpm_locals(&t, p, k, files.int8.as_ref().and_then(|i| i.jpm.as_ref()))),
            _ => None,
        };
        let (features, logits) = g.necks(&tokens, locals.as_deref(), &files.params, outputs.logits);
        g.output(&features, "features", vec![Dim::Batch, Dim::Fixed(cfg.feature_dim())]);
        if let Some(logits) = logits {
            g.output(&logits, "logits", vec![Dim::Batch, Dim::Fixed(cfg.num_necks()), Dim::Fixed(cfg.head.num_classes)]);
        }
    } else {
        let parts = g.pool_parts(&tokens);
        let features = g.features(&parts);
        g.output(&features, "features", vec![Dim::Batch, Dim::Fixed(cfg.feature_dim())]);
        if outputs.logits {
            let logits = g.logits(&tokens, &parts, &files.params.parts, &keys.parts);
            g.output(&logits, "logits", vec![Dim::Batch, Dim::Fixed(cfg.num_parts()), Dim::Fixed(cfg.head.num_classes)]);
        }
    }
    let model = g.finish(files);
    let size = model.compute_size();
    if size > PROTOBUF_LIMIT {
        return Err(Error::invalid(format!("the ONNX model would take {:.2} GB, more than protobuf's 2 GB limit", size as f64 / 1e9)));
    }
    model.write_to_bytes().map_err(|e| Error::invalid(format!("cannot serialise the ONNX model: {e}")))
}

/// The ONNX metadata a deployer needs to feed the model and read its output.
pub fn metadata(files: &ModelFiles) -> Vec<(String, String)> {
    let cfg = &files.config;
    let list = |v: &[f32]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
    let heads: Vec<&Vec<usize>> = cfg.layers.iter().map(|l| &l.heads).collect();
    let tokens: Vec<&Vec<usize>> = cfg.layers.iter().map(|l| &l.tokens).collect();
    let features = match cfg.head.kind {
        HeadKind::Bnneck => format!(
            "features: float32 [batch, {}], TransReID's feature ([global{}], {} the BNNeck BatchNorm{}) L2-normalised: compare by inner product",
            cfg.feature_dim(),
            if cfg.arch.jpm.is_some() { ", local_1/k, ..., local_k/k" } else { "" },
            cfg.head.neck_feat.map_or("before", crate::choice::Choice::name),
            if cfg.arch.jpm.is_some() { "s" } else { "" }
        ),
        _ => "features: float32 [batch, parts x embed_dim], each part scaled to norm 1/sqrt(parts): compare by inner product".into(),
    };
    let mut meta: Vec<(String, String)> = vec![
        ("amg_version".into(), env!("CARGO_PKG_VERSION").into()),
        ("input".into(), "images: float32 [batch, 3, H, W], RGB, bicubic-resized to H x W, scaled to [0, 1], then (x - mean) / std per channel".into()),
        ("input_height".into(), cfg.input.height.to_string()),
        ("input_width".into(), cfg.input.width.to_string()),
        ("mean".into(), list(&cfg.input.mean)),
        ("std".into(), list(&cfg.input.std)),
        (
            "head".into(),
            match cfg.head.kind {
                HeadKind::None => "none".into(),
                HeadKind::La => "la".into(),
                HeadKind::Bnneck => "bnneck".into(),
            },
        ),
        ("parts".into(), cfg.num_parts().to_string()),
        ("feature_dim".into(), cfg.feature_dim().to_string()),
        ("features".into(), features),
        ("prefix_tokens".into(), cfg.num_prefix().to_string()),
        ("kept_heads".into(), serde_json::to_string(&heads).unwrap_or_default()),
        ("kept_tokens".into(), serde_json::to_string(&tokens).unwrap_or_default()),
        ("amg_config".into(), cfg.to_json()),
    ];
    if let Some(sie) = &cfg.arch.sie {
        let what = if sie.views == 1 {
            format!("cameras: int64 [batch], each image's camera index 0..{} (c1 in a Market/Duke file name is 0)", sie.cameras)
        } else {
            format!("cameras: int64 [batch], each image's SIE row: camera x {} + viewpoint ({})", sie.views, sie.describe())
        };
        meta.push(("cameras".into(), what));
    }
    meta
}

fn key_name(k: &Key) -> String {
    k.to_string()
}

/// A dimension of a graph input or output.
enum Dim {
    Batch,
    Fixed(usize),
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: v, type_: AttributeType::INT.into(), ..Default::default() }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: v.to_vec(), type_: AttributeType::INTS.into(), ..Default::default() }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f: v, type_: AttributeType::FLOAT.into(), ..Default::default() }
}

fn value_info(name: &str, dims: Vec<Dim>) -> ValueInfoProto {
    value_info_of(name, dims, DataType::FLOAT)
}

fn value_info_of(name: &str, dims: Vec<Dim>, dtype: DataType) -> ValueInfoProto {
    let dim = dims
        .into_iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Batch => DimValue::DimParam("batch".into()),
                Dim::Fixed(n) => DimValue::DimValue(n as i64),
            }),
            ..Default::default()
        })
        .collect();
    let tensor = TensorType { elem_type: dtype as i32, shape: Some(TensorShapeProto { dim, ..Default::default() }).into(), ..Default::default() };
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto { value: Some(TypeValue::TensorType(tensor)), ..Default::default() }).into(),
        ..Default::default()
    }
}

/// Builds the graph: nodes in order, weights as initializers.
struct Builder<'a> {
    cfg: &'a ModelConfig,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    outputs: Vec<ValueInfoProto>,
}

impl<'a> Builder<'a> {
    fn new(cfg: &'a ModelConfig) -> Self {
        Builder { cfg, nodes: Vec::new(), inits: Vec::new(), outputs: Vec::new() }
    }

    /// A float initializer called `name`.
    fn init(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.inits.push(TensorProto {
            name: name.into(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: DataType::FLOAT as i32,
            raw_data: raw,
            ..Default::default()
        });
        name.into()
    }

    /// An int64 initializer (shapes, indices).
    fn init_i64(&mut self, name: &str, shape: &[usize], data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.inits.push(TensorProto {
            name: name.into(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: DataType::INT64 as i32,
            raw_data: raw,
            ..Default::default()
        });
        name.into()
    }

    /// A node named `name` whose one output is also called `name`.
    fn node(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.into()],
            attribute: attrs,
            ..Default::default()
        });
        name.into()
    }

    /// `x` `[B·T, K·H·d_h]` (K projections side by side, T tokens per image) as K tensors
    /// `[B, H, T, d_h]`: one reshape to `[B, T, K, H, d_h]`, one transpose to `[K, B, H, T, d_h]`,
    /// then split and squeeze.
    fn split_heads<const K: usize>(&mut self, name: &str, x: &str, t: usize, heads: usize, hd: usize) -> [String; K] {
        let shape = self.init_i64(&format!("{name}/shape"), &[5], &[-1, t as i64, K as i64, heads as i64, hd as i64]);
        let r = self.node("Reshape", &format!("{name}/reshape"), &[x, &shape], vec![]);
        let t = self.node("Transpose", &format!("{name}/transpose"), &[&r], vec![attr_ints("perm", &[2, 0, 3, 1, 4])]);
        let axis0 = self.init_i64(&format!("{name}/axis0"), &[1], &[0]);
        let parts: Vec<String> = if K == 1 {
            vec![t]
        } else {
            let sizes = self.init_i64(&format!("{name}/sizes"), &[K], &[1; K]);
            let outs: Vec<String> = (0..K).map(|i| format!("{name}/split:{i}")).collect();
            self.nodes.push(NodeProto {
                op_type: "Split".into(),
                name: format!("{name}/split"),
                input: vec![t, sizes],
                output: outs.clone(),
                attribute: vec![attr_int("axis", 0)],
                ..Default::default()
            });
            outs
        };
        let mut squeezed = parts.iter().enumerate().map(|(i, p)| self.node("Squeeze", &format!("{name}/squeeze:{i}"), &[p, &axis0], vec![]));
        std::array::from_fn(|_| squeezed.next().unwrap_or_default())
    }

    /// `x·Wᵀ + b` on rows `x` `[rows, in]`; the weight is stored transposed (`[in, out]`). A bias-free
    /// Gemm, then Add: ONNX Runtime fuses a 2-D MatMul + Add into a Gemm whose bias is copied into
    /// the output first, which ran slower than Gemm, then Add (and the Add before a GELU becomes
    /// one BiasGelu kernel).
    fn linear(&mut self, name: &str, x: &str, w: &HostTensor, bias: Option<&HostTensor>) -> String {
        let wt = self.init(&format!("{name}.weight_t"), &[w.shape[1], w.shape[0]], transpose(w));
        let y = self.node("Gemm", name, &[x, &wt], vec![]);
        match bias {
            Some(b) => {
                let b = self.init(&format!("{name}.bias"), &b.shape, b.data.clone());
                self.node("Add", &format!("{name}+bias"), &[&y, &b], vec![])
            }
            None => y,
        }
    }

    /// A block product: `linear`, or for an INT8 model `qlinear`.
    fn product(&mut self, name: &str, x: &str, w: &HostTensor, bias: Option<&HostTensor>, q: Option<QRows>) -> String {
        match q {
            None => self.linear(name, x, w, bias),
            Some(q) => self.qlinear(name, x, &q, bias),
        }
    }

    /// An int8 initializer.
    fn init_i8(&mut self, name: &str, shape: &[usize], data: &[i8]) -> String {
        self.inits.push(TensorProto {
            name: name.into(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: DataType::INT8 as i32,
            raw_data: data.iter().map(|&v| v as u8).collect(),
            ..Default::default()
        });
        name.into()
    }

    /// An INT8 product in QDQ form on rows `x` `[rows, in]`: the input quantized and dequantized
    /// with its scale (a constant, or each row's max|x| / 127, 1 for a row of zeros, computed in
    /// the graph), the int8 weight `[in, out]` dequantized per output channel, MatMul, then the
    /// bias.
    fn qlinear(&mut self, name: &str, x: &str, q: &QRows, bias: Option<&HostTensor>) -> String {
        let xd = match q.input_scale {
            Some(scale) => {
                // Clipped to ±127·s first: QuantizeLinear saturates at -128, amg's symmetric
                // scheme at -127.
                let lo = self.init(&format!("{name}/x_min"), &[], vec![-crate::kernels::int8::QMAX * scale]);
                let hi = self.init(&format!("{name}/x_max"), &[], vec![crate::kernels::int8::QMAX * scale]);
                let clipped = self.node("Clip", &format!("{name}/x_clipped"), &[x, &lo, &hi], vec![]);
                let s = self.init(&format!("{name}/x_scale"), &[], vec![scale]);
                let zp = self.init_i8(&format!("{name}/x_zero_point"), &[], &[0]);
                let xq = self.node("QuantizeLinear", &format!("{name}/x_quantized"), &[&clipped, &s, &zp], vec![]);
                self.node("DequantizeLinear", &format!("{name}/x_dequantized"), &[&xq, &s, &zp], vec![])
            }
            None => {
                // QuantizeLinear takes only constant (or per-axis constant) scales in the
                // runtimes; each row's own scale is written out with plain operators instead.
                let abs = self.node("Abs", &format!("{name}/x_abs"), &[x], vec![]);
                let max = self.node("ReduceMax", &format!("{name}/x_absmax"), &[&abs], vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)]);
                let qmax = self.init(&format!("{name}/qmax"), &[], vec![crate::kernels::int8::QMAX]);
                let s = self.node("Div", &format!("{name}/x_scale_raw"), &[&max, &qmax], vec![]);
                let zero = self.init(&format!("{name}/zero"), &[], vec![0.0]);
                let one = self.init(&format!("{name}/one"), &[], vec![1.0]);
                let is_zero = self.node("Equal", &format!("{name}/x_all_zero"), &[&s, &zero], vec![]);
                let s = self.node("Where", &format!("{name}/x_scale"), &[&is_zero, &one, &s], vec![]);
                let scaled = self.node("Div", &format!("{name}/x_scaled"), &[x, &s], vec![]);
                let rounded = self.node("Round", &format!("{name}/x_rounded"), &[&scaled], vec![]);
                let lo = self.init(&format!("{name}/qmin"), &[], vec![-crate::kernels::int8::QMAX]);
                let xq = self.node("Clip", &format!("{name}/x_quantized"), &[&rounded, &lo, &qmax], vec![]);
                self.node("Mul", &format!("{name}/x_dequantized"), &[&xq, &s], vec![])
            }
        };
        let (out, inp) = (q.scale.len(), q.weight.len() / q.scale.len().max(1));
        let ws = self.init(&format!("{name}.weight_scale"), &[out], q.scale.to_vec());
        let wz = self.init_i8(&format!("{name}.weight_zero_point"), &[out], &vec![0; out]);
        let y = if q.input_scale.is_some() {
            // Gemm on the weight [in, out]: the pattern runtimes turn into an int8 product (ONNX
            // Runtime: QGemm; a MatMul without a QuantizeLinear after it stayed in float).
            let wt: Vec<i8> = (0..inp).flat_map(|k| (0..out).map(move |j| q.weight[j * inp + k])).collect();
            let wq = self.init_i8(&format!("{name}.weight_q_t"), &[inp, out], &wt);
            let wd = self.node("DequantizeLinear", &format!("{name}.weight_dequantized"), &[&wq, &ws, &wz], vec![attr_int("axis", 1)]);
            self.node("Gemm", name, &[&xd, &wd], vec![])
        } else {
            // Per-token scales: Gemm on the weight [out, in]. (ONNX Runtime fuses a dequantized
            // weight into a MatMul as MatMulNBits, which quantizes the input again, per block of
            // the row, unless asked not to: features 2e-3 away from the scheme on the fixtures.)
            let wq = self.init_i8(&format!("{name}.weight_q"), &[out, inp], q.weight);
            let wd = self.node("DequantizeLinear", &format!("{name}.weight_dequantized"), &[&wq, &ws, &wz], vec![attr_int("axis", 0)]);
            self.node("Gemm", name, &[&xd, &wd], vec![attr_int("transB", 1)])
        };
        match bias {
            Some(b) => {
                let b = self.init(&format!("{name}.bias"), &b.shape, b.data.clone());
                self.node("Add", &format!("{name}+bias"), &[&y, &b], vec![])
            }
            None => y,
        }
    }

    fn layer_norm(&mut self, name: &str, x: &str, w: &HostTensor, b: &HostTensor) -> String {
        let w = self.init(&format!("{name}.weight"), &w.shape, w.data.clone());
        let b = self.init(&format!("{name}.bias"), &b.shape, b.data.clone());
        self.node("LayerNormalization", name, &[x, &w, &b], vec![attr_int("axis", -1), attr_float("epsilon", self.cfg.arch.ln_eps as f32)])
    }

    /// The exact (erf) GELU from opset-17 operators, written as runtimes recognise it for fusion
    /// (ONNX Runtime turns it, with the bias before it, into one BiasGelu kernel):
    /// (x · (1 + erf(x / √2))) · 0.5.
    fn gelu(&mut self, name: &str, x: &str) -> String {
        let sqrt2 = self.init(&format!("{name}.sqrt2"), &[], vec![std::f32::consts::SQRT_2]);
        let one = self.init(&format!("{name}.one"), &[], vec![1.0]);
        let half = self.init(&format!("{name}.half"), &[], vec![0.5]);
        let s = self.node("Div", &format!("{name}/div_sqrt2"), &[x, &sqrt2], vec![]);
        let e = self.node("Erf", &format!("{name}/erf"), &[&s], vec![]);
        let p = self.node("Add", &format!("{name}/plus1"), &[&e, &one], vec![]);
        let m = self.node("Mul", &format!("{name}/times_x"), &[x, &p], vec![]);
        self.node("Mul", name, &[&m, &half], vec![])
    }

    /// The batch size as a 1-element int64 tensor, read from the input.
    fn batch_dim(&mut self) -> String {
        let shape = self.node("Shape", "batch/shape", &["images"], vec![]);
        let (start, end) = (self.init_i64("batch/start", &[1], &[0]), self.init_i64("batch/end", &[1], &[1]));
        self.node("Slice", "batch", &[&shape, &start, &end], vec![])
    }

    /// Patch embedding (a strided convolution), prefix tokens and position embedding: `[B, N, D]`.
    fn embed(&mut self, p: &VitParams<HostTensor>, k: &VitParams<Key>) -> String {
        let (d, patch, stride) = (self.cfg.arch.embed_dim, self.cfg.arch.patch_size as i64, self.cfg.arch.stride() as i64);
        let pe = key_name(&k.patch_embed.weight.up());
        let w = self.init(&format!("{pe}.weight"), &p.patch_embed.weight.shape, p.patch_embed.weight.data.clone());
        let mut inputs = vec!["images".to_string(), w];
        if let Some(b) = &p.patch_embed.bias {
            inputs.push(self.init(&format!("{pe}.bias"), &b.shape, b.data.clone()));
        }
        let inputs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
        let conv = self.node("Conv", &pe, &inputs, vec![attr_ints("kernel_shape", &[patch, patch]), attr_ints("strides", &[stride, stride])]);
        let flat_shape = self.init_i64("patch_embed/flat_shape", &[3], &[0, d as i64, -1]);
        let flat = self.node("Reshape", "patch_embed/flatten", &[&conv, &flat_shape], vec![]);
        let mut x = self.node("Transpose", "patch_embed/tokens", &[&flat], vec![attr_ints("perm", &[0, 2, 1])]);
        let prefix: Vec<(String, &HostTensor)> = [(&k.cls_token, &p.cls_token), (&k.dist_token, &p.dist_token)]
            .into_iter()
            .filter_map(|(k, t)| Some((key_name(k.as_ref()?), t.as_ref()?)))
            .collect();
        if !prefix.is_empty() {
            let batch = self.batch_dim();
            let rest = self.init_i64("prefix/shape_rest", &[2], &[1, d as i64]);
            let shape = self.node("Concat", "prefix/shape", &[&batch, &rest], vec![attr_int("axis", 0)]);
            let mut seq = Vec::new();
            for (name, t) in prefix {
                let init = self.init(&name, &t.shape, t.data.clone());
                seq.push(self.node("Expand", &format!("{name}/expand"), &[&init, &shape], vec![]));
            }
            seq.push(x);
            let seq: Vec<&str> = seq.iter().map(|s| s.as_str()).collect();
            x = self.node("Concat", "prefix+patches", &seq, vec![attr_int("axis", 1)]);
        }
        let pos = key_name(&k.pos_embed);
        let pos_init = self.init(&pos, &p.pos_embed.shape, p.pos_embed.data.clone());
        let mut x = self.node("Add", &format!("{pos}/add"), &[&x, &pos_init], vec![]);
        if let (Some(sie), Some(table), Some(key)) = (&self.cfg.arch.sie, &p.sie_embed, &k.sie_embed) {
            // SIE: the coefficient times each image's camera embedding, on every token.
            let name = key_name(key);
            let scaled: Vec<f32> = table.data.iter().map(|v| v * sie.coefficient).collect();
            let table = self.init(&format!("{name}_scaled"), &[sie.rows(), d], scaled);
            let cam = self.node("Gather", &format!("{name}/camera"), &[&table, "cameras"], vec![attr_int("axis", 0)]);
            let axis1 = self.init_i64(&format!("{name}/axis1"), &[1], &[1]);
            let cam = self.node("Unsqueeze", &format!("{name}/per_token"), &[&cam, &axis1], vec![]);
            x = self.node("Add", &format!("{name}/add"), &[&x, &cam], vec![]);
        }
        self.rows(&x, "tokens/rows")
    }

    /// `[B, T, D]` → `[B·T, D]`: the blocks work on rows, so that each projection with its bias
    /// is a single Gemm for the runtime.
    fn rows(&mut self, x: &str, name: &str) -> String {
        let shape = self.init_i64(&format!("{name}/shape"), &[2], &[-1, self.cfg.arch.embed_dim as i64]);
        self.node("Reshape", name, &[x, &shape], vec![])
    }

    /// `[B·T, C]` → `[B, T, C]`.
    fn unrows(&mut self, x: &str, name: &str, t: usize, c: usize) -> String {
        let shape = self.init_i64(&format!("{name}/shape"), &[3], &[-1, t as i64, c as i64]);
        self.node("Reshape", name, &[x, &shape], vec![])
    }

    /// One pre-norm block with `heads` heads on the token rows `x` `[B·n, D]`; `keep`: the kept
    /// key/value positions when not all.
    /// One block; `q`: its products in INT8 (QDQ, see `qlinear`).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &mut self,
        x: &str,
        p: &BlockParams<HostTensor>,
        k: &BlockParams<Key>,
        qb: Option<&QBlock>,
        heads: usize,
        keep: Option<&[usize]>,
        n: usize,
    ) -> String {
        let a = &self.cfg.arch;
        let (hd, d) = (a.head_dim, a.embed_dim);
        let inner = heads * hd;
        let y = self.layer_norm(&key_name(&k.norm1.weight.up()), x, &p.norm1.weight, &p.norm1.bias);
        let qkv = key_name(&k.qkv.weight.up());
        let attn = key_name(&k.qkv.weight.up().up());
        // Heads laid out [B, H, T, d_h] as PyTorch's own exports do (one transpose for q, k and v
        // together), so runtimes fuse the key transpose and the scale into the score product.
        let (q, key, value) = if let Some(keep) = keep {
            // Queries from every token; keys and values from the kept tokens only.
            let q = self.product(
                &format!("{qkv}.q"),
                &y,
                &row_range(&p.qkv.weight, 0, inner),
                p.qkv.bias.as_ref().map(|b| row_range(b, 0, inner)).as_ref(),
                qrows(qb, 0, 0..inner),
            );
            let [q] = self.split_heads(&format!("{attn}/q"), &q, n, heads, hd);
            let idx: Vec<i64> = keep.iter().map(|&t| t as i64).collect();
            let idx = self.init_i64(&format!("{qkv}/kept_tokens"), &[idx.len()], &idx);
            let per_image = self.unrows(&y, &format!("{qkv}/per_image"), n, d);
            let kept = self.node("Gather", &format!("{qkv}/gather_kept"), &[&per_image, &idx], vec![attr_int("axis", 1)]);
            let kept = self.rows(&kept, &format!("{qkv}/kept_rows"));
            let kv = self.product(
                &format!("{qkv}.kv"),
                &kept,
                &row_range(&p.qkv.weight, inner, 3 * inner),
                p.qkv.bias.as_ref().map(|b| row_range(b, inner, 3 * inner)).as_ref(),
                qrows(qb, 0, inner..3 * inner),
            );
            let [kk, v] = self.split_heads(&format!("{attn}/k|v"), &kv, keep.len(), heads, hd);
            (q, kk, v)
        } else {
            // Every token kept: one product for q | k | v.
            let all = self.product(&qkv, &y, &p.qkv.weight, p.qkv.bias.as_ref(), qrows(qb, 0, 0..3 * inner));
            let [q, kk, v] = self.split_heads(&format!("{attn}/q|k|v"), &all, n, heads, hd);
            (q, kk, v)
        };
        let scale = self.init(&format!("{attn}/scale"), &[], vec![(hd as f32).powf(-0.5)]);
        let qs = self.node("Mul", &format!("{attn}/q_scaled"), &[&q, &scale], vec![]);
        let kt = self.node("Transpose", &format!("{attn}/k_t"), &[&key], vec![attr_ints("perm", &[0, 1, 3, 2])]);
        let scores = self.node("MatMul", &format!("{attn}/scores"), &[&qs, &kt], vec![]);
        let probs = self.node("Softmax", &format!("{attn}/softmax"), &[&scores], vec![attr_int("axis", -1)]);
        let o = self.node("MatMul", &format!("{attn}/weighted_values"), &[&probs, &value], vec![]);
        let o = self.node("Transpose", &format!("{attn}/merge_t"), &[&o], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let merge = self.init_i64(&format!("{attn}/merge_shape"), &[2], &[-1, inner as i64]);
        let o = self.node("Reshape", &format!("{attn}/merge_heads"), &[&o, &merge], vec![]);
        let o = self.product(&key_name(&k.proj.weight.up()), &o, &p.proj.weight, p.proj.bias.as_ref(), qrows(qb, 1, 0..d));
        let block = key_name(&k.norm1.weight.up().up());
        let x = self.node("Add", &format!("{block}/residual1"), &[x, &o], vec![]);
        let y = self.layer_norm(&key_name(&k.norm2.weight.up()), &x, &p.norm2.weight, &p.norm2.bias);
        let fc1 = key_name(&k.fc1.weight.up());
        let h = self.product(&fc1, &y, &p.fc1.weight, p.fc1.bias.as_ref(), qrows(qb, 2, 0..p.fc1.weight.shape[0]));
        let h = self.gelu(&format!("{fc1}/gelu"), &h);
        let h = self.product(&key_name(&k.fc2.weight.up()), &h, &p.fc2.weight, p.fc2.bias.as_ref(), qrows(qb, 3, 0..d));
        self.node("Add", &format!("{block}/residual2"), &[&x, &h], vec![])
    }

    /// JPM's b2 branch on the trunk rows `[B·N, D]` (the last block's input): every local group
    /// gathered behind the class token, b2 and its norm, each group's class token: `[B, k, D]`.
    fn jpm_locals(&mut self, trunk: &str, p: &JpmParams<HostTensor>, k: &JpmParams<Key>, q: Option<&QBlock>) -> String {
        let cfg = self.cfg;
        let (n, d, t) = (cfg.num_tokens(), cfg.arch.embed_dim, cfg.jpm_tokens());
        let groups = cfg.jpm_groups();
        let heads = cfg.arch.jpm.as_ref().map_or(0, |j| j.heads.len());
        let per_image = self.unrows(trunk, "jpm/trunk", n, d);
        let idx: Vec<i64> = groups.iter().flatten().map(|&p| p as i64).collect();
        let idx = self.init_i64("jpm/group_positions", &[idx.len()], &idx);
        let local = self.node("Gather", "jpm/shift_shuffle_groups", &[&per_image, &idx], vec![attr_int("axis", 1)]);
        let local = self.rows(&local, "jpm/local_rows");
        let local = self.block(&local, &p.block, &k.block, q, heads, None, t);
        let local = self.layer_norm(&key_name(&k.norm.weight.up()), &local, &p.norm.weight, &p.norm.bias);
        let local = self.unrows(&local, "jpm/local_sequences", t, d);
        let zero = self.init_i64("jpm/class_token_index", &[], &[0]);
        let cls = self.node("Gather", "jpm/local_class_tokens", &[&local, &zero], vec![attr_int("axis", 1)]);
        let shape = self.init_i64("jpm/locals_shape", &[3], &[-1, groups.len() as i64, d as i64]);
        self.node("Reshape", "jpm/locals", &[&cls, &shape], vec![])
    }

    /// The BNNeck head on the final tokens `[B, N, D]` (and JPM's locals `[B, k, D]`): the
    /// feature `[B, (1+k)·D]` as TransReID computes it, L2-normalised, and if asked the logits
    /// `[B, 1+k, C]`. The BatchNorms (inference mode) are folded to one scale and shift per neck.
    fn necks(&mut self, tokens: &str, locals: Option<&str>, p: &VitParams<HostTensor>, logits: bool) -> (String, Option<String>) {
        let d = self.cfg.arch.embed_dim;
        let k = self.cfg.num_necks();
        let zero = self.init_i64("neck/class_token_index", &[1], &[0]);
        let global = self.node("Gather", "neck/global", &[tokens, &zero], vec![attr_int("axis", 1)]);
        let raw = match locals {
            Some(l) => self.node("Concat", "neck/pieces", &[&global, l], vec![attr_int("axis", 1)]),
            None => global,
        };
        let (mut scale, mut shift) = (Vec::with_capacity(k * d), Vec::with_capacity(k * d));
        for neck in &p.necks {
            let (s, t) = neck.bn.folded();
            scale.extend(s);
            shift.extend(t);
        }
        let scale = self.init("necks/bn_scale", &[k, d], scale);
        let shift = self.init("necks/bn_shift", &[k, d], shift);
        let normed = self.node("Mul", "necks/bn_scaled", &[&raw, &scale], vec![]);
        let normed = self.node("Add", "necks/bn", &[&normed, &shift], vec![]);
        let after = self.cfg.head.neck_feat == Some(crate::model::config::NeckFeat::After);
        let pieces = if after { normed.clone() } else { raw };
        let weights: Vec<f32> = (0..k).map(|i| if i == 0 { 1.0 } else { 1.0 / (k - 1) as f32 }).collect();
        let weights = self.init("features/piece_weights", &[k, 1], weights);
        let weighted = self.node("Mul", "features/weighted", &[&pieces, &weights], vec![]);
        let flat = self.init_i64("features/shape", &[2], &[0, -1]);
        let flat = self.node("Reshape", "features/concat", &[&weighted, &flat], vec![]);
        let norm = self.node("ReduceL2", "features/norm", &[&flat], vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)]);
        let floor = self.init("features/min_norm", &[], vec![1e-12]);
        let norm = self.node("Max", "features/norm_floor", &[&norm, &floor], vec![]);
        let features = self.node("Div", "features/normalised", &[&flat, &norm], vec![]);
        if !logits {
            return (features, None);
        }
        // Per neck: its normed piece times its classifier (no bias), stacked.
        let axis1 = self.init_i64("logits/axis1", &[1], &[1]);
        let mut per_neck = Vec::new();
        for (i, neck) in p.necks.iter().enumerate() {
            let Some(c) = &neck.classifier else { continue };
            let idx = self.init_i64(&format!("necks.{i}/index"), &[], &[i as i64]);
            let y = self.node("Gather", &format!("necks.{i}/piece"), &[&normed, &idx], vec![attr_int("axis", 1)]);
            let z = self.linear(&format!("necks.{i}.classifier"), &y, &c.weight, None);
            per_neck.push(self.node("Unsqueeze", &format!("necks.{i}/unsqueeze"), &[&z, &axis1], vec![]));
        }
        let per_neck: Vec<&str> = per_neck.iter().map(|s| s.as_str()).collect();
        (features, Some(self.node("Concat", "logits/stack", &per_neck, vec![attr_int("axis", 1)])))
    }

    /// The LA parts `[B, P, D]`: each row of the patch grid averaged (`ModelConfig::part_tokens`).
    fn pool_parts(&mut self, tokens: &str) -> String {
        let (gh, gw) = self.cfg.grid();
        let (pre, n, d) = (self.cfg.num_prefix() as i64, self.cfg.num_tokens() as i64, self.cfg.arch.embed_dim as i64);
        let (starts, ends, axes) =
            (self.init_i64("parts/start", &[1], &[pre]), self.init_i64("parts/end", &[1], &[n]), self.init_i64("parts/axis", &[1], &[1]));
        let patches = self.node("Slice", "parts/patches", &[tokens, &starts, &ends, &axes], vec![]);
        let grid = self.init_i64("parts/grid_shape", &[4], &[0, gh as i64, gw as i64, d]);
        let grid = self.node("Reshape", "parts/grid", &[&patches, &grid], vec![]);
        self.node("ReduceMean", "parts/row_mean", &[&grid], vec![attr_ints("axes", &[2]), attr_int("keepdims", 0)])
    }

    /// The retrieval feature `[B, P·D]`: each part scaled to norm 1/√P, concatenated.
    fn features(&mut self, parts: &str) -> String {
        let p = self.cfg.num_parts();
        let norm = self.node("ReduceL2", "features/part_norm", &[parts], vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)]);
        let floor = self.init("features/min_norm", &[], vec![1e-12]);
        let norm = self.node("Max", "features/part_norm_floor", &[&norm, &floor], vec![]);
        let sqrt_p = self.init("features/sqrt_parts", &[], vec![(p as f32).sqrt()]);
        let denom = self.node("Mul", "features/denominator", &[&norm, &sqrt_p], vec![]);
        let scaled = self.node("Div", "features/scaled", &[parts, &denom], vec![]);
        let flat = self.init_i64("features/shape", &[2], &[0, -1]);
        self.node("Reshape", "features/flatten", &[&scaled, &flat], vec![])
    }

    /// The LA classifiers in inference mode: `[B, P, C]`.
    fn logits(&mut self, tokens: &str, parts: &str, p: &[PartParams<HostTensor>], k: &[PartParams<Key>]) -> String {
        let lambda = self.cfg.head.lambda;
        let zero = self.init_i64("logits/class_token_index", &[], &[0]);
        let cls = self.node("Gather", "logits/class_token", &[tokens, &zero], vec![attr_int("axis", 1)]);
        let (w_cls, w_part) =
            (self.init("logits/cls_weight", &[], vec![1.0 / (1.0 + lambda)]), self.init("logits/part_weight", &[], vec![lambda / (1.0 + lambda)]));
        let cls = self.node("Mul", "logits/class_token_weighted", &[&cls, &w_cls], vec![]);
        let axis1 = self.init_i64("logits/axis1", &[1], &[1]);
        let mut per_part = Vec::new();
        for (i, (pp, pk)) in p.iter().zip(k).enumerate() {
            let part = key_name(&pk.bottleneck.weight.up().up());
            let idx = self.init_i64(&format!("{part}/index"), &[], &[i as i64]);
            let pi = self.node("Gather", &format!("{part}/part"), &[parts, &idx], vec![attr_int("axis", 1)]);
            let pi = self.node("Mul", &format!("{part}/part_weighted"), &[&pi, &w_part], vec![]);
            // g = (cls + λ·p) / (1 + λ), docs/method.md §1.
            let g = self.node("Add", &format!("{part}/blend"), &[&cls, &pi], vec![]);
            let z = self.linear(&key_name(&pk.bottleneck.weight.up()), &g, &pp.bottleneck.weight, pp.bottleneck.bias.as_ref());
            let z = self.batch_norm(&key_name(&pk.bn.weight.up()), &z, pp);
            let z = self.linear(&key_name(&pk.classifier.weight.up()), &z, &pp.classifier.weight, pp.classifier.bias.as_ref());
            per_part.push(self.node("Unsqueeze", &format!("{part}/unsqueeze"), &[&z, &axis1], vec![]));
        }
        let per_part: Vec<&str> = per_part.iter().map(|s| s.as_str()).collect();
        self.node("Concat", "logits/stack", &per_part, vec![attr_int("axis", 1)])
    }

    fn batch_norm(&mut self, name: &str, x: &str, p: &PartParams<HostTensor>) -> String {
        let bn = &p.bn;
        let inputs: Vec<String> = [("weight", &bn.weight), ("bias", &bn.bias), ("running_mean", &bn.running_mean), ("running_var", &bn.running_var)]
            .into_iter()
            .map(|(what, t)| self.init(&format!("{name}.{what}"), &t.shape, t.data.clone()))
            .collect();
        let eps = crate::model::params::BatchNorm::<HostTensor>::EPS as f32;
        self.node("BatchNormalization", name, &[x, &inputs[0], &inputs[1], &inputs[2], &inputs[3]], vec![attr_float("epsilon", eps)])
    }

    fn output(&mut self, value: &str, name: &str, dims: Vec<Dim>) {
        self.node("Identity", name, &[value], vec![]);
        self.outputs.push(value_info(name, dims));
    }

    fn finish(self, files: &ModelFiles) -> ModelProto {
        let cfg = self.cfg;
        let mut inputs = vec![value_info("images", vec![Dim::Batch, Dim::Fixed(3), Dim::Fixed(cfg.input.height), Dim::Fixed(cfg.input.width)])];
        if cfg.arch.sie.is_some() {
            inputs.push(value_info_of("cameras", vec![Dim::Batch], DataType::INT64));
        }
        let graph = GraphProto {
            name: "amg".into(),
            node: self.nodes,
            initializer: self.inits,
            input: inputs,
            output: self.outputs,
            doc_string: format!("amg ViT Re-ID model ({} pruned); see metadata_props for input and output", if cfg.is_pruned() { "head/token" } else { "not" }),
            ..Default::default()
        };
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET, ..Default::default() }],
            producer_name: "amg".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph).into(),
            metadata_props: metadata(files).into_iter().map(|(key, value)| StringStringEntryProto { key, value, ..Default::default() }).collect(),
            ..Default::default()
        }
    }
}

/// `[r, c]` → `[c, r]`.
fn transpose(w: &HostTensor) -> Vec<f32> {
    crate::kernels::gemm::transpose(&w.data, w.shape[0], w.shape[1])
}

/// Rows `from..to` of a `[r, c]` (or `[r]`) tensor.
/// Rows (output channels) of one of a block's INT8 products.
struct QRows<'a> {
    /// `[rows, in]`
    weight: &'a [i8],
    scale: &'a [f32],
    input_scale: Option<f32>,
}

/// Output channels `rows` of product `i` (`BlockParams::products` order) of an INT8 block.
fn qrows(q: Option<&QBlock>, i: usize, rows: std::ops::Range<usize>) -> Option<QRows<'_>> {
    let l = &q?[i];
    let inp = l.weight.len() / l.scale.len().max(1);
    Some(QRows { weight: &l.weight[rows.start * inp..rows.end * inp], scale: &l.scale[rows.clone()], input_scale: l.input_scale })
}

fn row_range(t: &HostTensor, from: usize, to: usize) -> HostTensor {
    let c: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = to - from;
    HostTensor::new(shape, t.data[from * c..to * c].to_vec())
}

//! The inference engine: a ViT forward pass on preallocated buffers with the kernels of
//! `kernels`, honouring each layer's kept heads and kept key/value tokens (docs/method.md §3.4:
//! queries and the residual stream keep all N tokens; K and V are computed only from the kept
//! tokens). Built from the model's typed parameters (`model::params`), one struct per block.
//!
//! Why not candle ops here: a straightforward candle ViT forward ran at well under half ONNX
//! Runtime's speed, its element-wise ops being single-threaded and its batched small matmuls slow. Calling the same `gemm` crate directly with fused, parallel
//! element-wise kernels removes that overhead. Training uses candle (autodiff); tests hold both to
//! timm and to each other.

use crate::error::{Error, Result};
use crate::kernels::attention::{attention, attention_rows, AttnLayout, AttnShape, ProbsSink};
use crate::kernels::gemm::{matmul, transpose, Acc, Epilogue, Mat};
use crate::kernels::packed::{matmul_packed, matmul_packed_many, PackedB, Product};
use crate::kernels::prof::phase;
use crate::kernels::rows::{layer_norm, layer_norm_here};
use crate::model::head::{la_blend, normalise_parts};
use crate::model::params::{BlockParams, NeckParams, PartParams, VitParams};
use crate::model::quant::{InputScales, QBlock};
use crate::model::{LayerPlan, ModelConfig, ModelFiles};
use crate::tensor::HostTensor;
use rayon::prelude::*;
use std::sync::Mutex;

/// One transformer block, its weights transposed and packed for the products.
struct Layer {
    heads: usize,
    /// Kept key/value positions, or `None` when every token is kept.
    tokens: Option<Vec<usize>>,
    norm1: Norm,
    /// `[D, 3·I]`: the transposed qkv weight, columns q | k | v (panels split at I and 2·I).
    qkv: Dense,
    /// `[I, D]`
    proj: Dense,
    norm2: Norm,
    /// `[D, M]`
    fc1: Dense,
    /// `[M, D]`
    fc2: Dense,
}

/// A layer norm's scale and shift, as the engine holds them.
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// A linear layer as the engine holds it: the weight transposed and packed into panels, the bias
/// (zeros where the checkpoint has none).
struct Dense {
    weight: PackedB,
    bias: Vec<f32>,
}

fn bias_or_zeros(bias: Option<HostTensor>, n: usize) -> Vec<f32> {
    bias.map(|b| b.data).unwrap_or_else(|| vec![0.0; n])
}

impl Layer {
    /// Columns of the product a pass split by rows computes per row before attention: queries,
    /// keys and values (`3·I`) when every token is kept, else the queries (`I`).
    fn q_width(&self, head_dim: usize) -> usize {
        let inner = self.heads * head_dim;
        if self.tokens.is_some() {
            inner
        } else {
            3 * inner
        }
    }

    /// Where attention finds its operands: one q|k|v buffer (rows of `3·I`) when every token is
    /// kept, else queries (rows of `I`) and a k|v buffer of the kept rows (rows of `2·I`).
    fn attn_layout(&self, head_dim: usize) -> AttnLayout {
        let inner = self.heads * head_dim;
        if self.tokens.is_some() {
            AttnLayout { q_ld: inner, kv_ld: 2 * inner, k_off: 0, v_off: inner, out_ld: inner }
        } else {
            AttnLayout { q_ld: 3 * inner, kv_ld: 3 * inner, k_off: inner, v_off: 2 * inner, out_ld: inner }
        }
    }

    /// Packs one block's weights, consuming them (so loading holds one copy of each at a time).
    /// `n`: the tokens the block runs on (a plan keeping all of them needs no gather).
    /// `q`: the block's products in INT8 (an INT8 model), which then replace `p`'s float32 weights.
    fn new(p: BlockParams<HostTensor>, q: Option<&QBlock>, plan: &LayerPlan, cfg: &ModelConfig, n: usize, precision: Precision) -> Layer {
        let (d, m) = (cfg.arch.embed_dim, cfg.arch.mlp_dim);
        let inner = plan.heads.len() * cfg.arch.head_dim;
        // Weights are [out, in]; the float products want [in, out], the INT8 ones take [out, in].
        let pack = |i: usize, w: HostTensor, out: usize, inp: usize, parts: &[usize]| match (q.map(|q| &q[i]), precision) {
            (Some(ql), _) => PackedB::new_int8(&ql.weight, &ql.scale, inp, out, parts, ql.input_scale),
            (None, Precision::F32) => PackedB::new(&transpose(&w.data, out, inp), inp, out, parts),
            (None, Precision::Bf16) => PackedB::new_bf16(&transpose(&w.data, out, inp), inp, out, parts),
        };
        Layer {
            heads: plan.heads.len(),
            tokens: if plan.tokens.len() == n { None } else { Some(plan.tokens.clone()) },
            norm1: Norm { weight: p.norm1.weight.data, bias: p.norm1.bias.data },
            qkv: Dense { weight: pack(0, p.qkv.weight, 3 * inner, d, &[inner, 2 * inner]), bias: bias_or_zeros(p.qkv.bias, 3 * inner) },
            proj: Dense { weight: pack(1, p.proj.weight, d, inner, &[]), bias: bias_or_zeros(p.proj.bias, d) },
            norm2: Norm { weight: p.norm2.weight.data, bias: p.norm2.bias.data },
            fc1: Dense { weight: pack(2, p.fc1.weight, m, d, &[]), bias: bias_or_zeros(p.fc1.bias, m) },
            fc2: Dense { weight: pack(3, p.fc2.weight, d, m, &[]), bias: bias_or_zeros(p.fc2.bias, d) },
        }
    }
}

/// One LA part classifier in inference mode.
struct Part {
    /// `[D, nb]`
    fc_t: Vec<f32>,
    fc_b: Vec<f32>,
    /// BatchNorm in inference mode folded to `y = x·bn_scale + bn_shift`.
    bn_scale: Vec<f32>,
    bn_shift: Vec<f32>,
    /// `[nb, C]`
    cls_t: Vec<f32>,
    cls_b: Vec<f32>,
}

impl Part {
    fn new(p: PartParams<HostTensor>, d: usize) -> Part {
        let (nb, c) = (p.bottleneck.weight.shape[0], p.classifier.weight.shape[0]);
        let (bn_scale, bn_shift) = p.bn.folded();
        Part {
            fc_t: transpose(&p.bottleneck.weight.data, nb, d),
            fc_b: bias_or_zeros(p.bottleneck.bias, nb),
            bn_scale,
            bn_shift,
            cls_t: transpose(&p.classifier.weight.data, c, nb),
            cls_b: bias_or_zeros(p.classifier.bias, c),
        }
    }

    /// Logits `[B, C]` of blended tokens `g` `[B, D]`.
    fn logits(&self, g: &[f32], batch: usize, d: usize) -> Vec<f32> {
        let (nb, c) = (self.fc_b.len(), self.cls_b.len());
        let mut z = vec![0f32; batch * nb];
        matmul(Mat::dense(g, batch, d), Mat::dense(&self.fc_t, d, nb), &mut z, nb, Acc::Overwrite, 1.0, 1);
        for row in z.chunks_exact_mut(nb) {
            for (((v, b), s), t) in row.iter_mut().zip(&self.fc_b).zip(&self.bn_scale).zip(&self.bn_shift) {
                *v = (*v + b) * s + t;
            }
        }
        let mut out = vec![0f32; batch * c];
        matmul(Mat::dense(&z, batch, nb), Mat::dense(&self.cls_t, nb, c), &mut out, c, Acc::Overwrite, 1.0, 1);
        for row in out.chunks_exact_mut(c) {
            for (o, bb) in row.iter_mut().zip(&self.cls_b) {
                *o += bb;
            }
        }
        out
    }
}

/// One BNNeck in inference mode: BatchNorm folded to `y = x·scale + shift`, then the classifier.
struct Neck {
    scale: Vec<f32>,
    shift: Vec<f32>,
    /// `[D, C]`, absent for a retrieval-only neck.
    cls_t: Option<Vec<f32>>,
}

impl Neck {
    fn new(p: NeckParams<HostTensor>, d: usize) -> Neck {
        let (scale, shift) = p.bn.folded();
        Neck { scale, shift, cls_t: p.classifier.map(|c| transpose(&c.weight.data, c.weight.shape[0], d)) }
    }

    /// The BatchNorm of `x` `[B, D]`.
    fn norm(&self, x: &[f32]) -> Vec<f32> {
        let d = self.scale.len();
        let mut y = x.to_vec();
        for row in y.chunks_exact_mut(d) {
            for ((v, s), t) in row.iter_mut().zip(&self.scale).zip(&self.shift) {
                *v = *v * s + t;
            }
        }
        y
    }

    /// Logits `[B, C]` of normed features `[B, D]`.
    fn logits(&self, y: &[f32], batch: usize) -> Option<Vec<f32>> {
        let d = self.scale.len();
        let w = self.cls_t.as_ref()?;
        let c = w.len() / d.max(1);
        let mut out = vec![0f32; batch * c];
        matmul(Mat::dense(y, batch, d), Mat::dense(w, d, c), &mut out, c, Acc::Overwrite, 1.0, 1);
        Some(out)
    }
}

/// JPM's b2 branch.
struct JpmBranch {
    layer: Layer,
    norm_w: Vec<f32>,
    norm_b: Vec<f32>,
    /// Per local group, the trunk positions it runs on (`ModelConfig::jpm_groups`).
    groups: Vec<Vec<usize>>,
}

crate::choice! {
    /// The number format of the transformer blocks' weight products at inference.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Precision {
        /// float32 throughout (the default; what training and every reference comparison use).
        F32 = "f32" => "float32 throughout",
        /// The blocks' qkv, projection and MLP weights stored once in bfloat16, their inputs rounded to
        /// bfloat16, products accumulated in float32 (on the AMX tile unit where the CPU has one;
        /// emulated in float32, slower, elsewhere). Attention, layer norm and the heads stay float32.
        Bf16 = "bf16" => "bfloat16 weights and inputs for the blocks' products, float32 sums (fast with AMX or AVX-512 BF16)",
    }
}

pub struct Engine {
    cfg: ModelConfig,
    /// `[3·p·p, D]`, as panels (float32 at either precision).
    patch_w: PackedB,
    patch_b: Vec<f32>,
    /// `[num_prefix, D]`: class token, then distillation token.
    prefix: Vec<f32>,
    /// `[N, D]`
    pos: Vec<f32>,
    /// `[cameras, D]`, already multiplied by the SIE coefficient.
    sie: Option<Vec<f32>>,
    layers: Vec<Layer>,
    norm_w: Vec<f32>,
    norm_b: Vec<f32>,
    jpm: Option<JpmBranch>,
    parts: Vec<Part>,
    necks: Vec<Neck>,
    /// Workspaces of the threads that run whole images in parallel (`run_split`), kept between
    /// calls.
    spare: Mutex<Vec<Workspace>>,
    precision: Precision,
}

/// Buffers reused across forward passes (allocating them per batch costs page faults).
#[derive(Default)]
pub struct Workspace {
    patches: Vec<f32>,
    embed: Vec<f32>,
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    /// Passes split by rows: the next block's queries (keys, values) while this block's are read.
    qkv_next: Vec<f32>,
    xk: Vec<f32>,
    kv: Vec<f32>,
    attn: Vec<f32>,
    hidden: Vec<f32>,
    /// JPM: the last block's input, which b2's groups are gathered from.
    trunk: Vec<f32>,
}

/// A block's sizes for `batch` sequences of `n` tokens.
struct Sizes {
    /// Embedding width.
    d: usize,
    /// MLP width.
    m: usize,
    hd: usize,
    /// `batch · n`.
    rows: usize,
    /// Kept heads × head size.
    inner: usize,
    eps: f32,
}

/// Where a pass split by rows cuts `rows` rows between the pool's threads: equal runs.
fn row_bounds(rows: usize) -> Vec<usize> {
    let threads = rayon::current_num_threads();
    (0..=threads).map(|t| t * rows / threads).collect()
}

/// `buf`'s rows of `width` values cut at the row indices `bounds` (0 first, the row count last).
fn split_rows<'a>(mut buf: &'a mut [f32], bounds: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    bounds
        .windows(2)
        .map(|w| {
            let (head, tail) = std::mem::take(&mut buf).split_at_mut((w[1] - w[0]) * width);
            buf = tail;
            head
        })
        .collect()
}

fn ensure(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// A batch of model inputs: `batch` normalised CHW images and, for a model with a side information
/// embedding, each image's row of it: its camera index (0-based), or `camera · views + view` for a
/// table with viewpoints (`data::cameras` works them out).
#[derive(Clone, Copy)]
pub struct Input<'a> {
    pub images: &'a [f32],
    pub cameras: Option<&'a [usize]>,
    pub batch: usize,
}

impl<'a> Input<'a> {
    pub fn images(images: &'a [f32], batch: usize) -> Self {
        Input { images, cameras: None, batch }
    }
}

/// What a forward pass should return besides the retrieval features.
#[derive(Clone, Copy, Default)]
pub struct Want {
    /// The final-normed tokens `[B, N, D]`.
    pub tokens: bool,
    /// The classifiers' logits (inference mode): per LA part, or per BNNeck (global, then JPM's
    /// local features), each `[B, C]`.
    pub logits: bool,
}

pub struct Outputs {
    /// `[B, feature_dim]`, each image's retrieval feature, normalised (`ModelConfig::feature_groups`;
    /// docs/method.md §1, docs/backbones.md).
    pub features: Vec<f32>,
    pub tokens: Option<Vec<f32>>,
    pub logits: Option<Vec<Vec<f32>>>,
}

/// Receives every layer's attention probabilities: `(layer, image, head, probs[n × nk])`, heads
/// numbered among the kept ones. JPM's b2 block is layer `depth`, run on `divide` local sequences
/// per image: its "image" is `image · divide + group`.
pub type AttnObserver<'a> = &'a (dyn Fn(usize, usize, usize, &[f32]) + Sync);

/// The operands of one layer's attention: queries, keys and values, and where each sits.
struct AttnInputs<'a> {
    q: &'a [f32],
    kv: &'a [f32],
    layout: AttnLayout,
    nk: usize,
}

impl Engine {
    /// Prepares a model for inference. The tensors are checked against the configuration first, so
    /// a `ModelFiles` built in memory gets an error, not a panic.
    pub fn new(files: ModelFiles) -> Result<Self> {
        Engine::with_precision(files, Precision::F32)
    }

    /// As `new`, with the transformer blocks' products in `precision` (see `Precision`).
    /// An INT8 model's products run in INT8 whatever `precision` (which must then be float32).
    pub fn with_precision(files: ModelFiles, precision: Precision) -> Result<Self> {
        files.check()?;
        let ModelFiles { config: cfg, params, int8 } = files;
        if int8.is_some() && precision != Precision::F32 {
            return Err(Error::invalid(format!(
                "this is an INT8 model: its products run in int8, the rest in float32, so `precision` {} does not apply",
                crate::choice::Choice::name(precision)
            )));
        }
        let (q_blocks, q_jpm) = int8.map_or((Vec::new(), None), |i| (i.blocks, i.jpm));
        let (d, p, n) = (cfg.arch.embed_dim, cfg.arch.patch_size, cfg.num_tokens());
        let VitParams { patch_embed, cls_token, dist_token, pos_embed, sie_embed, blocks, norm, jpm, parts, necks } = params;
        let layers = blocks.into_iter().zip(&cfg.layers).enumerate().map(|(i, (b, plan))| Layer::new(b, q_blocks.get(i), plan, &cfg, n, precision)).collect();
        let parts = parts.into_iter().map(|part| Part::new(part, d)).collect();
        let necks = necks.into_iter().map(|neck| Neck::new(neck, d)).collect();
        let jpm = match (jpm, &cfg.arch.jpm) {
            (Some(b2), Some(j)) => {
                let t = cfg.jpm_tokens();
                let plan = LayerPlan { heads: j.heads.clone(), tokens: (0..t).collect() };
                Some(JpmBranch {
                    layer: Layer::new(b2.block, q_jpm.as_ref(), &plan, &cfg, t, precision),
                    norm_w: b2.norm.weight.data,
                    norm_b: b2.norm.bias.data,
                    groups: cfg.jpm_groups(),
                })
            }
            _ => None,
        };
        let coefficient = cfg.arch.sie.as_ref().map_or(0.0, |s| s.coefficient);
        Ok(Engine {
            patch_w: PackedB::new(&transpose(&patch_embed.weight.data, d, 3 * p * p), 3 * p * p, d, &[]),
            patch_b: bias_or_zeros(patch_embed.bias, d),
            prefix: cls_token.into_iter().chain(dist_token).flat_map(|t| t.data).collect(),
            pos: pos_embed.data,
            sie: sie_embed.map(|t| t.data.iter().map(|v| v * coefficient).collect()),
            norm_w: norm.weight.data,
            norm_b: norm.bias.data,
            layers,
            jpm,
            parts,
            necks,
            cfg,
            spare: Mutex::new(Vec::new()),
            precision,
        })
    }

    /// A float32 model prepared to calibrate INT8 input scales: its runs record, for every
    /// block product, the largest |value| of its input (`input_scales`).
    pub fn calibrating(files: ModelFiles) -> Result<Self> {
        files.require_float("calibrating INT8 scales")?;
        let mut e = Engine::new(files)?;
        for l in e.layers.iter_mut().chain(e.jpm.as_mut().map(|j| &mut j.layer)) {
            for d in [&mut l.qkv, &mut l.proj, &mut l.fc1, &mut l.fc2] {
                d.weight.observe_inputs();
            }
        }
        Ok(e)
    }

    /// After runs of a `calibrating` engine: each product's input scale, max|x| / 127 (1 for a
    /// product whose inputs were all 0), in `BlockParams::products` order.
    pub fn input_scales(&self) -> InputScales {
        let of = |l: &Layer| {
            [&l.qkv, &l.proj, &l.fc1, &l.fc2].map(|d| match d.weight.input_max() {
                Some(m) if m > 0.0 && m.is_finite() => m / crate::kernels::int8::QMAX,
                _ => 1.0,
            })
        };
        InputScales { blocks: self.layers.iter().map(of).collect(), jpm: self.jpm.as_ref().map(|j| of(&j.layer)) }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Values per input image: 3·H·W, channel-major (CHW).
    pub fn image_len(&self) -> usize {
        3 * self.cfg.input.height * self.cfg.input.width
    }

    /// Runs `batch` normalised CHW images through the model (one without a side information
    /// embedding; see `run`).
    pub fn forward(&self, images: &[f32], batch: usize, ws: &mut Workspace, want: Want) -> Result<Outputs> {
        self.run(Input::images(images, batch), ws, want, None)
    }

    /// As `forward`, handing every layer's attention probabilities to `observe`.
    pub fn forward_observed(&self, images: &[f32], batch: usize, ws: &mut Workspace, want: Want, observe: Option<AttnObserver>) -> Result<Outputs> {
        self.run(Input::images(images, batch), ws, want, observe)
    }

    /// Checks an input against the model: its size and, for SIE, one known camera per image.
    pub fn check_input(&self, input: &Input) -> Result<()> {
        let batch = input.batch;
        if input.images.len() != batch * self.image_len() {
            return Err(Error::invalid(format!(
                "forward: {} input values for a batch of {batch}, expected {} ({}x{} RGB per image)",
                input.images.len(),
                batch * self.image_len(),
                self.cfg.input.height,
                self.cfg.input.width
            )));
        }
        match (&self.cfg.arch.sie, input.cameras) {
            (Some(_), None) => Err(Error::invalid("this model has a side information embedding (SIE): each image needs its camera")),
            (Some(sie), Some(c)) => {
                if c.len() != batch {
                    return Err(Error::invalid(format!("forward: {} camera indices for a batch of {batch}", c.len())));
                }
                match c.iter().find(|&&c| c >= sie.rows()) {
                    Some(bad) if sie.views == 1 => Err(Error::invalid(format!(
                        "camera index {bad} (c{} in a Market/Duke file name) is out of range: the model's SIE knows {} cameras (indices 0..{})",
                        bad + 1,
                        sie.cameras,
                        sie.cameras
                    ))),
                    Some(bad) => Err(Error::invalid(format!("SIE row {bad} is out of range: the model's SIE has {}", sie.describe()))),
                    None => Ok(()),
                }
            }
            (None, _) => Ok(()),
        }
    }

    /// Runs a batch through the model; `observe`, when given, sees every attention map.
    pub fn run(&self, input: Input, ws: &mut Workspace, want: Want, observe: Option<AttnObserver>) -> Result<Outputs> {
        // The whole pass on one of the pool's threads (see `kernels::in_pool`).
        crate::kernels::in_pool(|| {
            let threads = rayon::current_num_threads();
            // bfloat16 stays on the batched path: there an activation's rounding to bfloat16 can
            // flip with the order of the float32 sums before it, which differs between a product
            // of one image's rows and one of the batch's (features 1e-4 apart on the LA test model,
            // against 6e-6 between the bfloat16 unit and its emulation on the batched path).
            // Shared out between the threads (not with an observer, which receives whole
            // attention maps, nor in bfloat16, as above): as whole images when there are enough
            // of them, else each block's rows split between the threads.
            let shared = observe.is_none() && threads > 1 && self.precision == Precision::F32;
            if shared && input.batch >= threads {
                self.run_split(input, ws, want, threads)
            } else {
                self.run_here(input, ws, want, observe, shared)
            }
        })
    }

    /// A batch as whole images in parallel: cut into one run of consecutive images per thread,
    /// each thread taking its images one at a time through the whole model. Every product then has
    /// one image's rows, whose activations stay in the core's own cache, and the threads do not
    /// meet at every step; a thread that finishes first helps with the other's steps (rayon
    /// steals them). Each image's results are the same, bit for bit, whatever the other images of
    /// the batch. Each image takes the step-by-step pass, not `rest_split`: on its one thread, a
    /// split by rows would only cut its products into shorter ones, which was slower.
    fn run_split(&self, input: Input, ws: &mut Workspace, want: Want, threads: usize) -> Result<Outputs> {
        // Checked once up front (and each image again as a batch of one). A model without SIE
        // ignores cameras, whatever their count: an image past the end of the list gets none.
        self.check_input(&input)?;
        let batch = input.batch;
        let len = self.image_len();
        let per = batch.div_ceil(threads);
        let runs: Vec<std::ops::Range<usize>> = (0..batch).step_by(per).map(|b| b..(b + per).min(batch)).collect();
        let mut spares = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        spares.resize_with(runs.len() - 1, Workspace::default);
        let mut workspaces: Vec<&mut Workspace> = std::iter::once(ws).chain(spares.iter_mut()).collect();
        let results: Vec<Result<Vec<Outputs>>> = workspaces
            .par_iter_mut()
            .zip(runs.par_iter())
            .map(|(ws, run)| {
                run.clone()
                    .map(|b| {
                        let one = Input { images: &input.images[b * len..(b + 1) * len], cameras: input.cameras.and_then(|c| c.get(b..b + 1)), batch: 1 };
                        self.run_here(one, ws, want, None, false)
                    })
                    .collect()
            })
            .collect();
        drop(workspaces);
        *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = spares;
        let mut outs = Vec::with_capacity(batch);
        for r in results {
            outs.extend(r?);
        }
        let features = outs.iter().flat_map(|o| o.features.iter().copied()).collect();
        let tokens = want.tokens.then(|| outs.iter().flat_map(|o| o.tokens.iter().flatten().copied()).collect());
        // Logits: each set (part or neck) concatenated over the images.
        let sets = outs.first().and_then(|o| o.logits.as_ref()).map_or(0, Vec::len);
        let logits =
            want.logits.then(|| (0..sets).map(|h| outs.iter().flat_map(|o| o.logits.iter().filter_map(|l| l.get(h)).flatten().copied()).collect()).collect());
        Ok(Outputs { features, tokens, logits })
    }

    /// The batch through the model on the calling thread's share of the pool; `by_rows`: each
    /// block with its rows split between the threads (`front_split`, `rest_split`), else step by step.
    fn run_here(&self, input: Input, ws: &mut Workspace, want: Want, observe: Option<AttnObserver>, by_rows: bool) -> Result<Outputs> {
        self.check_input(&input)?;
        let batch = input.batch;
        if want.logits && self.parts.is_empty() && self.necks.iter().all(|n| n.cls_t.is_none()) {
            return Err(Error::invalid("this model has no classifier head (retrieval only): no logits to compute"));
        }
        let (d, n) = (self.cfg.arch.embed_dim, self.cfg.num_tokens());
        let rows = batch * n;
        self.embed(input, ws);
        let mut pending_bias: Option<&[f32]> = None;
        let depth = self.layers.len();
        if let (true, Some(first)) = (by_rows, self.layers.first()) {
            self.front_split(first, batch, n, None, ws);
        }
        for (li, layer) in self.layers.iter().enumerate() {
            if li + 1 == depth && self.jpm.is_some() {
                // JPM's b2 branch starts from the input of the last block (b1).
                let t = ensure(&mut ws.trunk, rows * d);
                t.copy_from_slice(&ws.x[..rows * d]);
                // By rows, the previous block's bias is already in: its `rest_split` went on
                // through this block's layer norm, which adds it to x.
                if let (false, Some(b)) = (by_rows, pending_bias) {
                    t.par_chunks_mut(d).for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v += b));
                }
            }
            if by_rows {
                self.rest_split(layer, self.layers.get(li + 1), batch, n, ws);
            } else {
                self.block(li, layer, batch, n, pending_bias, ws, observe);
            }
            // The block's last bias is folded into the next layer norm.
            pending_bias = Some(&layer.fc2.bias);
        }
        let xn = ensure(&mut ws.xn, rows * d);
        layer_norm(&mut ws.x[..rows * d], pending_bias, &self.norm_w, &self.norm_b, self.cfg.arch.ln_eps as f32, xn);
        let tokens = &ws.xn[..rows * d];
        let token_out = want.tokens.then(|| tokens.to_vec());
        let (features, logits) = if self.necks.is_empty() {
            let raw_parts = self.pool_parts(tokens, batch);
            let mut features = raw_parts.clone();
            normalise_parts(&mut features, self.cfg.num_parts(), d);
            (features, want.logits.then(|| self.la_logits(tokens, &raw_parts, batch)))
        } else {
            // BNNeck: the class token of the global branch, then JPM's local features.
            let mut raw: Vec<Vec<f32>> = vec![(0..batch).flat_map(|b| tokens[b * n * d..b * n * d + d].iter().copied()).collect()];
            if let Some(j) = &self.jpm {
                // The trunk is moved out of the workspace while b2 uses the other buffers.
                let trunk = std::mem::take(&mut ws.trunk);
                raw.extend(self.jpm_locals(j, &trunk[..rows * d], batch, ws, observe, by_rows));
                ws.trunk = trunk;
            }
            self.neck_outputs(&raw, batch, want.logits)
        };
        Ok(Outputs { features, tokens: token_out, logits })
    }

    /// JPM's local features `[B, D]` each: b2 and its norm on every group of the trunk output,
    /// each group's class token.
    fn jpm_locals(&self, j: &JpmBranch, trunk: &[f32], batch: usize, ws: &mut Workspace, observe: Option<AttnObserver>, by_rows: bool) -> Vec<Vec<f32>> {
        let (d, n) = (self.cfg.arch.embed_dim, self.cfg.num_tokens());
        let (k, t) = (j.groups.len(), self.cfg.jpm_tokens());
        let rows = batch * k * t;
        // Local sequences in ws.x, image-major: sequence b·k + g.
        let x = ensure(&mut ws.x, rows * d);
        x.par_chunks_mut(t * d).enumerate().for_each(|(s, dst)| {
            let (b, g) = (s / k, s % k);
            for (r, &pos) in j.groups[g].iter().enumerate() {
                dst[r * d..(r + 1) * d].copy_from_slice(&trunk[(b * n + pos) * d..(b * n + pos + 1) * d]);
            }
        });
        if by_rows {
            self.front_split(&j.layer, batch * k, t, None, ws);
            self.rest_split(&j.layer, None, batch * k, t, ws);
        } else {
            self.block(self.layers.len(), &j.layer, batch * k, t, None, ws, observe);
        }
        let xn = ensure(&mut ws.xn, rows * d);
        layer_norm(&mut ws.x[..rows * d], Some(&j.layer.fc2.bias), &j.norm_w, &j.norm_b, self.cfg.arch.ln_eps as f32, xn);
        (0..k).map(|g| (0..batch).flat_map(|b| ws.xn[(b * k + g) * t * d..][..d].iter().copied()).collect()).collect()
    }

    /// BNNeck features and logits from the raw global (and local) features: TransReID's
    /// `[global, local_1/k, …, local_k/k]`, before or after the BatchNorms, normalised as a whole.
    fn neck_outputs(&self, raw: &[Vec<f32>], batch: usize, want_logits: bool) -> (Vec<f32>, Option<Vec<Vec<f32>>>) {
        let d = self.cfg.arch.embed_dim;
        let after = self.cfg.head.neck_feat == Some(crate::model::config::NeckFeat::After);
        let normed: Vec<Vec<f32>> = raw.iter().zip(&self.necks).map(|(r, neck)| neck.norm(r)).collect();
        let pieces = if after { &normed } else { raw };
        let k = pieces.len();
        let mut features = vec![0f32; batch * k * d];
        for (i, piece) in pieces.iter().enumerate() {
            let w = if i == 0 { 1.0 } else { 1.0 / (k - 1) as f32 };
            for b in 0..batch {
                for (o, v) in features[(b * k + i) * d..][..d].iter_mut().zip(&piece[b * d..(b + 1) * d]) {
                    *o = v * w;
                }
            }
        }
        normalise_parts(&mut features, 1, k * d);
        let logits = want_logits.then(|| normed.iter().zip(&self.necks).filter_map(|(y, neck)| neck.logits(y, batch)).collect());
        (features, logits)
    }

    /// Patch embedding (im2col, then one product with the conv weight), prefix tokens and position
    /// embedding, into `ws.x` `[B, N, D]`.
    fn embed(&self, input: Input, ws: &mut Workspace) {
        let (images, batch) = (input.images, input.batch);
        let (d, p, stride) = (self.cfg.arch.embed_dim, self.cfg.arch.patch_size, self.cfg.arch.stride());
        let (gh, gw) = self.cfg.grid();
        let (np, n, pre) = (gh * gw, self.cfg.num_tokens(), self.cfg.num_prefix());
        let (ih, iw) = (self.cfg.input.height, self.cfg.input.width);
        let pp3 = 3 * p * p;
        let patches = ensure(&mut ws.patches, batch * np * pp3);
        patches.par_chunks_mut(np * pp3).zip(images.par_chunks(3 * ih * iw)).for_each(|(dst, img)| {
            for (pi, patch) in dst.chunks_exact_mut(pp3).enumerate() {
                let (py, px) = (pi / gw, pi % gw);
                for c in 0..3 {
                    for ky in 0..p {
                        let src = &img[c * ih * iw + (py * stride + ky) * iw + px * stride..][..p];
                        patch[c * p * p + ky * p..][..p].copy_from_slice(src);
                    }
                }
            }
        });
        let embed = ensure(&mut ws.embed, batch * np * d);
        let threads = rayon::current_num_threads();
        phase("patch_embed", || matmul_packed(Mat::dense(patches, batch * np, pp3), &self.patch_w, 0..d, embed, d, Acc::Overwrite, threads, Epilogue::None));
        let x = ensure(&mut ws.x, batch * n * d);
        x.par_chunks_mut(n * d).zip(embed.par_chunks(np * d)).enumerate().for_each(|(b, (xi, ei))| {
            for t in 0..n {
                let row = &mut xi[t * d..(t + 1) * d];
                let pos = &self.pos[t * d..(t + 1) * d];
                if t < pre {
                    let tok = &self.prefix[t * d..(t + 1) * d];
                    for j in 0..d {
                        row[j] = tok[j] + pos[j];
                    }
                } else {
                    let e = &ei[(t - pre) * d..(t - pre + 1) * d];
                    for j in 0..d {
                        row[j] = e[j] + self.patch_b[j] + pos[j];
                    }
                }
            }
            // SIE: the image's camera embedding (× coefficient) on every token (checked in range).
            if let (Some(sie), Some(cams)) = (&self.sie, input.cameras) {
                let cam = &sie[cams[b] * d..(cams[b] + 1) * d];
                for row in xi.chunks_exact_mut(d) {
                    row.iter_mut().zip(cam).for_each(|(v, c)| *v += c);
                }
            }
        });
    }

    /// One block on `ws.x` in place. `pending_bias` is the previous block's fc2 bias, not yet added.
    /// `n`: tokens per sequence.
    #[allow(clippy::too_many_arguments)]
    fn block(&self, li: usize, layer: &Layer, batch: usize, n: usize, pending_bias: Option<&[f32]>, ws: &mut Workspace, observe: Option<AttnObserver>) {
        let Sizes { d, m, hd, rows, inner, eps } = self.sizes(layer, batch, n);
        let threads = rayon::current_num_threads();
        let Workspace { x, xn, qkv, xk, kv, attn, hidden, .. } = ws;
        let (x, xn) = (&mut x[..rows * d], ensure(xn, rows * d));
        phase("layer_norm", || layer_norm(x, pending_bias, &layer.norm1.weight, &layer.norm1.bias, eps, xn));
        let inputs = self.attention_inputs(layer, xn, batch, n, qkv, xk, kv);
        let attn_out = ensure(attn, rows * inner);
        let shape = AttnShape { batch, n, nk: inputs.nk, heads: layer.heads, head_dim: hd };
        let sink = observe.map(|f| move |b: usize, h: usize, probs: &[f32]| f(li, b, h, probs));
        let sink_ref = sink.as_ref().map(|s| s as ProbsSink);
        phase("attention", || attention(inputs.q, inputs.kv, attn_out, shape, inputs.layout, (hd as f32).powf(-0.5), sink_ref));
        // Residual: x += attn·Wprojᵀ; the bias is folded into the next layer norm.
        phase("proj", || matmul_packed(Mat::dense(attn_out, rows, inner), &layer.proj.weight, 0..d, x, d, Acc::Add, threads, Epilogue::None));
        phase("layer_norm", || layer_norm(x, Some(&layer.proj.bias), &layer.norm2.weight, &layer.norm2.bias, eps, xn));
        let hidden = ensure(hidden, rows * m);
        phase("fc1+gelu", || {
            matmul_packed(Mat::dense(xn, rows, d), &layer.fc1.weight, 0..m, hidden, m, Acc::Overwrite, threads, Epilogue::BiasGelu(&layer.fc1.bias))
        });
        phase("fc2", || matmul_packed(Mat::dense(hidden, rows, m), &layer.fc2.weight, 0..d, x, d, Acc::Add, threads, Epilogue::None));
    }

    fn sizes(&self, layer: &Layer, batch: usize, n: usize) -> Sizes {
        let a = &self.cfg.arch;
        Sizes { d: a.embed_dim, m: a.mlp_dim, hd: a.head_dim, rows: batch * n, inner: layer.heads * a.head_dim, eps: a.ln_eps as f32 }
    }

    /// The first step of a block split by rows (see `rest_split`) as a parallel region of its own:
    /// each thread's rows through the layer norm and the query (or q/k/v) product.
    fn front_split(&self, layer: &Layer, batch: usize, n: usize, pending_bias: Option<&[f32]>, ws: &mut Workspace) {
        let (d, rows) = (self.cfg.arch.embed_dim, batch * n);
        let bounds = row_bounds(rows);
        let qw = layer.q_width(self.cfg.arch.head_dim);
        let Workspace { x, xn, qkv, .. } = ws;
        let (x, xn, q) = (&mut x[..rows * d], ensure(xn, rows * d), ensure(qkv, rows * qw));
        split_rows(x, &bounds, d)
            .into_par_iter()
            .zip(split_rows(xn, &bounds, d))
            .zip(split_rows(q, &bounds, qw))
            .for_each(|((x, xn), q)| self.front_here(layer, pending_bias, x, xn, q));
    }

    /// One thread's rows (`x`, `xn` and `q` hold the same rows) through a block's layer norm
    /// (adding the pending bias to `x` first) and its query product — queries, keys and values
    /// when the block keeps every token.
    fn front_here(&self, layer: &Layer, pending_bias: Option<&[f32]>, x: &mut [f32], xn: &mut [f32], q: &mut [f32]) {
        let a = &self.cfg.arch;
        let (d, qw) = (a.embed_dim, layer.q_width(a.head_dim));
        let r = x.len() / d;
        phase("layer_norm", || layer_norm_here(x, pending_bias, &layer.norm1.weight, &layer.norm1.bias, a.ln_eps as f32, xn));
        phase("qkv", || matmul_packed(Mat::dense(xn, r, d), &layer.qkv.weight, 0..qw, q, qw, Acc::Overwrite, 1, Epilogue::Bias(&layer.qkv.bias[..qw])));
    }

    /// A block with the batch's rows split between the threads, once `front_split` (or the previous
    /// block's `rest_split`) has left each row's layer norm and query product: each thread takes its
    /// own run of rows through attention (reading every row's keys and values), the projection,
    /// the MLP and — given the `next` block — on through that block's layer norm and query
    /// product (into the other q/k/v buffer, since the other threads may still be reading this
    /// block's keys and values). One parallel region per block, where `block` forks and joins at
    /// each of its seven steps; a token-pruned block adds one before it, for the kept rows' keys
    /// and values. Each thread's steps are single-threaded calls of the same kernels.
    /// Why: at batch 1 a step of a small model lasts tens of microseconds, and the steps that
    /// divide poorly by columns (layer norm, attention over 3 heads) or wait for a thread the
    /// pool had put to sleep left two threads well short of twice one thread's speed.
    fn rest_split(&self, layer: &Layer, next: Option<&Layer>, batch: usize, n: usize, ws: &mut Workspace) {
        let Sizes { d, m, hd, rows, inner, eps } = self.sizes(layer, batch, n);
        let bounds = row_bounds(rows);
        let Workspace { x, xn, qkv, qkv_next, xk, kv, attn, hidden, .. } = ws;
        let (x, xn) = (&mut x[..rows * d], ensure(xn, rows * d));
        let q: &[f32] = &qkv[..rows * layer.q_width(hd)];
        let (kv, layout, nk): (&[f32], _, _) = match &layer.tokens {
            None => (q, layer.attn_layout(hd), n),
            Some(keep) => {
                // Keys and values of the kept rows, shared out likewise.
                let kn = keep.len();
                let kept = batch * kn;
                let kb = row_bounds(kept);
                let (xk, kv) = (ensure(xk, kept * d), ensure(kv, kept * 2 * inner));
                let xn: &[f32] = xn;
                split_rows(xk, &kb, d).into_par_iter().zip(split_rows(kv, &kb, 2 * inner)).zip(kb.par_windows(2)).for_each(|((xk, kv), w)| {
                    for (dst, r) in xk.chunks_exact_mut(d).zip(w[0]..w[1]) {
                        let src = (r / kn) * n + keep[r % kn];
                        dst.copy_from_slice(&xn[src * d..(src + 1) * d]);
                    }
                    let bias = Epilogue::Bias(&layer.qkv.bias[inner..]);
                    phase("q+kv", || {
                        matmul_packed(Mat::dense(xk, w[1] - w[0], d), &layer.qkv.weight, inner..3 * inner, kv, 2 * inner, Acc::Overwrite, 1, bias)
                    });
                });
                (kv, layer.attn_layout(hd), kn)
            }
        };
        let shape = AttnShape { batch, n, nk, heads: layer.heads, head_dim: hd };
        let scale = (hd as f32).powf(-0.5);
        let (attn_out, hidden) = (ensure(attn, rows * inner), ensure(hidden, rows * m));
        let next_w = next.map_or(0, |l| l.q_width(hd));
        let next_q = ensure(qkv_next, rows * next_w);
        split_rows(x, &bounds, d)
            .into_par_iter()
            .zip(split_rows(xn, &bounds, d))
            .zip(split_rows(attn_out, &bounds, inner))
            .zip(split_rows(hidden, &bounds, m))
            .zip(split_rows(next_q, &bounds, next_w))
            .zip(bounds.par_windows(2))
            .for_each(|(((((x, xn), ao), hidden), nq), w)| {
                let r = w[1] - w[0];
                phase("attention", || attention_rows(q, kv, ao, shape, layout, scale, w[0]..w[1]));
                phase("proj", || matmul_packed(Mat::dense(ao, r, inner), &layer.proj.weight, 0..d, x, d, Acc::Add, 1, Epilogue::None));
                phase("layer_norm", || layer_norm_here(x, Some(&layer.proj.bias), &layer.norm2.weight, &layer.norm2.bias, eps, xn));
                phase("fc1+gelu", || {
                    matmul_packed(Mat::dense(xn, r, d), &layer.fc1.weight, 0..m, hidden, m, Acc::Overwrite, 1, Epilogue::BiasGelu(&layer.fc1.bias))
                });
                phase("fc2", || matmul_packed(Mat::dense(hidden, r, m), &layer.fc2.weight, 0..d, x, d, Acc::Add, 1, Epilogue::None));
                if let Some(next) = next {
                    self.front_here(next, Some(&layer.fc2.bias), x, xn, nq);
                }
            });
        if next.is_some() {
            std::mem::swap(qkv, qkv_next);
        }
    }

    /// Queries from every token; keys and values from the kept ones. With every token kept one
    /// product gives q, k and v; otherwise the kept rows of the normed input are gathered first and
    /// both products share one parallel region.
    #[allow(clippy::too_many_arguments)]
    fn attention_inputs<'w>(
        &self,
        layer: &Layer,
        xn: &[f32],
        batch: usize,
        n: usize,
        qkv: &'w mut Vec<f32>,
        xk: &mut Vec<f32>,
        kv: &'w mut Vec<f32>,
    ) -> AttnInputs<'w> {
        let (d, hd) = (self.cfg.arch.embed_dim, self.cfg.arch.head_dim);
        let (rows, inner, threads) = (batch * n, layer.heads * hd, rayon::current_num_threads());
        match &layer.tokens {
            None => {
                let qkv = ensure(qkv, rows * 3 * inner);
                phase("qkv", || {
                    matmul_packed(
                        Mat::dense(xn, rows, d),
                        &layer.qkv.weight,
                        0..3 * inner,
                        qkv,
                        3 * inner,
                        Acc::Overwrite,
                        threads,
                        Epilogue::Bias(&layer.qkv.bias),
                    )
                });
                let qkv: &'w [f32] = qkv;
                AttnInputs { q: qkv, kv: qkv, layout: layer.attn_layout(hd), nk: n }
            }
            Some(keep) => {
                let kn = keep.len();
                let xk = ensure(xk, batch * kn * d);
                xk.par_chunks_mut(kn * d).enumerate().for_each(|(b, dst)| {
                    for (r, &t) in keep.iter().enumerate() {
                        dst[r * d..(r + 1) * d].copy_from_slice(&xn[(b * n + t) * d..(b * n + t + 1) * d]);
                    }
                });
                let q = ensure(qkv, rows * inner);
                let kv = ensure(kv, batch * kn * 2 * inner);
                phase("q+kv", || {
                    matmul_packed_many(
                        vec![
                            Product {
                                a: Mat::dense(xn, rows, d),
                                b: &layer.qkv.weight,
                                cols: 0..inner,
                                c: q,
                                ldc: inner,
                                acc: Acc::Overwrite,
                                epi: Epilogue::Bias(&layer.qkv.bias[..inner]),
                            },
                            Product {
                                a: Mat::dense(xk, batch * kn, d),
                                b: &layer.qkv.weight,
                                cols: inner..3 * inner,
                                c: kv,
                                ldc: 2 * inner,
                                acc: Acc::Overwrite,
                                epi: Epilogue::Bias(&layer.qkv.bias[inner..]),
                            },
                        ],
                        threads,
                    )
                });
                AttnInputs { q, kv, layout: layer.attn_layout(hd), nk: kn }
            }
        }
    }

    /// The LA parts of every image `[B, P, D]`: the mean of each part's tokens (`ModelConfig::part_tokens`).
    fn pool_parts(&self, tokens: &[f32], batch: usize) -> Vec<f32> {
        let (d, n, parts) = (self.cfg.arch.embed_dim, self.cfg.num_tokens(), self.cfg.num_parts());
        let mut out = vec![0f32; batch * parts * d];
        out.par_chunks_mut(parts * d).enumerate().for_each(|(b, dst)| {
            for (i, part) in dst.chunks_exact_mut(d).enumerate() {
                let range = self.cfg.part_tokens(i);
                let count = range.len() as f32;
                for t in range {
                    for (o, v) in part.iter_mut().zip(&tokens[(b * n + t) * d..(b * n + t + 1) * d]) {
                        *o += v;
                    }
                }
                for o in part.iter_mut() {
                    *o /= count;
                }
            }
        });
        out
    }

    fn la_logits(&self, tokens: &[f32], raw_parts: &[f32], batch: usize) -> Vec<Vec<f32>> {
        let (d, n) = (self.cfg.arch.embed_dim, self.cfg.num_tokens());
        let np = self.parts.len();
        let lambda = self.cfg.head.lambda;
        self.parts
            .par_iter()
            .enumerate()
            .map(|(i, part)| {
                let mut g = vec![0f32; batch * d];
                for (b, gb) in g.chunks_exact_mut(d).enumerate() {
                    // The class token is position 0 (an LA head requires one).
                    la_blend(&tokens[b * n * d..b * n * d + d], &raw_parts[(b * np + i) * d..(b * np + i + 1) * d], lambda, gb);
                }
                part.logits(&g, batch, d)
            })
            .collect()
    }
}

//! The inference engine: a ViT forward pass on preallocated buffers with the kernels of
//! `kernels`, honouring each layer's kept heads and kept key/value tokens (AMG_SPEC §3.4: queries
//! and the residual stream keep all N tokens; K and V are computed only from the kept tokens).
//!
//! Why not candle ops here: measured on this project's 2-core AVX-512 machines, a straightforward
//! candle ViT forward reached 0.38–0.45× ONNX Runtime, its element-wise ops being single-threaded
//! and its batched small matmuls slow (../shared/CANDLE_NOTES.md). Calling the same `gemm` crate
//! directly with fused, parallel element-wise kernels removes that overhead. Training uses candle
//! (autodiff); tests check both against timm.

use crate::error::{Error, Result};
use crate::kernels::attention::{attention, AttnLayout, AttnShape, ProbsSink};
use crate::kernels::gemm::{matmul, transpose, Acc, Epilogue, Mat};
use crate::kernels::packed::{matmul_packed, matmul_packed_many, PackedB, Product};
use crate::kernels::prof::phase;
use crate::kernels::rows::layer_norm;
use crate::model::{HeadKind, ModelConfig, ModelFiles};
use crate::tensor::TensorMap;
use rayon::prelude::*;

struct Layer {
    heads: usize,
    /// Kept key/value positions, or `None` when every token is kept.
    tokens: Option<Vec<usize>>,
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    /// `[D, 3·I]`: the transposed qkv weight, columns q | k | v (panels split at I and 2·I).
    wqkv: PackedB,
    bqkv: Vec<f32>,
    /// `[I, D]`
    wproj: PackedB,
    bproj: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
    /// `[D, M]`
    w1: PackedB,
    b1: Vec<f32>,
    /// `[M, D]`
    w2: PackedB,
    b2: Vec<f32>,
}

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

pub struct Engine {
    cfg: ModelConfig,
    /// `[3·p·p, D]`
    patch_w_t: Vec<f32>,
    patch_b: Vec<f32>,
    cls: Vec<f32>,
    /// `[N, D]`
    pos: Vec<f32>,
    layers: Vec<Layer>,
    norm_w: Vec<f32>,
    norm_b: Vec<f32>,
    parts: Vec<Part>,
}

/// Buffers reused across forward passes (allocating them per batch costs page faults).
#[derive(Default)]
pub struct Workspace {
    patches: Vec<f32>,
    embed: Vec<f32>,
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    xk: Vec<f32>,
    kv: Vec<f32>,
    attn: Vec<f32>,
    hidden: Vec<f32>,
}

fn ensure(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// What a forward pass should return besides the retrieval features.
#[derive(Clone, Copy, Default)]
pub struct Want {
    /// The final-normed tokens `[B, N, D]`.
    pub tokens: bool,
    /// The LA classifiers' logits (inference mode), per part `[B, C]`.
    pub logits: bool,
}

pub struct Outputs {
    /// `[B, P·D]`, each image's concatenated, normalised part features (AMG_SPEC §1).
    pub features: Vec<f32>,
    pub tokens: Option<Vec<f32>>,
    pub logits: Option<Vec<Vec<f32>>>,
}

fn take(t: &mut TensorMap, name: &str) -> Vec<f32> {
    // `ModelFiles` were checked against the config, so every tensor is present with its shape.
    t.remove(name).unwrap_or_else(|| panic!("tensor {name} missing after validation")).data
}

impl Engine {
    pub fn new(files: ModelFiles) -> Result<Self> {
        let ModelFiles { config: cfg, mut tensors } = files;
        cfg.validate()?;
        let a = cfg.arch.clone();
        let (d, m, hd, p) = (a.embed_dim, a.mlp_dim, a.head_dim, a.patch_size);
        let n = cfg.num_tokens();
        let mut layers = Vec::new();
        for (l, plan) in cfg.layers.iter().enumerate() {
            let b = format!("blocks.{l}");
            let inner = plan.heads.len() * hd;
            let wqkv = take(&mut tensors, &format!("{b}.attn.qkv.weight"));
            let bqkv = if a.qkv_bias { take(&mut tensors, &format!("{b}.attn.qkv.bias")) } else { vec![0.0; 3 * inner] };
            layers.push(Layer {
                heads: plan.heads.len(),
                tokens: if plan.tokens.len() == n { None } else { Some(plan.tokens.clone()) },
                ln1_w: take(&mut tensors, &format!("{b}.norm1.weight")),
                ln1_b: take(&mut tensors, &format!("{b}.norm1.bias")),
                wqkv: PackedB::new(&transpose(&wqkv, 3 * inner, d), d, 3 * inner, &[inner, 2 * inner]),
                bqkv,
                wproj: PackedB::new(&transpose(&take(&mut tensors, &format!("{b}.attn.proj.weight")), d, inner), inner, d, &[]),
                bproj: take(&mut tensors, &format!("{b}.attn.proj.bias")),
                ln2_w: take(&mut tensors, &format!("{b}.norm2.weight")),
                ln2_b: take(&mut tensors, &format!("{b}.norm2.bias")),
                w1: PackedB::new(&transpose(&take(&mut tensors, &format!("{b}.mlp.fc1.weight")), m, d), d, m, &[]),
                b1: take(&mut tensors, &format!("{b}.mlp.fc1.bias")),
                w2: PackedB::new(&transpose(&take(&mut tensors, &format!("{b}.mlp.fc2.weight")), d, m), m, d, &[]),
                b2: take(&mut tensors, &format!("{b}.mlp.fc2.bias")),
            });
        }
        let mut parts = Vec::new();
        if cfg.head.kind == HeadKind::La {
            let (nb, c) = (cfg.head.bottleneck, cfg.head.num_classes);
            for i in 0..cfg.num_parts() {
                let b = format!("parts.{i}");
                let (w, bb) = (take(&mut tensors, &format!("{b}.bn.weight")), take(&mut tensors, &format!("{b}.bn.bias")));
                let (rm, rv) = (take(&mut tensors, &format!("{b}.bn.running_mean")), take(&mut tensors, &format!("{b}.bn.running_var")));
                // torch.nn.BatchNorm1d's default eps.
                let bn_scale: Vec<f32> = (0..nb).map(|j| w[j] / (rv[j] + 1e-5).sqrt()).collect();
                let bn_shift: Vec<f32> = (0..nb).map(|j| bb[j] - rm[j] * bn_scale[j]).collect();
                parts.push(Part {
                    fc_t: transpose(&take(&mut tensors, &format!("{b}.bottleneck.weight")), nb, d),
                    fc_b: take(&mut tensors, &format!("{b}.bottleneck.bias")),
                    bn_scale,
                    bn_shift,
                    cls_t: transpose(&take(&mut tensors, &format!("{b}.classifier.weight")), c, nb),
                    cls_b: take(&mut tensors, &format!("{b}.classifier.bias")),
                });
            }
        }
        Ok(Engine {
            patch_w_t: transpose(&take(&mut tensors, "patch_embed.proj.weight"), d, 3 * p * p),
            patch_b: take(&mut tensors, "patch_embed.proj.bias"),
            cls: take(&mut tensors, "cls_token"),
            pos: take(&mut tensors, "pos_embed"),
            norm_w: take(&mut tensors, "norm.weight"),
            norm_b: take(&mut tensors, "norm.bias"),
            layers,
            parts,
            cfg,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Values per input image: 3·H·W, channel-major (CHW).
    pub fn image_len(&self) -> usize {
        3 * self.cfg.input.height * self.cfg.input.width
    }

    /// Runs `batch` normalised CHW images through the model.
    pub fn forward(&self, images: &[f32], batch: usize, ws: &mut Workspace, want: Want) -> Result<Outputs> {
        self.forward_observed(images, batch, ws, want, None)
    }

    /// As `forward`, handing every layer's attention probabilities to `observe(layer, image, head,
    /// probs[n × nk])` (heads numbered among the kept ones).
    pub fn forward_observed(
        &self,
        images: &[f32],
        batch: usize,
        ws: &mut Workspace,
        want: Want,
        observe: Option<&(dyn Fn(usize, usize, usize, &[f32]) + Sync)>,
    ) -> Result<Outputs> {
        if images.len() != batch * self.image_len() {
            return Err(Error::invalid(format!(
                "forward: {} input values for a batch of {batch}, expected {} ({}x{} RGB per image)",
                images.len(),
                batch * self.image_len(),
                self.cfg.input.height,
                self.cfg.input.width
            )));
        }
        if want.logits && self.parts.is_empty() {
            return Err(Error::invalid("this model has no classifier head (retrieval only): no logits to compute"));
        }
        let a = &self.cfg.arch;
        let (d, m, hd, p) = (a.embed_dim, a.mlp_dim, a.head_dim, a.patch_size);
        let eps = a.ln_eps as f32;
        let (gh, gw) = self.cfg.grid();
        let (np, n) = (gh * gw, self.cfg.num_tokens());
        let (ih, iw) = (self.cfg.input.height, self.cfg.input.width);
        let rows = batch * n;
        let threads = rayon::current_num_threads();
        let pp3 = 3 * p * p;

        // Patch embedding: im2col, then one product with the conv weight.
        let patches = ensure(&mut ws.patches, batch * np * pp3);
        patches.par_chunks_mut(np * pp3).zip(images.par_chunks(3 * ih * iw)).for_each(|(dst, img)| {
            for (pi, patch) in dst.chunks_exact_mut(pp3).enumerate() {
                let (py, px) = (pi / gw, pi % gw);
                for c in 0..3 {
                    for ky in 0..p {
                        let src = &img[c * ih * iw + (py * p + ky) * iw + px * p..][..p];
                        patch[c * p * p + ky * p..][..p].copy_from_slice(src);
                    }
                }
            }
        });
        let embed = ensure(&mut ws.embed, batch * np * d);
        phase("patch_embed", || matmul(Mat::dense(patches, batch * np, pp3), Mat::dense(&self.patch_w_t, pp3, d), embed, d, Acc::Overwrite, 1.0, threads));
        let x = ensure(&mut ws.x, rows * d);
        x.par_chunks_mut(n * d).zip(embed.par_chunks(np * d)).for_each(|(xi, ei)| {
            for t in 0..n {
                let row = &mut xi[t * d..(t + 1) * d];
                let pos = &self.pos[t * d..(t + 1) * d];
                if t == 0 {
                    for j in 0..d {
                        row[j] = self.cls[j] + pos[j];
                    }
                } else {
                    let e = &ei[(t - 1) * d..t * d];
                    for j in 0..d {
                        row[j] = e[j] + self.patch_b[j] + pos[j];
                    }
                }
            }
        });

        let xn = ensure(&mut ws.xn, rows * d);
        let mut pending_bias: Option<&[f32]> = None;
        for (li, layer) in self.layers.iter().enumerate() {
            let inner = layer.heads * hd;
            phase("layer_norm", || layer_norm(x, pending_bias, &layer.ln1_w, &layer.ln1_b, eps, xn));
            let (q_buf, q_ld, kv_buf, kv_ld, k_off, v_off, nk);
            match &layer.tokens {
                None => {
                    // All tokens kept: one product gives q, k and v.
                    let qkv = ensure(&mut ws.qkv, rows * 3 * inner);
                    phase("qkv", || matmul_packed(Mat::dense(xn, rows, d), &layer.wqkv, 0..3 * inner, qkv, 3 * inner, Acc::Overwrite, threads, Epilogue::Bias(&layer.bqkv)));
                    (q_buf, q_ld, kv_ld, k_off, v_off, nk) = (&ws.qkv[..rows * 3 * inner], 3 * inner, 3 * inner, inner, 2 * inner, n);
                    kv_buf = q_buf;
                }
                Some(keep) => {
                    // Queries from every token; keys and values only from the kept ones.
                    let kn = keep.len();
                    let xk = ensure(&mut ws.xk, batch * kn * d);
                    xk.par_chunks_mut(kn * d).enumerate().for_each(|(b, dst)| {
                        for (r, &t) in keep.iter().enumerate() {
                            dst[r * d..(r + 1) * d].copy_from_slice(&xn[(b * n + t) * d..(b * n + t + 1) * d]);
                        }
                    });
                    // Both products in one parallel region.
                    let q = ensure(&mut ws.qkv, rows * inner);
                    let kv = ensure(&mut ws.kv, batch * kn * 2 * inner);
                    phase("q+kv", || {
                        matmul_packed_many(
                            vec![
                                Product { a: Mat::dense(xn, rows, d), b: &layer.wqkv, cols: 0..inner, c: q, ldc: inner, acc: Acc::Overwrite, epi: Epilogue::Bias(&layer.bqkv[..inner]) },
                                Product { a: Mat::dense(xk, batch * kn, d), b: &layer.wqkv, cols: inner..3 * inner, c: kv, ldc: 2 * inner, acc: Acc::Overwrite, epi: Epilogue::Bias(&layer.bqkv[inner..]) },
                            ],
                            threads,
                        )
                    });
                    (q_buf, q_ld, kv_buf, kv_ld, k_off, v_off, nk) = (&ws.qkv[..rows * inner], inner, &ws.kv[..batch * kn * 2 * inner], 2 * inner, 0, inner, kn);
                }
            }
            let attn_out = ensure(&mut ws.attn, rows * inner);
            let shape = AttnShape { batch, n, nk, heads: layer.heads, head_dim: hd };
            let layout = AttnLayout { q_ld, kv_ld, k_off, v_off, out_ld: inner };
            let sink = observe.map(|f| move |b: usize, h: usize, probs: &[f32]| f(li, b, h, probs));
            let sink_ref = sink.as_ref().map(|s| s as ProbsSink);
            phase("attention", || attention(q_buf, kv_buf, attn_out, shape, layout, (hd as f32).powf(-0.5), sink_ref));
            // Residual: x += attn·Wprojᵀ; the bias is folded into the next layer norm.
            phase("proj", || matmul_packed(Mat::dense(attn_out, rows, inner), &layer.wproj, 0..d, x, d, Acc::Add, threads, Epilogue::None));
            phase("layer_norm", || layer_norm(x, Some(&layer.bproj), &layer.ln2_w, &layer.ln2_b, eps, xn));
            let hidden = ensure(&mut ws.hidden, rows * m);
            phase("fc1+gelu", || matmul_packed(Mat::dense(xn, rows, d), &layer.w1, 0..m, hidden, m, Acc::Overwrite, threads, Epilogue::BiasGelu(&layer.b1)));
            phase("fc2", || matmul_packed(Mat::dense(hidden, rows, m), &layer.w2, 0..d, x, d, Acc::Add, threads, Epilogue::None));
            pending_bias = Some(&layer.b2);
        }
        layer_norm(x, pending_bias, &self.norm_w, &self.norm_b, eps, xn);
        let tokens = &*xn;

        // LA parts: row averages of the patch grid.
        let parts_n = gh;
        let mut raw_parts = vec![0f32; batch * parts_n * d];
        raw_parts.par_chunks_mut(parts_n * d).enumerate().for_each(|(b, dst)| {
            for r in 0..parts_n {
                let out = &mut dst[r * d..(r + 1) * d];
                for c in 0..gw {
                    let t = 1 + r * gw + c;
                    for (o, v) in out.iter_mut().zip(&tokens[(b * n + t) * d..(b * n + t + 1) * d]) {
                        *o += v;
                    }
                }
                for o in out.iter_mut() {
                    *o /= gw as f32;
                }
            }
        });
        let mut features = raw_parts.clone();
        let sqrt_p = (parts_n as f32).sqrt();
        for part in features.chunks_exact_mut(d) {
            let norm = part.iter().map(|v| v * v).sum::<f32>().sqrt();
            let s = 1.0 / (norm.max(1e-12) * sqrt_p);
            for v in part.iter_mut() {
                *v *= s;
            }
        }

        let logits = want.logits.then(|| self.la_logits(tokens, &raw_parts, batch));
        Ok(Outputs { features, tokens: want.tokens.then(|| tokens[..rows * d].to_vec()), logits })
    }

    fn la_logits(&self, tokens: &[f32], raw_parts: &[f32], batch: usize) -> Vec<Vec<f32>> {
        let d = self.cfg.arch.embed_dim;
        let n = self.cfg.num_tokens();
        let (nb, c, lambda) = (self.cfg.head.bottleneck, self.cfg.head.num_classes, self.cfg.head.lambda);
        let np = self.parts.len();
        self.parts
            .par_iter()
            .enumerate()
            .map(|(i, part)| {
                let mut g = vec![0f32; batch * d];
                for b in 0..batch {
                    let cls = &tokens[b * n * d..b * n * d + d];
                    let p = &raw_parts[(b * np + i) * d..(b * np + i + 1) * d];
                    for j in 0..d {
                        g[b * d + j] = (cls[j] + lambda * p[j]) / (1.0 + lambda);
                    }
                }
                let mut z = vec![0f32; batch * nb];
                matmul(Mat::dense(&g, batch, d), Mat::dense(&part.fc_t, d, nb), &mut z, nb, Acc::Overwrite, 1.0, 1);
                for row in z.chunks_exact_mut(nb) {
                    for j in 0..nb {
                        row[j] = (row[j] + part.fc_b[j]) * part.bn_scale[j] + part.bn_shift[j];
                    }
                }
                let mut out = vec![0f32; batch * c];
                matmul(Mat::dense(&z, batch, nb), Mat::dense(&part.cls_t, nb, c), &mut out, c, Acc::Overwrite, 1.0, 1);
                for row in out.chunks_exact_mut(c) {
                    for (o, bb) in row.iter_mut().zip(&part.cls_b) {
                        *o += bb;
                    }
                }
                out
            })
            .collect()
    }
}

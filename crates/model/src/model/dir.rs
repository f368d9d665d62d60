//! A model directory: `config.json` + `model.safetensors`.

use super::config::{HeadConfig, HeadKind, ModelConfig};
use super::params::VitParams;
use super::quant::Int8Params;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::resample::resample_pos_embed_for;
use crate::tensor::{write_named_safetensors, write_raw_safetensors, HostTensor, RawTensor, SafetensorsFile};
use std::collections::HashMap;
use std::path::Path;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// A model in memory: its configuration and its float32 tensors. Outside this crate a model can
/// only be made by a constructor that checks it (`new`, `load`); inside, surgery and training
/// rewrite the fields directly and every consumer re-checks (`check`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    pub(crate) config: ModelConfig,
    pub(crate) params: VitParams<HostTensor>,
    /// An INT8 model's integers and scales (`config.quantization` says so); `params` then hold the
    /// float32 weights they stand for.
    pub(crate) int8: Option<Int8Params>,
}

impl ModelFiles {
    /// A model from a configuration and its tensors, checked against each other.
    pub fn new(config: ModelConfig, params: VitParams<HostTensor>) -> Result<Self> {
        let m = ModelFiles { config, params, int8: None };
        m.check()?;
        Ok(m)
    }

    /// An INT8 model: a float32 model's products quantized (`Int8Params::quantize`), its
    /// configuration recording the scheme.
    pub fn int8(
        config: ModelConfig,
        params: VitParams<HostTensor>,
        quantization: super::quant::Quantization,
        inputs: Option<&super::quant::InputScales>,
    ) -> Result<Self> {
        // The float32 model is checked first: its shapes are what the quantization reads.
        let ModelFiles { mut config, mut params, .. } = ModelFiles::new(config, params)?;
        let int8 = Int8Params::quantize(&mut params, inputs);
        config.quantization = Some(quantization);
        let m = ModelFiles { config, params, int8: Some(int8) };
        m.check()?;
        Ok(m)
    }

    /// The INT8 products, for an INT8 model.
    pub fn int8_params(&self) -> Option<&Int8Params> {
        self.int8.as_ref()
    }

    /// Loads the model in `dir` and refuses an INT8 one with `require_float`'s error, prefixed by
    /// the directory.
    pub fn load_float(dir: &Path, what: &str) -> Result<Self> {
        let m = ModelFiles::load(dir)?;
        m.require_float(what).map_err(|e| Error::invalid(format!("{}: {e}", dir.display())))?;
        Ok(m)
    }

    /// `Ok` for a float32 model; for an INT8 one, an error saying that `what` needs the float32
    /// model it was made from, and naming it.
    pub fn require_float(&self, what: &str) -> Result<()> {
        match &self.config.quantization {
            None => Ok(()),
            Some(q) => Err(Error::invalid(format!(
                "{what} needs a float32 model, and this is an INT8 model (made by `amg quantize`): use the float32 model it was made from, {} (fingerprint {})",
                q.float_model, q.float_fingerprint
            ))),
        }
    }
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// The provenance, which a pipeline that changes the model (pruning, fine-tuning) extends;
    /// the rest of the configuration is fixed by the tensors it describes.
    pub fn source_mut(&mut self) -> &mut crate::model::config::Source {
        &mut self.config.source
    }
    pub fn params(&self) -> &VitParams<HostTensor> {
        &self.params
    }
    /// Whether the model classifies (LA part classifiers, or a BNNeck with a classifier), i.e.
    /// has logits to give; otherwise it is retrieval only.
    pub fn has_classifiers(&self) -> bool {
        !self.params.parts.is_empty() || self.params.necks.iter().any(|n| n.classifier.is_some())
    }
    /// The configuration and float32 parameters (of an INT8 model: the weights its products
    /// multiply by; its integers are dropped).
    pub fn into_parts(self) -> (ModelConfig, VitParams<HostTensor>) {
        (self.config, self.params)
    }

    /// Loads and checks a model directory; every disagreement between the config and the tensors is
    /// an error that names the tensor and both shapes.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::file(dir, "is not a model directory (expected a directory with config.json and model.safetensors)"));
        }
        let config = ModelConfig::load(&dir.join(CONFIG_FILE))?;
        let wpath = dir.join(WEIGHTS_FILE);
        let file = SafetensorsFile::open(&wpath)?;
        let (tensors, int8) = match &config.quantization {
            None => (file.all_f32()?, None),
            Some(q) => {
                let mut raw = file.all_raw()?;
                let int8 = Int8Params::take_from(&config, q, &mut raw, &wpath)?;
                (crate::tensor::raw_to_f32(raw, &wpath)?, Some(int8))
            }
        };
        let params = VitParams::from_map(&config, tensors, &wpath)?;
        Ok(ModelFiles { config, params, int8 }) // checked by `validate`, `from_map` and `take_from`
    }

    /// What identifies the function the model computes: a 64-bit hash (16 hex digits) of its
    /// architecture, input, head, per-layer plan and every weight, bit for bit — not of its
    /// provenance. `amg embed` records it in feature files so that `search` and `eval --features`
    /// can refuse features of another model (same feature size, different weights: nonsense ranks).
    /// FNV-1a over 32-bit words: stable across builds and platforms (unlike std's hasher).
    pub fn fingerprint(&self) -> String {
        const PRIME: u64 = 0x0000_0100_0000_01B3;
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        let mut eat = |w: u32| h = (h ^ u64::from(w)).wrapping_mul(PRIME);
        let c = &self.config;
        let what = serde_json::to_string(&(&c.arch, &c.input, &c.layers, &c.head)).expect("the configuration serialises");
        what.bytes().for_each(|b| eat(u32::from(b)));
        for (key, t) in self.params.entries() {
            key.to_string().bytes().for_each(|b| eat(u32::from(b)));
            t.shape.iter().for_each(|&d| eat(d as u32));
            t.data.iter().for_each(|v| eat(v.to_bits()));
        }
        // An INT8 model: its scheme and every integer and scale (a float32 model hashes as before).
        if let (Some(q), Some(i)) = (&c.quantization, &self.int8) {
            serde_json::to_string(q).expect("the scheme serialises").bytes().for_each(|b| eat(u32::from(b)));
            i.hash_into(&mut eat);
        }
        format!("{h:016x}")
    }

    /// The check every consumer (engine, differentiable model, exporters, `save`) runs first: the
    /// configuration is consistent and every tensor has the shape it implies. The fields are public
    /// for surgery and tests; nothing runs a model that has not passed this.
    pub fn check(&self) -> Result<()> {
        self.config.validate()?;
        let here = Path::new("(model in memory)");
        self.params.check(&self.config, here)?;
        self.check_int8(here)
    }

    fn check_int8(&self, path: &Path) -> Result<()> {
        match (&self.config.quantization, &self.int8) {
            (None, None) => Ok(()),
            (Some(q), Some(i)) => i.check(q, &self.params, path),
            (Some(_), None) => Err(Error::file(path, "config.json describes an INT8 model but there are no INT8 weights")),
            (None, Some(_)) => Err(Error::file(path, "INT8 weights for a model config.json calls float32")),
        }
    }

    /// The same model at another input size, as fine-tuning at a new resolution starts (an
    /// ImageNet-size checkpoint moved to Re-ID's 256×128): the position embedding's patch grid is
    /// resampled (bilinearly for a TransReID import, as TransReID does; bicubically otherwise, as
    /// timm does). LA part classifiers belong to the rows of the grid, so they are dropped when the
    /// row count changes (training gives the model new ones). A model whose key tokens are pruned
    /// cannot move: its kept positions belong to the old grid.
    pub fn at_input_size(mut self, height: usize, width: usize) -> Result<Self> {
        let c = &self.config;
        if (c.input.height, c.input.width) == (height, width) {
            return Ok(self);
        }
        let n = c.num_tokens();
        if let Some(l) = c.layers.iter().position(|l| l.tokens.len() != n) {
            return Err(Error::invalid(format!(
                "the model's key tokens are pruned (layer {l} keeps {} of {n}): its kept positions belong to its {}x{} input and cannot move to {height}x{width}",
                c.layers[l].tokens.len(),
                c.input.height,
                c.input.width
            )));
        }
        let (old_grid, old_rows) = (c.grid(), c.num_parts());
        let mut cfg = c.clone();
        (cfg.input.height, cfg.input.width) = (height, width);
        cfg.check_input()?;
        let (d, prefix, n) = (cfg.arch.embed_dim, cfg.num_prefix(), cfg.num_tokens());
        for l in &mut cfg.layers {
            l.tokens = (0..n).collect();
        }
        let (pos, how) = resample_pos_embed_for(&cfg.source.format, &self.params.pos_embed.data, d, prefix, old_grid, cfg.grid());
        self.params.pos_embed = HostTensor::new(vec![1, n, d], pos);
        let mut note = format!("input {}x{} → {height}x{width}: position embedding resampled {how}", c.input.height, c.input.width);
        if cfg.head.kind == HeadKind::La && cfg.num_parts() != old_rows {
            cfg.head = HeadConfig::none();
            self.params.parts.clear();
            note.push_str(&format!("; its {old_rows} LA part classifiers dropped (the grid now has {} rows)", cfg.num_parts()));
        }
        cfg.source.notes.push(note);
        self.config = cfg;
        self.check()?;
        Ok(self)
    }

    /// Writes the directory atomically (see `fsutil::write_dir_atomic`).
    pub fn save(&self, dir: &Path, force: bool) -> Result<()> {
        self.save_with(dir, force, |_| Ok(()))
    }

    /// As `save`, with `extra` writing further files into the directory before it is renamed into
    /// place.
    pub fn save_with(&self, dir: &Path, force: bool, extra: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        self.config.validate()?;
        self.params.check(&self.config, &dir.join(WEIGHTS_FILE))?;
        self.check_int8(&dir.join(WEIGHTS_FILE))?;
        fsutil::write_dir_atomic(dir, force, |tmp| {
            self.write_into(tmp)?;
            extra(tmp)
        })
    }

    /// Writes `config.json` and `model.safetensors` into an existing directory.
    pub fn write_into(&self, dir: &Path) -> Result<()> {
        let meta = HashMap::from([("format".to_string(), "amg-model".to_string())]);
        let named = self.params.entries().into_iter().map(|(k, t)| (k.to_string(), t));
        match &self.int8 {
            None => write_named_safetensors(&dir.join(WEIGHTS_FILE), named, Some(meta))?,
            Some(i) => {
                // The products' weights as int8 with their scales, in place of their float32 form.
                let mut raw = i.tensors(&self.params);
                for (name, t) in named {
                    raw.entry(name).or_insert_with(|| RawTensor::f32(t.shape.clone(), &t.data));
                }
                write_raw_safetensors(&dir.join(WEIGHTS_FILE), raw, Some(meta))?
            }
        }
        fsutil::write_bytes_atomic(&dir.join(CONFIG_FILE), self.config.to_json().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::surgery::{apply_plan, Plan};
    use crate::model::weights::init_random;
    use crate::model::{Arch, Source};

    fn la_model(h: usize, w: usize) -> ModelFiles {
        let mut arch = Arch::preset("tiny").unwrap();
        arch.depth = 2;
        let cfg = ModelConfig::new(arch, h, w, HeadConfig::la(5), Source::default()).unwrap();
        let params = init_random(&cfg, 3);
        ModelFiles::new(cfg, params).unwrap()
    }

    #[test]
    fn at_input_size_resamples_the_grid_and_keeps_the_rest() {
        let m = la_model(32, 32);
        assert_eq!(m.clone().at_input_size(32, 32).unwrap(), m, "the same size changes nothing");
        // Same rows (2), twice the columns: classifiers kept, every block weight untouched.
        let wide = m.clone().at_input_size(32, 64).unwrap();
        assert_eq!((wide.config.num_tokens(), wide.config.head.kind), (1 + 2 * 4, HeadKind::La));
        assert_eq!(wide.params.pos_embed.shape, vec![1, 9, 192]);
        assert_eq!(wide.params.pos_embed.data[..192], m.params.pos_embed.data[..192], "the class token's position is kept");
        assert_eq!(wide.params.blocks, m.params.blocks);
        assert_eq!(wide.params.parts, m.params.parts);
        assert!(wide.config.layers.iter().all(|l| l.tokens == (0..9).collect::<Vec<_>>()));
        // Twice the rows: the two LA classifiers no longer fit the four rows.
        let tall = m.clone().at_input_size(64, 32).unwrap();
        assert_eq!((tall.config.head.kind, tall.params.parts.len()), (HeadKind::None, 0));
        assert!(tall.config.source.notes.last().unwrap().contains("LA part classifiers dropped"));
        // Back to the original grid: a resample of a resample is not the identity, but a
        // constant grid is reproduced exactly.
        let mut flat = m.clone();
        let d = 192;
        for (i, v) in flat.params.pos_embed.data.iter_mut().enumerate().skip(d) {
            *v = (i % d) as f32;
        }
        let up = flat.clone().at_input_size(64, 64).unwrap();
        assert!(up.params.pos_embed.data.iter().enumerate().skip(d).all(|(i, &v)| (v - (i % d) as f32).abs() < 1e-4));
    }

    #[test]
    fn a_model_with_pruned_key_tokens_does_not_move() {
        let m = la_model(32, 32);
        let mut plan = Plan::of(&m.config);
        plan.tokens[1] = vec![0, 1, 2];
        let pruned = apply_plan(&m, &plan).unwrap();
        let e = pruned.at_input_size(64, 32).unwrap_err().to_string();
        assert!(e.contains("layer 1 keeps 3 of 5"), "{e}");
        // Pruned heads are no obstacle.
        let mut plan = Plan::of(&m.config);
        plan.heads[0] = vec![2];
        assert!(apply_plan(&m, &plan).unwrap().at_input_size(64, 32).is_ok());
        assert!(la_model(32, 32).at_input_size(40, 32).is_err(), "not a multiple of the patch size");
    }
}

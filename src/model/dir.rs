//! A model directory: `config.json` + `model.safetensors`.

use super::config::ModelConfig;
use super::params::VitParams;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::tensor::{write_named_safetensors, HostTensor, SafetensorsFile};
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
}

impl ModelFiles {
    /// A model from a configuration and its tensors, checked against each other.
    pub fn new(config: ModelConfig, params: VitParams<HostTensor>) -> Result<Self> {
        let m = ModelFiles { config, params };
        m.check()?;
        Ok(m)
    }
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn params(&self) -> &VitParams<HostTensor> {
        &self.params
    }
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
        let tensors = SafetensorsFile::open(&wpath)?.all_f32()?;
        let params = VitParams::from_map(&config, tensors, &wpath)?;
        Ok(ModelFiles { config, params }) // checked by `validate` and `from_map`
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
        format!("{h:016x}")
    }

    /// The check every consumer (engine, differentiable model, exporters, `save`) runs first: the
    /// configuration is consistent and every tensor has the shape it implies. The fields are public
    /// for surgery and tests; nothing runs a model that has not passed this.
    pub fn check(&self) -> Result<()> {
        self.config.validate()?;
        self.params.check(&self.config, Path::new("(model in memory)"))
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
        fsutil::write_dir_atomic(dir, force, |tmp| {
            self.write_into(tmp)?;
            extra(tmp)
        })
    }

    /// Writes `config.json` and `model.safetensors` into an existing directory.
    pub fn write_into(&self, dir: &Path) -> Result<()> {
        let meta = HashMap::from([("format".to_string(), "amg-model".to_string())]);
        let named = self.params.entries().into_iter().map(|(k, t)| (k.to_string(), t));
        write_named_safetensors(&dir.join(WEIGHTS_FILE), named, Some(meta))?;
        fsutil::write_bytes_atomic(&dir.join(CONFIG_FILE), self.config.to_json().as_bytes())
    }
}

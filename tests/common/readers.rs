//! Feeds bytes to every reader of user files exactly as the command line does — through a file —
//! for the mutation test (`tests/hostile_files.rs`, stable, in `cargo test`) and the fuzz targets
//! (`fuzz/`, nightly). Each function returns whether the input was accepted; what matters is that
//! it returns at all: a panic, an abort or a stack overflow is the bug these look for.

#![allow(dead_code)]

use amg::engine::{Engine, Input, Want, Workspace};
use amg::model::surgery::Plan;
use amg::model::{ModelConfig, ModelFiles};
use std::path::{Path, PathBuf};

/// A private scratch directory (in /dev/shm where there is one: the fuzzers write a file per run).
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("amg-hostile-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch { dir }
    }
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, bytes).expect("scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A checkpoint (`.pth` zip or `.safetensors`, by content) and the extra lists `amg import` reads.
pub fn checkpoint(s: &Scratch, bytes: &[u8]) -> bool {
    let p = s.file("checkpoint", bytes);
    match amg::import::pth::read_checkpoint(&p) {
        Ok((_, Some(pth))) => {
            let _ = pth.string("amg_config");
            let _ = pth.int_list("heads");
            let _ = pth.int_list("channels");
            true
        }
        Ok((_, None)) => true,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

/// A TransReID checkpoint imported as the JPM + SIE fixture is (64x40, stride 12, 2 heads).
pub fn transreid_import(s: &Scratch, bytes: &[u8]) -> bool {
    use amg::import::{import, ImportRequest, SourceFormat};
    let p = s.file("transreid.pth", bytes);
    let mut req = ImportRequest::new(SourceFormat::TransReid, &p);
    (req.checkpoint_img_size, req.stride, req.heads) = (Some((64, 40)), Some(12), Some(2));
    match import(&req) {
        Ok(files) => {
            assert!(files.check().is_ok());
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

/// A model directory; when it loads, the engine is built and run on one zero image if it is small.
pub fn model_dir(s: &Scratch, config: &[u8], weights: &[u8]) -> bool {
    let dir = s.dir.join("model");
    std::fs::create_dir_all(&dir).expect("scratch model dir");
    std::fs::write(dir.join("config.json"), config).expect("scratch config");
    std::fs::write(dir.join("model.safetensors"), weights).expect("scratch weights");
    let Ok(files) = ModelFiles::load(&dir) else { return false };
    let cfg = files.config().clone();
    let Ok(engine) = Engine::new(files) else { return false };
    let pixels = 3 * cfg.input.height * cfg.input.width;
    if pixels <= 3 * 256 * 256 && cfg.num_tokens() <= 1024 {
        let cameras = cfg.arch.sie.as_ref().map(|_| vec![0]);
        let images = vec![0.0; pixels];
        let input = Input { images: &images, cameras: cameras.as_deref(), batch: 1 };
        let out = engine.run(input, &mut Workspace::default(), Want::default(), None);
        if let Ok(out) = out {
            assert_eq!(out.features.len(), cfg.feature_dim());
        }
    }
    true
}

/// A plan file, checked against `cfg`.
pub fn plan(s: &Scratch, bytes: &[u8], cfg: &ModelConfig) -> bool {
    let p = s.file("plan.json", bytes);
    Plan::load(&p).and_then(|plan| plan.checked(cfg)).is_ok()
}

/// A feature file, read for `amg search` and for `amg eval --features`.
pub fn features(s: &Scratch, bytes: &[u8]) -> bool {
    let p = s.file("features.safetensors", bytes);
    let a = amg::eval::features::read_features(&p).is_ok();
    let b = amg::eval::features::read_labelled(&p).is_ok();
    a || b
}

/// An image (JPEG or PNG, by content).
pub fn image(s: &Scratch, bytes: &[u8]) -> bool {
    let p = s.file("image", bytes);
    amg::preprocess::load_rgb(&p).is_ok()
}

/// A dataset file name (identity and camera).
pub fn file_name(name: &str) -> bool {
    amg::data::dataset::parse_name(name).is_some()
}

//! Model directories: the input is a 2-byte little-endian length, `config.json` of that length,
//! then `model.safetensors`. A model that loads is built into an engine and run on one image.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "../../tests/common/readers.rs"]
mod readers;

fuzz_target!(|data: &[u8]| {
    static SCRATCH: OnceLock<readers::Scratch> = OnceLock::new();
    if data.len() < 2 {
        return;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (config, weights) = data[2..].split_at(n);
    readers::model_dir(SCRATCH.get_or_init(|| readers::Scratch::new("fuzz-model-dir")), config, weights);
});

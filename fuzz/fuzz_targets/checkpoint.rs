//! Whole checkpoint files, `.pth` (zip) or `.safetensors`, as `amg import` reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "../../tests/common/readers.rs"]
mod readers;

fuzz_target!(|data: &[u8]| {
    static SCRATCH: OnceLock<readers::Scratch> = OnceLock::new();
    readers::checkpoint(SCRATCH.get_or_init(|| readers::Scratch::new("fuzz-checkpoint")), data);
});

//! Feature files (`amg search`, `amg eval --features`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "../../tests/common/readers.rs"]
mod readers;

fuzz_target!(|data: &[u8]| {
    static SCRATCH: OnceLock<readers::Scratch> = OnceLock::new();
    readers::features(SCRATCH.get_or_init(|| readers::Scratch::new("fuzz-features")), data);
});

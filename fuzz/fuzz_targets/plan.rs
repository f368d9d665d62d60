//! Plan files (`amg prune --plan`), checked against the test fixture's model configuration.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "../../tests/common/readers.rs"]
mod readers;

fuzz_target!(|data: &[u8]| {
    static SCRATCH: OnceLock<readers::Scratch> = OnceLock::new();
    static CONFIG: OnceLock<amg::model::ModelConfig> = OnceLock::new();
    let cfg = CONFIG.get_or_init(|| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/analyze_model/config.json");
        amg::model::ModelConfig::load(&p).unwrap()
    });
    readers::plan(SCRATCH.get_or_init(|| readers::Scratch::new("fuzz-plan")), data, cfg);
});

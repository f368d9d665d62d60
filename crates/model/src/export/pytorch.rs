//! PyTorch export: a checkpoint that `torch.load(weights_only=True)` reads, in the AMG reference
//! code's layout, so a pruned model can be fine-tuned on a GPU in PyTorch and brought back with
//! `amg import --from amg`.
//!
//! Why this layout: it is what the paper's own code loads (an LA-Transformer whose `model.*` backbone
//! has pruned qkv/proj weights and per-layer `token_index` masks, `classifier{i}.*` part classifiers,
//! and `heads` / `channels` counts per layer), and the `amg_torch` Python package (`python/`) builds the same pruned model
//! as a plain PyTorch module from it. Tensor names come from the model definition through the
//! format's key scheme (`import::scheme`), the same map the importer reads with. The checkpoint
//! also carries amg's `config.json` as the string `amg_config` — original head indices, input size
//! and normalisation — so the round trip gives back the same model, not just the same numbers.

use super::pickle::{dumps, PyValue, StorageType};
use crate::error::Result;
use crate::fsutil;
use crate::import::SourceFormat;
use crate::model::ModelFiles;
use std::io::Write;
use std::path::Path;

/// The root folder inside the zip (torch.save names it after the file; any name loads).
const ARCHIVE: &str = "archive";

/// A tensor's bytes and its entry in the pickle.
struct Storage {
    bytes: Vec<u8>,
}

/// Writes `files` as a PyTorch checkpoint at `out` (atomically).
pub fn export_pytorch(files: &ModelFiles, out: &Path) -> Result<()> {
    let cfg = &files.config;
    files.check()?;
    // A BNNeck model in TransReID's layout (`base.*`, `b1`/`b2`, `bottleneck_i`), any other in the
    // AMG reference code's.
    let (scheme, layout) = match cfg.head.kind {
        crate::model::HeadKind::Bnneck => {
            let scheme = SourceFormat::TransReid.scheme();
            (if cfg.arch.jpm.is_some() { scheme.with_jpm(cfg.arch.depth) } else { scheme }, "TransReID")
        }
        _ => (SourceFormat::Amg.scheme(), "AMG reference (LA-Transformer)"),
    };
    let mut storages: Vec<Storage> = Vec::new();
    let mut add = |bytes: Vec<u8>, dtype: StorageType, shape: Vec<usize>| {
        storages.push(Storage { bytes });
        PyValue::Tensor { storage: storages.len() - 1, dtype, shape }
    };
    let mut state = Vec::new();
    for (key, t) in files.params.entries() {
        let value = add(t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), StorageType::Float, t.shape.clone());
        state.push((scheme.key(&key), value));
    }
    // Token masks over the prefix tokens and patches, one per layer, as the reference code keeps them.
    let n = cfg.num_tokens();
    for (plan, keys) in cfg.layers.iter().zip(&files.params.map(|k, _| k.clone()).blocks) {
        let mut mask = vec![0u8; n];
        for &t in &plan.tokens {
            if let Some(m) = mask.get_mut(t) {
                *m = 1;
            }
        }
        state.push((scheme.token_index(&keys.qkv.weight), add(mask, StorageType::Bool, vec![n])));
    }
    // JPM's b2 keeps every key of its local sequences.
    if let Some(k) = &files.params.map(|k, _| k.clone()).jpm {
        let t = cfg.jpm_tokens();
        state.push((scheme.token_index(&k.block.qkv.weight), add(vec![1u8; t], StorageType::Bool, vec![t])));
    }
    let counts = |f: &dyn Fn(&crate::model::LayerPlan) -> usize| PyValue::List(cfg.layers.iter().map(|p| PyValue::Int(f(p) as i64)).collect());
    let root = PyValue::Dict(vec![
        ("state_dict".into(), PyValue::OrderedDict(state)),
        ("heads".into(), counts(&|p| p.heads.len())),
        ("channels".into(), counts(&|p| p.tokens.len())),
        ("amg_config".into(), PyValue::Str(cfg.to_json())),
        ("format".into(), PyValue::Str(format!("amg {} export, {layout} layout", env!("CARGO_PKG_VERSION")))),
    ]);
    let pickle = dumps(&root);
    fsutil::write_atomic(out, |f| write_zip(f, &pickle, &storages).map_err(std::io::Error::other))?;
    Ok(())
}

/// torch.save's container: a zip (stored, not compressed) of `data.pkl`, one record per storage
/// under `data/`, `byteorder` and `version`, records aligned to 64 bytes as torch writes them.
fn write_zip(f: &mut std::fs::File, pickle: &[u8], storages: &[Storage]) -> std::result::Result<(), zip::result::ZipError> {
    let mut zip = zip::ZipWriter::new(f);
    let total: u64 = storages.iter().map(|s| s.bytes.len() as u64).sum();
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).with_alignment(64).large_file(total >= u32::MAX as u64);
    zip.start_file(format!("{ARCHIVE}/data.pkl"), opts)?;
    zip.write_all(pickle)?;
    zip.start_file(format!("{ARCHIVE}/byteorder"), opts)?;
    zip.write_all(b"little")?;
    for (i, s) in storages.iter().enumerate() {
        zip.start_file(format!("{ARCHIVE}/data/{i}"), opts)?;
        zip.write_all(&s.bytes)?;
    }
    zip.start_file(format!("{ARCHIVE}/version"), opts)?;
    zip.write_all(b"3\n")?;
    zip.finish()?;
    Ok(())
}

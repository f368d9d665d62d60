//! The model directory and checkpoint readers refuse inconsistent input with a precise message.

use crate::common;

use amg::import::{import, ImportRequest, SourceFormat};
use amg::model::ModelFiles;
use amg::tensor::{write_safetensors, HostTensor};
use common::*;

fn saved_model(tag: &str) -> (std::path::PathBuf, ModelFiles) {
    let files = import(&ImportRequest::new(SourceFormat::Timm, fixture("ckpt_timm_a.safetensors"))).unwrap();
    let dir = temp_dir(tag).join("m");
    files.save(&dir, false).unwrap();
    (dir, files)
}

fn load_err(dir: &std::path::Path) -> String {
    ModelFiles::load(dir).unwrap_err().to_string()
}

#[test]
fn tensors_that_disagree_with_the_config_are_named() {
    let (dir, files) = saved_model("md-shape");
    let w = dir.join("model.safetensors");

    let mut t = files.params().to_map();
    t.insert("blocks.1.mlp.fc1.weight".into(), HostTensor::zeros(vec![500, 128]));
    write_safetensors(&w, &t, None).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("blocks.1.mlp.fc1.weight") && e.contains("[500, 128]") && e.contains("[512, 128]"), "{e}");

    let mut t = files.params().to_map();
    t.remove("norm.bias");
    write_safetensors(&w, &t, None).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("norm.bias") && e.contains("missing") && e.contains("[128]"), "{e}");

    let mut t = files.params().to_map();
    t.insert("blocks.0.ls1.gamma".into(), HostTensor::zeros(vec![128]));
    write_safetensors(&w, &t, None).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("blocks.0.ls1.gamma") && e.contains("unexpected"), "{e}");

    // A config that prunes heads while the tensors are unpruned.
    write_safetensors(&w, &files.params().to_map(), None).unwrap();
    let mut cfg = files.config().clone();
    cfg.layers[0].heads = vec![1];
    std::fs::write(dir.join("config.json"), cfg.to_json()).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("blocks.0.attn.qkv.weight") && e.contains("[384, 128]") && e.contains("[192, 128]"), "{e}");

    std::fs::write(dir.join("config.json"), "{\"format\": \"amg-model\"").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json") && e.contains("invalid model config"), "{e}");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn pickled_objects_are_never_built() {
    let pth = amg::import::pth::PthFile::open(&fixture("ckpt_opaque.pth")).unwrap();
    let e = pth.int_list("heads").unwrap_err().to_string();
    assert!(e.contains("NotData") && e.contains("cannot be read safely"), "{e}");
    assert_eq!(pth.int_list("channels").unwrap(), Some(vec![3]));
    assert_eq!(pth.int_list("absent").unwrap(), None);
}

#[test]
fn reference_lists_are_read_and_cross_checked() {
    let pth = amg::import::pth::PthFile::open(&fixture("ckpt_amg.pth")).unwrap();
    let meta = fixtures_json();
    let heads: Vec<i64> = serde_json::from_value(meta["amg_heads_kept"].clone()).unwrap();
    assert_eq!(pth.int_list("heads").unwrap(), Some(heads));
    let tokens: Vec<Vec<usize>> = serde_json::from_value(meta["amg_tokens"].clone()).unwrap();
    assert_eq!(pth.int_list("channels").unwrap(), Some(tokens.iter().map(|t| t.len() as i64).collect()));
}

#[test]
fn bad_plans_are_rejected() {
    use amg::model::surgery::{apply_plan, Plan};
    let (dir, files) = saved_model("md-plan");
    let n = files.config().num_tokens();
    let all: Vec<usize> = (0..n).collect();
    let cases: Vec<(Plan, &str)> = vec![
        (Plan { heads: vec![vec![0, 1]], tokens: vec![all.clone()], jpm_heads: None }, "`heads` has 1 layers, the model has 2"),
        (Plan { heads: vec![vec![0, 1], vec![]], tokens: vec![all.clone(), all.clone()], jpm_heads: None }, "layer 1 keeps no head"),
        (Plan { heads: vec![vec![0, 2], vec![0]], tokens: vec![all.clone(), all.clone()], jpm_heads: None }, "layer 0 heads index 2 is out of range 0..2"),
        (Plan { heads: vec![vec![0], vec![0]], tokens: vec![all[1..].to_vec(), all.clone()], jpm_heads: None }, "layer 0 does not keep token 0"),
        (Plan { heads: vec![vec![0], vec![0]], tokens: vec![all.clone(), vec![0, 3, 3]], jpm_heads: None }, "layer 1 lists tokens index 3 twice"),
        (Plan { heads: vec![vec![0], vec![0]], tokens: vec![all.clone(), vec![0, n]], jpm_heads: None }, "out of range"),
    ];
    for (plan, msg) in cases {
        let e = apply_plan(&files, &plan).unwrap_err().to_string();
        assert!(e.contains(msg), "{e} lacks {msg}");
    }
    // Once removed, a head cannot be asked back.
    let pruned = apply_plan(&files, &Plan { heads: vec![vec![1], vec![0, 1]], tokens: vec![all.clone(), all.clone()], jpm_heads: None }).unwrap();
    let e = apply_plan(&pruned, &Plan { heads: vec![vec![0], vec![0, 1]], tokens: vec![all.clone(), all], jpm_heads: None }).unwrap_err().to_string();
    assert!(e.contains("already removed"), "{e}");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

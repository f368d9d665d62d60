//! The model against the outside world: timm / PyTorch reference outputs from
//! tools/make_fixtures.py, for every import format, a resampled and a non-square input, a pruned
//! model, and preprocessing.

mod common;

use amg::engine::{Engine, Want, Workspace};
use amg::import::{import, ImportRequest, SourceFormat};
use amg::model::surgery::{apply_plan, Plan};
use amg::model::ModelFiles;
use common::*;

fn opts(format: SourceFormat, ckpt: &str) -> ImportRequest {
    ImportRequest::new(format, fixture(ckpt))
}

/// Saves to a model directory and loads it back (so every parity check also covers the format).
fn round_trip(files: &ModelFiles, tag: &str) -> ModelFiles {
    let dir = temp_dir(tag).join("model");
    files.save(&dir, false).unwrap();
    let back = ModelFiles::load(&dir).unwrap();
    assert_eq!(back.config(), files.config());
    assert_eq!(back.params(), files.params());
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    back
}

/// Runs the reference input through the model and compares tokens, features and (if present) logits.
fn check_against(files: ModelFiles, reference: &str) {
    let r = load_ref(reference);
    let input = &r["input"];
    let batch = input.shape[0];
    let logits = r.contains_key("logits.0");
    let engine = Engine::new(files).unwrap();
    let out = engine.forward(&input.data, batch, &mut Workspace::default(), Want { tokens: true, logits }).unwrap();
    assert_close(&format!("{reference} tokens"), out.tokens.as_ref().unwrap(), &r["tokens"].data, 1e-4);
    assert_close(&format!("{reference} features"), &out.features, &r["features"].data, 1e-4);
    if logits {
        let got = out.logits.unwrap();
        for (i, l) in got.iter().enumerate() {
            assert_close(&format!("{reference} logits.{i}"), l, &r[&format!("logits.{i}")].data, 1e-4);
        }
        assert!(!r.contains_key(&format!("logits.{}", got.len())), "fewer parts than the reference");
    }
}

#[test]
fn timm_safetensors_matches_timm() {
    let files = import(&opts(SourceFormat::Timm, "ckpt_timm_a.safetensors")).unwrap();
    assert_eq!((files.config().input.height, files.config().input.width), (64, 64));
    check_against(round_trip(&files, "timm-a"), "ref_timm_a.safetensors");
}

#[test]
fn resampled_position_embedding_matches_timm() {
    let mut o = opts(SourceFormat::Timm, "ckpt_timm_a.safetensors");
    o.img_size = Some((80, 48));
    let files = import(&o).unwrap();
    let r = load_ref("ref_timm_a_80x48.safetensors");
    assert_close("pos_embed", &files.params().pos_embed.data, &r["pos_embed"].data, 1e-5);
    assert!(files.config().source.notes.iter().any(|n| n.contains("resampled")));
    check_against(round_trip(&files, "timm-a-80x48"), "ref_timm_a_80x48.safetensors");
}

#[test]
fn non_square_pth_under_model_key_matches_timm() {
    let mut o = opts(SourceFormat::Timm, "ckpt_timm_b.pth");
    let err = import(&o).unwrap_err().to_string();
    assert!(err.contains("--checkpoint-img-size"), "{err}");
    o.checkpoint_img_size = Some((64, 32));
    o.heads = Some(2);
    let files = import(&o).unwrap();
    assert_eq!(files.config().arch.head_dim, 32);
    check_against(round_trip(&files, "timm-b"), "ref_timm_b.safetensors");
}

/// A distilled DeiT (class and distillation tokens, `head` and `head_dist` dropped) at a
/// non-square input, against timm's VisionTransformerDistilled (tools/make_deit_fixtures.py); the
/// distillation token stays a prefix token through pruning.
#[test]
fn distilled_deit_matches_timm() {
    let mut o = opts(SourceFormat::Timm, "ckpt_deit_distilled.safetensors");
    o.checkpoint_img_size = Some((64, 32));
    let files = import(&o).unwrap();
    assert!(files.config().arch.class_token && files.config().arch.dist_token);
    assert_eq!(files.config().num_prefix(), 2);
    check_against(round_trip(&files, "deit"), "ref_deit_distilled.safetensors");
    // A plan that drops the distillation token (position 1) is refused; one that keeps both
    // prefix tokens applies.
    let mut plan = Plan::of(files.config());
    plan.tokens[1].retain(|&p| p != 1);
    let err = apply_plan(&files, &plan).unwrap_err().to_string();
    assert!(err.contains("distillation token"), "{err}");
    let mut plan = Plan::of(files.config());
    plan.tokens[1].retain(|&p| p != 4);
    plan.heads[0] = vec![1];
    let pruned = apply_plan(&files, &plan).unwrap();
    assert_eq!(pruned.config().layers[1].tokens, vec![0, 1, 2, 3, 5, 6, 7, 8, 9]);
}

#[test]
fn la_transformer_pth_matches_pytorch() {
    let files = import(&opts(SourceFormat::LaTransformer, "ckpt_la.pth")).unwrap();
    assert_eq!(files.config().head.num_classes, 5);
    assert_eq!(files.config().head.bottleneck, 32);
    assert_eq!(files.config().num_parts(), 4);
    check_against(round_trip(&files, "la"), "ref_la.safetensors");
}

#[test]
fn amg_reference_checkpoint_matches_the_reference_computation() {
    let files = import(&opts(SourceFormat::Amg, "ckpt_amg.pth")).unwrap();
    let meta = fixtures_json();
    let heads: Vec<usize> = files.config().layers.iter().map(|l| l.heads.len()).collect();
    let want_heads: Vec<usize> = serde_json::from_value(meta["amg_heads_kept"].clone()).unwrap();
    assert_eq!(heads, want_heads);
    let tokens: Vec<Vec<usize>> = files.config().layers.iter().map(|l| l.tokens.clone()).collect();
    let want_tokens: Vec<Vec<usize>> = serde_json::from_value(meta["amg_tokens"].clone()).unwrap();
    assert_eq!(tokens, want_tokens);
    check_against(round_trip(&files, "amg"), "ref_amg.safetensors");
}

#[test]
fn a_plan_applied_to_a_model_matches_the_pruned_computation() {
    let files = import(&opts(SourceFormat::Timm, "ckpt_timm_a.safetensors")).unwrap();
    let plan: Plan = serde_json::from_value(fixtures_json()["plan_timm_a"].clone()).unwrap();
    let pruned = apply_plan(&files, &plan).unwrap();
    assert_eq!(pruned.params().blocks[0].qkv.weight.shape, vec![3 * 64, 128]);
    assert_eq!(pruned.params().blocks[0].proj.weight.shape, vec![128, 64]);
    // The pruned directory is physically smaller.
    let dir = temp_dir("plan");
    files.save(&dir.join("full"), false).unwrap();
    pruned.save(&dir.join("pruned"), false).unwrap();
    let size = |m: &str| std::fs::metadata(dir.join(m).join("model.safetensors")).unwrap().len();
    assert!(size("pruned") < size("full"));
    let back = ModelFiles::load(&dir.join("pruned")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    check_against(back, "ref_timm_a_plan.safetensors");
}

#[test]
fn bicubic_resampling_matches_torch_and_pillow() {
    let r = load_ref("ref_resample.safetensors");
    let src = &r["float_src"];
    let (h, w, c) = (src.shape[0], src.shape[1], src.shape[2]);
    let mut n = 0;
    for (name, t) in &r {
        if let Some(size) = name.strip_prefix("float_").filter(|s| *s != "src") {
            let (oh, ow) = amg::model::config::parse_size(size).unwrap();
            let got = amg::resample::resize_float_hwc(&src.data, h, w, c, oh, ow);
            assert_close(name, &got, &t.data, 1e-5);
            n += 1;
        }
    }
    let src = &r["u8_src"];
    let (h, w) = (src.shape[0], src.shape[1]);
    let src8: Vec<u8> = src.data.iter().map(|&v| v as u8).collect();
    for (name, t) in &r {
        if let Some(size) = name.strip_prefix("u8_").filter(|s| *s != "src") {
            let (oh, ow) = amg::model::config::parse_size(size).unwrap();
            let got = amg::resample::resize_rgb8_pil(&src8, h, w, oh, ow);
            let want: Vec<u8> = t.data.iter().map(|&v| v as u8).collect();
            let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(diff, 0, "{name}: {diff} bytes differ from Pillow");
            n += 1;
        }
    }
    assert!(n >= 8, "only {n} cases found");
}

#[test]
fn image_preprocessing_and_embedding_match_torchvision_and_timm() {
    let files = import(&opts(SourceFormat::Timm, "ckpt_timm_a.safetensors")).unwrap();
    let r = load_ref("ref_images.safetensors");
    let names: Vec<String> = serde_json::from_value(fixtures_json()["images"].clone()).unwrap();
    let spec = files.config().input.clone();
    let per = 3 * 64 * 64;
    for (i, name) in names.iter().enumerate() {
        let got = amg::preprocess::load_input(&fixture("images").join(name), &spec, false).unwrap();
        assert_close(name, &got, &r["input"].data[i * per..(i + 1) * per], 1e-6);
    }
    let engine = Engine::new(files).unwrap();
    let (paths, skipped) = amg::preprocess::collect_images(&[fixture("images")]).unwrap();
    assert_eq!(skipped, 0);
    let out = amg::embed::embed_files(&engine, &paths, 3, false, false).unwrap();
    assert_eq!(out.names, names, "sorted file-name order");
    assert_close("embedded features", &out.features, &r["features"].data, 1e-4);
}

#[test]
fn parameter_counts_match_timm() {
    let counts = &fixtures_json()["timm_params"];
    for preset in ["tiny", "small", "base"] {
        let cfg =
            amg::model::ModelConfig::new(amg::model::Arch::preset(preset).unwrap(), 224, 224, amg::model::HeadConfig::none(), Default::default()).unwrap();
        assert_eq!(amg::model::cost::model_cost(&cfg).params, counts[preset].as_u64().unwrap(), "{preset}");
    }
}

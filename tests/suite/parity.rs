//! The model against the outside world: timm / PyTorch reference outputs from
//! tools/fixtures/make_fixtures.py, for every import format, a resampled and a non-square input, a pruned
//! model, and preprocessing.

use crate::common;

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
    assert!(err.contains("`checkpoint_img_size`"), "{err}");
    o.checkpoint_img_size = Some((64, 32));
    o.heads = Some(2);
    let files = import(&o).unwrap();
    assert_eq!(files.config().arch.head_dim, 32);
    check_against(round_trip(&files, "timm-b"), "ref_timm_b.safetensors");
}

/// A distilled DeiT (class and distillation tokens, `head` and `head_dist` dropped) at a
/// non-square input, against timm's VisionTransformerDistilled (tools/fixtures/make_deit_fixtures.py); the
/// distillation token stays a prefix token through pruning.
#[test]
fn distilled_deit_matches_timm() {
    let mut o = opts(SourceFormat::Timm, "ckpt_deit_distilled.safetensors");
    o.checkpoint_img_size = Some((64, 32));
    let files = import(&o).unwrap();
    assert!(files.config().arch.class_token && files.config().arch.dist_token);
    // `--from deit` reads the same checkpoint the same way.
    let deit = import(&ImportRequest { format: SourceFormat::Deit, ..o.clone() }).unwrap();
    assert_eq!((deit.params(), &deit.config().arch), (files.params(), &files.config().arch));
    assert_eq!(deit.config().source.format, "deit");
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
    let out = amg::embed::embed_files(&engine, &paths, 3, false, false, &amg::data::cameras::SideInfo::FROM_NAMES).unwrap();
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

/// TransReID (tools/fixtures/make_transreid_fixtures.py): a checkpoint as its training code saves it, run
/// by the engine and by the differentiable model on the reference batch (with each image's camera
/// for SIE): the global branch's tokens, the TransReID feature (L2-normalised, as its evaluator
/// does) and every BNNeck's logits. `pre` selects the reference outputs (`""` or `"pruned."`).
fn check_transreid(files: &ModelFiles, reference: &str, pre: &str) {
    use amg::engine::Input;
    use amg::model::vit::{to_host, Mode, Vit};
    let r = load_ref(reference);
    let input = &r["input"];
    let batch = input.shape[0];
    let cameras: Vec<usize> = r["cameras"].data.iter().map(|&c| c as usize).collect();
    let cams = files.config().arch.sie.is_some().then_some(cameras.as_slice());
    let engine = Engine::new(files.clone()).unwrap();
    let out = engine.run(Input { images: &input.data, cameras: cams, batch }, &mut Workspace::default(), Want { tokens: true, logits: true }, None).unwrap();
    assert_close(&format!("{reference} {pre}tokens"), out.tokens.as_ref().unwrap(), &r[&format!("{pre}tokens")].data, 1e-4);
    assert_close(&format!("{reference} {pre}features"), &out.features, &r[&format!("{pre}features")].data, 1e-4);
    let logits = out.logits.unwrap();
    for (i, l) in logits.iter().enumerate() {
        assert_close(&format!("{reference} {pre}logits.{i}"), l, &r[&format!("{pre}logits.{i}")].data, 1e-4);
    }
    assert!(!r.contains_key(&format!("{pre}logits.{}", logits.len())), "fewer BNNecks than the reference");
    // The differentiable model (training, Taylor importance) computes the same.
    let mut vit = Vit::new(files, &candle_core::Device::Cpu).unwrap();
    let c = files.config();
    let x = candle_core::Tensor::from_vec(input.data.clone(), (batch, 3, c.input.height, c.input.width), &candle_core::Device::Cpu).unwrap();
    let v = vit.forward(&x, Mode { cameras: cams, ..Mode::eval() }).unwrap();
    assert_close(&format!("{reference} {pre}features (autodiff)"), &to_host(&v.features).unwrap().data, &r[&format!("{pre}features")].data, 1e-4);
}

fn transreid(ckpt: &str, ck_size: Option<(usize, usize)>, stride: Option<usize>, heads: Option<usize>) -> ImportRequest {
    let mut o = opts(SourceFormat::TransReid, ckpt);
    o.checkpoint_img_size = ck_size;
    o.stride = stride;
    o.heads = heads;
    o
}

/// JPM and SIE at stride 12 on a non-square input whose 15 patches make the shuffle pad one;
/// under nn.DataParallel's `module.` prefix; then pruned (heads in the trunk, b1 and b2, key
/// tokens in the trunk and b1) against the reference computation with the same removals.
#[test]
fn transreid_jpm_sie_matches_the_reference() {
    let mut o = transreid("ckpt_transreid_jpm_sie.pth", Some((64, 40)), Some(12), Some(2));
    o.transreid.neck_feat = amg::model::config::NeckFeat::Before;
    let files = import(&o).unwrap();
    let c = files.config();
    assert_eq!((c.grid(), c.num_tokens(), c.arch.patch_stride), ((5, 3), 16, Some(12)));
    assert_eq!(c.arch.sie.as_ref().map(|s| (s.cameras, s.coefficient)), Some((3, 3.0)));
    assert_eq!(c.arch.jpm.as_ref().map(|j| (j.divide, j.shift, j.groups, j.rearrange)), Some((4, 5, 2, true)));
    assert_eq!((c.input.mean, c.input.std), ([0.5; 3], [0.5; 3]));
    assert_eq!(c.feature_dim(), 5 * 64);
    let files = round_trip(&files, "transreid-jpm-sie");
    check_transreid(&files, "ref_transreid_jpm_sie.safetensors", "");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("transreid.json")).unwrap()).unwrap();
    let plan: Plan = serde_json::from_value(meta["jpm_sie_plan"].clone()).unwrap();
    let pruned = apply_plan(&files, &plan).unwrap();
    check_transreid(&round_trip(&pruned, "transreid-pruned"), "ref_transreid_jpm_sie.safetensors", "pruned.");
}

/// TransReID's real token count: 256x128 at stride 12 is a 21x10 grid, 211 tokens; the importer
/// works out the input size and stride from the position embedding. Feature after the BatchNorm.
#[test]
fn transreid_stride_12_at_256x128_matches_the_reference() {
    let mut o = transreid("ckpt_transreid_stride12_256x128.pth", None, None, None);
    o.transreid.neck_feat = amg::model::config::NeckFeat::After;
    let files = import(&o).unwrap();
    let c = files.config();
    assert_eq!((c.input.height, c.input.width, c.grid(), c.num_tokens()), (256, 128, (21, 10), 211));
    assert!(c.source.notes.iter().any(|n| n.contains("trained at 256x128 with stride 12")), "{:?}", c.source.notes);
    check_transreid(&round_trip(&files, "transreid-s12"), "ref_transreid_stride12_256x128.safetensors", "");
}

/// Stride 16, SIE, JPM without re-arrangement, feature after the BatchNorms.
#[test]
fn transreid_jpm_without_rearrangement_matches_the_reference() {
    let mut o = transreid("ckpt_transreid_jpm_plain_sie.safetensors", Some((64, 32)), None, Some(2));
    o.transreid.neck_feat = amg::model::config::NeckFeat::After;
    o.transreid.rearrange = false;
    let files = import(&o).unwrap();
    assert_eq!(files.config().arch.patch_stride, None);
    check_transreid(&round_trip(&files, "transreid-plain"), "ref_transreid_jpm_plain_sie.safetensors", "");
    // At another input size the position embedding is resampled as TransReID resizes it
    // (bilinear, the class token's row untouched).
    let resized = import(&ImportRequest { img_size: Some((80, 48)), ..o }).unwrap();
    assert_eq!(resized.config().grid(), (5, 3));
    assert!(resized.config().source.notes.iter().any(|n| n.contains("bilinearly")));
    let r = load_ref("ref_transreid_jpm_plain_sie.safetensors");
    assert_close("pos_embed resampled to 80x48", &resized.params().pos_embed.data, &r["pos_embed_80x48"].data, 1e-6);
}

/// TransReID's ViT-S style: no qkv bias and attention scaled by embed_dim^-0.5, folded into the
/// query rows at import.
#[test]
fn transreid_small_matches_the_reference() {
    let files = import(&transreid("ckpt_transreid_small.safetensors", Some((64, 32)), None, Some(2))).unwrap();
    assert!(files.config().source.notes.iter().any(|n| n.contains("folded into the query rows")));
    check_transreid(&round_trip(&files, "transreid-small"), "ref_transreid_small.safetensors", "");
}

/// SIE over cameras × viewpoints (TransReID's vehicle configurations, `--sie-views`): each image's
/// row is camera · views + view, worked out from its file name's camera and its viewpoint.
#[test]
fn transreid_sie_with_viewpoints_matches_the_reference() {
    use amg::data::cameras::{cameras_for, SideInfo};
    let mut o = transreid("ckpt_transreid_sie_views.safetensors", Some((64, 32)), None, None);
    o.transreid.sie_views = 2;
    let files = import(&o).unwrap();
    let sie = files.config().arch.sie.clone().unwrap();
    assert_eq!((sie.cameras, sie.views), (3, 2));
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("transreid.json")).unwrap()).unwrap();
    let cams: Vec<usize> = serde_json::from_value(meta["sie_views"]["cameras"].clone()).unwrap();
    let views: Vec<usize> = serde_json::from_value(meta["sie_views"]["views"].clone()).unwrap();
    let rows: Vec<usize> = cams
        .iter()
        .zip(&views)
        .map(|(&c, &v)| {
            let path = std::path::PathBuf::from(format!("0001_c{}s1_000001_00.jpg", c + 1));
            cameras_for(files.config(), &[path], &SideInfo { camera: None, view: Some(v) }).unwrap().unwrap()[0]
        })
        .collect();
    let r = load_ref("ref_transreid_sie_views.safetensors");
    assert_eq!(rows, r["cameras"].data.iter().map(|&x| x as usize).collect::<Vec<_>>());
    check_transreid(&round_trip(&files, "transreid-views"), "ref_transreid_sie_views.safetensors", "");
    // A table that is not a whole number of cameras × viewpoints is refused, naming the tensor.
    o.transreid.sie_views = 4;
    let e = import(&o).unwrap_err().to_string();
    assert!(e.contains("sie_embed") && e.contains("`sie_views` 4"), "{e}");
}

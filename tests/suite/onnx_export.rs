//! ONNX export run in a pure-Rust ONNX runtime (tract) against amg's own engine: the imported
//! fixtures (timm, LA-Transformer, AMG-reference; square and non-square), a head- and token-pruned
//! model, and random configurations with random pruning plans, at batch 1 and 3; and the bad-input
//! errors of `amg export`.

use crate::common;

use amg::engine::{Engine, Input, Want, Workspace};
use amg::export::onnx::{export_onnx, OnnxOutputs};
use amg::import::{import, ImportRequest, SourceFormat};
use amg::model::surgery::{apply_plan, Plan};
use amg::model::ModelFiles;
use amg::rng::Rng;
use common::*;
use tract_onnx::prelude::*;

/// Runs `bytes` in tract on `images` `[batch, 3, H, W]` (and, for SIE, `cameras` `[batch]`);
/// returns every output, flattened.
fn run_tract(bytes: &[u8], images: &[f32], cameras: Option<&[usize]>, batch: usize, h: usize, w: usize) -> Vec<Vec<f32>> {
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .expect("tract reads the model")
        .with_input_fact(0, f32::fact([batch, 3, h, w]).into())
        .expect("input fact");
    if cameras.is_some() {
        model = model.with_input_fact(1, i64::fact([batch]).into()).expect("cameras fact");
    }
    let model = model.into_optimized().expect("tract optimises the model").into_runnable().expect("runnable");
    let mut inputs: TVec<TValue> = tvec!(Tensor::from_shape(&[batch, 3, h, w], images).expect("input tensor").into());
    if let Some(c) = cameras {
        let c: Vec<i64> = c.iter().map(|&v| v as i64).collect();
        inputs.push(Tensor::from_shape(&[batch], &c).expect("cameras tensor").into());
    }
    let out = model.run(inputs).expect("tract runs the model");
    out.iter().map(|t| t.to_plain_array_view::<f32>().expect("f32 output").iter().copied().collect()).collect()
}

/// Exports `files` and compares tract's outputs with the engine's at batch 1 and 3.
fn check(files: &ModelFiles, what: &str, seed: u64) -> f32 {
    let la = files.has_classifiers();
    let bytes = export_onnx(files, OnnxOutputs { logits: la }).unwrap_or_else(|e| panic!("{what}: export failed: {e}"));
    let (h, w) = (files.config().input.height, files.config().input.width);
    let engine = Engine::new(files.clone()).unwrap();
    let mut rng = Rng::new(seed);
    let mut worst = 0f32;
    for batch in [1, 3] {
        let images: Vec<f32> = (0..batch * 3 * h * w).map(|_| rng.normal() as f32).collect();
        let cameras: Option<Vec<usize>> = files.config().arch.sie.as_ref().map(|s| (0..batch).map(|_| rng.below(s.cameras)).collect());
        let input = Input { images: &images, cameras: cameras.as_deref(), batch };
        let want = engine.run(input, &mut Workspace::default(), Want { tokens: false, logits: la }, None).unwrap();
        let got = run_tract(&bytes, &images, cameras.as_deref(), batch, h, w);
        assert_eq!(got.len(), if la { 2 } else { 1 }, "{what}: outputs");
        let d = max_abs_diff(&got[0], &want.features);
        assert!(d <= 1e-4, "{what} batch {batch}: features differ by {d:e}");
        worst = worst.max(d);
        if la {
            // The engine gives logits per part (or BNNeck) [B, C]; the graph stacks them [B, P, C].
            let parts = want.logits.unwrap();
            let c = parts[0].len() / batch;
            let stacked: Vec<f32> = (0..batch).flat_map(|b| parts.iter().flat_map(move |p| p[b * c..(b + 1) * c].to_vec())).collect();
            let d = max_abs_diff(&got[1], &stacked);
            assert!(d <= 1e-4, "{what} batch {batch}: logits differ by {d:e}");
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn exported_fixtures_equal_the_engine() {
    let mut timm_b = ImportRequest::new(SourceFormat::Timm, fixture("ckpt_timm_b.pth"));
    timm_b.heads = Some(2);
    timm_b.checkpoint_img_size = Some((64, 32));
    let cases = [
        ("timm 64x64", ImportRequest::new(SourceFormat::Timm, fixture("ckpt_timm_a.safetensors"))),
        ("timm resampled to 80x48", ImportRequest { img_size: Some((80, 48)), ..ImportRequest::new(SourceFormat::Timm, fixture("ckpt_timm_a.safetensors")) }),
        ("timm .pth 64x32", timm_b),
        ("LA-Transformer", ImportRequest::new(SourceFormat::LaTransformer, fixture("ckpt_la.pth"))),
        ("AMG reference (head- and token-pruned)", ImportRequest::new(SourceFormat::Amg, fixture("ckpt_amg.pth"))),
    ];
    for (i, (what, req)) in cases.iter().enumerate() {
        let files = import(req).unwrap();
        let d = check(&files, what, i as u64);
        eprintln!("{what}: max abs diff {d:e}");
    }
    // A plan that removes heads and key tokens, applied by amg's surgery.
    let files = import(&ImportRequest::new(SourceFormat::LaTransformer, fixture("ckpt_la.pth"))).unwrap();
    let mut plan = Plan::of(files.config());
    plan.heads[0] = vec![1];
    plan.tokens[1] = vec![0, 2, 3, 5, 8, 13];
    let pruned = apply_plan(&files, &plan).unwrap();
    eprintln!("LA pruned by a plan: max abs diff {:e}", check(&pruned, "LA pruned by a plan", 9));
    // TransReID: JPM + SIE at stride 12 (camera input), and pruned in the trunk, b1 and b2.
    let mut o = ImportRequest::new(SourceFormat::TransReid, fixture("ckpt_transreid_jpm_sie.pth"));
    (o.checkpoint_img_size, o.stride, o.heads) = (Some((64, 40)), Some(12), Some(2));
    let files = import(&o).unwrap();
    eprintln!("TransReID JPM+SIE: max abs diff {:e}", check(&files, "TransReID JPM+SIE", 10));
    let mut plan = Plan::of(files.config());
    (plan.heads[0], plan.tokens[2], plan.jpm_heads) = (vec![1], vec![0, 1, 4, 6, 7, 10], Some(vec![0]));
    let pruned = apply_plan(&files, &plan).unwrap();
    eprintln!("TransReID pruned: max abs diff {:e}", check(&pruned, "TransReID pruned", 11));
    let o = ImportRequest::new(SourceFormat::TransReid, fixture("ckpt_transreid_stride12_256x128.pth"));
    eprintln!("TransReID 256x128 stride 12: max abs diff {:e}", check(&import(&o).unwrap(), "TransReID 256x128", 12));
}

#[test]
fn exported_random_pruned_models_equal_the_engine() {
    // Prefix tokens (class, distillation, none), heads, depth, grid, stride, SIE, the head (LA,
    // BNNeck with or without JPM, none) and pruning all vary.
    for case in 0..16u64 {
        let mut rng = Rng::new(5000 + case);
        let files = random_pruned_model(&mut rng);
        check(&files, &format!("random case {case} (prefix {}, pruned {})", files.config().num_prefix(), files.config().is_pruned()), case);
    }
}

#[test]
fn the_pruning_is_in_the_graph() {
    use onnx_protobuf::{Message, ModelProto};
    let files = import(&ImportRequest::new(SourceFormat::Amg, fixture("ckpt_amg.pth"))).unwrap();
    let model = ModelProto::parse_from_bytes(&export_onnx(&files, OnnxOutputs::default()).unwrap()).unwrap();
    let graph = model.graph.as_ref().unwrap();
    let init = |name: &str| graph.initializer.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no initializer {name}"));
    // Layer 0 keeps 1 of 2 heads (64-dim): q|k|v weight [D=128, 3·64]; layer 1 keeps 8 of 17 keys.
    assert_eq!(init("blocks.0.attn.qkv.weight_t").dims, vec![128, 192]);
    assert_eq!(init("blocks.0.attn.proj.weight_t").dims, vec![64, 128]);
    assert_eq!(init("blocks.1.attn.qkv/kept_tokens").dims, vec![8]);
    assert!(graph.node.iter().any(|n| n.op_type == "Gather" && n.name == "blocks.1.attn.qkv/gather_kept"));
    assert!(!graph.node.iter().any(|n| n.name == "blocks.0.attn.qkv/gather_kept"), "layer 0 keeps every token");
    assert!(graph.node.iter().all(|n| n.domain.is_empty()), "standard operators only");
    assert_eq!(model.opset_import[0].version, 17);
    let meta = |k: &str| model.metadata_props.iter().find(|p| p.key == k).map(|p| p.value.clone()).unwrap_or_default();
    assert_eq!(meta("kept_heads"), "[[0],[0,1]]");
    assert_eq!((meta("input_height"), meta("input_width"), meta("parts")), ("64".into(), "64".into(), "4".into()));
    assert_eq!(meta("amg_version"), env!("CARGO_PKG_VERSION"));
}

#[test]
fn export_refuses_bad_requests() {
    use std::process::Command;
    let dir = temp_dir("export-cli");
    let model = dir.join("m");
    let amg = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_amg")).args(args).output().unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    assert!(amg(&["import", "--from", "timm", &s(&fixture("ckpt_timm_a.safetensors")), "--out", &s(&model)]).status.success());
    let out = dir.join("m.onnx");
    let ok = amg(&["export", "--model", &s(&model), "--format", "onnx", "--out", &s(&out)]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let before = std::fs::read(&out).unwrap();
    let err = |args: &[&str]| String::from_utf8_lossy(&amg(args).stderr).into_owned();
    let e = err(&["export", "--model", &s(&model), "--out", &s(&out)]);
    assert!(e.contains("exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), before, "the earlier export is untouched");
    let e = err(&["export", "--model", &s(&model), "--format", "tflite", "--out", &s(&dir.join("x"))]);
    assert!(e.contains("tflite") && e.contains("onnx"), "{e}");
    let e = err(&["export", "--model", &s(&model), "--outputs", "features,logits", "--out", &s(&dir.join("y.onnx"))]);
    assert!(e.contains("no classifier head"), "{e}");
    let e = err(&["export", "--model", &s(&dir.join("missing")), "--out", &s(&dir.join("z.onnx"))]);
    assert!(e.contains("missing") && e.contains("model directory"), "{e}");
    let e = err(&["export", "--model", &s(&model), "--out", &s(&dir.join("no/such/dir.onnx"))]);
    assert!(e.contains("no such directory"), "{e}");
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')), "no temporary files left");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// INT8 models in QDQ form (random configurations, pruned, dynamic and static scales): tract's
/// features against the engine's, within the float32 exports' 1e-4 — the runtime's float steps
/// run in another order, and an activation landing within that rounding of a rounding boundary
/// could go the other way by one quantization step; on these models none does (measured ≤ 2e-7).
#[test]
fn exported_int8_models_equal_the_engine() {
    use amg::model::quant::{ActivationScales, InputScales, Quantization, WEIGHT_SCHEME};
    use onnx_protobuf::Message;
    for case in 0..8u64 {
        let mut rng = Rng::new(6100 + case);
        let files = random_pruned_model(&mut rng);
        let acts = if case % 2 == 0 { ActivationScales::Dynamic } else { ActivationScales::Static };
        let fingerprint = files.fingerprint();
        let (cfg, params) = files.into_parts();
        let q = Quantization {
            weights: WEIGHT_SCHEME.into(),
            activations: acts,
            calibration_images: None,
            float_model: "float".into(),
            float_fingerprint: fingerprint,
        };
        let scales = InputScales { blocks: vec![[0.02, 0.03, 0.04, 0.05]; cfg.layers.len()], jpm: cfg.arch.jpm.as_ref().map(|_| [0.02, 0.03, 0.04, 0.05]) };
        let files = ModelFiles::int8(cfg, params, q, (acts == ActivationScales::Static).then_some(&scales)).unwrap();
        let bytes = export_onnx(&files, OnnxOutputs::default()).unwrap();
        let model = onnx_protobuf::ModelProto::parse_from_bytes(&bytes).unwrap();
        let ops: std::collections::BTreeSet<&str> = model.graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(ops.contains("DequantizeLinear") && ops.contains("QuantizeLinear") == (acts == ActivationScales::Static), "{acts:?}: {ops:?}");
        let int8_weights =
            model.graph.initializer.iter().filter(|t| t.data_type == onnx_protobuf::tensor_proto::DataType::INT8 as i32 && t.dims.len() == 2).count();
        assert_eq!(
            int8_weights,
            4 * (files.config().layers.len() + usize::from(files.config().arch.jpm.is_some()))
                + files.config().layers.iter().filter(|l| l.tokens.len() != files.config().num_tokens()).count()
        );
        let (h, w) = (files.config().input.height, files.config().input.width);
        let engine = Engine::new(files.clone()).unwrap();
        for batch in [1, 3] {
            let images: Vec<f32> = (0..batch * 3 * h * w).map(|_| rng.normal() as f32).collect();
            let cameras: Option<Vec<usize>> = files.config().arch.sie.as_ref().map(|s| (0..batch).map(|_| rng.below(s.cameras)).collect());
            let input = Input { images: &images, cameras: cameras.as_deref(), batch };
            let want = engine.run(input, &mut Workspace::default(), Want::default(), None).unwrap();
            let got = run_tract(&bytes, &images, cameras.as_deref(), batch, h, w);
            let d = max_abs_diff(&got[0], &want.features);
            eprintln!("case {case} {acts:?} batch {batch}: max abs diff {d:e}");
            assert!(d <= 1e-4, "case {case} {acts:?} batch {batch}: features differ by {d:e}");
        }
    }
}

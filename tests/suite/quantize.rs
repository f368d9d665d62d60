//! INT8 models: `amg quantize` writes one and reports what it keeps; every command that runs a model
//! runs it; the ones that need float32 refuse it, naming the model to use; damaged INT8 files are
//! refused before use.

use crate::common;

use amg::model::quant::{ActivationScales, InputScales, Quantization, WEIGHT_SCHEME};
use amg::model::ModelFiles;
use amg::rng::Rng;
use amg::tensor::{write_raw_safetensors, DType, SafetensorsFile};
use common::*;
use std::path::Path;

fn features(path: &Path) -> Vec<f32> {
    SafetensorsFile::open(path).unwrap().all_f32().unwrap().remove("features").unwrap().data
}

fn min_cosine(a: &[f32], b: &[f32], dim: usize) -> f64 {
    a.chunks(dim)
        .zip(b.chunks(dim))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum();
            let n = |v: &[f32]| v.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            dot / (n(x) * n(y))
        })
        .fold(1.0, f64::min)
}

#[test]
fn an_int8_model_keeps_its_features_and_every_command_runs_it() {
    let dir = temp_dir("quantize");
    let (model, data, q) = (dir.join("la"), dir.join("data"), dir.join("la-int8"));
    ok(&amg(&["import", "--from", "la-transformer", s(&fixture("ckpt_la.pth")), "--out", s(&model)]));
    ok(&amg(&["synth", "--out", s(&data), "--ids", "12", "--cams", "3", "--images-per-id", "4", "--size", "64x64", "--seed", "3"]));
    let report: serde_json::Value = serde_json::from_str(&ok(&amg(&["quantize", "--model", s(&model), "--data", s(&data), "--out", s(&q), "--json"]))).unwrap();
    let md = std::fs::read_to_string(q.join("report.md")).unwrap();
    assert!(md.contains("cosine similarity") && md.contains("| INT8 |"), "{md}");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(q.join("report.json")).unwrap()).unwrap();
    assert_eq!(saved["min_cosine"], report["min_cosine"]);
    let (min, mean) = (report["min_cosine"].as_f64().unwrap(), report["mean_cosine"].as_f64().unwrap());
    eprintln!("LA fixture, dynamic scales: feature cosine min {min}, mean {mean}");
    assert!(min > 0.99 && mean >= min && mean <= 1.0 + 1e-9, "{report}");
    assert_eq!(report["quantization"]["activations"], "dynamic");
    assert!(report["int8"]["mAP"].as_f64().unwrap() > 0.0 && report["float32"]["mAP"].as_f64().unwrap() > 0.0);
    assert_ne!(report["int8_fingerprint"], report["float_fingerprint"]);

    // The directory: int8 weights with scales, the scheme in config.json, shown by inspect.
    let st = SafetensorsFile::open(&q.join("model.safetensors")).unwrap();
    assert_eq!(st.raw("blocks.1.mlp.fc2.weight").unwrap().dtype, DType::I8);
    assert_eq!(st.raw("blocks.1.mlp.fc2.weight_scale").unwrap().shape, vec![128]);
    assert_eq!(st.raw("blocks.0.norm1.weight").unwrap().dtype, DType::F32);
    let text = ok(&amg(&["inspect", "--model", s(&q)]));
    assert!(text.contains("INT8: int8 symmetric per output channel weights, dynamic activation scales"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&ok(&amg(&["inspect", "--model", s(&q), "--json"]))).unwrap();
    assert_eq!(json["int8"].as_array().unwrap().len(), 2);
    assert_eq!(json["config"]["quantization"]["float_fingerprint"], report["float_fingerprint"]);

    // embed, search, eval, bench, viz run it; its features are the float model's, nearly.
    let (ff, fq) = (dir.join("f32.safetensors"), dir.join("int8.safetensors"));
    let query = data.join("query");
    ok(&amg(&["embed", "--model", s(&model), "--images", s(&query), "--out", s(&ff)]));
    ok(&amg(&["embed", "--model", s(&q), "--images", s(&query), "--out", s(&fq)]));
    let c = min_cosine(&features(&ff), &features(&fq), 4 * 128);
    assert!(c > 0.99, "embed: min cosine {c}");
    let first = std::fs::read_dir(&query).unwrap().next().unwrap().unwrap().path();
    ok(&amg(&["search", "--model", s(&q), "--gallery", s(&fq), "--query", s(&first), "--top", "2"]));
    fails_with(&amg(&["search", "--model", s(&model), "--gallery", s(&fq), "--query", s(&first)]), &["different models"]);
    let eval = ok(&amg(&["eval", "--model", s(&q), "--data", s(&data), "--json"]));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["mAP"], report["int8"]["mAP"], "eval and quantize's report agree");
    ok(&amg(&["bench", "--model", s(&q), "--batch-size", "2", "--iters", "1"]));
    ok(&amg(&["viz", "--model", s(&q), "--image", s(&first), "--out", s(&dir.join("viz"))]));
    assert!(dir.join("viz/attention.png").is_file());

    // What needs the float32 model refuses the INT8 one and names the model to use; nothing is written.
    let named = [s(&q), "needs a float32 model", "INT8", s(&model)];
    fails_with(&amg(&["analyze", "--model", s(&q), "--data", s(&data), "--out", s(&dir.join("scores.json"))]), &named);
    fails_with(&amg(&["prune", "--model", s(&q), "--data", s(&data), "--out", s(&dir.join("pruned")), "--heads", "0.5"]), &named);
    fails_with(&amg(&["train", "--data", s(&data), "--init", s(&q), "--out", s(&dir.join("run")), "--epochs", "1"]), &named);
    fails_with(&amg(&["quantize", "--model", s(&q), "--data", s(&data), "--out", s(&dir.join("again"))]), &["needs a float32 model"]);
    fails_with(
        &amg(&["embed", "--model", s(&q), "--images", s(&query), "--out", s(&dir.join("bf16.safetensors")), "--precision", "bf16"]),
        &["INT8", "--precision"],
    );
    fails_with(&amg(&["export", "--model", s(&q), "--format", "pytorch", "--out", s(&dir.join("q.pth"))]), &["INT8", "ONNX"]);
    ok(&amg(&["export", "--model", s(&q), "--format", "onnx", "--out", s(&dir.join("q.onnx"))]));
    for gone in ["scores.json", "pruned", "run", "again", "bf16.safetensors", "q.pth"] {
        assert!(!dir.join(gone).exists(), "{gone} was written");
    }

    // Static scales: a calibration set larger than the training split is refused up front.
    let qs = dir.join("la-int8-static");
    let args = ["quantize", "--model", s(&model), "--data", s(&data), "--out", s(&qs), "--activations", "static", "--calibration-images"];
    fails_with(&amg(&[&args[..], &["1000"]].concat()), &["--calibration-images", "1000", "training images"]);
    assert!(!qs.exists());
    fails_with(&amg(&["quantize", "--model", s(&model), "--data", s(&data), "--out", s(&qs), "--calibration-images", "8"]), &["--activations static"]);
    let report: serde_json::Value = serde_json::from_str(&ok(&amg(&[&args[..], &["8", "--json"]].concat()))).unwrap();
    eprintln!("LA fixture, static scales on 8 images: feature cosine min {}", report["min_cosine"]);
    assert!(report["min_cosine"].as_f64().unwrap() > 0.98, "{report}");
    assert_eq!(report["quantization"]["calibration_images"], 8);
    let text = ok(&amg(&["inspect", "--model", s(&qs)]));
    assert!(text.contains("static activation scales calibrated on 8 images") && text.contains(" × "), "{text}");
    // Without --force an existing output is kept.
    let before = std::fs::read(qs.join("model.safetensors")).unwrap();
    fails_with(&amg(&[&args[..], &["8"]].concat()), &["not empty", "--force"]);
    assert_eq!(std::fs::read(qs.join("model.safetensors")).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A random model of every shape the definition has (JPM, SIE, pruned), quantized in memory.
fn int8_model(rng: &mut Rng, activations: ActivationScales) -> ModelFiles {
    let files = random_pruned_model(rng);
    let fingerprint = files.fingerprint();
    let (cfg, params) = files.into_parts();
    let q = Quantization {
        weights: WEIGHT_SCHEME.into(),
        activations,
        calibration_images: (activations == ActivationScales::Static).then_some(4),
        float_model: "float".into(),
        float_fingerprint: fingerprint,
    };
    let inputs = InputScales { blocks: vec![[0.02, 0.03, 0.04, 0.05]; cfg.layers.len()], jpm: cfg.arch.jpm.as_ref().map(|_| [0.02, 0.03, 0.04, 0.05]) };
    let statics = (activations == ActivationScales::Static).then_some(&inputs);
    ModelFiles::int8(cfg, params, q, statics).unwrap()
}

#[test]
fn int8_directories_round_trip_and_damaged_ones_are_refused() {
    let dir = temp_dir("quantize-files");
    for case in 0..6u64 {
        let mut rng = Rng::new(7100 + case);
        let acts = if case % 2 == 0 { ActivationScales::Dynamic } else { ActivationScales::Static };
        let m = int8_model(&mut rng, acts);
        let path = dir.join(format!("m{case}"));
        m.save(&path, false).unwrap();
        let back = ModelFiles::load(&path).unwrap();
        // (Compared piece by piece: a failure's message would otherwise print every weight.)
        assert!(back.params() == m.params(), "case {case}: the float32 parameters differ after a round trip");
        assert!(back.int8_params() == m.int8_params(), "case {case}: the INT8 products differ after a round trip");
        assert_eq!(back.config().quantization, m.config().quantization);
        assert_eq!(back.fingerprint(), m.fingerprint());
        // The engine runs it and differs from the float32 model it stands for only by the
        // activations' rounding.
        let engine = amg::engine::Engine::new(back.clone()).unwrap();
        let (cfg, params) = back.clone().into_parts();
        let mut float_cfg = cfg.clone();
        float_cfg.quantization = None;
        let float = amg::engine::Engine::new(ModelFiles::new(float_cfg, params).unwrap()).unwrap();
        let img: Vec<f32> = (0..engine.image_len()).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let cams = [0usize];
        let input = amg::engine::Input { images: &img, cameras: cfg.arch.sie.as_ref().map(|_| &cams[..]), batch: 1 };
        let run = |e: &amg::engine::Engine| e.run(input, &mut Default::default(), Default::default(), None).unwrap().features;
        let c = min_cosine(&run(&engine), &run(&float), cfg.feature_dim());
        assert!(c > 0.95, "case {case}: int8 vs the float32 model of its weights, cosine {c}");
    }

    // Too few calibrated scales for the model: an error naming the product, not a panic.
    let files = random_pruned_model(&mut Rng::new(7199));
    let (cfg, params) = files.into_parts();
    let q = Quantization {
        weights: WEIGHT_SCHEME.into(),
        activations: ActivationScales::Static,
        calibration_images: Some(1),
        float_model: "f".into(),
        float_fingerprint: "0".into(),
    };
    let e = ModelFiles::int8(cfg, params, q, Some(&InputScales { blocks: Vec::new(), jpm: None })).unwrap_err().to_string();
    assert!(e.contains("blocks.0.attn.qkv.input_scale") && e.contains("missing"), "{e}");

    // Damage, one thing at a time.
    let good = dir.join("m1"); // static scales
    let raw = SafetensorsFile::open(&good.join("model.safetensors")).unwrap().all_raw().unwrap();
    let key = "blocks.0.attn.qkv";
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let n_out = raw[&format!("{key}.weight_scale")].shape[0];
    type Damage = Box<dyn Fn(&mut std::collections::BTreeMap<String, amg::tensor::RawTensor>)>;
    let cases: Vec<(&str, Damage, Vec<&str>)> = vec![
        (
            "nan scale",
            Box::new(move |r| r.get_mut(&format!("{key}.weight_scale")).unwrap().bytes[..4].copy_from_slice(&f32::NAN.to_le_bytes())),
            vec!["weight_scale", "NaN", "finite and positive"],
        ),
        (
            "zero scale",
            Box::new(move |r| r.get_mut(&format!("{key}.weight_scale")).unwrap().bytes[4..8].copy_from_slice(&0f32.to_le_bytes())),
            vec!["weight_scale", "scale 1 is 0"],
        ),
        (
            "scale of the wrong shape",
            Box::new(move |r| {
                let t = r.get_mut(&format!("{key}.weight_scale")).unwrap();
                t.shape = vec![n_out - 1];
                t.bytes.truncate(4 * (n_out - 1));
            }),
            vec!["weight_scale", "expected float32 of shape", "found float32 of shape"],
        ),
        ("-128 in a weight", Box::new(move |r| r.get_mut(&format!("{key}.weight")).unwrap().bytes[3] = 0x80), vec!["weight", "-128", "-127..=127"]),
        ("missing input scale", Box::new(move |r| drop(r.remove(&format!("{key}.input_scale")))), vec!["input_scale", "missing", "static"]),
        (
            "zero input scale",
            Box::new(move |r| r.get_mut(&format!("{key}.input_scale")).unwrap().bytes = f32_bytes(&[0.0])),
            vec!["input_scale", "finite and positive"],
        ),
        (
            "float weight",
            Box::new(move |r| {
                let t = r.get_mut(&format!("{key}.weight")).unwrap();
                t.bytes = t.bytes.iter().flat_map(|&b| f32::from(b as i8).to_le_bytes()).collect();
                t.dtype = DType::F32;
            }),
            vec!["weight", "expected int8", "found float32"],
        ),
        ("missing scale", Box::new(move |r| drop(r.remove(&format!("{key}.weight_scale")))), vec!["weight_scale", "missing"]),
    ];
    for (what, damage, needles) in cases {
        let bad = dir.join("bad");
        let _ = std::fs::remove_dir_all(&bad);
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::copy(good.join("config.json"), bad.join("config.json")).unwrap();
        let mut r = raw.clone();
        damage(&mut r);
        write_raw_safetensors(&bad.join("model.safetensors"), r, None).unwrap();
        let e = ModelFiles::load(&bad).unwrap_err().to_string();
        for n in needles {
            assert!(e.contains(n), "{what}: error lacks {n:?}: {e}");
        }
        assert!(e.contains(key) && e.contains("model.safetensors"), "{what}: names the file and tensor: {e}");
    }
    // A dynamic model's directory with an input scale is refused too (config.json and tensors disagree).
    let dynamic = dir.join("m0");
    let mut r = SafetensorsFile::open(&dynamic.join("model.safetensors")).unwrap().all_raw().unwrap();
    r.insert(format!("{key}.input_scale"), amg::tensor::RawTensor { dtype: DType::F32, shape: vec![1], bytes: 1f32.to_le_bytes().to_vec() });
    write_raw_safetensors(&dynamic.join("model.safetensors"), r, None).unwrap();
    let e = ModelFiles::load(&dynamic).unwrap_err().to_string();
    assert!(e.contains("input_scale") && e.contains("dynamic"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// amg's INT8 model against a PyTorch fake quantization of the same scheme, written independently
/// (tools/fixtures/make_int8_fixtures.py), on the timm fixture: the same integer weights and
/// scales, the same calibrated input scales, and features within 1e-5, with dynamic and static
/// activation scales.
#[test]
fn int8_matches_a_pytorch_fake_quantization() {
    use amg::import::{import, ImportRequest, SourceFormat};
    let raw = SafetensorsFile::open(&fixture("ref_int8_timm_a.safetensors")).unwrap().all_raw().unwrap();
    let f32s = |name: &str| raw[name].to_f32().unwrap();
    let files = import(&ImportRequest::new(SourceFormat::Timm, fixture("ckpt_timm_a.safetensors"))).unwrap();
    let fingerprint = files.fingerprint();
    let scheme = |activations, calibration_images| Quantization {
        weights: WEIGHT_SCHEME.into(),
        activations,
        calibration_images,
        float_model: "ckpt_timm_a".into(),
        float_fingerprint: fingerprint.clone(),
    };
    let (input, batch) = (f32s("input"), raw["input"].shape[0]);
    let features = |m: ModelFiles| amg::engine::Engine::new(m).unwrap().forward(&input, batch, &mut Default::default(), Default::default()).unwrap().features;

    // Static scales: amg's calibration over the same inputs finds the same maxima.
    let calibration = f32s("calibration_input");
    let engine = amg::engine::Engine::calibrating(files.clone()).unwrap();
    engine.forward(&calibration, raw["calibration_input"].shape[0], &mut Default::default(), Default::default()).unwrap();
    let scales = engine.input_scales();
    let want = f32s("static_input_scales");
    for (i, block) in scales.blocks.iter().enumerate() {
        for (j, s) in block.iter().enumerate() {
            let w = want[i * 4 + j];
            assert!((s - w).abs() <= 1e-6 * w, "block {i} product {j}: input scale {s} vs PyTorch's {w}");
        }
    }

    let (cfg, params) = files.clone().into_parts();
    let dynamic = ModelFiles::int8(cfg.clone(), params.clone(), scheme(ActivationScales::Dynamic, None), None).unwrap();
    // The same integers and scales, exactly.
    for (j, p) in ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"].iter().enumerate() {
        let q = &dynamic.int8_params().unwrap().blocks[1][j];
        let want_q: Vec<i8> = raw[&format!("blocks.1.{p}.q_weight")].bytes.iter().map(|&b| b as i8).collect();
        assert!(q.weight == want_q, "blocks.1.{p}: int8 weights differ from PyTorch's");
        assert_eq!(q.scale, f32s(&format!("blocks.1.{p}.weight_scale")), "blocks.1.{p}: weight scales");
    }
    assert_close("dynamic INT8 features", &features(dynamic), &f32s("features_dynamic"), 1e-5);
    // The static model's forward pass, with PyTorch's scales: amg's differ from them in the last
    // bits (maxima of values summed in another order), and a scale one part in a million off moves
    // every x/s by up to 127e-6, across the rounding boundary for a few of the values — each such
    // value a whole quantization step (s·w) off in its product. The scales are held to each other
    // above; the arithmetic is held here, given the same scales.
    let theirs = InputScales { blocks: want.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect(), jpm: None };
    let statics = ModelFiles::int8(cfg, params, scheme(ActivationScales::Static, Some(3)), Some(&theirs)).unwrap();
    assert_close("static INT8 features", &features(statics), &f32s("features_static"), 1e-5);
}

//! The `amg` binary end to end: import → inspect → embed, and the errors a user meets.

use crate::common;

use common::*;

#[test]
fn import_inspect_embed() {
    let dir = temp_dir("cli");
    let model = dir.join("la");
    ok(&amg(&["import", "--from", "la-transformer", s(&fixture("ckpt_la.pth")), "--out", s(&model)]));
    assert!(model.join("config.json").is_file() && model.join("model.safetensors").is_file());

    // Importing onto a non-empty directory needs --force, and the original stays intact.
    let before = std::fs::read(model.join("model.safetensors")).unwrap();
    fails_with(&amg(&["import", "--from", "timm", s(&fixture("ckpt_timm_a.safetensors")), "--out", s(&model)]), &["not empty", "--force"]);
    assert_eq!(std::fs::read(model.join("model.safetensors")).unwrap(), before);

    let text = ok(&amg(&["inspect", "--model", s(&model)]));
    assert!(text.contains("MACs (honest)") && text.contains("FLOPs (paper)"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&ok(&amg(&["inspect", "--model", s(&model), "--json"]))).unwrap();
    assert_eq!(json["cost"]["layers"].as_array().unwrap().len(), 2);
    assert!(json["cost"]["macs"].as_u64().unwrap() > json["cost"]["paper_flops"].as_u64().unwrap() / 4);

    let feats = dir.join("feats.safetensors");
    ok(&amg(&["embed", "--model", s(&model), "--images", s(&fixture("images")), "--out", s(&feats), "--batch-size", "3"]));
    let st = amg::tensor::SafetensorsFile::open(&feats).unwrap();
    let names: Vec<String> = serde_json::from_str(&st.metadata()["names"]).unwrap();
    let want: Vec<String> = serde_json::from_value(fixtures_json()["images"].clone()).unwrap();
    assert_eq!(names, want);
    let f = &st.all_f32().unwrap()["features"];
    assert_eq!(f.shape, vec![4, 4 * 128]);
    // Each row is a unit vector (P parts of norm 1/sqrt(P)).
    for row in f.data.chunks(512) {
        let n: f32 = row.iter().map(|v| v * v).sum();
        assert!((n - 1.0).abs() < 1e-4, "norm² {n}");
    }
    // Search: an image of the gallery finds itself first, with cosine similarity 1.
    let q = fixture("images/img2_45x70.png");
    let out = amg(&["search", "--model", s(&model), "--gallery", s(&feats), "--query", s(&q), "--top", "3", "--json"]);
    let matches: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(matches.as_array().unwrap().len(), 3);
    assert_eq!(matches[0]["name"], "img2_45x70.png");
    assert!((matches[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    assert!(matches[1]["score"].as_f64().unwrap() <= matches[0]["score"].as_f64().unwrap());
    let other = dir.join("other");
    ok(&amg(&["import", "--from", "timm", s(&fixture("ckpt_timm_b.pth")), "--checkpoint-img-size", "64x32", "--heads", "2", "--out", s(&other)]));
    fails_with(&amg(&["search", "--model", s(&other), "--gallery", s(&feats), "--query", s(&q)]), &["dimensions", "embed the gallery with this model"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_images_are_named_or_skipped() {
    let dir = temp_dir("cli-bad");
    let model = dir.join("m");
    ok(&amg(&["import", "--from", "timm", s(&fixture("ckpt_timm_a.safetensors")), "--out", s(&model)]));
    let imgs = dir.join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    std::fs::copy(fixture("images/img1_64x64.png"), imgs.join("a.png")).unwrap();
    std::fs::write(imgs.join("b.jpg"), b"this is not a jpeg").unwrap();
    std::fs::write(imgs.join("notes.txt"), b"ignored").unwrap();
    let out = dir.join("f.safetensors");
    fails_with(&amg(&["embed", "--model", s(&model), "--images", s(&imgs), "--out", s(&out)]), &["b.jpg", "cannot decode"]);
    assert!(!out.exists(), "no partial output on failure");
    let r = amg(&["embed", "--model", s(&model), "--images", s(&imgs), "--out", s(&out), "--skip-bad"]);
    ok(&r);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("skipped") && err.contains("b.jpg") && err.contains("non-image"), "{err}");
    let st = amg::tensor::SafetensorsFile::open(&out).unwrap();
    assert_eq!(st.metadata()["names"], "[\"a.png\"]");
    // An input image is never overwritten.
    fails_with(&amg(&["embed", "--model", s(&model), "--images", s(&imgs.join("a.png")), "--out", s(&imgs.join("a.png"))]), &["refusing to overwrite"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_checkpoints_get_clear_errors() {
    let dir = temp_dir("cli-ckpt");
    let out = dir.join("m");
    // Wrong format flag: the error says which one to use.
    fails_with(&amg(&["import", "--from", "timm", s(&fixture("ckpt_la.pth")), "--out", s(&out)]), &["patch_embed.proj.weight", "--from la-transformer"]);
    // A token-pruned checkpoint imported as plain LA-Transformer.
    fails_with(&amg(&["import", "--from", "la-transformer", s(&fixture("ckpt_amg.pth")), "--out", s(&out)]), &["--from amg"]);
    // An LA model resized to a grid with another number of rows.
    fails_with(
        &amg(&["import", "--from", "la-transformer", s(&fixture("ckpt_la.pth")), "--out", s(&out), "--img-size", "80x64"]),
        &["4 part classifiers", "5 patch rows"],
    );
    // Not a checkpoint at all.
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"PK\x03\x04 truncated").unwrap();
    fails_with(&amg(&["import", "--from", "timm", s(&junk), "--out", s(&out)]), &["junk.pth"]);
    fails_with(&amg(&["import", "--from", "timm", s(&dir.join("missing.pth")), "--out", s(&out)]), &["missing.pth"]);
    fails_with(
        &amg(&["import", "--from", "timm", s(&fixture("ckpt_timm_a.safetensors")), "--out", s(&out), "--img-size", "70x64"]),
        &["multiple of the patch size"],
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_runs_on_a_model_and_an_architecture() {
    let dir = temp_dir("cli-bench");
    let model = dir.join("m");
    ok(&amg(&["import", "--from", "amg", s(&fixture("ckpt_amg.pth")), "--out", s(&model)]));
    let v: serde_json::Value = serde_json::from_str(&ok(&amg(&["bench", "--model", s(&model), "--batch-size", "2", "--iters", "2", "--json"]))).unwrap();
    assert!(v["img_per_s"].as_f64().unwrap() > 0.0);
    let text = ok(&amg(&["bench", "--arch", "tiny", "--img-size", "64x32", "--batch-size", "2", "--iters", "1"]));
    assert!(text.contains("img/s"), "{text}");
    // The ceiling measurement: both kinds of product timed, and the ceiling the better of them.
    let g: serde_json::Value = serde_json::from_str(&ok(&amg(&["bench", "--gemm", "--gemm-size", "96", "--iters", "3", "--json"]))).unwrap();
    let (general, packed) = (g["general_best_gflops"].as_f64().unwrap(), g["packed_best_gflops"].as_f64().unwrap());
    assert!(general > 0.0 && packed > 0.0 && g["general_median_gflops"].as_f64().unwrap() <= general, "{g}");
    assert!(ok(&amg(&["bench", "--gemm", "--gemm-size", "64", "--iters", "1"])).contains("ceiling"));
    // --gemm measures the machine, not a model.
    assert!(!amg(&["bench", "--gemm", "--arch", "tiny"]).status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

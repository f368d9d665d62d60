//! Evaluation against torchreid's evaluate_rank (fixture distance matrices with ties, junk,
//! distractors and unmatched queries) and end to end against the PyTorch pipeline.

use crate::common;

use amg::data::Dataset;
use amg::engine::Engine;
use amg::eval::metrics::{evaluate_distances, evaluate_features, Labels};
use amg::eval::{eval_model, EvalOptions};
use amg::import::{import, ImportRequest, SourceFormat};
use common::*;
use std::path::Path;
use std::process::Command;

fn close(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() < 1e-6, "{what}: {got} vs torchreid {want}");
}

#[test]
fn metrics_equal_torchreid() {
    let meta = fixtures_json();
    for case in ["random", "ties"] {
        let r = load_ref(&format!("ref_metrics_{case}.safetensors"));
        let ints = |k: &str| r[k].data.iter().map(|&v| v as i64).collect::<Vec<_>>();
        let (qp, gp, qc, gc) = (ints("q_pids"), ints("g_pids"), ints("q_camids"), ints("g_camids"));
        let m = evaluate_distances(&r["distmat"].data, &Labels { q_pids: &qp, q_cams: &qc, g_pids: &gp, g_cams: &gc }, 50).unwrap();
        let want = &meta["metrics"][case];
        let cmc: Vec<f64> = serde_json::from_value(want["cmc"].clone()).unwrap();
        assert_eq!(m.cmc.len(), cmc.len());
        for (k, (a, b)) in m.cmc.iter().zip(&cmc).enumerate() {
            close(&format!("{case} cmc[{k}]"), *a, *b);
        }
        close(&format!("{case} mAP"), m.map, want["mAP"].as_f64().unwrap());
        close(&format!("{case} mINP"), m.minp, want["mINP"].as_f64().unwrap());
        // Skipped: an identity absent from the gallery, one seen only by its own camera, and any
        // other query that has no match left after the same-camera removal.
        assert_eq!(m.queries as u64, want["valid_queries"].as_u64().unwrap(), "{case}");
        assert!(m.queries <= m.total_queries - 2, "{case}");
    }
}

fn timm_b() -> Engine {
    let files =
        import(&ImportRequest { heads: Some(2), checkpoint_img_size: Some((64, 32)), ..ImportRequest::new(SourceFormat::Timm, fixture("ckpt_timm_b.pth")) })
            .unwrap();
    Engine::new(files).unwrap()
}

fn check_summary(m: &serde_json::Value, want: &serde_json::Value, what: &str) {
    for k in ["rank1", "rank5", "rank10", "mAP", "mINP"] {
        close(&format!("{what} {k}"), m[k].as_f64().unwrap(), want[k].as_f64().unwrap());
    }
    assert_eq!(m["queries"], want["queries"], "{what} queries");
    assert_eq!(m["gallery"], want["gallery"], "{what} gallery");
}

#[test]
fn a_tiny_dataset_scores_as_the_pytorch_pipeline_does() {
    let data = Dataset::open(&fixture("reid_tiny"), None).unwrap();
    assert_eq!(data.layout, amg::data::Layout::Market);
    assert_eq!(data.skipped_files, 1, "the non-image file");
    assert!(data.gallery.iter().all(|s| s.pid != -1), "junk is ignored");
    assert!(data.gallery.iter().any(|s| s.pid == 0), "distractors stay");
    assert_eq!(data.num_classes, 3);
    let summary = data.summary();
    assert!(summary.contains("train") && summary.contains("# cameras"), "{summary}");
    let engine = timm_b();
    let want = &fixtures_json()["reid_tiny"];
    for flip in [false, true] {
        let m = eval_model(&engine, &data, &EvalOptions { batch_size: 4, flip, progress: false }).unwrap();
        check_summary(&m.summary_json(), &want[if flip { "flip" } else { "plain" }], if flip { "flip" } else { "plain" });
    }
}

fn copy_as_imagefolder(src: &Path, dst: &Path) {
    for (from, to) in [("bounding_box_train", "train"), ("query", "query"), ("bounding_box_test", "gallery")] {
        for e in std::fs::read_dir(src.join(from)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let Some((pid, _)) = amg::data::dataset::parse_name(&name) else { continue };
            let dir = dst.join(to).join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&p, dir.join(&name)).unwrap();
        }
    }
}

#[test]
fn imagefolder_layout_gives_the_same_result() {
    let root = temp_dir("imagefolder");
    copy_as_imagefolder(&fixture("reid_tiny"), &root);
    let data = Dataset::open(&root, None).unwrap();
    assert_eq!(data.layout, amg::data::Layout::Imagefolder);
    let m = eval_model(&timm_b(), &data, &EvalOptions { batch_size: 8, flip: false, progress: false }).unwrap();
    check_summary(&m.summary_json(), &fixtures_json()["reid_tiny"]["plain"], "imagefolder");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn dataset_errors_name_the_problem() {
    let root = temp_dir("bad-data");
    let err = |r: &Path| Dataset::open(r, None).unwrap_err().to_string();
    assert!(err(&root).contains("no Re-ID dataset here"));
    std::fs::create_dir_all(root.join("bounding_box_train")).unwrap();
    std::fs::create_dir_all(root.join("bounding_box_test")).unwrap();
    std::fs::copy(fixture("images/img1_64x64.png"), root.join("bounding_box_train/0001_c1s1_000001_00.png")).unwrap();
    std::fs::copy(fixture("images/img1_64x64.png"), root.join("bounding_box_test/0001_c2s1_000001_00.png")).unwrap();
    let e = err(&root);
    assert!(e.contains("query") && e.contains("missing split folder"), "{e}");
    std::fs::create_dir_all(root.join("query")).unwrap();
    let e = err(&root);
    assert!(e.contains("query") && e.contains("no images"), "{e}");
    for n in ["holiday.png", "IMG_2.png", "0002_c1s1_000001_00.png"] {
        std::fs::copy(fixture("images/img1_64x64.png"), root.join("query").join(n)).unwrap();
    }
    let e = err(&root);
    assert!(e.contains("2 file name(s) do not parse") && e.contains("holiday.png") && e.contains("IMG_2.png"), "{e}");
    std::fs::remove_file(root.join("query/holiday.png")).unwrap();
    std::fs::remove_file(root.join("query/IMG_2.png")).unwrap();
    std::fs::write(root.join("query/0003_c1s1_000002_00.jpg"), b"broken").unwrap();
    let data = Dataset::open(&root, None).unwrap();
    let e = eval_model(&timm_b(), &data, &EvalOptions { batch_size: 2, flip: false, progress: false }).unwrap_err().to_string();
    assert!(e.contains("0003_c1s1_000002_00.jpg"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_large_gallery_is_ranked_in_bounded_blocks() {
    // 300 queries against 100 000 gallery features: the scores are computed a block of queries at
    // a time (never 300 × 100 000 at once, let alone 100 000²).
    let (nq, ng, dim) = (300usize, 100_000usize, 8usize);
    let mut rng = amg::rng::Rng::new(5);
    let mut g: Vec<f32> = (0..ng * dim).map(|_| rng.normal() as f32).collect();
    for row in g.chunks_exact_mut(dim) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= n);
    }
    let g_pids: Vec<i64> = (0..ng as i64).collect();
    let g_cams = vec![1i64; ng];
    // Each query is a copy of gallery entry 7·i, seen by another camera: rank-1 must be perfect.
    let q: Vec<f32> = (0..nq).flat_map(|i| g[7 * i * dim..(7 * i + 1) * dim].to_vec()).collect();
    let q_pids: Vec<i64> = (0..nq as i64).map(|i| 7 * i).collect();
    let q_cams = vec![2i64; nq];
    let m = evaluate_features(&q, &g, dim, &Labels { q_pids: &q_pids, q_cams: &q_cams, g_pids: &g_pids, g_cams: &g_cams }, 50).unwrap();
    assert_eq!((m.queries, m.gallery), (nq, ng));
    assert!((m.rank(1) - 1.0).abs() < 1e-12 && (m.map - 1.0).abs() < 1e-12);
}

fn amg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_amg")).args(args).output().unwrap()
}

#[test]
fn cli_eval_prints_one_json_object_and_agrees_with_feature_files() {
    let dir = temp_dir("cli-eval");
    let model = dir.join("m");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = amg(&["import", "--from", "timm", &s(&fixture("ckpt_timm_b.pth")), "--checkpoint-img-size", "64x32", "--heads", "2", "--out", &s(&model)]);
    assert!(out.status.success());
    let want = &fixtures_json()["reid_tiny"]["plain"];
    let out = amg(&["eval", "--model", &s(&model), "--data", &s(&fixture("reid_tiny")), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim().lines().count(), 1, "exactly one JSON object: {stdout}");
    check_summary(&serde_json::from_str(&stdout).unwrap(), want, "cli");
    assert!(String::from_utf8_lossy(&out.stderr).contains("# ids"), "the dataset summary goes to stderr");

    let (qf, gf) = (dir.join("q.safetensors"), dir.join("g.safetensors"));
    for (split, f) in [("query", &qf), ("bounding_box_test", &gf)] {
        let o = amg(&["embed", "--model", &s(&model), "--images", &s(&fixture("reid_tiny").join(split)), "--out", &s(f)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let out = amg(&["eval", "--features", &s(&qf), &s(&gf), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_summary(&serde_json::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap(), want, "feature files");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! The synthetic benchmark: deterministic, in the Market-1501 layout, occluded when asked, and not
//! solvable by raw pixels.

use crate::common;

use amg::data::Dataset;
use amg::eval::{eval_pixels, EvalOptions};
use amg::synth::{generate, preview, SynthOptions};
use common::*;

fn files(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for split in ["bounding_box_train", "query", "bounding_box_test"] {
        let mut names: Vec<_> = std::fs::read_dir(root.join(split)).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            v.push((format!("{split}/{}", p.file_name().unwrap().to_string_lossy()), std::fs::read(&p).unwrap()));
        }
    }
    v
}

#[test]
fn deterministic_per_seed() {
    let dir = temp_dir("synth-det");
    let o = SynthOptions { ids: 12, cams: 3, images_per_id: 4, occluded: true, seed: 3, size: (64, 32) };
    generate(&o, &dir.join("a"), false, false).unwrap();
    generate(&o, &dir.join("b"), false, false).unwrap();
    generate(&SynthOptions { seed: 4, ..o.clone() }, &dir.join("c"), false, false).unwrap();
    let (a, b, c) = (files(&dir.join("a")), files(&dir.join("b")), files(&dir.join("c")));
    assert!(a.len() > 40);
    assert_eq!(a, b, "same seed, same bytes");
    assert_ne!(a, c, "another seed, another benchmark");
    // The output is not overwritten without --force.
    assert!(generate(&o, &dir.join("a"), false, false).unwrap_err().to_string().contains("`force`"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn market_layout_with_valid_queries_and_occlusion() {
    let dir = temp_dir("synth-layout");
    let o = SynthOptions { ids: 40, cams: 4, images_per_id: 6, occluded: true, seed: 1, size: (128, 64) };
    let s = generate(&o, &dir, true, false).unwrap();
    let data = Dataset::open(&dir, None).unwrap();
    assert_eq!(data.layout, amg::data::Layout::Market);
    assert_eq!(data.num_classes, s.train_ids);
    assert_eq!(data.train.len(), s.train_images);
    assert_eq!(data.query.len(), s.query_images);
    assert_eq!(data.gallery.len(), s.gallery_images - s.junk, "junk is written and ignored on reading");
    assert!(s.distractors > 0 && s.junk > 0);
    // Every query has a true match under another camera.
    for q in &data.query {
        assert!(data.gallery.iter().any(|g| g.pid == q.pid && g.camid != q.camid), "{:?}", q.path);
    }
    // Occluded-Duke's character: most queries occluded, part of the gallery.
    assert!(s.occluded_query as f64 > 0.7 * s.query_images as f64, "{s:?}");
    assert!((s.occluded_gallery as f64) < 0.35 * s.gallery_images as f64 && s.occluded_gallery > 0, "{s:?}");
    let img = image::open(&data.query[0].path).unwrap();
    assert_eq!((img.height(), img.width()), (128, 64));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn raw_pixels_score_well_under_half() {
    let dir = temp_dir("synth-pixels");
    let s = generate(&SynthOptions { ids: 100, ..Default::default() }, &dir, true, false).unwrap();
    let data = Dataset::open(&dir, None).unwrap();
    let m = eval_pixels(&data, (64, 32), &EvalOptions { batch_size: 64, flip: false, progress: false }).unwrap();
    eprintln!("raw-pixel baseline on {} queries: rank-1 {:.3}, mAP {:.3}", s.query_images, m.rank(1), m.map);
    assert!(m.rank(1) < 0.25, "raw pixels solve the benchmark: rank-1 {}", m.rank(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn contact_sheet() {
    let dir = temp_dir("synth-preview");
    let p = dir.join("sheet.png");
    // One column per camera (what the caption says): four more cameras, four more image columns.
    let mut widths = Vec::new();
    for cams in [4, 8] {
        preview(&SynthOptions { occluded: true, cams, size: (160, 120), ..Default::default() }, &p).unwrap();
        let img = image::open(&p).unwrap();
        assert!(img.height() > 8 * 128, "eight identities high: {}", img.height());
        widths.push(img.width());
    }
    assert_eq!(widths[1] - widths[0], 4 * (120 + 4), "sheet widths {widths:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

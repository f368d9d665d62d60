//! PyTorch round trip: `amg export --format pytorch` then `amg import --from amg` gives back the same
//! model — configuration (original head indices, input normalisation) and weights bit for bit, so
//! the same features — for the imported fixtures, a model pruned by a plan, and random
//! configurations (with distillation tokens, without class tokens, retrieval-only). tools/
//! torch_roundtrip.py checks the same files in PyTorch itself.

mod common;

use amg::engine::{Engine, Want, Workspace};
use amg::export::pytorch::export_pytorch;
use amg::import::{import, ImportRequest, SourceFormat};
use amg::model::surgery::{apply_plan, Plan};
use amg::model::ModelFiles;
use amg::rng::Rng;
use common::*;

fn round_trip(files: &ModelFiles, tag: &str) {
    let dir = temp_dir(&format!("pt-{tag}"));
    let path = dir.join("model.pth");
    export_pytorch(files, &path).unwrap_or_else(|e| panic!("{tag}: export failed: {e}"));
    let back = import(&ImportRequest::new(SourceFormat::Amg, &path)).unwrap_or_else(|e| panic!("{tag}: import failed: {e}"));
    assert_eq!(back.config().layers, files.config().layers, "{tag}: per-layer plan");
    assert_eq!(back.config().input, files.config().input, "{tag}: input size and normalisation");
    assert_eq!(back.config().arch.class_token, files.config().arch.class_token, "{tag}: class token");
    assert_eq!(back.config().arch.dist_token, files.config().arch.dist_token, "{tag}: distillation token");
    assert_eq!(back.config().head, files.config().head, "{tag}: head");
    assert!(back.params() == files.params(), "{tag}: weights differ after the round trip");
    // And so the same features.
    let (h, w) = (files.config().input.height, files.config().input.width);
    let images: Vec<f32> = {
        let mut rng = Rng::new(7);
        (0..2 * 3 * h * w).map(|_| rng.normal() as f32).collect()
    };
    let f = |m: &ModelFiles| Engine::new(m.clone()).unwrap().forward(&images, 2, &mut Workspace::default(), Want::default()).unwrap().features;
    assert_eq!(f(&back), f(files), "{tag}: features");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fixtures_survive_the_round_trip() {
    let mut timm_b = ImportRequest::new(SourceFormat::Timm, fixture("ckpt_timm_b.pth"));
    timm_b.heads = Some(2);
    timm_b.checkpoint_img_size = Some((64, 32));
    for (tag, req) in [
        ("timm", ImportRequest::new(SourceFormat::Timm, fixture("ckpt_timm_a.safetensors"))),
        ("timm-64x32", timm_b),
        ("la", ImportRequest::new(SourceFormat::LaTransformer, fixture("ckpt_la.pth"))),
        ("amg", ImportRequest::new(SourceFormat::Amg, fixture("ckpt_amg.pth"))),
    ] {
        round_trip(&import(&req).unwrap(), tag);
    }
    // Original head indices survive: keep head 1 of 2 in layer 0.
    let files = import(&ImportRequest::new(SourceFormat::LaTransformer, fixture("ckpt_la.pth"))).unwrap();
    let mut plan = Plan::of(files.config());
    plan.heads[0] = vec![1];
    plan.tokens[1] = vec![0, 2, 3, 5, 8, 13];
    round_trip(&apply_plan(&files, &plan).unwrap(), "la-plan");
}

#[test]
fn random_models_survive_the_round_trip() {
    let mut done = 0;
    for case in 0..40u64 {
        let mut rng = Rng::new(7000 + case);
        let files = random_pruned_model(&mut rng);
        let c = files.config();
        if c.arch.patch_stride.is_some() || c.arch.sie.is_some() || c.head.kind == amg::model::HeadKind::Bnneck {
            // TransReID models do not fit the reference layout: refused with a clear error.
            let e = export_pytorch(&files, &temp_dir("pt-refused").join("m.pth")).unwrap_err().to_string();
            assert!(e.contains("export it to ONNX"), "{e}");
            continue;
        }
        round_trip(&files, &format!("random-{case}"));
        done += 1;
    }
    assert!(done >= 8, "only {done} random models were plain ViTs");
}

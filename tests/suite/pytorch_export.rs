//! PyTorch round trip: `amg export --format pytorch` then `amg import --from amg` gives back the same
//! model — configuration (original head indices, input normalisation) and weights bit for bit, so
//! the same features — for the imported fixtures, a model pruned by a plan, and random
//! configurations (with distillation tokens, without class tokens, retrieval-only). tools/
//! torch_roundtrip.py checks the same files in PyTorch itself.

use crate::common;

use amg::engine::{Engine, Input, Want, Workspace};
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
    // BNNeck (TransReID) models are written in TransReID's layout, the others in the AMG reference's.
    let format = if files.config().head.kind == amg::model::HeadKind::Bnneck { SourceFormat::TransReid } else { SourceFormat::Amg };
    let back = import(&ImportRequest::new(format, &path)).unwrap_or_else(|e| panic!("{tag}: import failed: {e}"));
    assert_eq!(back.config().layers, files.config().layers, "{tag}: per-layer plan");
    assert_eq!(back.config().input, files.config().input, "{tag}: input size and normalisation");
    assert_eq!(back.config().arch.class_token, files.config().arch.class_token, "{tag}: class token");
    assert_eq!(back.config().arch.dist_token, files.config().arch.dist_token, "{tag}: distillation token");
    assert_eq!(back.config().head, files.config().head, "{tag}: head");
    assert_eq!(back.config().arch, files.config().arch, "{tag}: architecture (stride, SIE, JPM)");
    assert!(back.params() == files.params(), "{tag}: weights differ after the round trip");
    // And so the same features.
    let (h, w) = (files.config().input.height, files.config().input.width);
    let images: Vec<f32> = {
        let mut rng = Rng::new(7);
        (0..2 * 3 * h * w).map(|_| rng.normal() as f32).collect()
    };
    let cameras = files.config().arch.sie.as_ref().map(|_| vec![0, 0]);
    let f = |m: &ModelFiles| {
        let input = Input { images: &images, cameras: cameras.as_deref(), batch: 2 };
        Engine::new(m.clone()).unwrap().run(input, &mut Workspace::default(), Want::default(), None).unwrap().features
    };
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
        ("transreid-256x128", ImportRequest::new(SourceFormat::TransReid, fixture("ckpt_transreid_stride12_256x128.pth"))),
        (
            "transreid-small",
            ImportRequest {
                checkpoint_img_size: Some((64, 32)),
                heads: Some(2),
                ..ImportRequest::new(SourceFormat::TransReid, fixture("ckpt_transreid_small.safetensors"))
            },
        ),
    ] {
        round_trip(&import(&req).unwrap(), tag);
    }
    // Original head indices survive: keep head 1 of 2 in layer 0.
    let files = import(&ImportRequest::new(SourceFormat::LaTransformer, fixture("ckpt_la.pth"))).unwrap();
    let mut plan = Plan::of(files.config());
    plan.heads[0] = vec![1];
    plan.tokens[1] = vec![0, 2, 3, 5, 8, 13];
    round_trip(&apply_plan(&files, &plan).unwrap(), "la-plan");
    // TransReID with JPM and SIE, pruned in the trunk, b1 and b2.
    let mut o = ImportRequest::new(SourceFormat::TransReid, fixture("ckpt_transreid_jpm_sie.pth"));
    (o.checkpoint_img_size, o.stride, o.heads) = (Some((64, 40)), Some(12), Some(2));
    o.transreid.sie_coefficient = 2.5;
    let files = import(&o).unwrap();
    round_trip(&files, "transreid-jpm");
    let mut plan = Plan::of(files.config());
    (plan.heads[0], plan.tokens[2], plan.jpm_heads) = (vec![1], vec![0, 1, 4, 6, 7, 10], Some(vec![1]));
    round_trip(&apply_plan(&files, &plan).unwrap(), "transreid-jpm-plan");
}

#[test]
fn random_models_survive_the_round_trip() {
    // Every variant: prefix tokens, stride, SIE, LA / BNNeck (with or without JPM) / no head.
    for case in 0..16u64 {
        let mut rng = Rng::new(7000 + case);
        round_trip(&random_pruned_model(&mut rng), &format!("random-{case}"));
    }
}

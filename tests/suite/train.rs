//! `amg train` end to end: it learns, checkpoints survive a kill at any moment, `--resume`
//! reproduces the uninterrupted run exactly, a diverging loss stops cleanly, distillation plugs in.

use crate::common;

use amg::train::run::{epoch_order, learning_rate, Scheduler, TrainOptions};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn amg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_amg")).args(args).output().unwrap()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A tiny synthetic dataset and a tiny starting model (the gradient fixture's, 64x64 input).
fn setup(tag: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(tag);
    let data = dir.join("data");
    let o = amg(&["synth", "--out", &s(&data), "--ids", "12", "--cams", "3", "--images-per-id", "5", "--size", "64x32", "--seed", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (dir, data)
}

fn train_args(data: &Path, out: &Path, epochs: &str) -> Vec<String> {
    ["--threads", "2", "train", "--data", &s(data), "--out", &s(out), "--epochs", epochs, "--batch-size", "8", "--lr", "1e-3", "--seed", "7"]
        .iter()
        .map(|x| x.to_string())
        .collect()
}

fn run(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_amg")).args(args).output().unwrap()
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|x| x.to_string()));
    args
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn schedules_and_data_order() {
    let o = TrainOptions {
        epochs: 10,
        batch_size: 8,
        lr: 1.0,
        optim: amg::train::optim::OptimConfig::new(amg::train::optim::OptimKind::Adam, 0.0),
        scheduler: Scheduler::Step,
        step_size: 3,
        gamma: 0.5,
        warmup_epochs: 0.0,
        label_smoothing: 0.0,
        distill: amg::train::loss::Distill::None,
        dropout: 0.5,
        augment: None,
        seed: 1,
        eval_every: 0,
        triplet: None,
        instances: 0,
    };
    assert_eq!(learning_rate(&o, 0, 0.5), 1.0);
    assert_eq!(learning_rate(&o, 3, 0.0), 0.5);
    assert_eq!(learning_rate(&o, 8, 0.9), 0.25);
    let c = TrainOptions { scheduler: Scheduler::Cosine, warmup_epochs: 2.0, ..o.clone() };
    assert!(learning_rate(&c, 0, 0.5) < learning_rate(&c, 1, 0.5));
    assert!((learning_rate(&c, 2, 0.0) - 1.0).abs() < 1e-9);
    assert!((learning_rate(&c, 6, 0.0) - 0.5).abs() < 1e-9);
    assert!(learning_rate(&c, 9, 0.999) < 1e-4);
    // Data order: a permutation, fixed per (seed, epoch), different across epochs.
    let a = epoch_order(50, 3, 4);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    assert_eq!(a, epoch_order(50, 3, 4));
    assert_ne!(a, epoch_order(50, 3, 5));
}

#[test]
fn it_learns_and_writes_a_run() {
    let (dir, data) = setup("train-learns");
    let out = dir.join("run");
    let init = s(&fixture("grad_teacher"));
    let args = with(train_args(&data, &out, "4"), &["--init", &init, "--eval-every", "2", "--no-augment", "--dropout", "0"]);
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = metrics(&out);
    assert_eq!(m.len(), 4);
    let (loss, acc) = (|i: usize| m[i]["loss"].as_f64().unwrap(), |i: usize| m[i]["accuracy"].as_f64().unwrap());
    assert!(loss(3) < loss(2) && loss(2) < loss(1) && loss(1) < loss(0), "loss does not fall: {m:?}");
    assert!(acc(3) > acc(0) + 0.3, "training accuracy does not rise: {m:?}");
    assert!(m[1]["mAP"].is_f64() && m[3]["rank1"].is_f64() && m[0].get("mAP").is_none());
    let classes = amg::data::Dataset::open(&data, None).unwrap().num_classes;
    assert_ne!(classes, 5, "the test needs an identity count other than the fixture model's 5");
    for ckpt in ["last", "best"] {
        let files = amg::model::ModelFiles::load(&out.join(ckpt)).unwrap();
        // The fixture model's 5 classifiers were replaced for the dataset's identities.
        assert_eq!(files.config().head.num_classes, classes);
    }
    // A second run into the same directory is refused without --force.
    let again = run(&args);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--resume"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_run_resumes_to_the_same_result() {
    let (dir, data) = setup("train-resume");
    let init = s(&fixture("grad_teacher"));
    // The uninterrupted reference.
    let full = dir.join("full");
    assert!(run(&with(train_args(&data, &full, "4"), &["--init", &init])).status.success());
    // The same run, killed mid-way (after its first checkpoint, at whatever instant), then resumed.
    let cut = dir.join("cut");
    let args = with(train_args(&data, &cut, "4"), &["--init", &init]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_amg")).args(&args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t = std::time::Instant::now();
    while !cut.join("last").join("train_state.json").exists() {
        assert!(t.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(30));
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever the kill interrupted, a loadable checkpoint is there.
    assert!(
        amg::model::ModelFiles::load(&cut.join("last")).is_ok()
            || cut.read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".last.old"))
    );
    let o = amg(&["--threads", "2", "train", "--data", &s(&data), "--out", &s(&cut), "--epochs", "4", "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming"));
    let (a, b) = (amg::model::ModelFiles::load(&full.join("last")).unwrap(), amg::model::ModelFiles::load(&cut.join("last")).unwrap());
    assert_eq!(a.params(), b.params(), "resumed weights differ from the uninterrupted run's");
    let (ma, mb) = (metrics(&full), metrics(&cut));
    assert_eq!(ma.len(), 4);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x["loss"], y["loss"]);
        assert_eq!(x["accuracy"], y["accuracy"]);
    }
    // A resumed run trusts nothing in its directory: a corrupted state or optimiser file is an error
    // naming it, before training starts.
    let last = full.join("last");
    let state_path = last.join("train_state.json");
    let state = std::fs::read_to_string(&state_path).unwrap();
    let resume = || amg(&["--threads", "2", "train", "--data", &s(&data), "--out", &s(&full), "--epochs", "5", "--resume"]);
    let bad_state = regex_free_replace(&state, "\"batch_size\": ", "\"batch_size\": 0, \"was\": ");
    std::fs::write(&state_path, bad_state).unwrap();
    let o = resume();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("train_state.json"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&state_path, &state).unwrap();
    let optim = last.join("optimizer.safetensors");
    let mut slots = amg::tensor::SafetensorsFile::open(&optim).unwrap().all_f32().unwrap();
    let (name, t) = slots.iter_mut().find(|(n, _)| n.starts_with("v.")).unwrap();
    let name = name.clone();
    *t = amg::tensor::HostTensor::new(vec![3], vec![0.0; 3]);
    amg::tensor::write_safetensors(&optim, &slots, None).unwrap();
    let o = resume();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("optimizer.safetensors") && err.contains(&name) && err.contains("3 values"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `text` with the first `from` replaced by `to`.
fn regex_free_replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from} not in {text}");
    text.replacen(from, to, 1)
}

#[test]
fn a_diverging_loss_stops_and_keeps_the_last_good_checkpoint() {
    let (dir, data) = setup("train-nan");
    let out = dir.join("run");
    let init = s(&fixture("grad_teacher"));
    assert!(run(&with(train_args(&data, &out, "1"), &["--init", &init])).status.success());
    let run_dir = out.clone();
    let good = amg::model::ModelFiles::load(&run_dir.join("last")).unwrap();
    let o = amg(&["train", "--data", &s(&data), "--out", &s(&run_dir), "--epochs", "3", "--resume", "--lr", "1e30"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the loss became") && err.contains("last"), "{err}");
    let after = amg::model::ModelFiles::load(&run_dir.join("last")).unwrap();
    assert_eq!(after.params(), good.params());
    assert_eq!(metrics(&run_dir).len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn distillation_from_a_teacher() {
    let (dir, data) = setup("train-distill");
    let init = s(&fixture("grad_teacher"));
    let teacher_run = dir.join("teacher");
    assert!(run(&with(train_args(&data, &teacher_run, "1"), &["--init", &init])).status.success());
    let student = dir.join("student");
    let t = s(&teacher_run.join("last"));
    let o = run(&with(train_args(&data, &student, "1"), &["--init", &t, "--teacher", &t, "--distill", "soft", "--alpha", "0.5", "--tau", "2"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = metrics(&student);
    assert!(m[0]["distill"].as_f64().unwrap() > 0.0);
    // Without --teacher the flag is refused.
    let o = run(&with(train_args(&data, &dir.join("x"), "1"), &["--init", &init, "--distill", "soft"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--teacher"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The TransReID pipeline on a model trained here: a ViT-Ti with overlapping patches, SIE over the
/// dataset's cameras, JPM and a BNNeck head, trained with ID + triplet loss over P×K batches; then
/// analysed, pruned (b2's heads among the candidates), exported; and the camera the SIE needs is
/// asked for where a file name does not give it.
#[test]
fn a_transreid_model_trains_prunes_and_exports() {
    let (dir, data) = setup("train-transreid");
    let out = dir.join("run");
    let args = with(
        train_args(&data, &out, "3"),
        &[
            "--arch",
            "tiny",
            "--img-size",
            "64x32",
            "--head",
            "bnneck",
            "--sie",
            "--jpm",
            "--stride",
            "12",
            "--loss",
            "ce,triplet",
            "--instances",
            "4",
            "--no-augment",
            "--warmup-epochs",
            "0",
        ],
    );
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = metrics(&out);
    let (loss, tri) = (|i: usize| m[i]["loss"].as_f64().unwrap(), |i: usize| m[i]["triplet"].as_f64().unwrap());
    assert!(tri(0) > 0.0 && loss(2) < loss(0), "the ID + triplet loss does not fall: {m:?}");
    let model = out.join("last");
    let cfg = amg::model::ModelFiles::load(&model).unwrap().config().clone();
    assert_eq!((cfg.arch.patch_stride, cfg.arch.sie.as_ref().map(|s| s.cameras), cfg.num_necks()), (Some(12), Some(3), 5));
    // Without --instances the triplet loss has no positives: refused before any work.
    let o = run(&with(train_args(&data, &dir.join("bad"), "1"), &["--arch", "tiny", "--img-size", "64x32", "--head", "bnneck", "--loss", "ce,triplet"]));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--instances"));
    // Analyse: b2 is the last attention layer scored.
    let scores = dir.join("scores.json");
    let o = amg(&["--threads", "2", "analyze", "--model", &s(&model), "--data", &s(&data), "--out", &s(&scores), "--limit", "16"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&scores).unwrap()).unwrap();
    assert_eq!(sc["head_entropy"].as_array().unwrap().len(), 13, "12 blocks + b2");
    // Prune with fine-tuning (ID + triplet, P×K) and export to ONNX.
    let pruned = dir.join("pruned");
    let o = amg(&[
        "--threads",
        "2",
        "prune",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--out",
        &s(&pruned),
        "--heads",
        "0.3",
        "--tokens",
        "0.2",
        "--finetune-epochs",
        "1",
        "--batch-size",
        "8",
        "--calib-limit",
        "16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = amg::model::ModelFiles::load(&pruned).unwrap();
    let removed: usize = 13 * 3 - p.config().attention_heads().iter().map(|h| h.len()).sum::<usize>();
    assert_eq!(removed, 11, "30 % of 39 heads");
    let onnx = dir.join("pruned.onnx");
    let o = amg(&["export", "--model", &s(&pruned), "--format", "onnx", "--out", &s(&onnx)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // An image whose name gives no camera needs --camera; an unknown camera is refused.
    let img = dir.join("person.png");
    std::fs::copy(std::fs::read_dir(data.join("query")).unwrap().next().unwrap().unwrap().path(), &img).unwrap();
    let feats = dir.join("f.safetensors");
    let e = amg(&["embed", "--model", &s(&model), "--images", &s(&img), "--out", &s(&feats)]);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("--camera"), "{}", String::from_utf8_lossy(&e.stderr));
    let e = amg(&["embed", "--model", &s(&model), "--images", &s(&img), "--out", &s(&feats), "--camera", "3"]);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("3 cameras"), "{}", String::from_utf8_lossy(&e.stderr));
    let e = amg(&["embed", "--model", &s(&model), "--images", &s(&img), "--out", &s(&feats), "--camera", "1"]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Fine-tuning at another input size: the position embedding is resampled, the run trains at the
/// new size, and --img-size cannot change a run being resumed.
#[test]
fn init_at_another_input_size() {
    let (dir, data) = setup("train-resize");
    let init = s(&fixture("grad_teacher"));
    let before = amg::model::ModelFiles::load(Path::new(&init)).unwrap();
    let out = dir.join("run");
    let o = run(&with(train_args(&data, &out, "1"), &["--init", &init, "--img-size", "32x32"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = amg::model::ModelFiles::load(&out.join("last")).unwrap();
    let (b, a) = (before.config(), after.config());
    assert_ne!((b.input.height, b.input.width), (32, 32));
    assert_eq!((a.input.height, a.input.width), (32, 32));
    assert_eq!(after.params().pos_embed.shape, vec![1, a.num_tokens(), a.arch.embed_dim]);
    assert!(a.source.notes.iter().any(|n| n.contains("position embedding resampled")), "{:?}", a.source.notes);
    let o = amg(&["train", "--data", &s(&data), "--out", &s(&out), "--epochs", "2", "--resume", "--img-size", "64x64"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--img-size"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

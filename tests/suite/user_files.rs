//! A new user's mistakes and accidents, end to end through the `amg` binary: damaged images, outputs
//! that already exist, Ctrl-C in the middle of long work, numbers out of range, features of another
//! model, and errors that must come once and early.

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn amg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_amg")).args(args).output().expect("run amg")
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_amg")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start amg")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "amg failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command failed (exit status 1 or 2) and its stderr holds every needle; returns stderr.
fn fails_with(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected a failure, got success; stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    err
}

/// A small synthetic benchmark and a tiny model trained on it for one epoch.
fn setup(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = temp_dir(tag);
    let data = dir.join("data");
    ok(&amg(&["synth", "--out", s(&data), "--ids", "12", "--cams", "3", "--images-per-id", "5", "--size", "64x32", "--seed", "2"]));
    let run = dir.join("run");
    ok(&amg(&["--threads", "2", "train", "--data", s(&data), "--out", s(&run), "--arch", "tiny", "--img-size", "64x32", "--epochs", "1", "--batch-size", "8"]));
    (dir, data, run.join("last"))
}

/// Files and folders whose names start with '.' under `dir` (temporary outputs), recursively.
fn hidden_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                out.push(e.path());
            }
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Sends SIGINT (what Ctrl-C sends) to `child` once `ready()` holds, then waits for it.
fn interrupt_when(mut child: Child, what: &str, ready: impl Fn() -> bool) -> Output {
    let t = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!("finished ({status}) before {what}: {}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(t.elapsed() < Duration::from_secs(240), "{what} never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    child.wait_with_output().unwrap()
}

/// Cuts a copy of a gallery image to a quarter of its bytes, as a failed copy or download would.
fn truncate_one(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let victim = files[files.len() / 2].clone();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 4]).unwrap();
    victim
}

#[test]
fn a_truncated_image_is_an_error_naming_it_or_skipped_and_listed() {
    let (dir, data, model) = setup("user-truncated");
    let victim = truncate_one(&data.join("bounding_box_test"));
    let name = victim.file_name().unwrap().to_str().unwrap();
    let err = fails_with(&amg(&["eval", "--model", s(&model), "--data", s(&data)]), &[name, "truncated"]);
    assert_eq!(err.matches(name).count(), 1, "named once:\n{err}");
    fails_with(&amg(&["eval", "--baseline", "pixels", "--data", s(&data)]), &[name, "truncated"]);
    let feats = dir.join("gallery.safetensors");
    fails_with(&amg(&["embed", "--model", s(&model), "--images", s(&data.join("bounding_box_test")), "--out", s(&feats)]), &[name, "truncated"]);
    assert!(!feats.exists());
    // With --skip-bad the image is listed once and left out.
    let out = amg(&["embed", "--model", s(&model), "--images", s(&data.join("bounding_box_test")), "--out", s(&feats), "--skip-bad"]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches(name).count(), 1, "listed once:\n{err}");
    let (names, _, _) = amg::eval::features::read_features(&feats).unwrap();
    assert!(!names.iter().any(|n| n.contains(name)));
    fails_with(&amg(&["search", "--model", s(&model), "--gallery", s(&feats), "--query", s(&victim)]), &[name, "truncated"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nothing_is_overwritten_without_force() {
    let (dir, data, model) = setup("user-overwrite");
    // train --out: a folder with the user's own files and no training run.
    let mine = dir.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("metrics.jsonl"), "my notes\n").unwrap();
    fails_with(
        &amg(&["train", "--data", s(&data), "--out", s(&mine), "--arch", "tiny", "--img-size", "64x32", "--epochs", "1", "--batch-size", "8"]),
        &["not empty", "--force"],
    );
    assert_eq!(std::fs::read_to_string(mine.join("metrics.jsonl")).unwrap(), "my notes\n");
    // Single files: embed, analyze; a folder of pictures: viz.
    let text = dir.join("notes.safetensors");
    std::fs::write(&text, "keep me").unwrap();
    fails_with(&amg(&["embed", "--model", s(&model), "--images", s(&data.join("query")), "--out", s(&text)]), &["exists", "--force"]);
    let scores = dir.join("scores.json");
    std::fs::write(&scores, "keep me").unwrap();
    let err = fails_with(&amg(&["analyze", "--model", s(&model), "--data", s(&data), "--out", s(&scores)]), &["exists", "--force"]);
    assert!(!err.contains("Loaded"), "refused before reading the dataset:\n{err}");
    let pics = dir.join("pics");
    std::fs::create_dir(&pics).unwrap();
    std::fs::write(pics.join("kept_tokens.png"), "keep me").unwrap();
    fails_with(&amg(&["viz", "--model", s(&model), "--out", s(&pics)]), &["not empty", "--force"]);
    for f in [text.clone(), scores.clone(), pics.join("kept_tokens.png")] {
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep me", "{} changed", f.display());
    }
    // With --force each replaces its output.
    ok(&amg(&["embed", "--model", s(&model), "--images", s(&data.join("query")), "--out", s(&text), "--force"]));
    ok(&amg(&["viz", "--model", s(&model), "--out", s(&pics), "--force"]));
    assert!(image::open(pics.join("kept_tokens.png")).is_ok());
    // The analysis output's folder is checked before the calibration runs.
    let err =
        fails_with(&amg(&["analyze", "--model", s(&model), "--data", s(&data), "--out", s(&dir.join("missing/s.json"))]), &["missing", "no such directory"]);
    assert!(!err.contains("Loaded"), "refused before reading the dataset:\n{err}");
    // A missing model is reported before the dataset is read.
    for args in [
        vec!["eval", "--model", s(&dir.join("nope")), "--data", s(&data)],
        vec!["train", "--init", s(&dir.join("nope")), "--data", s(&data), "--out", s(&dir.join("r2"))],
    ] {
        let err = fails_with(&amg(&args), &["nope"]);
        assert!(!err.contains("Loaded"), "refused before reading the dataset:\n{err}");
    }
    // A missing --image leaves no folder behind.
    let viz = dir.join("viz-missing");
    fails_with(&amg(&["viz", "--model", s(&model), "--out", s(&viz), "--image", s(&dir.join("nope.jpg"))]), &["nope.jpg"]);
    assert!(!viz.exists());
    // --camera describes --image: without one it is refused, not ignored.
    fails_with(&amg(&["viz", "--model", s(&model), "--out", s(&viz), "--camera", "1"]), &["--camera", "--image"]);
    assert!(!viz.exists());
    assert!(hidden_entries(&dir).is_empty(), "temporary files left: {:?}", hidden_entries(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn numbers_are_checked_when_read() {
    let dir = temp_dir("user-numbers");
    let (m, d) = (dir.join("m"), dir.join("d"));
    // A negative value is a value, refused by its range check, not an unknown flag "-0".
    let err = fails_with(&amg(&["prune", "--model", s(&m), "--data", s(&d), "--out", s(&dir.join("o")), "--tokens", "-0.1"]), &["--tokens", "fraction"]);
    assert!(!err.contains("unexpected argument"), "{err}");
    fails_with(&amg(&["train", "--data", s(&d), "--out", s(&dir.join("r")), "--arch", "tiny", "--lr=-1"]), &["--lr", "> 0"]);
    fails_with(&amg(&["train", "--data", s(&d), "--out", s(&dir.join("r")), "--arch", "tiny", "--epochs", "0"]), &["--epochs", "at least 1"]);
    fails_with(&amg(&["train", "--data", s(&d), "--out", s(&dir.join("r")), "--arch", "tiny", "--img-size", "128"]), &["--img-size", "height x width"]);
    fails_with(&amg(&["prune", "--model", s(&m), "--data", s(&d), "--out", s(&dir.join("o")), "--heads", "1.5"]), &["--heads", "fraction"]);
    fails_with(&amg(&["train", "--data", s(&d), "--out", s(&dir.join("r")), "--arch", "tiny", "--alpha", "2"]), &["--alpha"]);
    // Nothing was created by a refused command.
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn features_of_another_model_are_refused() {
    let (dir, data, model) = setup("user-fingerprint");
    // A second model with the same feature size: the same architecture trained with another seed.
    let other = dir.join("other");
    ok(&amg(&["train", "--data", s(&data), "--out", s(&other), "--arch", "tiny", "--img-size", "64x32", "--epochs", "1", "--batch-size", "8", "--seed", "5"]));
    let (q, g) = (dir.join("q.safetensors"), dir.join("g.safetensors"));
    ok(&amg(&["embed", "--model", s(&model), "--images", s(&data.join("bounding_box_test")), "--out", s(&g)]));
    ok(&amg(&["embed", "--model", s(&other.join("last")), "--images", s(&data.join("query")), "--out", s(&q)]));
    let query = std::fs::read_dir(data.join("query")).unwrap().next().unwrap().unwrap().path();
    fails_with(&amg(&["search", "--model", s(&other.join("last")), "--gallery", s(&g), "--query", s(&query)]), &["g.safetensors", "different models"]);
    fails_with(&amg(&["eval", "--features", s(&q), s(&g)]), &["q.safetensors", "g.safetensors", "different models"]);
    // The same model on both sides is accepted.
    ok(&amg(&["search", "--model", s(&model), "--gallery", s(&g), "--query", s(&query)]));
    ok(&amg(&["embed", "--model", s(&model), "--images", s(&data.join("query")), "--out", s(&q), "--force"]));
    ok(&amg(&["eval", "--features", s(&q), s(&g)]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn os_errors_are_printed_once() {
    let dir = temp_dir("user-oserror");
    let err = fails_with(&amg(&["eval", "--features", s(&dir.join("q.safetensors")), s(&dir.join("g.safetensors"))]), &["q.safetensors"]);
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    // A path that is not UTF-8 is a path like any other: a clear error, no panic.
    use std::os::unix::ffi::OsStrExt;
    let odd = dir.join(std::ffi::OsStr::from_bytes(b"model-\xff"));
    let out = Command::new(env!("CARGO_BIN_EXE_amg")).arg("inspect").arg("--model").arg(&odd).output().unwrap();
    let err = fails_with(&out, &["model-", "No such file"]);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_in_train_keeps_the_last_epoch_and_says_how_to_resume() {
    let (dir, data, _) = setup("user-ctrlc-train");
    let run = dir.join("long");
    let child = spawn(&[
        "--threads",
        "2",
        "train",
        "--data",
        s(&data),
        "--out",
        s(&run),
        "--arch",
        "tiny",
        "--img-size",
        "64x32",
        "--epochs",
        "200",
        "--batch-size",
        "8",
    ]);
    let out = interrupt_when(child, "the first epoch's checkpoint", || run.join("last/train_state.json").is_file());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted") && err.contains("--resume"), "{err}");
    assert!(hidden_entries(&dir).is_empty(), "temporary files left: {:?}", hidden_entries(&dir));
    // And the resume it suggests works.
    ok(&amg(&["--threads", "2", "train", "--data", s(&data), "--out", s(&run), "--resume", "--epochs", "2"]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_in_prune_keeps_finished_iterations_and_resume_finishes_the_same_run() {
    let (dir, data, model) = setup("user-ctrlc-prune");
    let args = |out: &Path| -> Vec<String> {
        [
            "--threads",
            "2",
            "prune",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--out",
            s(out),
            "--heads",
            "0.34",
            "--tokens",
            "0.25",
            "--iters",
            "2",
            "--finetune-epochs",
            "1",
            "--final-epochs",
            "1",
            "--batch-size",
            "8",
            "--criterion",
            "random",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let out = dir.join("pruned");
    let partial = dir.join("pruned.partial");
    let progress = partial.join("progress.json");
    let finished = || std::fs::read_to_string(&progress).map(|t| t.contains("\"iteration\"")).unwrap_or(false);
    let a = args(&out);
    let child = spawn(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let res = interrupt_when(child, "the first pruning iteration", finished);
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume") && err.contains("pruned.partial"), "{err}");
    assert!(!out.exists());
    assert!(hidden_entries(&dir).is_empty(), "temporary files left: {:?}", hidden_entries(&dir));
    // Without --resume the kept run is not silently discarded.
    fails_with(&amg(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>()), &["pruned.partial", "--resume"]);
    // A resume with other options is refused, naming what differs.
    let mut other = a.clone();
    other.extend(["--resume", "--seed", "3"].map(String::from));
    fails_with(&amg(&other.iter().map(|x| x.as_str()).collect::<Vec<_>>()), &["seed"]);
    let mut resume = a.clone();
    resume.push("--resume".into());
    ok(&amg(&resume.iter().map(|x| x.as_str()).collect::<Vec<_>>()));
    assert!(!partial.exists() && out.join("model.safetensors").is_file() && out.join("report.md").is_file());
    // The resumed run removed what an uninterrupted run removes.
    let straight = dir.join("straight");
    ok(&amg(&args(&straight).iter().map(|x| x.as_str()).collect::<Vec<_>>()));
    let plan = |d: &Path| std::fs::read_to_string(d.join("plan.json")).unwrap();
    assert_eq!(plan(&out), plan(&straight));
    assert!(hidden_entries(&dir).is_empty(), "temporary files left: {:?}", hidden_entries(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_in_demo_leaves_the_previous_output() {
    let dir = temp_dir("user-ctrlc-demo");
    let out = dir.join("demo");
    ok(&amg(&["--threads", "2", "demo", "--quick", "--out", s(&out)]));
    let before = std::fs::read(out.join("report.md")).unwrap();
    let child = spawn(&["--threads", "2", "demo", "--quick", "--out", s(&out)]);
    // Interrupt once the new run has moved the old output aside and started its own.
    let out_ = out.clone();
    let res = interrupt_when(child, "the new run's start", move || out_.join("data").exists() && !out_.join("report.md").exists());
    assert_eq!(res.status.code(), Some(130), "{}", String::from_utf8_lossy(&res.stderr));
    assert_eq!(std::fs::read(out.join("report.md")).unwrap(), before);
    assert!(hidden_entries(&dir).is_empty(), "temporary files left: {:?}", hidden_entries(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

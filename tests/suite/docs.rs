//! The documentation's examples, run: every command block of README.md and docs/cli.md, so that
//! what a reader copies works and what they are shown is what amg prints.
//!
//! Each page runs in a fresh folder of its own, its blocks in order (a later block may use what an
//! earlier one wrote), with `tests/` of this checkout reachable at the same relative path and
//! `amg` on `PATH` meaning the binary under test:
//! - a ```` ```sh ```` block runs as one bash script (`set -euo pipefail`) and must succeed;
//! - a ```` ```console ```` block is a session: each `$ ` line is a command (continued by a
//!   trailing `\`), the lines after it what it prints (stdout and stderr together). The command
//!   must succeed, or fail when the shown output has an `error:` line. Every shown line must appear
//!   in that order in what it really prints, with each number counting as any number (timings,
//!   rates and thread counts differ from machine to machine; words, names and shapes may not);
//!   a `…` line stands for lines left out.
//!
//! The two blocks under the README's "Set-up" heading (the build with the demo, and the test
//! command this test is part of) are not run here: CI runs the test command itself, and this test
//! checks that `.ci/run` runs exactly the README's; `docs/cli.md` runs the demo's quick form.

use std::path::PathBuf;
use std::process::Command;

use crate::common::temp_dir;

#[derive(Debug)]
struct Block {
    line: usize,
    info: String,
    text: String,
    /// The `## ` heading the block stands under.
    section: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    let mut section = String::new();
    for (i, line) in doc.lines().enumerate() {
        match open.take() {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    open = Some(Block { line: i + 1, info: info.trim().to_string(), text: String::new(), section: section.clone() });
                } else if let Some(h) = line.strip_prefix("## ") {
                    section = h.trim().to_string();
                }
            }
            Some(mut b) => {
                if line.trim_start().starts_with("```") {
                    out.push(b);
                } else {
                    b.text.push_str(line);
                    b.text.push('\n');
                    open = Some(b);
                }
            }
        }
    }
    assert!(open.is_none(), "a code block is not closed");
    out
}

/// The README's set-up blocks: the build with the demo, and the test command (which this test is
/// part of).
fn is_setup(b: &Block) -> bool {
    b.section == "Set-up"
}

/// Every number as `#`, runs of spaces as one, trimmed.
fn mask(line: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_digit() || (chars[i] == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))) {
                i += 1;
            }
            // An exponent: e-05, e+3.
            if i + 1 < chars.len()
                && chars[i] == 'e'
                && (chars[i + 1].is_ascii_digit() || (matches!(chars[i + 1], '+' | '-') && chars.get(i + 2).is_some_and(|d| d.is_ascii_digit())))
            {
                i += 2;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            out.push('#');
        } else if c.is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out.trim().to_string()
}

struct Page {
    name: &'static str,
    work: PathBuf,
    path_var: std::ffi::OsString,
}

impl Page {
    fn new(name: &'static str) -> Page {
        let work = temp_dir(&format!("docs-{}", name.replace(['/', '.'], "-")));
        std::os::unix::fs::symlink(repo().join("tests"), work.join("tests")).expect("link tests/");
        let bin = work.join(".bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_amg"), bin.join("amg")).expect("link amg");
        let mut paths = vec![bin];
        paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        Page { name, work, path_var: std::env::join_paths(paths).unwrap() }
    }

    fn bash(&self, script: &str) -> (bool, String) {
        let out = Command::new("bash").arg("-c").arg(script).current_dir(&self.work).env("PATH", &self.path_var).output().expect("run bash");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn run_script(&self, b: &Block) {
        let (ok, text) = self.bash(&format!("set -euo pipefail\n{}", b.text));
        assert!(ok, "{}:{}: this block failed:\n{}\n--- it printed:\n{text}", self.name, b.line, b.text);
    }

    fn run_session(&self, b: &Block) {
        let mut steps: Vec<(String, Vec<String>)> = Vec::new();
        let mut continued = false;
        for line in b.text.lines() {
            if continued {
                let (cmd, _) = steps.last_mut().expect("a continued command");
                cmd.push('\n');
                cmd.push_str(line);
                continued = line.ends_with('\\');
            } else if let Some(cmd) = line.strip_prefix("$ ") {
                steps.push((cmd.to_string(), Vec::new()));
                continued = line.ends_with('\\');
            } else {
                let (_, shown) = steps.last_mut().unwrap_or_else(|| panic!("{}:{}: output before any `$ ` command", self.name, b.line));
                shown.push(line.to_string());
            }
        }
        assert!(!steps.is_empty(), "{}:{}: a console block without a `$ ` command", self.name, b.line);
        for (cmd, shown) in &steps {
            let (ok, text) = self.bash(&format!("exec 2>&1\n{cmd}"));
            let expect_error = shown.iter().any(|l| l.starts_with("error:"));
            assert_eq!(
                ok,
                !expect_error,
                "{}:{}: `{cmd}` {}:\n{text}",
                self.name,
                b.line,
                if ok { "succeeded where the page shows an error" } else { "failed" }
            );
            let actual: Vec<String> = text.lines().map(mask).collect();
            let mut at = 0;
            for want in shown.iter().map(|l| mask(l)).filter(|l| !l.is_empty() && l != "…") {
                match actual[at..].iter().position(|a| *a == want) {
                    Some(k) => at += k + 1,
                    None => {
                        panic!("{}:{}: `{cmd}` did not print, in this order, the line\n  {want}\n(numbers masked as #); it printed:\n{text}", self.name, b.line)
                    }
                }
            }
        }
    }
}

fn run_page(name: &'static str) -> Vec<Block> {
    let doc = std::fs::read_to_string(repo().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let all = blocks(&doc);
    // A command shown in a block of another kind would escape this test.
    for b in all.iter().filter(|b| b.info != "sh" && b.info != "console") {
        for l in b.text.lines() {
            assert!(
                !l.starts_with("amg ") && !l.starts_with("$ "),
                "{name}:{}: a command in a ```{} block, which is not run: use sh or console",
                b.line,
                b.info
            );
        }
    }
    let page = Page::new(name);
    for b in &all {
        match b.info.as_str() {
            "sh" if is_setup(b) => {}
            "sh" => page.run_script(b),
            "console" => page.run_session(b),
            _ => {}
        }
    }
    all
}

#[test]
fn readme_examples_run_as_shown() {
    let all = run_page("README.md");
    let setup: Vec<&Block> = all.iter().filter(|b| is_setup(b)).collect();
    assert_eq!(setup.len(), 2, "README.md: two set-up blocks (the build with the demo, and the test command)");
    let test_command = setup[1].text.trim();
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    assert!(ci.lines().any(|l| l.trim() == test_command), "README.md's test command is not a line of .ci/run, which must run exactly it:\n{test_command}");
    assert!(all.iter().filter(|b| b.info == "sh" || b.info == "console").count() > setup.len(), "README.md: no example ran");
}

#[test]
fn command_reference_examples_run_as_shown() {
    let all = run_page("docs/cli.md");
    assert!(!all.iter().any(is_setup), "docs/cli.md: set-up blocks belong in the README");
    // Every command has an example on the page.
    let text: String = all.iter().map(|b| b.text.as_str()).collect();
    for cmd in ["demo", "import", "export", "embed", "search", "inspect", "bench", "synth", "train", "analyze", "prune", "viz", "eval"] {
        assert!(text.contains(&format!("amg {cmd} ")), "docs/cli.md has no example of `amg {cmd}`");
    }
}

#[test]
fn masking_keeps_words_and_drops_numbers() {
    assert_eq!(mask("embedded 4 images → q.safetensors [4 × 512] in 0.00 s (1207.5 img/s)"), "embedded # images → q.safetensors [# × #] in # s (# img/s)");
    assert_eq!(mask("  1  0.9665  0152_c5s3_001722_26.jpg"), "# # #_c#s#_#_#.jpg");
    assert_eq!(mask("diff 1.5e-04, cosine 0.999"), "diff #, cosine #");
    assert_ne!(mask("head LA, 4 parts"), mask("head none, 4 parts"));
}

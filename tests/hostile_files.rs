//! Hostile files. Every reader of user files — checkpoints (.pth and .safetensors), model
//! directories, plans, feature files, images, dataset file names — must answer any input with a
//! result or a clear error: no panic, no abort, no stack overflow, and memory within a fixed
//! multiple of the input. Two kinds of tests:
//! - files built to attack one class of weakness (nesting depth, length fields, integer overflow,
//!   allocation claims, aliasing views, NaN), each with the error it must give;
//! - deterministic mutations of the committed fixtures (bit flips, truncations, inserted bytes,
//!   length-like fields overwritten with extreme values), thousands of cases in seconds, so CI
//!   keeps guarding what the fuzzers (`fuzz/`) explore for hours.
//!
//! A counting allocator measures each case's peak memory; the cases run one at a time.

mod common;
#[path = "common/readers.rs"]
mod readers;

use amg::model::ModelFiles;
use amg::rng::Rng;
use common::fixture;
use readers::Scratch;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Cursor, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds GlobalAlloc's
// contract; the counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout, same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One case at a time, so that the peak belongs to it.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` and returns its result with the bytes its allocations peaked at above the start.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// The memory a reader may use on an input of `len` bytes: a fixed multiple plus a constant. The
/// multiple is the pickle program's worst case (a budget of 48 bytes of values per byte of program,
/// about twice that in memory as vectors grow); tensor data may take at most 5× the file.
fn memory_bound(len: usize) -> usize {
    100 * len + (64 << 20)
}

fn entries(zip_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(Cursor::new(zip_bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().unwrap().to_string(), b)
        })
        .collect()
}

/// A torch.save-style archive of the given entries (stored, as torch writes them).
fn archive(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut out);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in entries {
            z.start_file(name.as_str(), opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }
    out.into_inner()
}

/// An archive whose data.pkl is `pkl` and that holds `storages` (keys "0", "1", …).
fn pth_with(pkl: &[u8], storages: &[Vec<u8>]) -> Vec<u8> {
    let mut e = vec![("archive/data.pkl".to_string(), pkl.to_vec()), ("archive/byteorder".to_string(), b"little".to_vec())];
    e.extend(storages.iter().enumerate().map(|(i, s)| (format!("archive/data/{i}"), s.clone())));
    archive(&e)
}

fn checkpoint_error(bytes: &[u8]) -> String {
    let s = Scratch::new("ckpt-err");
    let p = s.file("c.pth", bytes);
    match amg::import::pth::read_checkpoint(&p) {
        Ok(_) => panic!("a hostile checkpoint was accepted"),
        Err(e) => e.to_string(),
    }
}

// Pickle opcodes used below.
const PROTO2: &[u8] = &[0x80, 2];
const STOP: u8 = b'.';

/// `{ "w": torch tensor(storage "0", offset, size, stride) }` as torch.save pickles it.
fn tensor_pickle(offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut p = PROTO2.to_vec();
    let int = |p: &mut Vec<u8>, v: i64| {
        p.push(0x8a); // LONG1
        p.push(8);
        p.extend_from_slice(&v.to_le_bytes());
    };
    let s = |p: &mut Vec<u8>, t: &str| {
        p.push(0x8c);
        p.push(t.len() as u8);
        p.extend_from_slice(t.as_bytes());
    };
    p.push(b'}');
    s(&mut p, "w");
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n");
    p.push(b'(');
    // persistent id ("storage", FloatStorage, "0", "cpu", numel)
    p.push(b'(');
    s(&mut p, "storage");
    p.extend_from_slice(b"ctorch\nFloatStorage\n");
    s(&mut p, "0");
    s(&mut p, "cpu");
    int(&mut p, 4);
    p.push(b't');
    p.push(b'Q');
    int(&mut p, offset);
    p.push(b'(');
    for &d in size {
        int(&mut p, d);
    }
    p.push(b't');
    p.push(b'(');
    for &d in stride {
        int(&mut p, d);
    }
    p.push(b't');
    p.push(0x89); // requires_grad False
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R");
    p.push(b't');
    p.push(b'R');
    p.push(b's');
    p.push(STOP);
    p
}

#[test]
fn the_tensor_pickle_helper_builds_a_readable_checkpoint() {
    // The attacks below change one field of this valid file: it must read, or they prove nothing.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Scratch::new("valid");
    let storage: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let p = s.file("c.pth", &pth_with(&tensor_pickle(1, &[3], &[1]), &[storage]));
    let (sd, _) = amg::import::pth::read_checkpoint(&p).unwrap();
    assert_eq!(sd["w"].to_f32().unwrap(), vec![2.0, 3.0, 4.0]);
}

#[test]
fn nesting_a_million_deep_is_an_error_not_a_stack_overflow() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = 1_000_000;
    // A 4 MB blob first (pushed and popped), so that the budget lets the whole nest be built and the
    // iterative drop is what is tested: a recursive drop of these overflows any thread's stack.
    let mut start = PROTO2.to_vec();
    start.push(b'B');
    start.extend_from_slice(&(4u32 << 20).to_le_bytes());
    start.extend(std::iter::repeat_n(0u8, 4 << 20));
    start.push(b'0');
    // Lists in lists: EMPTY_LIST n times, then APPEND n−1 times.
    let mut lists = start.clone();
    lists.extend(std::iter::repeat_n(b']', n));
    lists.extend(std::iter::repeat_n(b'a', n - 1));
    lists.push(STOP);
    // Tuples in tuples (TUPLE1 n times), dicts in dicts (SETITEM n times).
    let mut tuples = start.clone();
    tuples.push(b'N');
    tuples.extend(std::iter::repeat_n(0x85, n));
    tuples.push(STOP);
    let mut dicts = start.clone();
    for _ in 0..n {
        dicts.extend_from_slice(b"}K\x01");
    }
    dicts.push(b'N');
    dicts.extend(std::iter::repeat_n(b's', n));
    dicts.push(STOP);
    for (pkl, want) in
        [(lists, "expected a state dict, found list of 1"), (tuples, "expected a state dict, found tuple of 1"), (dicts, "state dict key is int 1")]
    {
        let bytes = pth_with(&pkl, &[]);
        let (msg, peak) = measured(|| checkpoint_error(&bytes));
        assert!(msg.contains(want), "{msg}");
        assert!(peak < memory_bound(bytes.len()), "peak {peak} bytes for a {}-byte file", bytes.len());
    }
    // Without the blob, the same nests run out of budget first: also an error, not a crash.
    let mut p = PROTO2.to_vec();
    p.push(b'N');
    p.extend(std::iter::repeat_n(0x85, n));
    p.push(STOP);
    assert!(checkpoint_error(&pth_with(&p, &[])).contains("builds more data than"));
}

#[test]
fn copies_of_a_large_value_cost_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 1 MB of bytes, memoised, then DUP 100 000 times and memo-GET 100 000 times: 200 GB if each
    // copy were real.
    let mut p = PROTO2.to_vec();
    p.push(b'B');
    p.extend_from_slice(&(1u32 << 20).to_le_bytes());
    p.extend(std::iter::repeat_n(0u8, 1 << 20));
    p.extend_from_slice(b"q\x00");
    p.extend(std::iter::repeat_n(b'2', 100_000));
    for _ in 0..100_000 {
        p.extend_from_slice(b"h\x00");
    }
    p.push(STOP);
    let bytes = pth_with(&p, &[]);
    let (msg, peak) = measured(|| checkpoint_error(&bytes));
    assert!(msg.contains("expected a state dict"), "{msg}");
    assert!(peak < memory_bound(bytes.len()), "peak {peak} bytes for a {}-byte file", bytes.len());
}

#[test]
fn conversions_that_build_data_are_budgeted() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // _codecs.encode of a 64 KB string, called 200 000 times on the memoised arguments: 13 GB.
    let mut p = PROTO2.to_vec();
    p.extend_from_slice(b"c_codecs\nencode\nq\x00");
    p.push(b'X');
    p.extend_from_slice(&(1u32 << 16).to_le_bytes());
    p.extend(std::iter::repeat_n(b'a', 1 << 16));
    p.extend_from_slice(b"X\x06\x00\x00\x00latin1\x86q\x01");
    for _ in 0..200_000 {
        p.extend_from_slice(b"h\x00h\x01R0");
    }
    p.push(b'N');
    p.push(STOP);
    let bytes = pth_with(&p, &[]);
    let (msg, peak) = measured(|| checkpoint_error(&bytes));
    assert!(msg.contains("builds more data than"), "{msg}");
    assert!(peak < memory_bound(bytes.len()), "peak {peak} bytes for a {}-byte file", bytes.len());
}

#[test]
fn length_fields_beyond_the_data_are_errors() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (op, len) in [(0x8d_u8, u64::MAX), (0x8e, u64::MAX), (0x8d, 1 << 40), (0x96, u64::MAX - 3)] {
        let mut p = PROTO2.to_vec();
        p.push(op);
        p.extend_from_slice(&len.to_le_bytes());
        p.extend_from_slice(b"abc.");
        let msg = checkpoint_error(&pth_with(&p, &[]));
        assert!(msg.contains("bytes announced") || msg.contains("does not fit"), "{msg}");
    }
    for op in [b'X', b'B'] {
        let mut p = PROTO2.to_vec();
        p.push(op);
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        p.push(STOP);
        assert!(checkpoint_error(&pth_with(&p, &[])).contains("bytes announced"));
    }
}

#[test]
fn tensor_views_are_checked_against_their_storage() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let storage: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let cases: [(i64, &[i64], &[i64], &str); 6] = [
        (0, &[1 << 62, 1 << 62], &[1, 1], "overflows"),
        (0, &[1 << 20, 1 << 20], &[0, 0], "more than 4×"),
        (3, &[2], &[1], "lies outside its storage"),
        (i64::MAX, &[1], &[1], "lies outside its storage"),
        (0, &[2, 2], &[i64::MAX / 2, 1], "lies outside its storage"),
        (-1, &[1], &[1], "negative"),
    ];
    for (offset, size, stride, want) in cases {
        let bytes = pth_with(&tensor_pickle(offset, size, stride), std::slice::from_ref(&storage));
        let (msg, peak) = measured(|| checkpoint_error(&bytes));
        assert!(msg.contains(want), "offset {offset} size {size:?} stride {stride:?}: {msg}");
        assert!(peak < memory_bound(bytes.len()), "peak {peak}");
    }
    // More dimensions than any tensor has.
    let many = vec![1i64; 100];
    assert!(checkpoint_error(&pth_with(&tensor_pickle(0, &many, &many), &[storage])).contains("more than 64 dimensions"));
}

#[test]
fn a_storage_entry_cannot_claim_more_than_the_archive() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let storage: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut bytes = pth_with(&tensor_pickle(0, &[4], &[1]), &[storage]);
    // Patch the storage entry's uncompressed size in its local header and in the central directory.
    let name = b"archive/data/0";
    let mut patched = 0;
    for sig in [[0x50u8, 0x4b, 3, 4], [0x50, 0x4b, 1, 2]] {
        let (size_at, name_at) = if sig[2] == 3 { (22, 30) } else { (24, 46) };
        let mut i = 0;
        while let Some(j) = bytes[i..].windows(4).position(|w| w == sig) {
            let at = i + j;
            if bytes.get(at + name_at..at + name_at + name.len()) == Some(name) {
                bytes[at + size_at..at + size_at + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
                patched += 1;
            }
            i = at + 4;
        }
    }
    assert_eq!(patched, 2);
    let (msg, peak) = measured(|| checkpoint_error(&bytes));
    assert!(msg.contains("archive/data/0"), "{msg}");
    assert!(peak < memory_bound(bytes.len()), "peak {peak}");
}

#[test]
fn features_that_cannot_be_ranked_are_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Scratch::new("features");
    let names: Vec<String> = vec!["0001_c1s1_000001_00.jpg".into(), "0002_c2s1_000002_00.jpg".into()];
    let write = |rows: usize, dim: usize, data: Vec<f32>| {
        let p = s.dir.join(format!("f{rows}x{dim}.safetensors"));
        amg::eval::features::write_features(&p, &names[..rows], &data, dim, Default::default()).unwrap();
        p
    };
    let empty = write(2, 0, vec![]);
    let e = amg::eval::features::read_features(&empty).unwrap_err().to_string();
    assert!(e.contains("rows of 0 values"), "{e}");
    let nan = write(2, 3, vec![0.1, 0.2, 0.3, 0.4, f32::NAN, 0.6]);
    let e = amg::eval::features::read_features(&nan).unwrap_err().to_string();
    assert!(e.contains("row 1 (0002_c2s1_000002_00.jpg)") && e.contains("NaN") && e.contains("column 1"), "{e}");
    let e = amg::eval::eval_feature_files(&nan, &nan).unwrap_err().to_string();
    assert!(e.contains("not finite"), "{e}");
    let inf = write(2, 1, vec![1.0, f32::INFINITY]);
    assert!(amg::eval::features::read_features(&inf).unwrap_err().to_string().contains("inf"));
}

#[test]
fn configs_with_absurd_sizes_are_refused_before_anything_is_computed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let text = std::fs::read_to_string(fixture("analyze_model/config.json")).unwrap();
    let weights = std::fs::read(fixture("analyze_model/model.safetensors")).unwrap();
    let s = Scratch::new("config");
    for (field, value) in [("embed_dim", "18446744073709551615"), ("height", "4611686018427387904"), ("patch_size", "0"), ("num_heads", "100000")] {
        let bad = text.replacen(&format!("\"{field}\": "), &format!("\"{field}\": {value}, \"was_{field}\": "), 1);
        let dir = s.dir.join(field);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), bad).unwrap();
        std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
        let e = ModelFiles::load(&dir).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{field}: {e}");
    }
}

// ---- deterministic mutations of the fixtures ----

/// `count` mutants of `seed_bytes`: bit flips, truncations, inserted and duplicated bytes, and
/// 1/2/4/8-byte fields overwritten with extreme values (where lengths and counts live).
fn mutants(seed_bytes: &[u8], count: usize, seed: u64) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut rng = Rng::new(seed);
    (0..count).map(move |_| {
        let mut b = seed_bytes.to_vec();
        let len = b.len().max(1);
        let rounds = 1 + rng.below(3);
        for _ in 0..rounds {
            let at = rng.below(len).min(b.len());
            match rng.below(6) {
                0 if !b.is_empty() => {
                    let i = at.min(b.len() - 1);
                    b[i] ^= 1 << rng.below(8);
                }
                1 => b.truncate(at),
                2 => {
                    let n = 1 + rng.below(16);
                    let fill: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                    b.splice(at..at, fill);
                }
                3 => {
                    let end = (at + 1 + rng.below(64)).min(b.len());
                    let dup = b[at..end].to_vec();
                    b.splice(at..at, dup);
                }
                _ => {
                    let width = [1, 2, 4, 8][rng.below(4)];
                    let extreme: [u64; 6] = [0, 1, 0x7f, 0x7fff_ffff, u64::MAX, 1 << 40];
                    let v = extreme[rng.below(extreme.len())].to_le_bytes();
                    for (x, &byte) in b.iter_mut().skip(at).zip(&v[..width]) {
                        *x = byte;
                    }
                }
            }
        }
        b
    })
}

/// Runs `read` on every mutant, checking the memory bound; returns how many were accepted.
fn sweep(what: &str, mutants: impl Iterator<Item = Vec<u8>>, mut read: impl FnMut(&[u8]) -> bool) -> (usize, usize) {
    let (mut n, mut ok) = (0, 0);
    for m in mutants {
        let (accepted, peak) = measured(|| read(&m));
        assert!(peak < memory_bound(m.len()), "{what}: mutant {n} peaked at {peak} bytes for {} input bytes", m.len());
        n += 1;
        ok += accepted as usize;
    }
    eprintln!("{what}: {n} mutants, {ok} accepted, the rest refused with an error");
    (n, ok)
}

#[test]
fn mutated_checkpoints_give_results_or_errors() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Scratch::new("mut-ckpt");
    // The pickle of each .pth fixture, mutated inside an otherwise intact archive.
    for name in ["ckpt_timm_b.pth", "ckpt_la.pth", "ckpt_amg.pth", "ckpt_opaque.pth"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let e = entries(&bytes);
        let pkl_at = e.iter().position(|(n, _)| n.ends_with("data.pkl")).unwrap();
        let (_, ok) = sweep(&format!("{name}: data.pkl"), mutants(&e[pkl_at].1, 700, 1), |m| {
            let mut e2 = e.clone();
            e2[pkl_at].1 = m.to_vec();
            readers::checkpoint(&s, &archive(&e2))
        });
        assert!(ok > 0, "{name}: no mutant was accepted; the sweep would not reach the tensor readers");
    }
    // Whole files: the zip structure and the safetensors header.
    for (name, count) in [("ckpt_opaque.pth", 2000), ("ckpt_timm_b.pth", 400), ("ckpt_timm_a.safetensors", 600)] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        // Mutations concentrate where the structure is: the first and last 4 KB.
        let head: Vec<u8> = bytes[..bytes.len().min(4096)].to_vec();
        sweep(&format!("{name}: head"), mutants(&head, count / 2, 2), |m| {
            let mut f = m.to_vec();
            f.extend_from_slice(&bytes[head.len()..]);
            readers::checkpoint(&s, &f)
        });
        let tail_at = bytes.len().saturating_sub(4096);
        sweep(&format!("{name}: tail"), mutants(&bytes[tail_at..], count / 2, 3), |m| {
            let mut f = bytes[..tail_at].to_vec();
            f.extend_from_slice(m);
            readers::checkpoint(&s, &f)
        });
    }
    // A TransReID checkpoint (JPM, SIE, BNNecks) through the whole importer: its pickle mutated.
    let bytes = std::fs::read(fixture("ckpt_transreid_jpm_sie.pth")).unwrap();
    let e = entries(&bytes);
    let pkl_at = e.iter().position(|(n, _)| n.ends_with("data.pkl")).unwrap();
    let (_, ok) = sweep("ckpt_transreid_jpm_sie.pth: data.pkl (import)", mutants(&e[pkl_at].1, 500, 8), |m| {
        let mut e2 = e.clone();
        e2[pkl_at].1 = m.to_vec();
        readers::transreid_import(&s, &archive(&e2))
    });
    assert!(ok > 0, "no TransReID mutant imported; the sweep would not reach the model definition");
    // Truncation at every byte of the small archive.
    let small = std::fs::read(fixture("ckpt_opaque.pth")).unwrap();
    for n in 0..small.len() {
        readers::checkpoint(&s, &small[..n]);
    }
}

#[test]
fn mutated_model_directories_plans_and_features_give_results_or_errors() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Scratch::new("mut-dir");
    let config = std::fs::read(fixture("analyze_model/config.json")).unwrap();
    let weights = std::fs::read(fixture("analyze_model/model.safetensors")).unwrap();
    let (_, ok) = sweep("config.json", mutants(&config, 1500, 4), |m| readers::model_dir(&s, m, &weights));
    assert!(ok > 0);
    let header = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize + 8;
    sweep("model.safetensors header", mutants(&weights[..header], 800, 5), |m| {
        let mut w = m.to_vec();
        w.extend_from_slice(&weights[header..]);
        readers::model_dir(&s, &config, &w)
    });

    // A TransReID model directory (overlapping patches, SIE, JPM, BNNecks): its config mutated.
    let mut req = amg::import::ImportRequest::new(amg::import::SourceFormat::TransReid, fixture("ckpt_transreid_jpm_sie.pth"));
    (req.checkpoint_img_size, req.stride, req.heads) = (Some((64, 40)), Some(12), Some(2));
    let tr = amg::import::import(&req).unwrap();
    let tr_dir = s.dir.join("transreid");
    tr.save(&tr_dir, false).unwrap();
    let tr_config = std::fs::read(tr_dir.join("config.json")).unwrap();
    let tr_weights = std::fs::read(tr_dir.join("model.safetensors")).unwrap();
    let (_, ok) = sweep("TransReID config.json", mutants(&tr_config, 1500, 9), |m| readers::model_dir(&s, m, &tr_weights));
    assert!(ok > 0);
    let plan = serde_json::to_vec(&amg::model::surgery::Plan::of(tr.config())).unwrap();
    let (_, ok) = sweep("TransReID plan.json", mutants(&plan, 800, 10), |m| readers::plan(&s, m, tr.config()));
    assert!(ok > 0);

    let files = ModelFiles::load(&fixture("analyze_model")).unwrap();
    let plan = serde_json::to_vec(&amg::model::surgery::Plan::of(files.config())).unwrap();
    let (_, ok) = sweep("plan.json", mutants(&plan, 1500, 6), |m| readers::plan(&s, m, files.config()));
    assert!(ok > 0);

    let names: Vec<String> = (0..6).map(|i| format!("{:04}_c{}s1_000001_00.jpg", i % 3, 1 + i % 2)).collect();
    let feats: Vec<f32> = (0..6 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
    let p = s.dir.join("seed.safetensors");
    amg::eval::features::write_features(&p, &names, &feats, 8, Default::default()).unwrap();
    let seed = std::fs::read(&p).unwrap();
    let (_, ok) = sweep("features", mutants(&seed, 1500, 7), |m| readers::features(&s, m));
    assert!(ok > 0);
}

#[test]
fn mutated_images_and_file_names_give_results_or_errors() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Scratch::new("mut-img");
    let png = std::fs::read(fixture("images/img2_45x70.png")).unwrap();
    let mut jpeg = Vec::new();
    image::load_from_memory(&png).unwrap().write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
    for (what, seed_bytes) in [("png", &png), ("jpeg", &jpeg)] {
        let (_, ok) = sweep(what, mutants(seed_bytes, 800, 8), |m| readers::image(&s, m));
        assert!(ok > 0);
    }
    let mut rng = Rng::new(9);
    let alphabet: Vec<char> = "0123456789_cs-.jpgé\u{0}".chars().collect();
    for _ in 0..20_000 {
        let n = rng.below(24);
        let name: String = (0..n).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        readers::file_name(&name);
    }
    assert!(readers::file_name("0002_c1s1_000451_03.jpg") && readers::file_name("0002_c12_f0001.jpg"));
}

#[test]
fn an_image_claiming_gigapixels_is_refused_before_decoding() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    // A real 1×1 PNG whose IHDR (with a correct CRC) claims 60000×60000 pixels: 10 GB of RGB.
    let mut png = Vec::new();
    image::RgbImage::new(1, 1).write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let s = Scratch::new("bigpng");
    let p = s.file("big.png", &png);
    let (r, peak) = measured(|| amg::preprocess::load_rgb(&p));
    let e = match r {
        Ok(_) => panic!("a 60000×60000 image claim was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("big.png") && e.contains("cannot decode image"), "{e}");
    assert!(peak < 16 << 20, "peak {peak}");
}

#[test]
fn reference_cycles_are_freed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A list appended to itself through the memo, and two dicts holding each other; the last is
    // the pickle a fuzzer found leaking (tests/fixtures/hostile/pickle_cycle_leak.pkl).
    let found = std::fs::read(fixture("hostile/pickle_cycle_leak.pkl")).unwrap();
    for pkl in [&b"\x80\x02]q\x00h\x00a."[..], &b"\x80\x02}q\x00}q\x01h\x00K\x01h\x01sh\x01K\x02h\x00s0."[..], &found] {
        let bytes = pth_with(pkl, &[]);
        let s = Scratch::new("cycle");
        let p = s.file("c.pth", &bytes);
        let before = CURRENT.load(Ordering::Relaxed);
        let r = amg::import::pth::read_checkpoint(&p);
        assert!(r.is_err());
        drop(r);
        let after = CURRENT.load(Ordering::Relaxed);
        assert_eq!(after, before, "{} bytes leaked", after as i64 - before as i64);
    }
}

#[test]
fn compressed_entries_are_refused_with_a_hint() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // torch.save stores entries; mark every entry deflated (method 8) in both headers.
    let mut bytes = pth_with(&tensor_pickle(0, &[4], &[1]), &[vec![0u8; 16]]);
    for (sig, method_at) in [([0x50u8, 0x4b, 3, 4], 8), ([0x50, 0x4b, 1, 2], 10)] {
        let mut i = 0;
        while let Some(j) = bytes[i..].windows(4).position(|w| w == sig) {
            let at = i + j;
            bytes[at + method_at..at + method_at + 2].copy_from_slice(&8u16.to_le_bytes());
            i = at + 4;
        }
    }
    let msg = checkpoint_error(&bytes);
    assert!(msg.contains("compressed") && msg.contains("re-save"), "{msg}");
}

#[test]
fn a_memoised_array_under_many_keys_is_counted() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One 1 MB NumPy array, memoised, then set under 10 000 keys of the state dict: 10 GB if each
    // key's tensor were built in full.
    let n = 1usize << 18; // float32 elements
    let mut p = PROTO2.to_vec();
    p.push(b'}');
    p.extend_from_slice(b"cnumpy.core.multiarray\n_reconstruct\n)R");
    p.extend_from_slice(b"(K\x01J");
    p.extend_from_slice(&(n as u32).to_le_bytes());
    p.push(0x85);
    p.extend_from_slice(b"cnumpy\ndtype\nX\x02\x00\x00\x00f4\x85R\x89B");
    p.extend_from_slice(&((4 * n) as u32).to_le_bytes());
    p.extend(std::iter::repeat_n(0u8, 4 * n));
    p.extend_from_slice(b"tbq\x000");
    for i in 0..10_000 {
        let key = format!("k{i}");
        p.push(0x8c);
        p.push(key.len() as u8);
        p.extend_from_slice(key.as_bytes());
        p.extend_from_slice(b"h\x00s");
    }
    p.push(STOP);
    let bytes = pth_with(&p, &[]);
    let (msg, peak) = measured(|| checkpoint_error(&bytes));
    assert!(msg.contains("more than 4×"), "{msg}");
    assert!(peak < memory_bound(bytes.len()), "peak {peak}");
}

//! `amg synth`: a synthetic person Re-ID benchmark in the Market-1501 layout, deterministic per
//! seed. Procedurally drawn pedestrians (identities in look-alike families) seen by cameras with
//! their own scenes, lighting, viewpoint habits and image quality; with `occluded`, most queries
//! and part of the gallery have 20–50 % of the body hidden, as in Occluded-Duke.

pub mod person;
pub mod raster;
pub mod scene;

use crate::draw::Canvas as Sheet;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::preprocess::Rgb8;
use crate::resample::resize_rgb8_pil;
use crate::rng::Rng;
use person::{Person, Pose};
use raster::Canvas;
use rayon::prelude::*;
use scene::Camera;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct SynthOptions {
    /// Identities (half for training, half for testing).
    pub ids: usize,
    pub cams: usize,
    pub images_per_id: usize,
    pub occluded: bool,
    pub seed: u64,
    /// Image height and width.
    pub size: (usize, usize),
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions { ids: 300, cams: 6, images_per_id: 16, occluded: false, seed: 0, size: (128, 64) }
    }
}

/// The identities and cameras of one seed.
pub struct World {
    pub opts: SynthOptions,
    pub cams: Vec<Camera>,
    /// Person `i` has identity `i + 1`.
    pub people: Vec<Person>,
    /// Family index of each person (look-alikes share one).
    pub family: Vec<usize>,
    rng: Rng,
}

impl World {
    pub fn new(opts: &SynthOptions) -> Result<World> {
        if opts.ids < 4 {
            return Err(Error::invalid("`ids` must be at least 4 (half are for training, half for testing)"));
        }
        if opts.ids > 9998 {
            return Err(Error::invalid("`ids` must be at most 9998 (identities are written with 4 digits)"));
        }
        if opts.cams < 2 || opts.cams > 9 {
            return Err(Error::invalid("`cams` must be between 2 and 9 (Re-ID needs matches across cameras)"));
        }
        if !(2..=1000).contains(&opts.images_per_id) {
            return Err(Error::invalid("`images_per_id` must be between 2 and 1000"));
        }
        let (h, w) = opts.size;
        if h < 32 || w < 16 || h > 1024 || w > 1024 {
            return Err(Error::invalid(format!("`size` {h}x{w}: expected between 32x16 and 1024x1024")));
        }
        let rng = Rng::new(opts.seed);
        let cams = (0..opts.cams).map(|k| Camera::new(k, &mut rng.fork(1_000 + k as u64))).collect();
        let mut people = Vec::with_capacity(opts.ids);
        let mut family = Vec::with_capacity(opts.ids);
        let mut fr = rng.fork(7);
        let mut f = 0;
        while people.len() < opts.ids {
            let base = Person::random(&mut fr);
            // 40 % singles, the rest families of 2–3 look-alikes.
            let size = if fr.bool(0.4) { 1 } else { 2 + fr.below(2) };
            people.push(base.clone());
            family.push(f);
            for _ in 1..size {
                if people.len() < opts.ids {
                    people.push(base.sibling(&mut fr));
                    family.push(f);
                }
            }
            f += 1;
        }
        Ok(World { opts: opts.clone(), cams, people, family, rng })
    }

    /// Renders one image of `person` (or only scenery, for a junk image) seen by camera `cam`.
    pub fn render(&self, person: Option<&Person>, cam: usize, occlusion: Option<f32>, rng: &mut Rng) -> Rgb8 {
        let (h, w) = self.opts.size;
        let c = &self.cams[cam];
        let mut canvas = Canvas::new(h, w, 2);
        scene::background(&mut canvas, c, rng);
        // Scenery is out of focus and muted, as behind a pedestrian in a surveillance crop: the
        // person, not the camera's scene, carries the identity.
        let (blur, mute) = (rng.range(2.0, 3.5) as f32, rng.range(0.6, 0.8) as f32);
        canvas.blur(blur);
        canvas.map(|_, _, p| {
            let g = (p[0] + p[1] + p[2]) / 3.0;
            let grey = 0.5 + 0.6 * (g - 0.5);
            [p[0] + (grey - p[0]) * mute, p[1] + (grey - p[1]) * mute, p[2] + (grey - p[2]) * mute]
        });
        let (hf, wf) = (h as f32, w as f32);
        if let Some(p) = person {
            let height = hf * rng.range(c.scale.0 as f64, c.scale.1 as f64) as f32;
            let top = hf * 0.02 + (hf * 0.96 - height).max(0.0) * rng.f32();
            let cx = wf / 2.0 + wf * rng.range(-0.08, 0.08) as f32;
            let pose = Pose { view: c.sample_view(rng), phase: rng.range(0.0, std::f64::consts::TAU) as f32, swing: rng.range(0.05, 0.55) as f32 };
            person::draw(&mut canvas, p, pose, cx, top, height);
            if let Some(cov) = occlusion {
                let half = 0.17 * height * p.build;
                scene::occlude(&mut canvas, (cx - half, top, cx + half, top + height * p.stature), cov, rng);
            }
        } else if rng.bool(0.5) {
            // A bad detection: only a fragment of someone, far off-centre.
            let other = Person::random(rng);
            let pose = Pose { view: person::View::Side, phase: 0.0, swing: 0.3 };
            person::draw(&mut canvas, &other, pose, wf * if rng.bool(0.5) { 0.05 } else { 0.95 }, hf * 0.45, hf);
        }
        scene::light(&mut canvas, c, rng.range(0.85, 1.15) as f32);
        let pixels = canvas.resolve();
        let mut data: Vec<u8> = pixels.iter().map(|&v| (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8).collect();
        if c.blur > 1.05 {
            let (sh, sw) = (((hf / c.blur) as usize).max(8), ((wf / c.blur) as usize).max(4));
            data = resize_rgb8_pil(&resize_rgb8_pil(&data, h, w, sh, sw), sh, sw, h, w);
        }
        for v in data.iter_mut() {
            *v = (*v as f32 + 255.0 * c.noise * rng.normal() as f32).round().clamp(0.0, 255.0) as u8;
        }
        if rng.bool(0.5) {
            for row in data.chunks_exact_mut(w * 3) {
                for x in 0..w / 2 {
                    for k in 0..3 {
                        row.swap(x * 3 + k, (w - 1 - x) * 3 + k);
                    }
                }
            }
        }
        Rgb8 { width: w, height: h, data }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    Train,
    Query,
    Gallery,
}

impl Split {
    fn dir(self) -> &'static str {
        match self {
            Split::Train => "bounding_box_train",
            Split::Query => "query",
            Split::Gallery => "bounding_box_test",
        }
    }
}

struct Job {
    split: Split,
    /// Identity as written in the file name: > 0 a person, 0 a distractor, -1 junk.
    pid: i64,
    person: Option<Person>,
    cam: usize,
    occlusion: Option<f32>,
    seed: u64,
}

#[derive(Debug, Serialize)]
pub struct SynthSummary {
    pub options: SynthOptions,
    pub train_ids: usize,
    pub test_ids: usize,
    pub train_images: usize,
    pub query_images: usize,
    pub gallery_images: usize,
    pub distractors: usize,
    pub junk: usize,
    pub occluded_query: usize,
    pub occluded_gallery: usize,
    pub occluded_train: usize,
}

impl SynthSummary {
    /// One line: what was generated, where, and how long it took.
    pub fn text(&self, out: &Path, seconds: f64) -> String {
        format!(
            "synthetic benchmark → {} in {seconds:.1}s: {} train images of {} ids; {} queries ({} occluded), {} gallery ({} occluded, {} distractors, {} junk) of {} ids",
            out.display(),
            self.train_images,
            self.train_ids,
            self.query_images,
            self.occluded_query,
            self.gallery_images,
            self.occluded_gallery,
            self.distractors,
            self.junk,
            self.test_ids
        )
    }
}

fn plan(world: &World) -> Vec<Job> {
    let o = &world.opts;
    let mut rng = world.rng.fork(11);
    // Whole families go to one side, so look-alikes meet in the test set.
    let n_train = o.ids / 2;
    let mut first_test = n_train;
    while first_test > 0 && first_test < o.ids && world.family[first_test] == world.family[first_test - 1] {
        first_test += 1;
    }
    let occl = |rng: &mut Rng, p: f64| if o.occluded && rng.bool(p) { Some(rng.range(0.2, 0.5) as f32) } else { None };
    let mut jobs = Vec::new();
    for (i, person) in world.people.iter().enumerate() {
        let pid = i as i64 + 1;
        let train = i < first_test;
        // Each identity is seen by at least 3 cameras (all of them at most), at least once by each,
        // so that no camera (hence no scenery) is a cue to who someone is.
        let mut cams: Vec<usize> = (0..o.cams).collect();
        rng.shuffle(&mut cams);
        cams.truncate((3 + rng.below(o.cams.saturating_sub(2).max(1))).min(o.cams));
        let mut per: Vec<usize> = cams.clone();
        while per.len() < o.images_per_id {
            per.push(cams[rng.below(cams.len())]);
        }
        per.truncate(o.images_per_id.max(cams.len()));
        if train {
            for &cam in &per {
                let occlusion = occl(&mut rng, 0.15);
                jobs.push(Job { split: Split::Train, pid, person: Some(person.clone()), cam, occlusion, seed: rng.next_u64() });
            }
            continue;
        }
        // Queries: one per camera (at most 3), only where the gallery keeps a view from another camera.
        let mut remaining = per.clone();
        let mut query_cams = Vec::new();
        for &cam in &cams {
            if query_cams.len() == 3 {
                break;
            }
            let pos = remaining.iter().position(|&c| c == cam).unwrap();
            let mut rest = remaining.clone();
            rest.remove(pos);
            if rest.iter().any(|&c| c != cam) && query_cams.iter().all(|&qc| rest.iter().any(|&c| c != qc)) {
                remaining = rest;
                query_cams.push(cam);
            }
        }
        for &cam in &query_cams {
            let occlusion = occl(&mut rng, 0.9);
            jobs.push(Job { split: Split::Query, pid, person: Some(person.clone()), cam, occlusion, seed: rng.next_u64() });
        }
        for &cam in &remaining {
            let occlusion = occl(&mut rng, 0.15);
            jobs.push(Job { split: Split::Gallery, pid, person: Some(person.clone()), cam, occlusion, seed: rng.next_u64() });
        }
    }
    let gallery = jobs.iter().filter(|j| j.split == Split::Gallery).count();
    // Distractors (identity 0): people who are nobody's match.
    for _ in 0..(gallery as f64 * 0.06).round() as usize {
        let p = Person::random(&mut rng);
        let cam = rng.below(o.cams);
        let occlusion = occl(&mut rng, 0.15);
        jobs.push(Job { split: Split::Gallery, pid: 0, person: Some(p), cam, occlusion, seed: rng.next_u64() });
    }
    // Junk (identity -1): bad detections, which evaluation ignores.
    for _ in 0..(gallery as f64 * 0.02).round().max(1.0) as usize {
        let cam = rng.below(o.cams);
        jobs.push(Job { split: Split::Gallery, pid: -1, person: None, cam, occlusion: None, seed: rng.next_u64() });
    }
    jobs
}

fn file_name(pid: i64, cam: usize, seq: u64, frame: usize, k: usize) -> String {
    let id = if pid < 0 { format!("{pid}") } else { format!("{pid:04}") };
    format!("{id}_c{}s{}_{frame:06}_{k:02}.jpg", cam + 1, seq)
}

fn write_jpeg(path: &Path, img: &Rgb8, quality: u8) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut wtr = std::io::BufWriter::new(f);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut wtr, quality)
        .encode(&img.data, img.width as u32, img.height as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::file(path, format!("cannot encode JPEG: {e}")))
}

/// Generates the benchmark under `out` (written atomically; a non-empty `out` needs `force`).
pub fn generate(opts: &SynthOptions, out: &Path, force: bool, progress: bool) -> Result<SynthSummary> {
    let world = World::new(opts)?;
    let jobs = plan(&world);
    let pb = crate::progress::bar(jobs.len() as u64, "synth", "img", progress);
    // Deterministic file names: frames count per camera in job order.
    let mut frames = vec![0usize; opts.cams];
    let names: Vec<String> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            frames[j.cam] += 1 + (j.seed % 7) as usize;
            file_name(j.pid, j.cam, 1 + j.seed % 6, frames[j.cam], i % 100)
        })
        .collect();
    let count = |s: Split| jobs.iter().filter(|j| j.split == s).count();
    let occluded = |s: Split| jobs.iter().filter(|j| j.split == s && j.occlusion.is_some()).count();
    let summary = SynthSummary {
        options: opts.clone(),
        train_ids: jobs.iter().filter(|j| j.split == Split::Train).map(|j| j.pid).collect::<std::collections::BTreeSet<_>>().len(),
        test_ids: jobs.iter().filter(|j| j.split == Split::Query).map(|j| j.pid).collect::<std::collections::BTreeSet<_>>().len(),
        train_images: count(Split::Train),
        query_images: count(Split::Query),
        gallery_images: count(Split::Gallery),
        distractors: jobs.iter().filter(|j| j.pid == 0).count(),
        junk: jobs.iter().filter(|j| j.pid == -1).count(),
        occluded_query: occluded(Split::Query),
        occluded_gallery: occluded(Split::Gallery),
        occluded_train: occluded(Split::Train),
    };
    fsutil::write_dir_atomic(out, force, |tmp| {
        for s in [Split::Train, Split::Query, Split::Gallery] {
            std::fs::create_dir(tmp.join(s.dir())).map_err(|e| Error::io(tmp.join(s.dir()), e))?;
        }
        jobs.par_iter().zip(names.par_iter()).try_for_each(|(j, name)| {
            crate::interrupt::check()?;
            let img = world.render(j.person.as_ref(), j.cam, j.occlusion, &mut Rng::new(j.seed));
            write_jpeg(&tmp.join(j.split.dir()).join(name), &img, world.cams[j.cam].jpeg_quality)?;
            pb.inc(1);
            Ok::<(), Error>(())
        })?;
        let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
        fsutil::write_bytes_atomic(&tmp.join("synth.json"), json.as_bytes())
    })?;
    pb.finish_and_clear();
    Ok(summary)
}

/// A contact sheet: rows of test identities (a look-alike family first), one image per column
/// from varied cameras; with `occluded`, the last rows show occluded query-like views.
pub fn preview(opts: &SynthOptions, path: &Path) -> Result<()> {
    use crate::draw::{text_width, Align, INK, WHITE};
    let world = World::new(opts)?;
    let (h, w) = opts.size;
    // Rows: identities; columns: the cameras (one view of the identity per camera), so that the
    // sheet shows what changes between cameras and what look-alike identities share.
    let (rows, cols, gap) = (8usize.min(opts.ids), opts.cams.min(12), 4usize);
    // Start at a family of look-alikes in the second half (the test identities).
    let half = opts.ids / 2;
    let start = (half..opts.ids.saturating_sub(1)).find(|&i| world.family[i] == world.family[i + 1]).unwrap_or(half);
    let occluded_rows = if opts.occluded { 2.min(rows) } else { 0 };
    let cells: Vec<(usize, usize, Rgb8)> = (0..rows * cols)
        .into_par_iter()
        .map(|cell| {
            let (r, c) = (cell / cols, cell % cols);
            let pid = (start + r) % opts.ids;
            let mut rng = Rng::new(opts.seed ^ 0x5EED).fork((pid * 100 + c) as u64);
            let occlusion = if r >= rows - occluded_rows { Some(rng.range(0.2, 0.5) as f32) } else { None };
            (r, c, world.render(Some(&world.people[pid]), c, occlusion, &mut rng))
        })
        .collect();
    let title = format!("Synthetic Re-ID benchmark ({} identities, {} cameras, {}x{})", opts.ids, opts.cams, h, w);
    let mut caption = format!("Rows: {} identities (look-alike families adjacent); columns: {}", rows, crate::text::count(cols, "camera"));
    if cols < opts.cams {
        caption += &format!(" (first {cols} of {})", opts.cams);
    }
    if occluded_rows > 0 {
        caption += &format!("; last {occluded_rows} rows occluded");
    }
    let (left, top, foot) = (64usize, 58usize, 30usize);
    let grid_w = cols * (w + gap) + gap;
    let sheet_w = (left + grid_w).max(text_width(&title, 16.0) as usize + 24).max(text_width(&caption, 12.0) as usize + 24);
    let sheet_h = top + rows * (h + gap) + gap + foot;
    let mut sheet = Sheet::new(sheet_w, sheet_h, WHITE);
    sheet.text(12, 8, &title, 16.0, INK, Align::Left);
    for c in 0..cols {
        sheet.text((left + gap + c * (w + gap) + w / 2) as i64, 36, &format!("cam {}", c + 1), 12.0, INK, Align::Center);
    }
    for r in 0..rows {
        let pid = (start + r) % opts.ids;
        sheet.text(left as i64 - 8, (top + gap + r * (h + gap) + h / 2) as i64 - 8, &format!("id {}", pid + 1), 12.0, INK, Align::Right);
    }
    for (r, c, img) in cells {
        sheet.blit((left + gap + c * (w + gap)) as i64, (top + gap + r * (h + gap)) as i64, &img);
    }
    sheet.text(12, (sheet_h - foot + 8) as i64, &caption, 12.0, INK, Align::Left);
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    sheet.save_png(path)
}

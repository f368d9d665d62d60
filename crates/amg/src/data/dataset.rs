//! Re-ID dataset layouts: where the splits are and what each file name says (identity, camera).
//!
//! - Market-1501: `bounding_box_train/`, `query/`, `bounding_box_test/`; `0002_c1s1_000451_03.jpg`.
//! - DukeMTMC-reID and Occluded-Duke: the same folders; `0005_c2_f0046985.jpg`.
//! - ImageFolder (the AMG reference code's): `train/`, `query/`, `gallery/`, one sub-folder per
//!   identity; the camera comes from the file name.
//!
//! As torchreid does: identity −1 marks junk images, which are ignored; identity 0 is a distractor
//! and stays in the gallery; training labels are the sorted training identities mapped to 0..C−1.

use crate::error::{Error, Result};
use crate::preprocess::is_image_file;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

crate::choice! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Layout {
        Market = "market" => "Market-1501",
        Duke = "duke" => "DukeMTMC-reID / Occluded-Duke",
        Imagefolder = "imagefolder" => "ImageFolder (train/query/gallery)",
    }
}

impl Layout {
    /// The layout as a person would name it.
    pub fn title(self) -> &'static str {
        crate::choice::Choice::help(self)
    }
    fn split_dirs(self) -> [&'static str; 3] {
        match self {
            Layout::Market | Layout::Duke => ["bounding_box_train", "query", "bounding_box_test"],
            Layout::Imagefolder => ["train", "query", "gallery"],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    pub pid: i64,
    pub camid: i64,
    /// Training label 0..C−1 (training split only; 0 elsewhere).
    pub label: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: Layout,
    pub train: Vec<Sample>,
    pub query: Vec<Sample>,
    pub gallery: Vec<Sample>,
    pub num_classes: usize,
    /// Non-image files that were skipped.
    pub skipped_files: usize,
}

/// Identity and camera from a Market/Duke file name: `^(-?\d+)_c(\d+)`.
pub fn parse_name(name: &str) -> Option<(i64, i64)> {
    let (pid, rest) = name.split_once('_')?;
    let pid: i64 = pid.parse().ok()?;
    let rest = rest.strip_prefix('c')?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    // Market writes the camera as one digit followed by `s<seq>`, Duke by `_f<frame>`.
    let cam: i64 = if rest[digits.len()..].starts_with('s') && digits.len() > 1 { digits[..1].parse().ok()? } else { digits.parse().ok()? };
    Some((pid, cam))
}

fn detect(root: &Path) -> Result<Layout> {
    let has = |d: &str| root.join(d).is_dir();
    if has("bounding_box_train") || has("bounding_box_test") {
        // Market names carry `c<cam>s<seq>`, Duke names `c<cam>_f<frame>`.
        let dir = if has("bounding_box_test") { root.join("bounding_box_test") } else { root.join("bounding_box_train") };
        let duke = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("_c"))
            .take(20)
            .any(|n| n.contains("_f"));
        Ok(if duke { Layout::Duke } else { Layout::Market })
    } else if has("train") || has("gallery") {
        Ok(Layout::Imagefolder)
    } else {
        Err(Error::file(
            root,
            "no Re-ID dataset here: expected bounding_box_train/ query/ bounding_box_test/ (Market-1501, DukeMTMC-reID, Occluded-Duke) or train/ query/ gallery/ (ImageFolder)",
        ))
    }
}

fn list_images(dir: &Path, recursive: bool, skipped: &mut usize) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            if recursive {
                out.extend(list_images(&path, false, skipped)?);
            }
        } else if is_image_file(&path) {
            out.push(path);
        } else {
            *skipped += 1;
        }
    }
    out.sort_by(|a, b| a.file_name().cmp(&b.file_name()).then_with(|| a.cmp(b)));
    Ok(out)
}

fn read_split(root: &Path, layout: Layout, dir_name: &str, skipped: &mut usize) -> Result<Vec<Sample>> {
    let dir = root.join(dir_name);
    if !dir.is_dir() {
        return Err(Error::file(&dir, format!("missing split folder `{dir_name}/` for the {} layout", layout.title())));
    }
    let files = list_images(&dir, layout == Layout::Imagefolder, skipped)?;
    if files.is_empty() {
        return Err(Error::file(&dir, "split contains no images (.jpg, .jpeg, .png)"));
    }
    let mut samples = Vec::new();
    let mut bad = Vec::new();
    for path in files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parsed = parse_name(&name);
        let (pid, camid) = match (layout, parsed) {
            (Layout::Imagefolder, Some((_, cam))) => {
                // The identity is the folder's name.
                let folder = path.parent().and_then(|p| p.file_name()).map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                match folder.parse::<i64>() {
                    Ok(pid) => (pid, cam),
                    Err(_) => {
                        bad.push(format!("{folder}/{name} (identity folder is not a number)"));
                        continue;
                    }
                }
            }
            (_, Some(v)) => v,
            (_, None) => {
                bad.push(name);
                continue;
            }
        };
        if pid == -1 {
            continue; // junk
        }
        samples.push(Sample { path, pid, camid, label: 0 });
    }
    if !bad.is_empty() {
        let shown: Vec<&str> = bad.iter().take(5).map(|s| s.as_str()).collect();
        return Err(Error::file(
            &dir,
            format!(
                "{} file name(s) do not parse as `<id>_c<camera>…` (e.g. 0002_c1s1_000451_03.jpg or 0005_c2_f0046985.jpg): {}{}",
                bad.len(),
                shown.join(", "),
                if bad.len() > 5 { ", …" } else { "" }
            ),
        ));
    }
    if samples.is_empty() {
        return Err(Error::file(&dir, "split contains only junk images (identity -1)"));
    }
    Ok(samples)
}

impl Dataset {
    /// Cameras as the file names number them (`c1`…): the largest camera number in any split,
    /// at least 1.
    pub fn num_cameras(&self) -> usize {
        self.train.iter().chain(&self.query).chain(&self.gallery).map(|s| s.camid).max().unwrap_or(1).max(1) as usize
    }

    /// Opens a dataset root, detecting the layout unless one is given.
    pub fn open(root: &Path, layout: Option<Layout>) -> Result<Dataset> {
        if !root.is_dir() {
            return Err(Error::file(root, "dataset root is not a directory"));
        }
        let layout = match layout {
            Some(l) => l,
            None => detect(root)?,
        };
        let [tr, q, g] = layout.split_dirs();
        let mut skipped = 0;
        let mut train = read_split(root, layout, tr, &mut skipped)?;
        let query = read_split(root, layout, q, &mut skipped)?;
        let gallery = read_split(root, layout, g, &mut skipped)?;
        let ids: BTreeSet<i64> = train.iter().map(|s| s.pid).collect();
        let relabel: BTreeMap<i64, usize> = ids.iter().enumerate().map(|(i, &p)| (p, i)).collect();
        for s in &mut train {
            s.label = relabel[&s.pid];
        }
        Ok(Dataset { root: root.to_path_buf(), layout, train, query, gallery, num_classes: ids.len(), skipped_files: skipped })
    }

    /// A torchreid-style summary table.
    pub fn summary(&self) -> String {
        let row = |name: &str, s: &[Sample]| {
            let ids: BTreeSet<i64> = s.iter().map(|x| x.pid).collect();
            let cams: BTreeSet<i64> = s.iter().map(|x| x.camid).collect();
            format!("  {name:<8} | {:>5} | {:>8} | {:>9}\n", ids.len(), s.len(), cams.len())
        };
        let line = "  ----------------------------------------\n";
        format!(
            "=> Loaded {} from {}\n{line}  subset   | # ids | # images | # cameras\n{line}{}{}{}{line}",
            self.layout.title(),
            self.root.display(),
            row("train", &self.train),
            row("query", &self.query),
            row("gallery", &self.gallery)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_parse() {
        assert_eq!(parse_name("0002_c1s1_000451_03.jpg"), Some((2, 1)));
        assert_eq!(parse_name("-1_c3s2_012345_01.jpg"), Some((-1, 3)));
        assert_eq!(parse_name("0000_c6s4_002452_02.jpg"), Some((0, 6)));
        assert_eq!(parse_name("0005_c2_f0046985.jpg"), Some((5, 2)));
        assert_eq!(parse_name("0005_c12_f0046985.jpg"), Some((5, 12)));
        assert_eq!(parse_name("img_001.jpg"), None);
        assert_eq!(parse_name("0005c2.jpg"), None);
    }
}

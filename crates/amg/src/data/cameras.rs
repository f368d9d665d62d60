//! Each image's camera, for models with a side information embedding (docs/backbones.md §2.2):
//! from a Market-1501 / DukeMTMC file name (`0002_c3s1_…`: camera 3, index 2 — TransReID numbers
//! cameras from 0) or one index given for every image (`--camera`); for a table with viewpoints
//! also the viewpoint (`--view`; no dataset layout amg reads carries one), giving the row
//! `camera · views + view` as TransReID indexes it. Worked out for every image before any is run,
//! so a missing or unknown camera stops the command before the work starts.

use super::dataset::parse_name;
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use std::path::{Path, PathBuf};

/// The camera index a file name gives (`c1` → 0), if it has one.
pub fn camera_index_of(path: &Path) -> Option<usize> {
    let name = path.file_name()?.to_str()?;
    let (_, cam) = parse_name(name)?;
    usize::try_from(cam).ok()?.checked_sub(1)
}

/// What the command line says of the images' side information (`--camera`, `--view`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SideInfo {
    /// One camera index for every image (0 is c1); otherwise each file name gives its own.
    pub camera: Option<usize>,
    /// The viewpoint index of every image, for an SIE table with viewpoints.
    pub view: Option<usize>,
}

impl SideInfo {
    pub const FROM_NAMES: SideInfo = SideInfo { camera: None, view: None };
}

/// Every image's SIE row for `cfg`'s SIE, or `None` for a model without one: its camera (`given`'s,
/// or its file name's), times the viewpoints, plus `given`'s viewpoint.
pub fn cameras_for(cfg: &ModelConfig, paths: &[PathBuf], given: &SideInfo) -> Result<Option<Vec<usize>>> {
    let Some(sie) = &cfg.arch.sie else {
        return match (given.camera, given.view) {
            (None, None) => Ok(None),
            _ => Err(Error::invalid("`camera` / `view`: this model has no side information embedding (SIE); it takes no camera")),
        };
    };
    let view = match (sie.views, given.view) {
        (1, None) => 0,
        (1, Some(_)) => return Err(Error::invalid("`view`: the model's SIE has no viewpoints (its table is per camera)")),
        (v, Some(w)) if w < v => w,
        (v, Some(w)) => return Err(Error::invalid(format!("`view` {w}: the model's SIE has {v} viewpoints, indices 0..{}", v - 1))),
        (v, None) => {
            return Err(Error::invalid(format!(
                "the model's SIE has {v} viewpoints per camera: give `view` INDEX (the dataset layouts amg reads carry no viewpoint)"
            )))
        }
    };
    let known = sie.cameras;
    let row = |c: usize| c * sie.views + view;
    if let Some(c) = given.camera {
        if c >= known {
            return Err(Error::invalid(format!("`camera` {c}: the model's SIE knows {known} cameras, indices 0..{} (c1..c{known} in file names)", known - 1)));
        }
        return Ok(Some(vec![row(c); paths.len()]));
    }
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        match camera_index_of(p) {
            Some(c) if c < known => out.push(row(c)),
            Some(c) => {
                return Err(Error::file(
                    p,
                    format!("camera c{} (index {c}) is not one the model knows: its SIE has {known} cameras (c1..c{known})", c + 1),
                ))
            }
            None => {
                return Err(Error::file(
                    p,
                    "the model has a side information embedding (SIE) and needs each image's camera: name the file as Market/Duke do (0002_c3s1_000451_03.jpg is camera c3) or give `camera` INDEX (0 is c1)",
                ))
            }
        }
    }
    Ok(Some(out))
}

/// The cameras of a batch: `all`'s entries at `indices`, repeated for each of `views` copies.
pub fn batch_cameras(all: Option<&[usize]>, indices: &[usize], views: usize) -> Option<Vec<usize>> {
    all.map(|c| (0..views).flat_map(|_| indices.iter().map(|&i| c[i])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn market_and_duke_names_give_zero_based_cameras() {
        assert_eq!(camera_index_of(Path::new("a/0002_c1s1_000451_03.jpg")), Some(0));
        assert_eq!(camera_index_of(Path::new("0005_c8_f0046985.jpg")), Some(7));
        assert_eq!(camera_index_of(Path::new("-1_c3s2_000001_00.jpg")), Some(2));
        assert_eq!(camera_index_of(Path::new("0005_c0_f1.jpg")), None, "c0 has no index");
        assert_eq!(camera_index_of(Path::new("person.jpg")), None);
        assert_eq!(batch_cameras(Some(&[4, 5, 6]), &[2, 0], 2), Some(vec![6, 4, 6, 4]));
    }

    #[test]
    fn viewpoints_give_transreid_rows() {
        use crate::model::config::Sie;
        use crate::model::{Arch, HeadConfig, ModelConfig, Source};
        let arch = Arch { sie: Some(Sie { cameras: 3, views: 2, coefficient: 3.0 }), ..Arch::preset("tiny").unwrap() };
        let cfg = ModelConfig::new(arch, 64, 32, HeadConfig::none(), Source::default()).unwrap();
        let paths = vec![PathBuf::from("0001_c3s1_000001_00.jpg"), PathBuf::from("0001_c1s1_000001_00.jpg")];
        // camera · views + view
        assert_eq!(cameras_for(&cfg, &paths, &SideInfo { camera: None, view: Some(1) }).unwrap(), Some(vec![5, 1]));
        assert!(cameras_for(&cfg, &paths, &SideInfo::FROM_NAMES).unwrap_err().to_string().contains("`view`"));
        assert!(cameras_for(&cfg, &paths, &SideInfo { camera: Some(3), view: Some(0) }).is_err());
        assert!(cameras_for(&cfg, &paths, &SideInfo { camera: None, view: Some(2) }).is_err());
    }
}

//! Each image's camera, for models with a side information embedding (docs/backbones.md §2.2):
//! from a Market-1501 / DukeMTMC file name (`0002_c3s1_…`: camera 3, index 2 — TransReID numbers
//! cameras from 0) or one index given for every image (`--camera`). Worked out for every image
//! before any is run, so a missing or unknown camera stops the command before the work starts.

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

/// Every image's camera index for `cfg`'s SIE, or `None` for a model without one. `fixed` (the
/// command line's `--camera`) applies to every image; otherwise each file name must give one.
pub fn cameras_for(cfg: &ModelConfig, paths: &[PathBuf], fixed: Option<usize>) -> Result<Option<Vec<usize>>> {
    let Some(sie) = &cfg.arch.sie else {
        return match fixed {
            Some(_) => Err(Error::invalid("--camera: this model has no side information embedding (SIE); it takes no camera")),
            None => Ok(None),
        };
    };
    let known = sie.cameras;
    if let Some(c) = fixed {
        if c >= known {
            return Err(Error::invalid(format!("--camera {c}: the model's SIE knows {known} cameras, indices 0..{} (c1..c{known} in file names)", known - 1)));
        }
        return Ok(Some(vec![c; paths.len()]));
    }
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        match camera_index_of(p) {
            Some(c) if c < known => out.push(c),
            Some(c) => {
                return Err(Error::file(
                    p,
                    format!("camera c{} (index {c}) is not one the model knows: its SIE has {known} cameras (c1..c{known})", c + 1),
                ))
            }
            None => {
                return Err(Error::file(
                    p,
                    "the model has a side information embedding (SIE) and needs each image's camera: name the file as Market/Duke do (0002_c3s1_000451_03.jpg is camera c3) or give --camera INDEX (0 is c1)",
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
}

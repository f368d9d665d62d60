//! Writing outputs so that nothing the user had is lost: every file is written under a temporary
//! name in the same directory, fsynced, and renamed over the target only when complete.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename itself durable. Not every file system allows opening a directory.
    if let Ok(d) = File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
        let _ = d.sync_all();
    }
}

/// Writes a file atomically: `write` fills a temporary file next to `path`, which is then fsynced
/// and renamed onto `path`. On error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    let tmp = sibling(path, "tmp");
    let result = (|| {
        let mut f = File::create(&tmp)?;
        write(&mut f)?;
        f.flush()?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |f| f.write_all(bytes))
}

/// Checks, before any work, that a file can be written at `path`: its folder exists, and nothing
/// is there unless `force` (a folder never is replaced by a file).
pub fn check_output_file(path: &Path, force: bool) -> Result<()> {
    if path.is_dir() {
        return Err(Error::file(path, "is a directory; give a file name"));
    }
    if path.exists() && !force {
        return Err(Error::file(path, "exists: pass --force to replace it"));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::file(parent, "no such directory (the output's folder must exist)"));
    }
    Ok(())
}

/// True when `dir` does not exist or is an empty directory.
pub fn is_absent_or_empty(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(false),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Creates an output directory atomically: `fill` writes into a fresh temporary directory next to
/// `dir`, which replaces `dir` only once `fill` succeeded. An existing non-empty `dir` is an error
/// unless `force`; with `force` the old directory is moved aside and removed only after the new one
/// is in place.
pub fn write_dir_atomic(dir: &Path, force: bool, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.is_file() {
        return Err(Error::file(dir, "exists and is a file; the output must be a directory"));
    }
    if !is_absent_or_empty(dir)? && !force {
        return Err(Error::file(dir, "exists and is not empty; choose another --out or pass --force to replace it"));
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = sibling(dir, "old");
    let had_old = dir.exists();
    if had_old {
        fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    if let Err(e) = fs::rename(&tmp, dir) {
        if had_old {
            let _ = fs::rename(&old, dir);
        }
        return Err(Error::io(dir, e));
    }
    sync_dir(dir.parent().unwrap_or(Path::new(".")));
    if had_old {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_directory_write_keeps_the_old_one() {
        let base = std::env::temp_dir().join(format!("amg-fsutil-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let out = base.join("out");
        write_dir_atomic(&out, false, |d| write_bytes_atomic(&d.join("a"), b"one")).unwrap();
        // Refused without force.
        assert!(write_dir_atomic(&out, false, |_| Ok(())).is_err());
        // A failing fill under force leaves the old content.
        let r = write_dir_atomic(&out, true, |_| Err(Error::invalid("boom")));
        assert!(r.is_err());
        assert_eq!(fs::read(out.join("a")).unwrap(), b"one");
        // A successful fill under force replaces it.
        write_dir_atomic(&out, true, |d| write_bytes_atomic(&d.join("b"), b"two")).unwrap();
        assert!(!out.join("a").exists());
        assert_eq!(fs::read(out.join("b")).unwrap(), b"two");
        // No temporary directories are left behind.
        let left: Vec<_> = fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("out")]);
        fs::remove_dir_all(&base).unwrap();
    }
}

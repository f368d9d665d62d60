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

/// Whether process `pid` is still running (Linux: /proc; elsewhere assumed running, so that
/// nothing of a live process is ever cleared).
fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Clears what an earlier amg process that was killed outright (a second Ctrl-C, SIGKILL, power
/// loss) left next to `path`: its temporary `.NAME.tmp-PID` copies are removed, and a
/// `.NAME.old-PID` (the previous output, moved aside while the new one was renamed in) is put back
/// if `path` is missing, else removed. Entries of running processes are left alone.
pub fn clear_stale(path: &Path) -> Result<()> {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { return Ok(()) };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(entries) = fs::read_dir(parent) else { return Ok(()) };
    for e in entries.flatten() {
        let entry = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = entry.strip_prefix(&format!(".{name}.")) else { continue };
        let Some((tag, pid)) = rest.split_once('-') else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        let p = e.path();
        let remove = |p: &Path| if p.is_dir() { fs::remove_dir_all(p) } else { fs::remove_file(p) };
        match tag {
            "tmp" => remove(&p).map_err(|e| Error::io(&p, e))?,
            "old" if !path.exists() => fs::rename(&p, path).map_err(|e| Error::io(&p, e))?,
            "old" => remove(&p).map_err(|e| Error::io(&p, e))?,
            _ => {}
        }
    }
    Ok(())
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
    clear_stale(path)?;
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
        return Err(Error::file(path, "exists: give `force` to replace it"));
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

/// Moves the finished directory `ready` to `dir`, replacing an existing non-empty `dir` only with
/// `force` (moved aside first, removed once `ready` is in place).
pub fn publish_dir(ready: &Path, dir: &Path, force: bool) -> Result<()> {
    clear_stale(dir)?;
    if dir.is_file() {
        return Err(Error::file(dir, "exists and is a file; the output must be a directory"));
    }
    if !is_absent_or_empty(dir)? && !force {
        return Err(Error::file(dir, "exists and is not empty; choose another `out` or give `force` to replace it"));
    }
    swap_in(ready, dir)
}

/// Renames the complete directory `ready` to `dir`; an existing `dir` is moved aside first (and
/// put back if the rename fails) and removed once `ready` is in place.
fn swap_in(ready: &Path, dir: &Path) -> Result<()> {
    let old = sibling(dir, "old");
    let had_old = dir.exists();
    if had_old {
        fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    if let Err(e) = fs::rename(ready, dir) {
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

/// An existing directory moved aside while its replacement is made in its place: dropping the
/// guard without `commit` (an error, Ctrl-C) removes whatever was made and puts the old one back;
/// `commit` removes the old one.
pub struct Aside {
    dir: PathBuf,
    old: Option<PathBuf>,
    done: bool,
}

impl Aside {
    /// Moves `dir` aside (if it exists) and creates it empty.
    pub fn new(dir: &Path) -> Result<Self> {
        clear_stale(dir)?;
        let old = if dir.exists() {
            let old = sibling(dir, "old");
            fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
            Some(old)
        } else {
            None
        };
        let guard = Aside { dir: dir.to_path_buf(), old, done: false };
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(guard)
    }

    /// The new content is complete: the old one goes.
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        if let Some(old) = &self.old {
            fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
        }
        Ok(())
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.dir);
            if let Some(old) = &self.old {
                let _ = fs::rename(old, &self.dir);
            }
        }
    }
}

/// Creates an output directory atomically: `fill` writes into a fresh temporary directory next to
/// `dir`, which replaces `dir` only once `fill` succeeded. An existing non-empty `dir` is an error
/// unless `force`; with `force` the old directory is moved aside and removed only after the new one
/// is in place.
pub fn write_dir_atomic(dir: &Path, force: bool, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    clear_stale(dir)?;
    if dir.is_file() {
        return Err(Error::file(dir, "exists and is a file; the output must be a directory"));
    }
    if !is_absent_or_empty(dir)? && !force {
        return Err(Error::file(dir, "exists and is not empty; choose another `out` or give `force` to replace it"));
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
    swap_in(&tmp, dir)
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

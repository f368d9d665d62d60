//! The library's error type. Every message names the thing that is wrong (a file, a tensor, an
//! option), what was expected and what was found, so that the CLI can print it as it is.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file. (The OS error is part of the message, not a separate
    /// cause: printing the cause chain would repeat it.)
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A file whose content is not what it should be (a checkpoint, a model directory, an image).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A tensor with the wrong shape, or missing, or unexpected.
    #[error("{}: tensor `{name}`: {msg}", path.display())]
    Tensor { path: PathBuf, name: String, msg: String },
    /// A user-supplied option or configuration value that cannot be used.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The user pressed Ctrl-C (or the process got SIGTERM): the work stopped at a safe point and
    /// temporary outputs were removed.
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, err: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), err }
    }
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::File { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn tensor(path: impl AsRef<Path>, name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { path: path.as_ref().to_path_buf(), name: name.into(), msg: msg.into() }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// `bail!(Error::...)`-free early return for invalid options.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { return Err($crate::error::Error::Invalid(format!($($arg)*))) };
}

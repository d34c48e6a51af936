//! Typed errors of the preparation stage. Every message names the file (or directory), the problem and the fix.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing an MRC/TIFF file failed (the I/O crate's error names the file and the fault).
    #[error(transparent)]
    Io(#[from] cryoden_io::Error),
    /// The operating system refused an operation on a path (listing a directory, renaming, creating).
    #[error("{}: {what}", path.display())]
    Fs {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A file's content cannot be used for this step (one-frame movie, NaN pixels, constant image, shapes that
    /// disagree, ...). The message says what was found and what to do.
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
    /// The arguments, taken together, cannot work (no inputs, a missing even/odd partner, patch too large, ...).
    #[error("{0}")]
    Usage(String),
    /// A dataset directory does not match its manifest (or the manifest is malformed).
    #[error("{}: {message}", path.display())]
    Dataset { path: PathBuf, message: String },
}

impl Error {
    pub(crate) fn fs(path: &Path, what: &'static str, source: std::io::Error) -> Error {
        Error::Fs {
            path: path.to_path_buf(),
            what,
            source,
        }
    }
    pub(crate) fn input(path: &Path, message: impl Into<String>) -> Error {
        Error::Input {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
    pub(crate) fn dataset(path: &Path, message: impl Into<String>) -> Error {
        Error::Dataset {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

//! Typed errors of the training stage. Every message names the file or directory, the problem and the fix.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The dataset cannot be opened or does not match its manifest (prep's error names the file and the fault).
    #[error(transparent)]
    Dataset(#[from] cryoden_prep::Error),
    /// Writing a sample image failed (io's error names the file).
    #[error(transparent)]
    Io(#[from] cryoden_io::Error),
    /// The network core refused something (architecture, backend failure, checkpoint contents).
    #[error(transparent)]
    Nn(#[from] cryoden_nn::NnError),
    /// The dataset can be read but cannot be trained on as asked (no validation part, too few pairs, a patch
    /// size the architecture cannot take, ...).
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    /// The settings, taken together, cannot work.
    #[error("{0}")]
    Usage(String),
    /// The run directory is not usable (already holds a run, resume files missing or inconsistent, ...).
    #[error("{}: {message}", path.display())]
    Run { path: PathBuf, message: String },
    /// The operating system refused an operation on a path. (The OS error is in the message, not a `source`,
    /// so printing the cause chain does not repeat it.)
    #[error("{}: {what}: {err}", path.display())]
    Fs {
        path: PathBuf,
        what: &'static str,
        err: std::io::Error,
    },
    /// The loss became NaN or infinite; training stopped and the last good checkpoint was kept.
    #[error(
        "{what} is {value} at step {step} (epoch {epoch}); training stopped. {kept} Lower --lr, check the dataset \
         for NaN/Inf pixels (`cryoden info`), or try --loss l1."
    )]
    NonFinite {
        what: &'static str,
        value: f32,
        step: u64,
        epoch: u64,
        kept: String,
    },
}

impl Error {
    pub(crate) fn fs(path: &Path, what: &'static str, err: std::io::Error) -> Error {
        Error::Fs {
            path: path.to_path_buf(),
            what,
            err,
        }
    }
    pub(crate) fn data(path: &Path, message: impl Into<String>) -> Error {
        Error::Data {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
    pub(crate) fn run(path: &Path, message: impl Into<String>) -> Error {
        Error::Run {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

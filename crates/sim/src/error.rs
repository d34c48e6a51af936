//! Typed errors of the simulator. Each says what is wrong and what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A structure file that cannot be used.
    #[error("{path}: {msg}")]
    Structure { path: PathBuf, msg: String },
    /// A parameter outside its valid range; `flag` names the command-line option.
    #[error("invalid {flag}: {msg}")]
    Config { flag: &'static str, msg: String },
    /// The requested particles do not fit in the field of view.
    #[error("{0}")]
    NoRoom(String),
    /// Reading or writing an output.
    #[error(transparent)]
    Io(#[from] cryoden_io::Error),
    /// An earlier simulation is in the output directory.
    #[error("{}: a simulation already exists here; choose another --out or pass --overwrite", .0.display())]
    Exists(PathBuf),
    /// A plain file-system error on an output path (the cause is the error's source).
    #[error("{path}: {msg}")]
    Fs {
        path: PathBuf,
        msg: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = SimError> = std::result::Result<T, E>;

pub(crate) fn config(flag: &'static str, msg: impl Into<String>) -> SimError {
    SimError::Config {
        flag,
        msg: msg.into(),
    }
}

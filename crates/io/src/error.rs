//! Typed errors. Every error about a file names the file, says what is wrong and, where there is one, the fix.

use std::fmt;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error while reading or writing a file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused (missing file, permissions, disk full, ...).
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not what its format requires (see [`Fault`]).
    #[error("{}: {fault}", path.display())]
    Format { path: PathBuf, fault: Fault },
    /// The caller asked for something this crate cannot do with these arguments (wrong buffer length, values that
    /// do not fit the requested mode, ...). Nothing was written.
    #[error("{}: {message}", path.display())]
    Usage { path: PathBuf, message: String },
}

impl Error {
    pub(crate) fn io(path: &Path, what: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    }
    pub(crate) fn format(path: &Path, fault: Fault) -> Error {
        Error::Format {
            path: path.to_path_buf(),
            fault,
        }
    }
    pub(crate) fn usage(path: &Path, message: impl Into<String>) -> Error {
        Error::Usage {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
    /// The format fault, if this is one (tests and callers that treat some faults specially).
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            Error::Format { fault, .. } => Some(fault),
            _ => None,
        }
    }
}

/// What is wrong with a file's content. One variant per fault, each message says what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Fault {
    #[error("the file is empty (0 bytes); it was probably not written completely — re-create or re-copy it")]
    Empty,
    #[error(
        "the file is {len} bytes, shorter than the 1024-byte MRC header; it is truncated or not an MRC file"
    )]
    ShortHeader { len: u64 },
    #[error(
        "not an MRC file: the map ID at byte 208 is {found:?}, expected \"MAP \"; check the file type \
         (read permissively to try anyway)"
    )]
    NotMrc { found: String },
    #[error(
        "unrecognised machine stamp {found} (expected 0x44 0x44/0x44 0x41 for little-endian or 0x11 0x11 for \
         big-endian); read permissively to guess the byte order from the header"
    )]
    MachineStamp { found: String },
    #[error(
        "MRC mode {0} (complex-valued Fourier data) is not supported: cryoden reads real images only (modes 0, 1, \
         2, 6, 12) — convert the file to real space first"
    )]
    ComplexMode(i32),
    #[error(
        "unknown MRC mode {0}; cryoden reads modes 0 (int8), 1 (int16), 2 (float32), 6 (uint16) and 12 (float16)"
    )]
    UnknownMode(i32),
    #[error(
        "invalid dimensions nx={nx} ny={ny} nz={nz}: {why}; the header is corrupt or the file is not an MRC file"
    )]
    Dimensions {
        nx: i64,
        ny: i64,
        nz: i64,
        why: String,
    },
    #[error(
        "extended header of {nsymbt} bytes (nsymbt) runs past the end of the {len}-byte file; the header is corrupt \
         or the file is truncated"
    )]
    ExtHeaderPastEof { nsymbt: i64, len: u64 },
    #[error(
        "truncated: the header promises {expected} bytes of data after the {offset}-byte header, but only {found} \
         are present; re-copy or re-create the file"
    )]
    Truncated {
        offset: u64,
        expected: u64,
        found: u64,
    },
    #[error(
        "{extra} bytes of unexpected data after the end of the data block; the header dimensions may be wrong \
         (read permissively to ignore them)"
    )]
    TrailingData { extra: u64 },
    #[error(
        "non-finite value {value} at voxel {index} (x={x}, y={y}, z={z}); fix the program that wrote it or \
         replace NaN/Inf before using the file"
    )]
    NonFinite {
        value: f32,
        index: u64,
        x: u64,
        y: u64,
        z: u64,
    },
    #[error("gzip stream is corrupt: {0}; re-download or re-compress the file")]
    Gzip(String),
    #[error("TIFF: {0}")]
    Tiff(String),
}

/// One way a file deviates from the MRC-2014 standard (as [`crate::mrc::validate`] and permissive reads report
/// them): which header field, what was found and what the standard expects.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Deviation {
    pub field: String,
    pub found: String,
    pub expected: String,
}

impl Deviation {
    pub(crate) fn new(field: &str, found: impl ToString, expected: impl ToString) -> Deviation {
        Deviation {
            field: field.to_string(),
            found: found.to_string(),
            expected: expected.to_string(),
        }
    }
}

impl fmt::Display for Deviation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: found {}, expected {}",
            self.field, self.found, self.expected
        )
    }
}

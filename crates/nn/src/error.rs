//! Typed errors of the nn crate.

use std::path::PathBuf;

/// Everything that can go wrong in cryoden-nn. Variants about files name the file and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// An image size the architecture cannot take (each pooling halves it exactly).
    #[error(
        "input {h}x{w} does not fit architecture {arch}: height and width must be divisible by {divisor} \
         (nearest valid sizes: height {h_lo} or {h_hi}, width {w_lo} or {w_hi})"
    )]
    InputSize {
        arch: String,
        h: usize,
        w: usize,
        divisor: usize,
        h_lo: usize,
        h_hi: usize,
        w_lo: usize,
        w_hi: usize,
    },
    /// An input smaller than the architecture's minimum (a pooling would produce an empty map).
    #[error("input {h}x{w} is too small for architecture {arch}: need at least {min}x{min}")]
    InputTooSmall {
        arch: String,
        h: usize,
        w: usize,
        min: usize,
    },
    /// A bad architecture description (unknown name, bad widths).
    #[error("invalid architecture: {0}")]
    Arch(String),
    /// A buffer or slice of the wrong length was passed to an op or helper.
    #[error("{what}: expected {expected} values, got {got}")]
    Length {
        what: String,
        expected: usize,
        got: usize,
    },
    /// An op was called with inconsistent shapes or views.
    #[error("shape error in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A checkpoint was written for another architecture than the one asked for.
    #[error(
        "checkpoint {path} holds architecture {found}, expected {expected}: pass the matching --arch/--widths \
         or use another checkpoint"
    )]
    ArchMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    /// A tensor in a checkpoint has the wrong shape, is missing, or is unexpected.
    #[error("checkpoint {path}: tensor {name}: {problem}")]
    Tensor {
        path: PathBuf,
        name: String,
        problem: String,
    },
    /// A checkpoint file is not valid safetensors or lacks the metadata cryoden writes.
    #[error("checkpoint {path}: {problem}")]
    Checkpoint { path: PathBuf, problem: String },
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A failure inside a backend (device errors, out of memory).
    #[error("backend {backend}: {msg}")]
    Backend { backend: String, msg: String },
    /// The loss became NaN or infinite.
    #[error("loss is not finite ({0})")]
    NonFiniteLoss(f32),
}

pub type Result<T, E = NnError> = std::result::Result<T, E>;

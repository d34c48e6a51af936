//! cryoden-infer: denoise micrographs of any size with a trained model.
//!
//! - [`receptive`]: how far each architecture sees ([`receptive::context_radius`]), hence the default context.
//! - [`tiling`]: fixed-size windows with context, shifted inwards at the borders; reflection padding to the
//!   model's alignment.
//! - [`Denoiser`]: a model on a backend; [`Denoiser::denoise`] normalises as in training, runs the tiles in
//!   batches and restores the input's units. Memory is set by the window size and batch, not the image size.
//! - [`bench`]: the pipeline on synthetic micrographs, timed in steady state (`cryoden bench denoise`).
//! - [`files`] and [`pipeline`]: inputs as files, directories or globs, `--shard`, output names, and a run over
//!   thousands of files with reading, compute and writing overlapped; a bad file is reported and skipped.

pub mod bench;
pub mod denoiser;
pub mod files;
pub mod pipeline;
pub mod receptive;
pub mod tiling;

pub use denoiser::{
    image_stats, image_stats_with, Denoiser, Normalization, Options, Profile, Stats,
};
pub use files::{expand_inputs, plan_outputs, Format, Job, Shard};
pub use pipeline::{header_label, run, Outcome, RunOptions, Status, Summary};
pub use receptive::{alignment, context_radius, default_context};

use std::path::PathBuf;

/// Errors of denoising.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nn(#[from] cryoden_nn::NnError),
    #[error(transparent)]
    Io(#[from] cryoden_io::Error),
    #[error("checkpoint {path}: {problem}")]
    Checkpoint { path: PathBuf, problem: String },
    #[error("{path}: {problem}")]
    Input { path: PathBuf, problem: String },
    #[error(
        "image {nx}×{ny} is smaller than the {min}×{min} minimum of model {arch} (its pooling levels): denoise \
         larger images"
    )]
    TooSmall {
        nx: usize,
        ny: usize,
        min: usize,
        arch: String,
    },
    #[error("cannot normalise the image: {0}")]
    Normalize(String),
    #[error("{0}")]
    Usage(String),
}

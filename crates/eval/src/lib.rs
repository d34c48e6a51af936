//! cryoden-eval: how good is a denoised micrograph?
//!
//! - [`metrics`]: the affine fit, MSE, PSNR and SSIM against a truth (scikit-image's definitions), and the
//!   held-out Noise2Noise error when there is no truth.
//! - [`fourier`]: Fourier ring correlation with its 1/7-threshold resolution, radially averaged power spectra.
//! - [`filters`] and [`baselines`]: Gaussian blur and low-pass baselines, their parameters tuned on data.
//! - [`evaluate`]: models and baselines on the same micrographs ([`evaluate::evaluate`] → [`evaluate::Evaluation`],
//!   the `--json` output); [`report`]: `report.html` and its figures ([`plot`]).
//!
//! Images are row-major `f32` slices, `x` fastest, with their width `nx` and height `ny`; all sums run in f64.

pub mod baselines;
pub mod evaluate;
pub mod filters;
pub mod fourier;
pub mod metrics;
pub mod plot;
pub mod report;

pub use baselines::{tune, Baseline, BaselineKind, Criterion, TunePair, Tuning};
pub use fourier::{frc, power_spectrum, Frc, PowerSpectrum};
pub use metrics::{
    data_range, fit_affine, mse, n2n_error, psnr, score_against_truth, ssim, Affine, TruthScores,
};

/// Errors of the evaluation library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image shapes do not match: {0}")]
    ShapeMismatch(String),
    #[error("{0}")]
    Invalid(String),
    #[error("drawing a figure: {0}")]
    Plot(String),
    #[error(transparent)]
    Io(#[from] cryoden_io::Error),
    #[error("{path}: cannot write ({source}); check the directory exists and is writable")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Writes `bytes` to `path` through a temporary file in the same directory, renamed on success.
pub fn write_file_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = cryoden_io::AtomicFile::create(path)?;
    std::io::Write::write_all(f.file(), bytes).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })?;
    f.commit()?;
    Ok(())
}

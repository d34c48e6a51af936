//! `RUN/samples/`: every `--sample-every` epochs, the network's output on one fixed validation patch, next to
//! its input and target, as MRC (exact values) and PNG (a quick look; 0.5–99.5 % percentile contrast per image).
//!
//! Files: `epochNNNN_input.{mrc,png}`, `epochNNNN_output.{mrc,png}`, `epochNNNN_target.{mrc,png}`.

use crate::error::{Error, Result};
use crate::loader::{validation_batch, PairSource};
use cryoden_io::{Contrast, WriteOptions};
use cryoden_nn::{Backend, Model};
use std::path::{Path, PathBuf};

pub const SAMPLES_DIR: &str = "samples";

/// The validation pair that is exported: the middle one (fixed for the life of the run).
pub fn sample_index(n_val: usize) -> usize {
    n_val / 2
}

/// Runs the model on the fixed validation pair (centre `crop × crop`) and writes the three images; returns the
/// paths written.
pub fn export<B: Backend>(
    be: &B,
    model: &Model,
    params: &B::Buf,
    val: &dyn PairSource,
    crop: usize,
    run: &Path,
    epoch: u64,
) -> Result<Vec<PathBuf>> {
    let idx = sample_index(val.len());
    // The centre crop of pair `idx`, exactly as validation sees it.
    let b = validation_batch(val, idx..idx + 1, crop);
    let mut acts = model.activations(be, 1, crop, crop)?;
    acts.upload_input(be, &b.input)?;
    model.forward(be, params, &mut acts)?;
    let mut output = vec![0.0f32; crop * crop];
    acts.download_output(be, &mut output)?;

    let dir = run.join(SAMPLES_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::fs(&dir, "cannot create the samples directory", e))?;
    let mut written = Vec::new();
    let opts = WriteOptions {
        labels: vec![
            format!("cryoden {}", env!("CARGO_PKG_VERSION")),
            format!("validation pair {idx}, epoch {epoch}"),
        ],
        ..WriteOptions::default()
    };
    for (name, img) in [
        ("input", &b.input[..]),
        ("output", &output[..]),
        ("target", &b.target[..]),
    ] {
        let stem = dir.join(format!("epoch{epoch:04}_{name}"));
        let mrc = stem.with_extension("mrc");
        cryoden_io::write(&mrc, img, [crop, crop, 1], &opts)?;
        let png = stem.with_extension("png");
        cryoden_io::write_png(&png, img, crop, crop, Contrast::default())?;
        written.extend([mrc, png]);
    }
    Ok(written)
}

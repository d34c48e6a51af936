//! The run's checkpoints, written with `cryoden_nn::checkpoint` (safetensors, PyTorch layout, atomic):
//!
//! - `RUN/best.safetensors`: weights of the epoch with the lowest validation loss so far;
//! - `RUN/last.safetensors` + `RUN/last.optimizer.safetensors`: weights, Adam moments and step count after the
//!   last complete epoch — everything `--resume` needs. No random-generator state is stored because there is
//!   none to store: each epoch's shuffle and augmentation are drawn from `(seed, epoch)` afresh (see `plan`).
//!
//! Every file carries, in its `meta` JSON: the run record (`training`: all settings, dataset, loader, backend),
//! the dataset's normalisation and manifest checksum, and the [`EpochState`].

use crate::config::RunRecord;
use crate::error::{Error, Result};
use cryoden_nn::checkpoint as ck;
use cryoden_nn::Model;
use cryoden_prep::Manifest;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const BEST_WEIGHTS: &str = "best.safetensors";
pub const LAST_WEIGHTS: &str = "last.safetensors";
pub const LAST_STATE: &str = "last.optimizer.safetensors";

/// Where a run stands after a complete epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochState {
    /// Complete epochs.
    pub epochs_done: u64,
    /// Optimizer steps taken (= Adam's step count).
    pub step: u64,
    /// `(epoch, validation loss)` of best.safetensors.
    pub best: Option<(u64, f64)>,
    /// Validation loss of the last complete epoch.
    pub last_val_loss: Option<f64>,
    /// Wall time of the run so far, summed over sessions.
    pub elapsed_s: f64,
}

/// What every checkpoint of the run records besides the tensors.
pub struct Meta<'a> {
    pub record: &'a RunRecord,
    pub manifest: &'a Manifest,
    pub state: &'a EpochState,
}

impl Meta<'_> {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "training": self.record,
            "normalize": self.manifest.normalize,
            "dataset_manifest_sha256": self.record.manifest_sha256,
            "state": self.state,
        })
    }
}

/// Writes `RUN/best.safetensors`.
pub fn save_best(out: &Path, model: &Model, params: &[f32], meta: &Meta) -> Result<()> {
    Ok(ck::save_weights(
        &out.join(BEST_WEIGHTS),
        model,
        params,
        &meta.json(),
    )?)
}

/// Writes `RUN/last.safetensors` and `RUN/last.optimizer.safetensors` (each atomically).
pub fn save_last(
    out: &Path,
    model: &Model,
    params: &[f32],
    m: &[f32],
    v: &[f32],
    meta: &Meta,
) -> Result<()> {
    let json = meta.json();
    let adam = &meta.record.config.adam;
    ck::save_weights(&out.join(LAST_WEIGHTS), model, params, &json)?;
    ck::save_optimizer(
        &out.join(LAST_STATE),
        model,
        m,
        v,
        meta.state.step,
        adam,
        &json,
    )?;
    Ok(())
}

/// Parameters, Adam moments and epoch state of the last checkpoint; `None` when the run has none yet (it was
/// stopped during its first epoch).
#[allow(clippy::type_complexity)]
pub fn load_last(
    out: &Path,
    model: &Model,
) -> Result<Option<(Vec<f32>, Vec<f32>, Vec<f32>, EpochState)>> {
    let (wp, sp) = (out.join(LAST_WEIGHTS), out.join(LAST_STATE));
    match (wp.exists(), sp.exists()) {
        (false, false) => return Ok(None),
        (true, false) | (false, true) => {
            let missing = if wp.exists() { &sp } else { &wp };
            return Err(Error::run(
                missing,
                "is missing while its partner checkpoint file exists; the run cannot be resumed exactly — start \
                 a new run (best.safetensors, if present, is a usable model)",
            ));
        }
        (true, true) => {}
    }
    let w = ck::load_weights(&wp, Some(model.arch()))?;
    let o = ck::load_optimizer(&sp, model)?;
    let state = |path: &Path, meta: &serde_json::Value| -> Result<EpochState> {
        serde_json::from_value(meta.get("state").cloned().unwrap_or_default()).map_err(|e| {
            Error::run(
                path,
                format!("metadata has no valid training state ({e}): not a cryoden run checkpoint"),
            )
        })
    };
    let (ws, os) = (state(&wp, &w.meta)?, state(&sp, &o.meta)?);
    if ws.step != os.step || o.step != os.step {
        return Err(Error::run(
            out,
            format!(
                "{LAST_WEIGHTS} is from step {} but {LAST_STATE} is from step {} (the run was stopped while writing \
                 them); it cannot be resumed exactly — start a new run (best.safetensors is a usable model)",
                ws.step, os.step
            ),
        ));
    }
    Ok(Some((w.params, o.m, o.v, os)))
}

/// The parameters (flat, internal layout) of a weights file written for `model`'s architecture.
pub fn load_weights(path: &Path, model: &Model) -> Result<Vec<f32>> {
    Ok(ck::load_weights(path, Some(model.arch()))?.params)
}

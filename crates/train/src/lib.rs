//! cryoden-train: the training loop of `cryoden train`.
//!
//! - [`plan`]: each epoch's shuffled order and per-sample augmentation (flips, 90° rotations, input/target swap,
//!   random crops), a pure function of `(seed, epoch)`;
//! - [`loader`]: the in-memory and streaming (memory-mapped, background prefetch, bounded queue) loaders, which
//!   produce identical batches;
//! - [`data`]: opening and checking a dataset written by `cryoden prepare`, choosing the loader;
//! - [`run`]: the loop — validation over the whole validation set every epoch, best/last checkpoints
//!   ([`checkpoint`]), `metrics.jsonl` ([`metrics`]), sample exports ([`samples`]), exact `--resume`, a clear
//!   stop on a NaN/Inf loss.
//!
//! ```no_run
//! use cryoden_train::{train, Device, LoaderChoice, Quiet, RunOptions, TrainConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let be = cryoden_nn::cpu::Cpu::new(0)?;
//! let config = TrainConfig::new(cryoden_nn::Arch::from_name("unet", Some(&[16, 32, 64]))?);
//! let opts = RunOptions {
//!     data: "dataset".into(), out: "run".into(), loader: LoaderChoice::Auto, prefetch: 4,
//!     device: Device::Cpu, resume: false,
//! };
//! let summary = train(&be, &config, &opts, &mut Quiet)?;
//! # Ok(()) }
//! ```

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod loader;
pub mod metrics;
pub mod plan;
pub mod run;
pub mod samples;

pub use config::{Device, DeviceRequest, LoaderChoice, RunOptions, RunRecord, TrainConfig};
pub use error::{Error, Result};
pub use loader::{Batch, Batches, InMemoryPairs, LoaderKind, PairSource};
pub use plan::{Aug, AugmentConfig, EpochPlan};
pub use run::{read_run_record, train, Observer, Quiet, Summary};

//! Every setting of a training run, recorded in `RUN/config.json` (and read back by `--resume`).

use crate::loader::LoaderKind;
use crate::plan::AugmentConfig;
use cryoden_nn::{AdamParams, Arch, LossKind};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the network runs. A small enum so the CUDA backend plugs in without touching the loop, which is
/// generic over [`cryoden_nn::Backend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Device {
    Cpu,
    /// An NVIDIA GPU by ordinal (`cuda` = `cuda:0`).
    Cuda {
        ordinal: usize,
    },
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Device, String> {
        let bad = || format!("unknown device {s:?}: use cpu, cuda or cuda:N");
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda { ordinal: 0 }),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                Ok(Device::Cuda {
                    ordinal: n.parse().map_err(|_| bad())?,
                })
            }
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// What `--device` asked for: a device, or `auto` (the first GPU when this build has CUDA and a usable GPU is
/// found, else the CPU, said loudly). A run always records the resolved [`Device`], never `auto`: the CLI resolves
/// the request once at start (`cryoden::cmd::doctor::resolve_device`), so the backend match stays exhaustive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Device(Device),
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<DeviceRequest, String> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            _ => s
                .parse()
                .map(DeviceRequest::Device)
                .map_err(|_| format!("unknown device {s:?}: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceRequest::Auto => write!(f, "auto"),
            DeviceRequest::Device(d) => d.fmt(f),
        }
    }
}

/// Which loader the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoaderChoice {
    /// In-memory if the dataset fits comfortably in RAM (≤ [`crate::data::IN_MEMORY_FRACTION`] of the memory
    /// available), else streaming.
    Auto,
    InMemory,
    Streaming,
}

/// The settings that decide the numbers a run produces. Fixed for the life of a run; `--resume` refuses to
/// change any of them except `epochs` (which may grow) and `sample_every`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub arch: Arch,
    /// Number of passes over the training pairs.
    pub epochs: u64,
    /// Pairs per step.
    pub batch: usize,
    /// Side of the random crops fed to the network; `None` = the dataset's patch size.
    pub crop: Option<usize>,
    pub loss: LossKind,
    pub adam: AdamParams,
    /// Seeds the initial weights, the shuffle order and the augmentation.
    pub seed: u64,
    pub augment: AugmentConfig,
    /// Export the fixed validation sample every this many epochs (0 = never).
    pub sample_every: u64,
}

impl TrainConfig {
    /// The defaults of `cryoden train` for `arch`.
    pub fn new(arch: Arch) -> TrainConfig {
        TrainConfig {
            arch,
            epochs: 10,
            batch: 8,
            crop: None,
            loss: LossKind::Mse,
            adam: AdamParams {
                lr: 1e-4,
                ..AdamParams::default()
            },
            seed: 0,
            augment: AugmentConfig::ALL,
            sample_every: 1,
        }
    }
}

/// Everything about a run that does not change its numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    /// The dataset directory (written by `cryoden prepare`).
    pub data: PathBuf,
    /// The run directory: config.json, metrics.jsonl, checkpoints, samples/.
    pub out: PathBuf,
    pub loader: LoaderChoice,
    /// Batches queued ahead by the streaming loader's thread.
    pub prefetch: usize,
    /// Device the backend was made for (recorded in config.json).
    pub device: Device,
    /// Continue the run in `out` from its last checkpoint (settings come from its config.json).
    pub resume: bool,
}

/// `RUN/config.json`: the settings plus what they were applied to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// Always `"cryoden-train-run"`.
    pub format: String,
    pub version: u32,
    /// Program and version, e.g. `"cryoden 0.1.0"`.
    pub tool: String,
    pub config: TrainConfig,
    /// The dataset as given on the command line, made absolute.
    pub data: PathBuf,
    /// SHA-256 of the dataset's manifest.json (which itself holds the SHA-256 of the four stacks).
    pub manifest_sha256: String,
    pub patch_size: usize,
    /// The crop actually used (`config.crop` or the patch size).
    pub crop: usize,
    pub train_pairs: usize,
    pub val_pairs: usize,
    pub steps_per_epoch: usize,
    /// Loader and backend of the most recent start (they do not change the numbers).
    pub loader: LoaderKind,
    pub device: Device,
    pub backend: String,
    /// Parameter count of the model.
    pub parameters: usize,
}

pub const RUN_FORMAT: &str = "cryoden-train-run";
pub const RUN_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda { ordinal: 0 }));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda { ordinal: 3 }));
        assert!("gpu"
            .parse::<Device>()
            .unwrap_err()
            .contains("use cpu, cuda or cuda:N"));
        assert!("cuda:x".parse::<Device>().is_err());
        assert_eq!(Device::Cuda { ordinal: 1 }.to_string(), "cuda:1");
    }

    #[test]
    fn device_requests() {
        assert_eq!("auto".parse::<DeviceRequest>(), Ok(DeviceRequest::Auto));
        assert_eq!(
            "cuda:2".parse::<DeviceRequest>(),
            Ok(DeviceRequest::Device(Device::Cuda { ordinal: 2 }))
        );
        assert!("gpu"
            .parse::<DeviceRequest>()
            .unwrap_err()
            .contains("use auto, cpu, cuda or cuda:N"));
        assert_eq!(DeviceRequest::Auto.to_string(), "auto");
        assert_eq!(DeviceRequest::Device(Device::Cpu).to_string(), "cpu");
    }

    #[test]
    fn config_round_trips_and_refuses_unknown_fields() {
        let c = TrainConfig::new(Arch::Unet {
            widths: vec![8, 16],
        });
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&s).unwrap(), c);
        let bad = s.replacen('{', "{\"lrr\":1,", 1);
        assert!(serde_json::from_str::<TrainConfig>(&bad).is_err());
    }
}

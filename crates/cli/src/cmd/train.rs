//! `cryoden train`: train a denoiser on a dataset written by `cryoden prepare`. Glue only: flags → a
//! `TrainConfig`, a backend for `--device`, a progress bar; the loop is `cryoden_train::train`.

use anyhow::{bail, Context};
use cryoden_nn::{Arch, LossKind};
use cryoden_train::metrics::Record;
use cryoden_train::{Device, DeviceRequest, LoaderChoice, Observer, RunOptions, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Dataset directory written by `cryoden prepare` (manifest.json + four MRC stacks). With --resume it
    /// defaults to the run's dataset.
    #[arg(long, value_name = "DATASET", required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Run directory to create: config.json, metrics.jsonl, best.safetensors, last.safetensors (+ optimizer
    /// state), samples/. Refused if it already holds a run.
    #[arg(
        long,
        value_name = "RUN",
        required_unless_present = "resume",
        conflicts_with = "resume"
    )]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN from its last checkpoint, exactly as if it had never stopped. Settings come from
    /// RUN/config.json; only --epochs (to train further) and --sample-every may change.
    #[arg(long, value_name = "RUN")]
    pub resume: Option<PathBuf>,
    /// Network: unet (the plan's U-Net, --widths), topaz-unet or topaz-unet-small (Topaz's, fixed widths).
    /// [default: unet]
    #[arg(long, value_parser = ["unet", "topaz-unet", "topaz-unet-small"])]
    pub arch: Option<String>,
    /// Channels per level of unet, comma-separated. [default: 32,64,128,256]
    #[arg(long, value_delimiter = ',', value_name = "W,W,...")]
    pub widths: Option<Vec<usize>>,
    /// Passes over the training pairs. [default: 10]
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Pairs per optimizer step. [default: 8]
    #[arg(long)]
    pub batch: Option<usize>,
    /// Adam learning rate (betas 0.9, 0.999, eps 1e-8, as torch.optim.Adam). [default: 1e-4]
    #[arg(long)]
    pub lr: Option<f64>,
    /// Loss: mse or l1. [default: mse]
    #[arg(long, value_parser = ["mse", "l1"])]
    pub loss: Option<String>,
    /// Train on random CROP×CROP windows of the dataset's patches (validation uses the centre window).
    /// [default: the patch size]
    #[arg(long)]
    pub crop: Option<usize>,
    /// Seeds the initial weights, the shuffle order and the augmentation. [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Augmentations, comma-separated from flip, rot90, swap (input ↔ target), or `none`.
    /// [default: flip,rot90,swap]
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub augment: Option<Vec<String>>,
    /// auto (the first GPU if this build has CUDA and a usable GPU is found, else the CPU, said loudly on
    /// stderr), cpu, or cuda[:N] (needs a build with --features cuda; fails if the GPU is unusable). The device
    /// actually used is recorded in config.json.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// Arithmetic on the GPU: f32 (TF32 off, matches the CPU to ~1e-6), tf32 (tensor cores for the convolutions,
    /// PyTorch's default) or bf16 (bf16 activations and weight copies, f32 master weights and Adam moments). The
    /// CPU computes in f32 only. Recorded in config.json as part of the backend's name.
    #[arg(long, default_value = "f32", value_parser = ["f32", "tf32", "bf16"])]
    pub precision: String,
    /// CPU threads (0 = one per logical CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Stream pairs from the memory-mapped stacks with a prefetch thread (bounded memory). Default: in-memory
    /// when the dataset takes ≤ 40 % of available RAM, else streaming.
    #[arg(long, conflicts_with = "in_memory")]
    pub stream: bool,
    /// Load the whole dataset into RAM first.
    #[arg(long)]
    pub in_memory: bool,
    /// Batches prepared ahead on the loader thread (both loaders; overlapped with the training step).
    #[arg(long, default_value_t = 4)]
    pub prefetch: usize,
    /// Every N epochs, write the output on a fixed validation patch to RUN/samples/ (0 = never). [default: 1]
    #[arg(long, value_name = "N")]
    pub sample_every: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = super::doctor::resolve_device(args.device);
    let (config, opts) = settings(&args, device)?;
    let mut progress = Progress::new();
    let summary = match device {
        Device::Cpu => {
            if args.precision != "f32" {
                if args.device != DeviceRequest::Auto {
                    bail!(
                        "--precision {}: the CPU backend computes in f32 only; use --device cuda for tf32/bf16",
                        args.precision
                    );
                }
                eprintln!(
                    "note: --precision {} ignored: the CPU computes in f32",
                    args.precision
                );
            }
            let be =
                cryoden_nn::cpu::Cpu::new(args.threads).context("cannot start the CPU backend")?;
            cryoden_train::train(&be, &config, &opts, &mut progress)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda { ordinal } => {
            let precision: cryoden_cuda::Precision = args.precision.parse()?;
            let be = cryoden_cuda::CudaBackend::new(ordinal, precision)?;
            eprintln!("device: {}", cryoden_nn::Backend::name(&be));
            cryoden_train::train(&be, &config, &opts, &mut progress)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda { .. } => bail!(
            "--device cuda: this cryoden was built without CUDA support; rebuild with `cargo build --release \
             --features cuda`, or use --device cpu"
        ),
    };
    progress.bar.finish_and_clear();
    let s = summary?;
    let best = match s.best {
        Some((e, l)) => format!(
            "best validation loss {l:.6} at epoch {e} ({})",
            s.run_dir.join("best.safetensors").display()
        ),
        None => "no epoch completed".into(),
    };
    let plural = if s.epochs_done == 1 { "" } else { "s" };
    eprintln!(
        "done: {} epoch{plural}, {} steps; {best}",
        s.epochs_done, s.steps
    );
    Ok(())
}

/// Flags → settings. A fresh run starts from the defaults; a resumed one from its config.json, and the library
/// refuses any change but --epochs and --sample-every.
fn settings(a: &Args, device: Device) -> anyhow::Result<(TrainConfig, RunOptions)> {
    let (mut c, data, out, resume) = match &a.resume {
        Some(run) => {
            let rec = cryoden_train::read_run_record(run)?;
            let data = a.data.clone().unwrap_or(rec.data.clone());
            (rec.config, data, run.clone(), true)
        }
        None => {
            let arch = Arch::from_name(a.arch.as_deref().unwrap_or("unet"), a.widths.as_deref())?;
            let data = a.data.clone().context("--data is required")?;
            let out = a.out.clone().context("--out is required")?;
            (TrainConfig::new(arch), data, out, false)
        }
    };
    if resume && (a.arch.is_some() || a.widths.is_some()) {
        let arch = Arch::from_name(
            a.arch.as_deref().unwrap_or(c.arch.name()),
            a.widths.as_deref(),
        )?;
        c.arch = arch;
    }
    if let Some(v) = a.epochs {
        c.epochs = v;
    }
    if let Some(v) = a.batch {
        c.batch = v;
    }
    if let Some(v) = a.lr {
        c.adam.lr = v;
    }
    if let Some(v) = &a.loss {
        c.loss = if v == "l1" {
            LossKind::L1
        } else {
            LossKind::Mse
        };
    }
    if let Some(v) = a.crop {
        c.crop = Some(v);
    }
    if let Some(v) = a.seed {
        c.seed = v;
    }
    if let Some(list) = &a.augment {
        c.augment = parse_augment(list)?;
    }
    if let Some(v) = a.sample_every {
        c.sample_every = v;
    }
    let loader = match (a.stream, a.in_memory) {
        (true, _) => LoaderChoice::Streaming,
        (_, true) => LoaderChoice::InMemory,
        _ => LoaderChoice::Auto,
    };
    Ok((
        c,
        RunOptions {
            data,
            out,
            loader,
            prefetch: a.prefetch.max(1),
            device,
            resume,
        },
    ))
}

fn parse_augment(list: &[String]) -> anyhow::Result<cryoden_train::AugmentConfig> {
    let mut c = cryoden_train::AugmentConfig::NONE;
    for item in list {
        match item.trim() {
            "flip" => c.flip = true,
            "rot90" => c.rot90 = true,
            "swap" => c.swap = true,
            "none" if list.len() == 1 => {}
            other => bail!("--augment: unknown item {other:?}; use a comma-separated list of flip, rot90, swap, or none"),
        }
    }
    Ok(c)
}

/// Progress bar with ETA over all steps of the run, one line per epoch, messages above the bar.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new() -> Progress {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps ({per_sec}, ETA {eta}) {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Progress { bar }
    }
}

impl Observer for Progress {
    fn message(&mut self, msg: &str) {
        self.bar.suspend(|| eprintln!("{msg}"));
    }
    fn begin(&mut self, total: u64, done: u64) {
        self.bar.set_length(total);
        self.bar.set_position(done);
        self.bar.reset_eta();
    }
    fn step(&mut self, r: &Record) {
        self.bar.set_position(r.step);
        if let Some(l) = r.loss {
            self.bar
                .set_message(format!("epoch {} loss {l:.5}", r.epoch));
        }
    }
    fn validating(&mut self, epoch: u64) {
        self.bar.set_message(format!("epoch {epoch} validating"));
    }
    fn epoch(&mut self, r: &Record) {
        let line = format!(
            "epoch {}: loss {:.6}  val_loss {:.6}{}  {:.1} images/s  {:.0} s",
            r.epoch,
            r.loss.unwrap_or(f64::NAN),
            r.val_loss.unwrap_or(f64::NAN),
            if r.best == Some(true) { " (best)" } else { "" },
            r.images_per_s,
            r.elapsed_s
        );
        self.bar.suspend(|| eprintln!("{line}"));
    }
}

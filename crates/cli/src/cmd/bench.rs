//! `cryoden bench`: throughput measurements, JSON out. Each target is one variant; its code lives in the crate
//! that owns the work (io, nn, infer, ...), this file only parses flags and prints.

use anyhow::{bail, Context};
use cryoden_train::{Device, DeviceRequest};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub target: Target,
}

#[derive(clap::Subcommand)]
pub enum Target {
    /// Time training steps (forward, loss, backward, Adam) of a model on a synthetic batch.
    Train(TrainArgs),
    /// Denoise N synthetic micrographs MRC file in → MRC file out through the real pipeline; steady-state
    /// seconds per micrograph, Mpixel/s, peak host and device memory.
    Denoise(DenoiseArgs),
    /// Forward, loss and every gradient of a backend against a PyTorch fixture written by `python/verify.py`
    /// (relative L2 per tensor). `python/verify.py --device cuda --cryoden BIN` runs it for each precision.
    Parity(ParityArgs),
    /// Read a 4096² mode-6 (uint16) micrograph to f32 and write it as mode 2, from the page cache.
    Io(IoArgs),
}

/// `cryoden bench io`: the measurement lives in `cryoden_io::bench`.
#[derive(clap::Args)]
pub struct IoArgs {
    /// Square image side in pixels.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Timed round trips (the median is reported), after one untimed warm-up.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Directory for the scratch files (removed afterwards); default: the system temporary directory.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn run_io(a: IoArgs) -> anyhow::Result<()> {
    let dir = a.dir.unwrap_or_else(std::env::temp_dir);
    let r = cryoden_io::bench::io_roundtrip(&dir, a.size, a.repeats)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}² mode 6 -> f32 -> mode 2, median of {}: read {:.1} ms ({:.2} GB/s), write {:.1} ms ({:.2} GB/s), \
             round trip {:.1} ms ({:.2} GB/s of file bytes), {} threads",
            r.size,
            r.repeats,
            r.read_s * 1e3,
            r.read_gb_s,
            r.write_s * 1e3,
            r.write_gb_s,
            r.total_s * 1e3,
            r.roundtrip_gb_s,
            r.threads
        );
    }
    Ok(())
}

/// `cryoden bench train`: the measurement lives in `cryoden_nn::bench`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// auto (the GPU if this build has CUDA and one is usable, else the CPU, said loudly), cpu, or cuda[:N].
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// GPU arithmetic: f32 (TF32 off), tf32 or bf16 (bf16 activations, f32 master weights). The CPU is f32 only.
    /// [default: tf32 on a GPU]
    #[arg(long, value_parser = ["f32", "tf32", "bf16"])]
    pub precision: Option<String>,
    /// Architecture: unet, topaz-unet or topaz-unet-small.
    #[arg(long, default_value = "unet")]
    pub arch: String,
    /// Channel widths per level, comma-separated (unet only; default 32,64,128,256).
    #[arg(long, value_delimiter = ',')]
    pub widths: Option<Vec<usize>>,
    /// Square image side in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed steps before timing (caches, page faults, allocator).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// CPU threads (0 = all logical CPUs).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Loss: mse or l1.
    #[arg(long, default_value = "mse")]
    pub loss: String,
    /// Seed of the initial weights and the synthetic batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.target {
        Target::Train(a) => run_train(a),
        Target::Io(a) => run_io(a),
        Target::Denoise(a) => run_denoise(a),
        Target::Parity(a) => run_parity(a),
    }
}

/// The resolved device, and the precision: the CPU computes in f32 only (refused otherwise when the CPU was asked
/// for; ignored with a note when `auto` fell back to it).
fn device_and_precision(
    req: DeviceRequest,
    precision: Option<&str>,
) -> anyhow::Result<(Device, String)> {
    let device = super::doctor::resolve_device(req);
    let p = match (device, precision) {
        (Device::Cpu, Some(p)) if p != "f32" => {
            if req == DeviceRequest::Auto {
                eprintln!("note: --precision {p} ignored: the CPU computes in f32");
            } else {
                bail!("--precision {p}: the CPU backend computes in f32 only; use --device cuda for tf32/bf16");
            }
            "f32".to_string()
        }
        (Device::Cpu, _) => "f32".to_string(),
        (Device::Cuda { .. }, p) => p.unwrap_or("tf32").to_string(),
    };
    Ok((device, p))
}

/// A probe of the device memory in use on the backend's GPU, in MiB (total minus free: includes the CUDA
/// context and what the stream-ordered allocator keeps pooled).
#[cfg(feature = "cuda")]
fn gpu_used_probe(be: &cryoden_cuda::CudaBackend) -> impl FnMut() -> Option<f64> {
    let ctx = be.gpu().ctx.clone();
    move || {
        let (free, total) = ctx.mem_get_info().ok()?;
        Some((total - free) as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(not(feature = "cuda"))]
fn no_cuda(device: Device) -> anyhow::Error {
    anyhow::anyhow!(
        "--device {device}: this cryoden was built without CUDA support; rebuild with `cargo build --release \
         --features cuda`, or use --device cpu"
    )
}

/// `cryoden bench denoise`: the measurement lives in `cryoden_infer::bench`.
#[derive(clap::Args)]
pub struct DenoiseArgs {
    /// auto (the GPU if this build has CUDA and one is usable, else the CPU, said loudly), cpu, or cuda[:N].
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// GPU arithmetic: f32, tf32 or bf16 (see `cryoden bench train --help`). [default: tf32 on a GPU]
    #[arg(long, value_parser = ["f32", "tf32", "bf16"])]
    pub precision: Option<String>,
    /// Architecture (random weights: the cost does not depend on them): topaz-unet, topaz-unet-small or unet.
    #[arg(long, default_value = "topaz-unet")]
    pub arch: String,
    /// Channel widths per level, comma-separated (unet only; default 32,64,128,256).
    #[arg(long, value_delimiter = ',')]
    pub widths: Option<Vec<usize>>,
    /// Square micrograph side in pixels.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Micrographs to denoise.
    #[arg(long, default_value_t = 50)]
    pub files: usize,
    /// First files left out of the steady-state figure (cuDNN algorithm search, buffer allocation).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Core tile side in pixels (as `cryoden denoise --tile`).
    #[arg(long, default_value_t = 1024)]
    pub tile: usize,
    /// Context around each tile [default: the model's receptive radius].
    #[arg(long)]
    pub context: Option<usize>,
    /// Tiles per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Output format: mrc (float32) or mrc16 (float16).
    #[arg(long, default_value = "mrc")]
    pub format: cryoden_infer::Format,
    /// CPU threads (0 = all logical CPUs).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Seed of the random weights and the synthetic micrographs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory for the scratch files [default: the system temporary directory]; removed afterwards unless
    /// --keep.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Keep the inputs and outputs (DIR/in, DIR/out), e.g. to compare precisions.
    #[arg(long)]
    pub keep: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn run_denoise(a: DenoiseArgs) -> anyhow::Result<()> {
    use cryoden_infer::{bench, Denoiser, Normalization, Options};
    let arch = cryoden_nn::Arch::from_name(&a.arch, a.widths.as_deref())?;
    let model = cryoden_nn::Model::new(arch)?;
    let params = model.init_params(a.seed);
    let norm = Normalization {
        method: cryoden_prep::normalize::Method::Zscore,
        from_checkpoint: false,
    };
    let opts = Options {
        tile: a.tile,
        context: a.context,
        batch: a.batch,
    };
    let cfg = bench::DenoiseBench {
        size: a.size,
        files: a.files,
        warmup: a.warmup,
        seed: a.seed,
        format: a.format,
    };
    if a.format == cryoden_infer::Format::Png {
        bail!("--format png: bench denoise writes MRC (mrc or mrc16)");
    }
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("cryoden-bench-denoise-{}", std::process::id())),
    };
    if a.keep && dir.join("in").exists() {
        bail!(
            "{}: holds a previous bench (in/); choose another --dir",
            dir.display()
        );
    }
    let (device, precision) = device_and_precision(a.device, a.precision.as_deref())?;
    let label = "bench".to_string();
    let r = match device {
        Device::Cpu => {
            let be = cryoden_nn::cpu::Cpu::new(a.threads)?;
            let mut dn = Denoiser::new(be, model, &params, norm, label, opts)?;
            bench::bench_denoise(&mut dn, &cfg, &dir, || None)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda { ordinal } => {
            let be = cryoden_cuda::CudaBackend::new(ordinal, precision.parse()?)
                .context("cannot start the CUDA backend")?;
            let probe = gpu_used_probe(&be);
            let mut dn = Denoiser::new(be, model, &params, norm, label, opts)?;
            bench::bench_denoise(&mut dn, &cfg, &dir, probe)
        }
        #[cfg(not(feature = "cuda"))]
        d @ Device::Cuda { .. } => {
            let _ = precision;
            return Err(no_cuda(d));
        }
    };
    if !a.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let r = r.context("bench denoise")?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let s = &r.summary;
        let per_file = |v: f64| 1e3 * v / r.steady_profile.images.max(1) as f64;
        println!(
            "{} {} files of {}² on {}: tile {} + context {}, batch {}; steady state {:.4} s/micrograph \
             ({:.1} Mpixel/s), first file {:.2} s; peak RSS {} (one input + output: {:.0} MiB), device {}; \
             busy s: read {:.2} stats {:.2} compute {:.2} write {:.2}; steady-state compute phases per file (ms): \
             cut {:.1} upload {:.1} forward {:.1} download {:.1} place {:.1}",
            r.arch,
            r.config.files,
            r.config.size,
            r.backend,
            r.tile,
            r.context,
            r.batch,
            r.s_per_file,
            r.mpixel_per_s,
            r.first_file_s,
            r.peak_rss_mib.map_or("unknown".into(), |m| format!("{m:.0} MiB")),
            r.image_pair_mib,
            r.device_mib.map_or("n/a".into(), |m| format!("{m:.0} MiB")),
            s.read_s,
            s.stats_s,
            s.compute_s,
            s.write_s,
            per_file(r.steady_profile.extract_s),
            per_file(r.steady_profile.upload_s),
            per_file(r.steady_profile.forward_s),
            per_file(r.steady_profile.download_s),
            per_file(r.steady_profile.place_s),
        );
    }
    Ok(())
}

fn run_train(a: TrainArgs) -> anyhow::Result<()> {
    let arch = cryoden_nn::Arch::from_name(&a.arch, a.widths.as_deref())?;
    let loss = match a.loss.as_str() {
        "mse" => cryoden_nn::LossKind::Mse,
        "l1" => cryoden_nn::LossKind::L1,
        other => bail!("unknown --loss {other:?}: choose mse or l1"),
    };
    if a.batch == 0 || a.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    let cfg = cryoden_nn::bench::TrainBench {
        arch,
        batch: a.batch,
        size: a.size,
        steps: a.steps,
        warmup: a.warmup,
        seed: a.seed,
        loss,
    };
    let (device, precision) = device_and_precision(a.device, a.precision.as_deref())?;
    // The CUDA backend's memory arena after the run: peak bytes and device allocations (docs/perf/arena.md).
    let (r, device_mib, arena): (_, Option<f64>, Option<(serde_json::Value, String)>) = match device
    {
        Device::Cpu => {
            let be = cryoden_nn::cpu::Cpu::new(a.threads)?;
            let r = cryoden_nn::bench::bench_train(&be, &cfg).context("bench train on cpu")?;
            (r, None, None)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda { ordinal } => {
            let be = cryoden_cuda::CudaBackend::new(ordinal, precision.parse()?)
                .context("cannot start the CUDA backend")?;
            let mut probe = gpu_used_probe(&be);
            let before = probe();
            let r = cryoden_nn::bench::bench_train(&be, &cfg).context("bench train on cuda")?;
            // Parameters, gradients, moments, activations and the conv workspace (the context excluded).
            let used = probe().zip(before).map(|(a, b)| a - b);
            let arena = be.gpu().arena_stats();
            (
                r,
                used,
                Some((serde_json::to_value(arena)?, arena.to_string())),
            )
        }
        #[cfg(not(feature = "cuda"))]
        d @ Device::Cuda { .. } => {
            let _ = precision;
            return Err(no_cuda(d));
        }
    };
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["device_mib"] = serde_json::json!(device_mib);
        if let Some((json, _)) = &arena {
            v["arena"] = json.clone();
        }
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "{} {}x{}x{} on {}: {:.1} ms/step (median {:.1}), {:.1} images/s, {:.1} GFLOP/s, peak RSS {}, device {}",
            r.config.arch.describe(),
            r.config.batch,
            r.config.size,
            r.config.size,
            r.backend,
            r.ms_per_step,
            r.ms_per_step_median,
            r.images_per_s,
            r.gflop_per_s,
            r.peak_rss_mib.map_or("unknown".into(), |m| format!("{m:.0} MiB")),
            device_mib.map_or("n/a".into(), |m: f64| format!("{m:.0} MiB")),
        );
        if let Some((_, text)) = &arena {
            println!("GPU memory arena: {text}");
        }
    }
    Ok(())
}

/// `cryoden bench parity`: the comparison lives in `cryoden_nn::bench::parity`.
#[derive(clap::Args)]
pub struct ParityArgs {
    /// Fixture files (`python/verify.py --all DIR` writes DIR/<arch>.safetensors).
    #[arg(required = true, value_name = "FIXTURE")]
    pub fixtures: Vec<std::path::PathBuf>,
    /// auto, cpu, or cuda[:N].
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// GPU arithmetic: f32, tf32 or bf16. [default: f32]
    #[arg(long, value_parser = ["f32", "tf32", "bf16"])]
    pub precision: Option<String>,
    /// CPU threads (0 = all logical CPUs).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print one JSON object per fixture (one line each).
    #[arg(long)]
    pub json: bool,
}

fn run_parity(a: ParityArgs) -> anyhow::Result<()> {
    let (device, precision) =
        device_and_precision(a.device, Some(a.precision.as_deref().unwrap_or("f32")))?;
    let results = match device {
        Device::Cpu => {
            let be = cryoden_nn::cpu::Cpu::new(a.threads)?;
            a.fixtures
                .iter()
                .map(|f| cryoden_nn::bench::parity(&be, f))
                .collect::<Result<Vec<_>, _>>()?
        }
        #[cfg(feature = "cuda")]
        Device::Cuda { ordinal } => {
            let be = cryoden_cuda::CudaBackend::new(ordinal, precision.parse()?)
                .context("cannot start the CUDA backend")?;
            a.fixtures
                .iter()
                .map(|f| cryoden_nn::bench::parity(&be, f))
                .collect::<Result<Vec<_>, _>>()?
        }
        #[cfg(not(feature = "cuda"))]
        d @ Device::Cuda { .. } => {
            let _ = precision;
            return Err(no_cuda(d));
        }
    };
    for r in results {
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{} on {} vs PyTorch on {}: output rel L2 {:.2e} (max abs {:.2e}), loss rel {:.2e}, gradients rel \
                 L2 {:.2e} (worst tensor {} {:.2e})",
                r.arch.describe(),
                r.backend,
                r.torch_device,
                r.output.rel_l2,
                r.output.max_abs,
                r.loss_rel,
                r.grad_all.rel_l2,
                r.grad_worst.name,
                r.grad_worst.rel_l2
            );
        }
    }
    Ok(())
}

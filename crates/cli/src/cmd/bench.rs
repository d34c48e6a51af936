//! `cryoden bench`: throughput measurements, JSON out. Each target is one variant; its code lives in the crate
//! that owns the work (io, nn, infer, ...), this file only parses flags and prints.

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub target: Target,
}

#[derive(clap::Subcommand)]
pub enum Target {
    /// Time training steps (forward, loss, backward, Adam) of a model on a synthetic batch.
    Train(TrainArgs),
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
    /// Device to run on: `cpu` (CUDA comes with the `cuda` build feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
    }
}

fn run_train(a: TrainArgs) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
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
    let r = match a.device.as_str() {
        "cpu" => {
            let be = cryoden_nn::cpu::Cpu::new(a.threads)?;
            cryoden_nn::bench::bench_train(&be, &cfg).context("bench train on cpu")?
        }
        other => bail!("--device {other}: this build trains on cpu only"),
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} {}x{}x{} on {}: {:.1} ms/step (median {:.1}), {:.1} images/s, {:.1} GFLOP/s, peak RSS {}",
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
        );
    }
    Ok(())
}

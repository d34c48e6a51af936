//! `cryoden doctor`: what this machine offers cryoden — OS, CPU, threads, and (when built with `--features cuda`)
//! the GPUs, driver, NVRTC / cuDNN / NCCL versions, a functional check of the CUDA backend, and the paths of the
//! CUDA libraries actually mapped into the process (two copies of one library show up as two lines).

use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit with an error when no usable GPU was found (for scripts that need one).
    #[arg(long)]
    pub require_gpu: bool,
}

#[derive(Serialize)]
struct Report {
    cryoden: &'static str,
    os: String,
    kernel: String,
    cpu: String,
    threads: usize,
    cuda_compiled: bool,
    #[cfg(feature = "cuda")]
    cuda: cryoden_cuda::probe::Report,
}

fn first_value(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)).map(|v| {
        v.trim_start_matches([' ', '\t', ':', '='])
            .trim()
            .trim_matches('"')
            .to_string()
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let report = Report {
        cryoden: env!("CARGO_PKG_VERSION"),
        os: format!(
            "{} ({})",
            first_value("/etc/os-release", "PRETTY_NAME")
                .unwrap_or_else(|| std::env::consts::OS.to_string()),
            std::env::consts::ARCH
        ),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cpu: first_value("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cuda_compiled: cfg!(feature = "cuda"),
        #[cfg(feature = "cuda")]
        cuda: cryoden_cuda::probe::Report::collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("cryoden {}", report.cryoden);
        println!("OS:            {} (kernel {})", report.os, report.kernel);
        println!("CPU:           {}", report.cpu);
        println!("threads:       {}", report.threads);
        #[cfg(feature = "cuda")]
        print!("{}", report.cuda);
        #[cfg(not(feature = "cuda"))]
        println!(
            "CUDA:          not compiled in (build with `cargo build --release --features cuda`)"
        );
    }
    #[cfg(feature = "cuda")]
    let usable = report.cuda.selfcheck.is_some();
    #[cfg(not(feature = "cuda"))]
    let usable = false;
    if args.require_gpu && !usable {
        anyhow::bail!("--require-gpu: no usable GPU (see the problems listed above)");
    }
    Ok(())
}

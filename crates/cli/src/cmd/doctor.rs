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

/// Resolves `--device`: an explicit device passes through (if its GPU is missing, starting the backend fails with
/// the reason); `auto` becomes `cuda:0` when this build has CUDA and GPU 0 passes
/// `cryoden_cuda::probe::check_all(0)` (driver, NVRTC, cuDNN, the GPU), otherwise `cpu`, with a loud line on
/// stderr saying why and how to get the GPU. Call it once at the start of a command, before choosing a backend.
pub fn resolve_device(req: cryoden_train::DeviceRequest) -> cryoden_train::Device {
    use cryoden_train::{Device, DeviceRequest};
    if let DeviceRequest::Device(d) = req {
        return d;
    }
    #[cfg(feature = "cuda")]
    {
        match cryoden_cuda::probe::check_all(0) {
            Ok(()) => {
                eprintln!("device: auto -> cuda:0 (a usable GPU was found)");
                Device::Cuda { ordinal: 0 }
            }
            Err(e) => {
                eprintln!(
                    "WARNING: --device auto: NO USABLE GPU, RUNNING ON THE CPU (much slower). Why: {e}. \
                     `cryoden doctor` lists what was found; pass --device cuda to stop with an error instead of \
                     falling back, or --device cpu to silence this."
                );
                Device::Cpu
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        eprintln!(
            "WARNING: --device auto: THIS CRYODEN WAS BUILT WITHOUT CUDA SUPPORT, RUNNING ON THE CPU (much slower). \
             To use an NVIDIA GPU, rebuild with `cargo build --release --features cuda` (no CUDA toolkit is needed \
             to build; the driver, CUDA 13 NVRTC and cuDNN 9 are loaded at run time). Pass --device cpu to \
             silence this."
        );
        Device::Cpu
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_device;
    use cryoden_train::{Device, DeviceRequest};

    #[test]
    fn explicit_devices_pass_through_and_auto_resolves() {
        for d in [Device::Cpu, Device::Cuda { ordinal: 3 }] {
            assert_eq!(resolve_device(DeviceRequest::Device(d)), d);
        }
        let auto = resolve_device(DeviceRequest::Auto);
        // Without the cuda feature there is nothing but the CPU; with it, the first GPU or the CPU.
        if cfg!(feature = "cuda") {
            assert!(matches!(auto, Device::Cpu | Device::Cuda { ordinal: 0 }));
        } else {
            assert_eq!(auto, Device::Cpu);
        }
    }
}

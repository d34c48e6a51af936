//! `cryoden denoise`: denoise micrographs with a trained model. Glue only: flags → `cryoden_infer` (tiling,
//! batching, the overlapped read/compute/write pipeline), a progress bar, a per-file error report.

use anyhow::{bail, Context};
use cryoden_infer::{
    expand_inputs, header_label, plan_outputs, Denoiser, Format, Options, Outcome, RunOptions,
    Shard, Status,
};
use cryoden_nn::Backend;
use cryoden_train::{Device, DeviceRequest};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Weights file written by `cryoden train` (RUN/best.safetensors) or `cryoden import-topaz`.
    #[arg(long, short = 'm', value_name = "CKPT")]
    pub model: PathBuf,
    /// Micrographs: MRC files (any extension), directories (the .mrc/.mrcs/.map files directly inside them,
    /// optionally .gz; sub-directories are not searched) or quoted glob patterns ('mics/*_EVN.mrc'). The list is
    /// sorted and each file taken once. A stack (nz > 1) is denoised section by section.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Output directory (created if missing). Each output is `<stem><suffix>.<ext>`.
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Appended to each output's stem.
    #[arg(long, default_value = "")]
    pub suffix: String,
    /// Core tile side in pixels (rounded up to the model's alignment). Memory grows with (tile + 2·context)²·batch,
    /// not with the image size. [default: 1024 on the CPU; on a GPU 4096 with ≥ 40 GiB of memory, 2048 with
    /// ≥ 16 GiB, else 1024 — larger tiles waste less compute on context (a 4096² micrograph in one 4096 tile:
    /// 0.093 s per file vs 0.178 s with 1024 tiles on an H200, docs/perf/gpu-denoise.md)]
    #[arg(long)]
    pub tile: Option<usize>,
    /// Pixels of context around each tile. [default: the model's receptive radius, so tiles join without seams]
    #[arg(long)]
    pub context: Option<usize>,
    /// Tiles per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// auto (the first GPU if this build has CUDA and a usable GPU is found, else the CPU, said loudly on
    /// stderr), cpu, or cuda[:N] (needs a build with --features cuda; fails if the GPU is unusable).
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// CUDA precision: f32, tf32 or bf16 (ignored on cpu).
    #[arg(long, default_value = "tf32")]
    pub precision: String,
    /// CPU threads (0 = one per logical CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// mrc (float32), mrc16 (float16, half the size) or png (8-bit preview, 0.5–99.5 % contrast). png takes
    /// single images only: stacks (nz > 1) are refused before anything is denoised (use mrc, or split the stack).
    #[arg(long, default_value = "mrc")]
    pub format: Format,
    /// Leave outputs that already exist untouched and say so (they are complete: outputs are written atomically).
    #[arg(long)]
    pub skip_existing: bool,
    /// Take only files k with k mod n = i of the sorted, expanded list (i from 0, as SLURM's
    /// --array=0-(n-1)), for cluster job arrays: the n shards are disjoint and together hold every input.
    #[arg(long, value_name = "i/n")]
    pub shard: Option<Shard>,
    /// Print a JSON summary (and every failure) on stdout at the end.
    #[arg(long)]
    pub json: bool,
}

/// A missing weights file, said once and with the fix (before any input is read or output written).
pub fn check_model(path: &std::path::Path) -> anyhow::Result<()> {
    if let Err(e) = std::fs::metadata(path) {
        bail!(
            "--model {}: cannot read it ({e}); give a weights file written by `cryoden train` \
             (RUN/best.safetensors) or `cryoden import-topaz`",
            path.display()
        );
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    check_model(&args.model)?;
    let mut files = expand_inputs(&args.inputs)?;
    if let Some(s) = args.shard {
        files = s.select(&files);
        if files.is_empty() {
            eprintln!("shard {}/{}: no files for this shard", s.index, s.count);
            return Ok(());
        }
    }
    if args.format == Format::Png {
        refuse_stacks_as_png(&files)?;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the output directory {}", args.out.display()))?;
    let jobs = plan_outputs(&files, &args.out, &args.suffix, args.format)?;
    let device = super::doctor::resolve_device(args.device);
    let opts = Options {
        tile: args.tile.unwrap_or_else(|| default_tile(device)),
        context: args.context,
        batch: args.batch,
    };
    match device {
        Device::Cpu => {
            let be = cryoden_nn::cpu::Cpu::new(args.threads).context("cannot start the CPU backend")?;
            go(Denoiser::load(be, &args.model, opts)?, &args, &jobs)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda { ordinal } => {
            let precision: cryoden_cuda::Precision =
                args.precision.parse().map_err(|e| anyhow::anyhow!("--precision: {e}"))?;
            let be = cryoden_cuda::CudaBackend::new(ordinal, precision).context("cannot start the CUDA backend")?;
            go(Denoiser::load(be, &args.model, opts)?, &args, &jobs)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda { .. } => bail!(
            "--device cuda: this cryoden was built without CUDA support; rebuild with `cargo build --release \
             --features cuda`, or use --device cpu"
        ),
    }
}

/// The tile side when `--tile` is not given: 1024 on the CPU (its forward buffers stay under ~1 GB); on a GPU the
/// largest of 4096 / 2048 / 1024 whose window comfortably fits the card (Topaz's unet at a 4096 tile, batch 1, bf16
/// holds 16 GiB including cuDNN's workspace; 2048 tiles need about a third of that).
pub fn default_tile(device: Device) -> usize {
    match device {
        Device::Cpu => 1024,
        #[cfg(feature = "cuda")]
        Device::Cuda { ordinal } => {
            let gib = cryoden_cuda::probe::gpu_info(ordinal)
                .map(|g| g.total_memory_bytes >> 30)
                .unwrap_or(0);
            match gib {
                40.. => 4096,
                16..=39 => 2048,
                _ => 1024,
            }
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda { .. } => 1024,
    }
}

/// `--format png` writes one 8-bit image per input: a stack would lose all but one section, so it is refused up
/// front (before any work). Files whose header cannot be read are left to the run, which reports them.
fn refuse_stacks_as_png(files: &[PathBuf]) -> anyhow::Result<()> {
    let stacks: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let s = cryoden_io::MrcStack::open(f).ok()?;
            (s.nz() > 1).then(|| format!("{} ({} sections)", f.display(), s.nz()))
        })
        .collect();
    if !stacks.is_empty() {
        let shown = stacks.len().min(10);
        bail!(
            "--format png writes one image per input, but {} input(s) are stacks: {}{}; use --format mrc or mrc16 \
             (then `cryoden info` or an MRC viewer), or give single-section files",
            stacks.len(),
            stacks[..shown].join(", "),
            if stacks.len() > shown { ", …" } else { "" }
        );
    }
    Ok(())
}

fn go<B: Backend>(
    mut dn: Denoiser<B>,
    args: &Args,
    jobs: &[cryoden_infer::Job],
) -> anyhow::Result<()> {
    let model_name = args
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    eprintln!(
        "model {} on {}; tile {} + context {} (receptive radius {}), batch {}; {} files",
        dn.label(),
        dn.backend().name(),
        dn.options().tile,
        dn.context(),
        cryoden_infer::context_radius(dn.arch()),
        args.batch,
        jobs.len()
    );
    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} files  {per_sec}  ETA {eta}  {msg}")
            .expect("static template"),
    );
    let ropts = RunOptions {
        format: args.format,
        skip_existing: args.skip_existing,
        label: header_label(&format!("{model_name} {}", dn.arch().describe())),
        writers: 0,
    };
    let mut failures: Vec<(PathBuf, String)> = Vec::new();
    let mut skipped: Vec<PathBuf> = Vec::new();
    let summary = cryoden_infer::run(&mut dn, jobs, &ropts, |o: &Outcome| {
        bar.inc(1);
        match &o.status {
            Status::Failed(e) => {
                // suspend + eprintln, not bar.println: the bar is hidden when stderr is not a terminal (cluster
                // logs), and println on a hidden bar prints nothing.
                let name = o.input.display().to_string();
                // Errors of the I/O layer already start with the file's name; the others (too small, ...) do not.
                let msg = if e.contains(&name) {
                    e.clone()
                } else {
                    format!("{name}: {e}")
                };
                bar.suspend(|| eprintln!("error: {msg} (skipped)"));
                failures.push((o.input.clone(), e.clone()));
            }
            Status::Denoised {
                nx, ny, seconds, ..
            } => bar.set_message(format!("{} ({nx}×{ny}, {seconds:.2} s)", o.input.display())),
            Status::Skipped => {
                // Name the first few; a resumed batch of thousands would otherwise flood the terminal.
                if skipped.len() < 10 {
                    bar.suspend(|| {
                        eprintln!(
                            "skipped {}: {} exists (--skip-existing)",
                            o.input.display(),
                            o.output.display()
                        )
                    });
                }
                skipped.push(o.input.clone());
            }
        }
    });
    bar.finish_and_clear();
    let mpx = summary.pixels as f64 / 1e6;
    eprintln!(
        "denoised {} files ({:.1} Mpixel) in {:.1} s ({:.2} Mpixel/s), skipped {}, failed {}; outputs in {}",
        summary.denoised,
        mpx,
        summary.seconds,
        mpx / summary.seconds.max(1e-9),
        summary.skipped,
        summary.failed,
        args.out.display()
    );
    if args.json {
        let f: Vec<_> = failures
            .iter()
            .map(|(p, e)| serde_json::json!({"file": p, "error": e}))
            .collect();
        let v = serde_json::json!({"summary": summary, "failures": f, "skipped": skipped, "context": dn.context(), "tile": dn.options().tile,
            "batch": args.batch, "model": args.model, "arch": dn.arch()});
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    if summary.failed > 0 {
        bail!(
            "{} of {} files failed (listed above); the others were denoised",
            summary.failed,
            jobs.len()
        );
    }
    Ok(())
}

//! `cryoden evaluate`: models and baselines on the same micrographs; metrics, report.html with figures, --json.
//! Glue only: flags → `cryoden_eval::evaluate` and `cryoden_eval::report`.

use anyhow::{bail, Context};
use cryoden_eval::evaluate::{evaluate, match_by_stem, Evaluation, Inputs, ModelEntry};
use cryoden_infer::{expand_inputs, Denoiser, Options};
use cryoden_nn::Backend;
use cryoden_train::{Device, DeviceRequest};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// A model to evaluate (weights file); repeat for several, shown side by side. Without any, only the
    /// baselines are evaluated.
    #[arg(long, short = 'm', value_name = "CKPT")]
    pub model: Vec<PathBuf>,
    /// Noisy micrographs to denoise and compare with --truth: files, directories (their .mrc/.mrcs/.map[.gz]
    /// files, not sub-directories) or quoted glob patterns, expanded as `cryoden denoise` expands its inputs.
    #[arg(long, value_name = "INPUT", requires = "truth")]
    pub input: Vec<String>,
    /// Noise-free micrographs, matched to --input by file name (e.g. the truth/ of `cryoden simulate`); a
    /// directory, a file or a quoted glob pattern.
    #[arg(long, value_name = "DIR", requires = "input")]
    pub truth: Option<String>,
    /// Half set A (e.g. even/ of `cryoden split`): scored by MSE(f(A), B) and the FRC of f(A) with f(B).
    #[arg(long, value_name = "DIR", requires = "half_b")]
    pub half_a: Option<String>,
    /// Half set B, matched to --half-a by file name.
    #[arg(long, value_name = "DIR", requires = "half_a")]
    pub half_b: Option<String>,
    /// Micrographs to tune the baselines' parameters on (with --tune-truth); default: the evaluated images
    /// themselves, which favours the baselines (the report says so).
    #[arg(long, value_name = "INPUT", requires = "tune_truth")]
    pub tune_input: Vec<String>,
    #[arg(long, value_name = "DIR", requires = "tune_input")]
    pub tune_truth: Option<String>,
    /// Half sets to tune the baselines on when there is no truth.
    #[arg(long, value_name = "DIR", requires = "tune_half_b")]
    pub tune_half_a: Option<String>,
    #[arg(long, value_name = "DIR", requires = "tune_half_a")]
    pub tune_half_b: Option<String>,
    /// Pixel size in Å for FRC resolutions. [default: the first input's header]
    #[arg(long)]
    pub pixel_size: Option<f64>,
    /// Report directory: report.html and its PNG figures (created if missing).
    #[arg(long, short = 'o', value_name = "DIR", default_value = "evaluation")]
    pub out: PathBuf,
    /// Print every number of the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Tile, context and batch for the models (as `cryoden denoise`). [default: as `cryoden denoise`: 1024 on the
    /// CPU, larger on a GPU with the memory for it]
    #[arg(long)]
    pub tile: Option<usize>,
    #[arg(long)]
    pub context: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Where the models run: auto (the first GPU if this build has CUDA and a usable GPU is found, else the CPU,
    /// said loudly on stderr), cpu, or cuda[:N] (needs a build with --features cuda). The baselines and metrics
    /// always run on the CPU.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// CUDA precision: f32, tf32 or bf16 (ignored on cpu).
    #[arg(long, default_value = "tf32")]
    pub precision: String,
    /// CPU threads (0 = one per logical CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

fn pairs(a: &[String], b: &str, what: &str) -> anyhow::Result<Vec<cryoden_eval::evaluate::Pair>> {
    let a = expand_inputs(a)?;
    let b = expand_inputs(&[b.to_string()])?;
    Ok(match_by_stem(&a, &b, what)?)
}

/// Builds the inputs from the flags.
pub fn inputs(args: &Args) -> anyhow::Result<Inputs> {
    let truth = match &args.truth {
        Some(t) => pairs(&args.input, t, "truth")?,
        None => Vec::new(),
    };
    let halves = match (&args.half_a, &args.half_b) {
        (Some(a), Some(b)) => pairs(std::slice::from_ref(a), b, "half-B")?,
        _ => Vec::new(),
    };
    let tune_truth = match &args.tune_truth {
        Some(t) => pairs(&args.tune_input, t, "tuning truth")?,
        None => Vec::new(),
    };
    let tune_halves = match (&args.tune_half_a, &args.tune_half_b) {
        (Some(a), Some(b)) => pairs(std::slice::from_ref(a), b, "tuning half-B")?,
        _ => Vec::new(),
    };
    if truth.is_empty() && halves.is_empty() {
        bail!("nothing to evaluate: give --input with --truth, and/or --half-a with --half-b");
    }
    Ok(Inputs {
        truth,
        halves,
        tune_truth,
        tune_halves,
        pixel_size: args.pixel_size,
    })
}

/// Loads the models (each on a backend from `backend`), evaluates, writes the report; returns the evaluation
/// and the report path.
pub fn evaluate_with<B: Backend>(
    backend: &dyn Fn() -> anyhow::Result<B>,
    models: &[PathBuf],
    opts: Options,
    inputs: &Inputs,
    out: &Path,
) -> anyhow::Result<(Evaluation, PathBuf)> {
    let mut entries = Vec::new();
    for (i, m) in models.iter().enumerate() {
        let name = match models.len() {
            1 => "model".to_string(),
            _ => format!(
                "model {} ({})",
                i + 1,
                m.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        };
        let denoiser = Denoiser::load(backend()?, m, opts)
            .with_context(|| format!("loading {}", m.display()))?;
        entries.push(ModelEntry {
            name,
            checkpoint: m.clone(),
            denoiser,
        });
    }
    let mut progress = |done: usize, total: usize, what: &str| eprintln!("[{done}/{total}] {what}");
    let ev = evaluate(&mut entries, inputs, &mut progress)?;
    let report = cryoden_eval::report::write_report(&ev, out)?;
    Ok((ev, report))
}

/// The table of headline numbers printed on stderr.
pub fn print_table(ev: &Evaluation) {
    for (k, m) in ev.methods.iter().enumerate() {
        let mut line = format!("{:<28}", m.name);
        if let Some(t) = &ev.truth {
            line += &format!(
                "  PSNR {:6.2} dB  SSIM {:.4}",
                t.mean_psnr[k], t.mean_ssim[k]
            );
        }
        if let Some(h) = &ev.halves {
            line += &format!("  N2N error {:.5}", h.mean_n2n_error[k]);
            match h.mean_frc_resolution[k] {
                Some(r) if ev.pixel_size > 0.0 => line += &format!("  FRC(1/7) {r:.1} Å"),
                Some(r) => line += &format!("  FRC(1/7) {r:.2} px"),
                None => line += "  FRC(1/7) Nyquist",
            }
        }
        eprintln!("{line}");
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    for m in &args.model {
        super::denoise::check_model(m)?;
    }
    let inputs = inputs(&args)?;
    let device = super::doctor::resolve_device(args.device);
    let opts = Options {
        tile: args
            .tile
            .unwrap_or_else(|| super::denoise::default_tile(device)),
        context: args.context,
        batch: args.batch,
    };
    let (ev, report) = match device {
        Device::Cpu => {
            let threads = args.threads;
            let cpu = move || cryoden_nn::cpu::Cpu::new(threads).context("cannot start the CPU backend");
            evaluate_with(&cpu, &args.model, opts, &inputs, &args.out)?
        }
        #[cfg(feature = "cuda")]
        Device::Cuda { ordinal } => {
            let precision: cryoden_cuda::Precision = args
                .precision
                .parse()
                .map_err(|e| anyhow::anyhow!("--precision: {e}"))?;
            let cuda = move || {
                cryoden_cuda::CudaBackend::new(ordinal, precision).context("cannot start the CUDA backend")
            };
            evaluate_with(&cuda, &args.model, opts, &inputs, &args.out)?
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda { .. } => bail!(
            "--device cuda: this cryoden was built without CUDA support; rebuild with `cargo build --release \
             --features cuda`, or use --device cpu"
        ),
    };
    print_table(&ev);
    eprintln!("report: {}", report.display());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ev)?);
    }
    Ok(())
}

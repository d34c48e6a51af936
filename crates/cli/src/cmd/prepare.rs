//! `cryoden prepare`: paired halves (or clean images + synthetic noise) → a training dataset. Glue only: flags →
//! `cryoden_prep::prepare::{plan, write}`, the size report, a progress bar.

use anyhow::bail;
use cryoden_prep::noise::NoiseModel;
use cryoden_prep::normalize::Method;
use cryoden_prep::prepare::{memory_available, plan, write, Inputs, PrepareOptions};
use cryoden_prep::Split;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Directory of even half sums (e.g. `split --out`'s even/). Paired with --odd by file name; MotionCor2's
    /// NAME_EVN / NAME_ODD suffixes are understood (--even and --odd may then be the same directory).
    #[arg(long, value_name = "DIR", requires = "odd", conflicts_with = "clean")]
    pub even: Option<PathBuf>,
    /// Directory of odd half sums.
    #[arg(long, value_name = "DIR", requires = "even")]
    pub odd: Option<PathBuf>,
    /// Directory of clean images (e.g. `simulate`'s truth/) to pair with synthetic noise (needs --noise).
    #[arg(long, value_name = "DIR", requires = "noise")]
    pub clean: Option<PathBuf>,
    /// Synthetic noise for --clean: gaussian:SIGMA (in normalised units of the clean image, e.g. 0.1) or
    /// poisson:DOSE (the clean image scaled to DOSE counts/pixel on average, each copy an independent draw).
    #[arg(long, value_name = "MODEL", requires = "clean")]
    pub noise: Option<NoiseModel>,
    /// Dataset directory to create (must not exist, or be empty): train_input.mrcs, train_target.mrcs,
    /// val_input.mrcs, val_target.mrcs, manifest.json (docs/DATA.md).
    #[arg(long, value_name = "DATASET")]
    pub out: PathBuf,
    /// Patch side in pixels.
    #[arg(long, default_value_t = 1024)]
    pub patch: usize,
    /// Step between patches in pixels [default: --patch, no overlap]. A last patch is always placed flush with
    /// the far edge, so every pixel is covered (when stride ≤ patch).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Fraction of micrographs (never patches) held out for validation, in [0, 1).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Per-micrograph normalisation, from the sum of both halves, applied identically to both: p95 (subtract
    /// the median, divide by the 95th percentile of the absolute deviation) or zscore (mean, standard deviation).
    #[arg(long, default_value = "p95")]
    pub normalize: Method,
    /// Seed of the train/validation split and of synthetic noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write DATASET/preview.png: N input/target pairs, one per row.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preview: usize,
    /// Print the manifest's summary (counts, files, checksums) as JSON on stdout at the end.
    #[arg(long)]
    pub json: bool,
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let inputs = match (&args.even, &args.odd, &args.clean, args.noise) {
        (Some(e), Some(o), None, _) => Inputs::Halves {
            even_dir: e.clone(),
            odd_dir: o.clone(),
        },
        (None, None, Some(c), Some(n)) => Inputs::Clean {
            dir: c.clone(),
            noise: n,
        },
        _ => bail!("give either --even DIR --odd DIR, or --clean DIR --noise MODEL"),
    };
    let opts = PrepareOptions {
        out: args.out.clone(),
        patch: args.patch,
        stride: args.stride,
        val_fraction: args.val_fraction,
        normalize: args.normalize,
        seed: args.seed,
        preview: args.preview,
    };
    let plan = plan(&inputs, &opts)?;
    let bytes = plan.total_bytes();
    eprintln!(
        "dataset: {} train pairs from {} micrographs + {} validation pairs from {} micrographs, {p}x{p} \
         float32: {} in 4 stacks",
        plan.counts.train,
        plan.micrographs(Split::Train),
        plan.counts.val,
        plan.micrographs(Split::Val),
        gib(bytes),
        p = args.patch
    );
    match memory_available() {
        Some(avail) if bytes <= avail / 2 => eprintln!(
            "fits in memory ({} available here): training can load it whole",
            gib(avail)
        ),
        Some(avail) => eprintln!(
            "larger than half the memory available here ({}): training should stream it (memory-mapped)",
            gib(avail)
        ),
        None => eprintln!("available memory unknown: stream it in training if it exceeds half your RAM"),
    }
    let pb = ProgressBar::new(plan.items.len() as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} micrographs, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let manifest = write(&plan, &mut |done, _| pb.set_position(done as u64));
    pb.finish_and_clear();
    let manifest = manifest?;
    eprintln!("wrote {}", args.out.display());
    if args.json {
        let summary = serde_json::json!({
            "out": args.out,
            "patch_size": manifest.patch_size,
            "counts": manifest.counts,
            "files": manifest.files,
            "micrographs": manifest.micrographs.len(),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

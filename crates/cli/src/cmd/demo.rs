//! `cryoden demo`: the whole chain on a small simulated set, on CPU, in a few minutes — simulate, split,
//! prepare, train, denoise the held-out micrographs, evaluate against the truth with the baselines, and write
//! the report. Glue only: each stage is the library call its own subcommand makes.

use super::evaluate::{evaluate_with, print_table};
use anyhow::{bail, Context};
use cryoden_eval::evaluate::{Inputs, Pair};
use cryoden_infer::Options;
use cryoden_nn::Arch;
use cryoden_prep::manifest::Split;
use cryoden_train::metrics::Record;
use cryoden_train::{Device, LoaderChoice, Observer, RunOptions, TrainConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Directory for everything the demo writes (must be empty or absent): sim/, halves/, dataset/, run/,
    /// denoised/, report/.
    #[arg(long, default_value = "cryoden-demo", value_name = "DIR")]
    pub out: PathBuf,
    /// Micrographs to simulate (a quarter, at least one, are held out for evaluation).
    #[arg(long, default_value_t = 8)]
    pub micrographs: usize,
    /// Micrograph side in pixels.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Frames per simulated movie (40 e⁻/Å² in total).
    #[arg(long, default_value_t = 10)]
    pub frames: usize,
    // Why 4 Å: at 1 Å and 40 e⁻/Å² a pixel's signal variance is ~1/40 of its Poisson variance and most of the
    // truth's variance is out of reach of any denoiser: on the held-out micrographs of --seed 0 an oracle Wiener
    // filter (built from the true spectra) scores 21.9 dB, the tuned Gaussian 21.6 and the U-Net 21.9, so the
    // demo could not show what Noise2Noise buys. At 4 Å (a 1 Å micrograph binned 4×, as micrographs are viewed
    // and picked) a pixel collects 16× the electrons and an apoferritin (~130 Å) spans ~33 px, inside the
    // U-Net's receptive field: oracle Wiener 24.1 dB, Gaussian 23.8, U-Net 25.5 at the same CPU time. The
    // variants measured are in README.md ("Why 4 Å pixels").
    /// Pixel size of the simulated micrographs in Å (4 Å: a 1 Å micrograph binned 4×).
    #[arg(long, default_value_t = 4.0)]
    pub pixel_size: f64,
    /// Side of the training patches in pixels (a multiple of 2^(levels − 1)).
    #[arg(long, default_value_t = 128)]
    pub patch: usize,
    // 4 rather than `cryoden train`'s 8: twice the steps for the same compute (+0.2 dB on --seed 1, where
    // batch 2, a learning rate of 2e-3 and 16–18 epochs did no better).
    /// Patch pairs per optimizer step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Training epochs. A fixed count (not a time budget) keeps the demo's numbers reproducible from --seed
    /// on any machine with the same --threads; 12 epochs take about two minutes on 2 quiet cores.
    #[arg(long, default_value_t = 12)]
    pub epochs: u64,
    /// Optional cap on the training time in seconds: training stops after the last epoch that fits (the
    /// numbers then depend on the machine's speed).
    #[arg(long, value_name = "SECONDS")]
    pub train_seconds: Option<f64>,
    /// Channels per level of the U-Net.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
    pub widths: Vec<usize>,
    /// Seed of the simulation, the split and the training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads (0 = one per logical CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print the evaluation as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Stops training when the next epoch would overrun the budget.
struct Budget {
    start: Instant,
    seconds: f64,
    last_epoch_end: f64,
    longest_epoch: f64,
    stop: bool,
}

impl Observer for Budget {
    fn message(&mut self, msg: &str) {
        eprintln!("  {msg}");
    }
    fn epoch(&mut self, r: &Record) {
        let now = self.start.elapsed().as_secs_f64();
        self.longest_epoch = self.longest_epoch.max(now - self.last_epoch_end);
        self.last_epoch_end = now;
        eprintln!(
            "  epoch {:>3}  train loss {:.5}  val loss {:.5}  {:.0} img/s  {:.0} s",
            r.epoch,
            r.loss.unwrap_or(f64::NAN),
            r.val_loss.unwrap_or(f64::NAN),
            r.images_per_s,
            now
        );
        if now + self.longest_epoch > self.seconds {
            self.stop = true;
        }
    }
    fn stop_requested(&mut self) -> bool {
        self.stop
    }
}

fn stage(t0: Instant, what: &str) {
    eprintln!("[{:>5.1} s] {what}", t0.elapsed().as_secs_f64());
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let out = &args.out;
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{}: not empty; give the demo a new directory with --out",
            out.display()
        );
    }
    if args.micrographs < 2 {
        bail!("--micrographs: the demo needs at least 2 (one to train on, one to evaluate)");
    }
    let (sim_dir, halves, data, run_dir, report_dir) = (
        out.join("sim"),
        out.join("halves"),
        out.join("dataset"),
        out.join("run"),
        out.join("report"),
    );

    stage(
        t0,
        &format!(
            "simulating {} movies of {}² pixels of {} Å, {} frames",
            args.micrographs, args.size, args.pixel_size, args.frames
        ),
    );
    let cfg = cryoden_sim::SimConfig {
        micrographs: args.micrographs,
        width: args.size,
        height: args.size,
        frames: args.frames,
        pixel_size: args.pixel_size,
        seed: args.seed,
        ..cryoden_sim::SimConfig::default()
    };
    cryoden_sim::write_dataset(
        &cfg,
        &cryoden_sim::Structure::apoferritin(),
        &sim_dir,
        false,
        &|_| {},
    )?;

    stage(t0, "splitting movies into even/odd half sums");
    let mut movies: Vec<PathBuf> = std::fs::read_dir(sim_dir.join("movies"))
        .context("listing the simulated movies")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    movies.sort();
    for m in &movies {
        cryoden_prep::split::split_movie(
            m,
            &halves,
            &cryoden_prep::split::SplitOptions::default(),
        )?;
    }

    stage(
        t0,
        &format!(
            "preparing {}² patch pairs (a quarter of the micrographs held out)",
            args.patch
        ),
    );
    let popts = cryoden_prep::prepare::PrepareOptions {
        out: data.clone(),
        patch: args.patch,
        stride: None,
        val_fraction: 0.25,
        normalize: cryoden_prep::normalize::Method::P95,
        seed: args.seed,
        preview: 0,
    };
    let inputs = cryoden_prep::prepare::Inputs::Halves {
        even_dir: halves.join("even"),
        odd_dir: halves.join("odd"),
    };
    let plan = cryoden_prep::prepare::plan(&inputs, &popts)?;
    let manifest = cryoden_prep::prepare::write(&plan, &mut |_, _| {})?;

    stage(
        t0,
        &format!(
            "training unet[{}] on CPU for {} epochs{}",
            args.widths
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(","),
            args.epochs,
            match args.train_seconds {
                Some(s) => format!(" (at most {s:.0} s)"),
                None => String::new(),
            }
        ),
    );
    let mut tc = TrainConfig::new(Arch::from_name("unet", Some(&args.widths))?);
    tc.epochs = args.epochs;
    tc.adam.lr = args.lr;
    tc.batch = args.batch;
    tc.seed = args.seed;
    tc.sample_every = 0;
    let ropts = RunOptions {
        data: data.clone(),
        out: run_dir.clone(),
        loader: LoaderChoice::InMemory,
        prefetch: 2,
        device: Device::Cpu,
        resume: false,
    };
    let be = cryoden_nn::cpu::Cpu::new(args.threads).context("cannot start the CPU backend")?;
    let tstart = Instant::now();
    let mut budget = Budget {
        start: tstart,
        seconds: args.train_seconds.unwrap_or(f64::INFINITY),
        last_epoch_end: 0.0,
        longest_epoch: 0.0,
        stop: false,
    };
    let summary = cryoden_train::train(&be, &tc, &ropts, &mut budget)?;
    let train_s = tstart.elapsed().as_secs_f64();
    if summary.best.is_none() {
        bail!(
            "no training epoch completed within --train-seconds {}; give it more time",
            args.train_seconds.unwrap_or(f64::INFINITY)
        );
    }
    // The weights after the last epoch, not best.safetensors: the validation pairs come from the held-out
    // micrographs that the evaluation scores, so picking an epoch by their loss would tune on them.
    let ckpt = run_dir.join("last.safetensors");

    stage(
        t0,
        "denoising the held-out micrographs and evaluating against the truth",
    );
    let name_of = |p: &str| cryoden_infer::files::stem(Path::new(p));
    let split_pairs = |split: Split,
                       b_of: &dyn Fn(&cryoden_prep::manifest::Micrograph) -> PathBuf|
     -> Vec<Pair> {
        manifest
            .micrographs
            .iter()
            .filter(|m| m.split == split)
            .map(|m| Pair {
                name: name_of(&m.even),
                a: PathBuf::from(&m.even),
                b: b_of(m),
            })
            .collect()
    };
    let truth_of = |m: &cryoden_prep::manifest::Micrograph| {
        cryoden_sim::truth_path(&sim_dir, &name_of(&m.even))
    };
    let odd_of = |m: &cryoden_prep::manifest::Micrograph| PathBuf::from(&m.odd);
    let ev_inputs = Inputs {
        truth: split_pairs(Split::Val, &truth_of),
        halves: split_pairs(Split::Val, &odd_of),
        tune_truth: split_pairs(Split::Train, &truth_of),
        tune_halves: Vec::new(),
        pixel_size: Some(cfg.pixel_size),
    };
    let threads = args.threads;
    let cpu = move || cryoden_nn::cpu::Cpu::new(threads).context("cannot start the CPU backend");
    let (ev, report) = evaluate_with(
        &cpu,
        std::slice::from_ref(&ckpt),
        Options {
            tile: 1024,
            context: None,
            batch: 1,
        },
        &ev_inputs,
        &report_dir,
    )?;
    let dn = out.join("denoised");
    std::fs::create_dir_all(&dn)?;
    for p in &ev_inputs.truth {
        // The held-out micrographs, denoised, for viewers (same as `cryoden denoise`).
        let mut d = cryoden_infer::Denoiser::load(cpu()?, &ckpt, Options::default())?;
        let m = cryoden_io::read(&p.a)?;
        let y = d.denoise(&m.data, m.nx(), m.ny())?;
        let mut wo = cryoden_io::WriteOptions::like(&m.header);
        wo.labels.push(cryoden_infer::header_label(&format!(
            "last.safetensors {}",
            d.arch().describe()
        )));
        cryoden_io::write(
            dn.join(format!("{}.mrc", p.name)),
            &y,
            [m.nx(), m.ny(), 1],
            &wo,
        )?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ev)?);
    }
    eprintln!();
    eprintln!(
        "trained {} epochs ({} steps) in {:.0} s; evaluated on {} held-out micrographs:",
        summary.epochs_done,
        summary.steps,
        train_s,
        ev_inputs.truth.len()
    );
    print_table(&ev);
    eprintln!("total {:.0} s", t0.elapsed().as_secs_f64());
    eprintln!("report: {}", report.display());
    Ok(())
}

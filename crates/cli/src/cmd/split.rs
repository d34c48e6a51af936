//! `cryoden split`: movies → even/odd half sums. Glue only: flags → `cryoden_prep::split`, a progress bar with
//! ETA, one error line per bad movie (the batch goes on), a non-zero exit if any movie failed.

use anyhow::bail;
use cryoden_prep::align::AlignParams;
use cryoden_prep::split::{expand_inputs, output_paths, split_movie, Gain, SplitOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Movies: MRC stacks (.mrc, .mrcs, optionally .gz) or multi-page TIFF (.tif, .tiff), directories holding
    /// them, or quoted glob patterns ('movies/*.tif') for lists too long for the shell. Frames are read one at a
    /// time; a movie is never held in memory whole.
    #[arg(required = true, value_name = "MOVIE")]
    pub movies: Vec<PathBuf>,
    /// Output directory: DIR/even/NAME.mrc and DIR/odd/NAME.mrc (float32 sums of frames 0,2,4,… and 1,3,5,…,
    /// 0-based; the last frame of an odd-length movie is left out so both halves hold the same dose), and with
    /// --align DIR/shifts/NAME.json. NAME is the movie's file name without extension.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Gain reference (MRC or TIFF, one image of the frame size) multiplied into every frame. With --thin it
    /// converts values to counts instead (counts = value / gain).
    #[arg(long, value_name = "REF")]
    pub gain: Option<PathBuf>,
    /// Global drift correction: each frame is cross-correlated with the running sum of the frames before it
    /// (sub-pixel peak) and shifted back before summing; the same shifts serve both halves.
    #[arg(long)]
    pub align: bool,
    /// Largest drift searched by --align, in pixels.
    #[arg(long, default_value_t = AlignParams::default().max_shift, requires = "align")]
    pub max_shift: f32,
    /// B-factor (pixels²) of the low-pass applied to the --align correlation: larger is smoother, for noisier
    /// frames.
    #[arg(long, default_value_t = AlignParams::default().bfactor, requires = "align")]
    pub bfactor: f32,
    /// Refinement passes of --align after the running-sum pass: each frame re-aligned against the sum of all
    /// the others (reads the movie again per pass).
    #[arg(long, default_value_t = AlignParams::default().refine_passes, requires = "align")]
    pub refine: u32,
    /// Single counted micrographs (one image each) instead of movies: binomial thinning of every pixel's count
    /// into two independent Poisson halves. Valid only for raw counts (counting mode, not dose-weighted, not
    /// gain-normalised unless --gain gives that gain): see docs/DATA.md.
    #[arg(long, conflicts_with = "align")]
    pub thin: bool,
    /// Seed of --thin (mixed with each movie's name, so a movie's halves do not depend on the batch).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip movies whose two halves already exist in --out (to resume an interrupted batch).
    #[arg(long)]
    pub skip_existing: bool,
    /// Print one JSON object per movie on stdout (what was done, means, shifts).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let movies = expand_inputs(&args.movies)?;
    let gain = match &args.gain {
        Some(p) => Some(Gain::load(p)?),
        None => None,
    };
    let opts = SplitOptions {
        gain,
        align: args.align.then_some(AlignParams {
            max_shift: args.max_shift,
            bfactor: args.bfactor,
            refine_passes: args.refine,
        }),
        thin: args.thin,
        seed: args.seed,
    };
    let pb = ProgressBar::new(movies.len() as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} movies, ETA {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut failed = 0usize;
    let mut skipped = 0usize;
    for movie in &movies {
        let name = cryoden_prep::pairing::stem(movie);
        pb.set_message(name.clone());
        let (e, o) = output_paths(&args.out, &name);
        if args.skip_existing && e.exists() && o.exists() {
            skipped += 1;
            pb.inc(1);
            continue;
        }
        match split_movie(movie, &args.out, &opts) {
            Ok(r) => {
                if args.json {
                    pb.suspend(|| println!("{}", serde_json::to_string(&r).expect("serialisable")));
                } else if let Some(s) = &r.shifts {
                    let max = s.iter().map(|d| d[0].hypot(d[1])).fold(0f32, f32::max);
                    // suspend + eprintln: also printed when stderr is not a terminal (the bar is hidden there).
                    pb.suspend(|| {
                        eprintln!(
                            "{name}: {} of {} frames, largest drift {max:.2} px",
                            r.frames_used, r.frames
                        )
                    });
                }
            }
            Err(err) => {
                failed += 1;
                pb.suspend(|| eprintln!("error: {err:#} (skipped)"));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let done = movies.len() - failed - skipped;
    eprintln!(
        "split {done} of {} movies into {}{}",
        movies.len(),
        args.out.display(),
        if skipped > 0 {
            format!(" ({skipped} already done, skipped)")
        } else {
            String::new()
        }
    );
    if failed > 0 {
        bail!(
            "{failed} of {} movies failed (errors above); their outputs were not written",
            movies.len()
        );
    }
    Ok(())
}

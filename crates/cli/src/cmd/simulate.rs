//! `cryoden simulate`: counted movies with their noise-free truth. Glue only: flags → `SimConfig`, a progress
//! bar, `cryoden_sim::write_dataset`. The physics and its approximations are in docs/SIMULATION.md.

use anyhow::{bail, Context};
use cryoden_sim::{write_dataset, SimConfig, Structure};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

fn d() -> SimConfig {
    SimConfig::default()
}

#[derive(clap::Args)]
pub struct Args {
    /// Output directory: movies/NAME.mrcs (counts, mode 6), truth/NAME.mrc (expected sum of all frames, mode 2),
    /// simulation.json (every parameter and what was drawn). Created if missing.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Number of movies.
    #[arg(long, default_value_t = 10)]
    pub micrographs: usize,
    /// Image size in pixels: N for N×N, or WxH.
    #[arg(long, default_value = "1024", value_name = "N|WxH")]
    pub size: String,
    /// Pixel size in Å.
    #[arg(long, default_value_t = d().pixel_size)]
    pub pixel_size: f64,
    /// Frames per movie.
    #[arg(long, default_value_t = d().frames)]
    pub frames: usize,
    /// Total dose in e⁻/Å², split evenly over the frames.
    #[arg(long, default_value_t = d().dose, allow_negative_numbers = true)]
    pub dose: f64,
    /// Atomic model (PDB or mmCIF, optionally gzip). [default: apoferritin 6Z6U, built in]
    #[arg(long, value_name = "FILE")]
    pub structure: Option<PathBuf>,
    /// Particles per micrograph, placed at random without overlap. [default: enough to cover --coverage]
    #[arg(long)]
    pub particles: Option<usize>,
    /// Fraction of the image covered by particles when --particles is not given.
    #[arg(long, default_value_t = d().coverage)]
    pub coverage: f64,
    /// Mean defocus range in µm (underfocus positive), MIN:MAX or one value; drawn uniformly per micrograph.
    #[arg(
        long,
        default_value = "0.8:2.5",
        value_name = "MIN:MAX",
        allow_hyphen_values = true
    )]
    pub defocus: String,
    /// Largest astigmatism |defocus U − V| in µm (drawn uniformly, at a uniform angle).
    #[arg(long, default_value_t = d().astigmatism_um)]
    pub astigmatism: f64,
    /// Accelerating voltage in kV.
    #[arg(long, default_value_t = d().voltage_kv)]
    pub voltage: f64,
    /// Spherical aberration in mm.
    #[arg(long, default_value_t = d().cs_mm)]
    pub cs: f64,
    /// Amplitude contrast fraction.
    #[arg(long, default_value_t = d().amplitude_contrast)]
    pub amplitude_contrast: f64,
    /// CTF envelope B-factor in Å² (partial coherence).
    #[arg(long, default_value_t = d().ctf_bfactor)]
    pub ctf_bfactor: f64,
    /// B-factor in Å² applied to every atom.
    #[arg(long, default_value_t = d().atom_bfactor)]
    pub atom_bfactor: f64,
    /// Mean ice thickness in Å (must exceed the particle's diameter).
    #[arg(long, default_value_t = d().ice_thickness)]
    pub ice_thickness: f64,
    /// Relative standard deviation of the ice thickness across a micrograph.
    #[arg(long, default_value_t = d().ice_variation)]
    pub ice_variation: f64,
    /// Correlation length of the thickness variation in Å.
    #[arg(long, default_value_t = d().ice_correlation)]
    pub ice_correlation: f64,
    /// Leave out the molecular structure noise of amorphous ice (the 3.7 Å ring).
    #[arg(long)]
    pub no_ice_structure: bool,
    /// Beam-induced drift: standard deviation in Å of each frame's random-walk step in x and y (0 = none).
    #[arg(long, default_value_t = d().drift)]
    pub drift: f64,
    /// Leave out the dose-dependent decay of the signal (Grant & Grigorieff 2015).
    #[arg(long)]
    pub no_exposure_filter: bool,
    /// Detector point-spread σ in pixels (Gaussian MTF; 0 = pixel box only).
    #[arg(long, default_value_t = d().mtf_sigma_px)]
    pub mtf_sigma: f64,
    /// Random seed: the same seed gives bit-identical output on any number of threads.
    #[arg(long, default_value_t = d().seed)]
    pub seed: u64,
    /// Replace an existing simulation in --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(s: &str) -> anyhow::Result<(usize, usize)> {
    let bad = || format!("invalid --size '{s}': give N (square) or WxH, e.g. 1024 or 4096x4096");
    let (w, h) = match s.split_once(['x', 'X']) {
        Some((w, h)) => (
            w.trim().parse().with_context(bad)?,
            h.trim().parse().with_context(bad)?,
        ),
        None => {
            let n = s.trim().parse().with_context(bad)?;
            (n, n)
        }
    };
    Ok((w, h))
}

fn parse_defocus(s: &str) -> anyhow::Result<[f64; 2]> {
    let bad = || format!("invalid --defocus '{s}': give MIN:MAX in µm (e.g. 0.8:2.5) or one value");
    Ok(match s.split_once(':') {
        Some((a, b)) => [
            a.trim().parse().with_context(bad)?,
            b.trim().parse().with_context(bad)?,
        ],
        None => {
            let v = s.trim().parse().with_context(bad)?;
            [v, v]
        }
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (width, height) = parse_size(&a.size)?;
    let cfg = SimConfig {
        micrographs: a.micrographs,
        width,
        height,
        pixel_size: a.pixel_size,
        frames: a.frames,
        dose: a.dose,
        particles: a.particles,
        coverage: a.coverage,
        defocus_um: parse_defocus(&a.defocus)?,
        astigmatism_um: a.astigmatism,
        voltage_kv: a.voltage,
        cs_mm: a.cs,
        amplitude_contrast: a.amplitude_contrast,
        ctf_bfactor: a.ctf_bfactor,
        atom_bfactor: a.atom_bfactor,
        ice_thickness: a.ice_thickness,
        ice_variation: a.ice_variation,
        ice_correlation: a.ice_correlation,
        ice_structure: !a.no_ice_structure,
        drift: a.drift,
        exposure_filter: !a.no_exposure_filter,
        mtf_sigma_px: a.mtf_sigma,
        seed: a.seed,
    };
    cfg.validate()?;
    let structure = match &a.structure {
        Some(p) => Structure::from_file(p)?,
        None => Structure::apoferritin(),
    };
    if a.out.exists() && !a.out.is_dir() {
        bail!(
            "{}: --out exists and is not a directory; choose a directory",
            a.out.display()
        );
    }
    let total = (cfg.micrographs * cfg.frames) as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} frames, {eta} left  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let start = Instant::now();
    let doc = write_dataset(&cfg, &structure, &a.out, a.overwrite, &|p| {
        bar.set_message(format!(
            "micrograph {}/{}",
            p.micrograph + 1,
            cfg.micrographs
        ));
        bar.set_position(p.done as u64);
    });
    bar.finish_and_clear();
    let doc = doc?;
    let secs = start.elapsed().as_secs_f64();
    let particles = doc["derived"]["particles_per_micrograph"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "simulated {} movies of {}x{}x{} ({} particles each, {}) in {:.1} s → {}",
        cfg.micrographs,
        width,
        height,
        cfg.frames,
        particles,
        structure.name,
        secs,
        a.out.display()
    );
    if a.json {
        let summary = serde_json::json!({
            "out": a.out,
            "micrographs": cfg.micrographs,
            "width": width,
            "height": height,
            "frames": cfg.frames,
            "particles_per_micrograph": particles,
            "seconds": secs,
            "seconds_per_movie": secs / cfg.micrographs as f64,
            "simulation_json": a.out.join("simulation.json"),
        });
        println!("{summary}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_defocus() {
        assert_eq!(parse_size("1024").unwrap(), (1024, 1024));
        assert_eq!(parse_size("4096x2048").unwrap(), (4096, 2048));
        assert!(parse_size("abc")
            .unwrap_err()
            .to_string()
            .contains("--size"));
        assert_eq!(parse_defocus("0.8:2.5").unwrap(), [0.8, 2.5]);
        assert_eq!(parse_defocus("1.5").unwrap(), [1.5, 1.5]);
        assert!(parse_defocus("1:x")
            .unwrap_err()
            .to_string()
            .contains("--defocus"));
    }
}

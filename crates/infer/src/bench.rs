//! `cryoden bench denoise`: the real denoising pipeline ([`crate::run`]: MRC file in → MRC file out, reading,
//! compute and writing overlapped) on synthetic micrographs, timed in steady state.
//!
//! The inputs are written first (float32 MRC, so they sit in the page cache, as freshly motion-corrected
//! micrographs usually do); the first `warmup` files absorb one-time costs (cuDNN algorithm search, allocation of
//! the tile buffers) and are left out of the steady-state figure.

use crate::denoiser::{sum_profiles, Denoiser, Profile};
use crate::files::{plan_outputs, Format};
use crate::pipeline::{header_label, run, RunOptions, Status, Summary};
use crate::Error;
use cryoden_nn::Backend;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DenoiseBench {
    /// Square micrograph side in pixels.
    pub size: usize,
    pub files: usize,
    /// Files left out of the steady-state figure.
    pub warmup: usize,
    /// Seed of the synthetic images.
    pub seed: u64,
    pub format: Format,
}

/// Measured figures (`--json` prints this).
#[derive(Debug, serde::Serialize)]
pub struct DenoiseBenchResult {
    pub config: DenoiseBench,
    pub backend: String,
    pub arch: String,
    pub tile: usize,
    pub context: usize,
    pub batch: usize,
    /// Seconds to write the synthetic inputs (not part of any figure below).
    pub setup_s: f64,
    /// Wall time of the whole run, warm-up included.
    pub total_s: f64,
    /// Seconds from the start to the first file done (one-time costs included).
    pub first_file_s: f64,
    /// Steady state: wall seconds per micrograph between the end of warm-up and the last file, end to end (read,
    /// normalise, tile, compute, write, all overlapped).
    pub s_per_file: f64,
    pub mpixel_per_s: f64,
    /// Peak resident memory of the process (VmHWM), and the input + output image bytes of one micrograph.
    pub peak_rss_mib: Option<f64>,
    pub image_pair_mib: f64,
    /// Device memory in use by the denoiser at its peak (from the caller's probe; none on the CPU).
    pub device_mib: Option<f64>,
    /// The denoiser's own buffers on the backend (forward-only activations and scratch).
    pub workspace_mib: f64,
    /// Per-stage busy seconds of the whole run and the compute thread's phases.
    pub summary: Summary,
    /// The compute thread's phases summed over the steady-state files only (per file: divide by `images`).
    pub steady_profile: Profile,
    /// Where the files were (removed afterwards unless kept).
    pub dir: PathBuf,
}

/// A reproducible noisy image: a few smooth blobs under Poisson-like shot noise (mean ≈ 4 counts). The
/// content does not change the cost of denoising; it only keeps the statistics image-like.
pub fn synthetic_micrograph(size: usize, seed: u64) -> Vec<f32> {
    let mut img = vec![0.0f32; size * size];
    img.par_chunks_mut(size).enumerate().for_each(|(y, row)| {
        for (x, v) in row.iter_mut().enumerate() {
            let h = splitmix(seed ^ ((y * size + x) as u64).wrapping_mul(0x9e37_79b9));
            let u = [h & 0xffff, (h >> 16) & 0xffff, (h >> 32) & 0xffff, h >> 48]
                .map(|b| b as f32 / 65536.0);
            let (fx, fy) = (x as f32 / size as f32, y as f32 / size as f32);
            let signal = 1.0 + 0.5 * ((fx * 37.0).sin() * (fy * 23.0).cos());
            // Four uniforms summed ≈ a Gaussian of variance 1/3, scaled to the shot noise of 4·signal counts.
            *v = (4.0 * signal + (u.iter().sum::<f32>() - 2.0) * 3.46 * signal.sqrt()).round();
        }
    });
    img
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `cfg.files` synthetic micrographs into `dir/in`, denoises them into `dir/out` with `denoiser`, and
/// times it. `device_mem` is called as each file finishes and returns the device memory in use (MiB), if known.
pub fn bench_denoise<B: Backend>(
    denoiser: &mut Denoiser<B>,
    cfg: &DenoiseBench,
    dir: &Path,
    mut device_mem: impl FnMut() -> Option<f64>,
) -> Result<DenoiseBenchResult, Error> {
    if cfg.files <= cfg.warmup {
        return Err(Error::Usage(format!(
            "--files {} must exceed the {} warm-up files",
            cfg.files, cfg.warmup
        )));
    }
    let (inp, out) = (dir.join("in"), dir.join("out"));
    for d in [&inp, &out] {
        std::fs::create_dir_all(d).map_err(|e| Error::Input {
            path: d.clone(),
            problem: format!("cannot create the directory ({e})"),
        })?;
    }
    let t = Instant::now();
    let mut files = Vec::with_capacity(cfg.files);
    let wo = cryoden_io::WriteOptions::with_voxel_size(1.0);
    // A handful of distinct images, written under many names (generating 50 × 16 Mpixel would time the generator).
    let distinct: Vec<Vec<f32>> = (0..cfg.files.min(4))
        .map(|k| synthetic_micrograph(cfg.size, cfg.seed.wrapping_add(k as u64)))
        .collect();
    for k in 0..cfg.files {
        let p = inp.join(format!("mic_{k:05}.mrc"));
        cryoden_io::write(
            &p,
            &distinct[k % distinct.len()],
            [cfg.size, cfg.size, 1],
            &wo,
        )?;
        files.push(p);
    }
    drop(distinct);
    let setup_s = t.elapsed().as_secs_f64();
    let jobs = plan_outputs(&files, &out, "", cfg.format)?;
    let ropts = RunOptions {
        format: cfg.format,
        skip_existing: false,
        label: header_label("bench (random weights)"),
        writers: 0,
    };
    let start = Instant::now();
    let mut done: Vec<f64> = Vec::with_capacity(cfg.files);
    let mut profiles: Vec<Profile> = Vec::with_capacity(cfg.files);
    let mut failures = Vec::new();
    let mut device_peak: Option<f64> = None;
    let summary = run(denoiser, &jobs, &ropts, |o| {
        match &o.status {
            Status::Denoised {
                profile, written, ..
            } => {
                done.push(written.duration_since(start).as_secs_f64());
                profiles.push(*profile);
            }
            Status::Failed(e) => failures.push(format!("{}: {e}", o.input.display())),
            Status::Skipped => {}
        }
        if let Some(m) = device_mem() {
            device_peak = Some(device_peak.map_or(m, |p: f64| p.max(m)));
        }
    });
    if let Some(f) = failures.first() {
        return Err(Error::Usage(format!(
            "{} of {} files failed, e.g. {f}",
            failures.len(),
            cfg.files
        )));
    }
    // Outcomes arrive in file order; their write times too (one writer thread).
    let w = cfg.warmup;
    let s_per_file = (done[cfg.files - 1] - done[w.max(1) - 1]) / (cfg.files - w.max(1)) as f64;
    let px = (cfg.size * cfg.size) as f64;
    Ok(DenoiseBenchResult {
        config: cfg.clone(),
        backend: denoiser.backend().name(),
        arch: denoiser.arch().describe(),
        tile: denoiser.options().tile,
        context: denoiser.context(),
        batch: denoiser.options().batch,
        setup_s,
        total_s: summary.seconds,
        first_file_s: done[0],
        s_per_file,
        mpixel_per_s: px / 1e6 / s_per_file,
        peak_rss_mib: cryoden_nn::bench::peak_rss_mib(),
        image_pair_mib: 2.0 * 4.0 * px / (1 << 20) as f64,
        device_mib: device_peak,
        workspace_mib: denoiser.workspace_bytes() as f64 / (1 << 20) as f64,
        summary,
        steady_profile: sum_profiles(&profiles[w.max(1)..]),
        dir: dir.to_path_buf(),
    })
}

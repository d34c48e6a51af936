//! The simulation of one micrograph and of a whole data set on disk.
//!
//! Image formation (docs/SIMULATION.md derives and discusses each step):
//! 1. Δv(x): projected potential of the particles (atoms minus the ice they displace) plus the ice's thickness
//!    variation and molecular structure noise (V·Å per pixel), and v̄ = V_ice·t₀ + mean(Δv).
//! 2. Weak-phase image contrast c(x) = IFFT[ 2σ · CTF(q) · MTF(q) · FFT(Δv)(q) ], without the q = 0 term.
//! 3. Transmission T = exp(−2 A σ v̄) (the amplitude-contrast part of the mean potential).
//! 4. Frame k expects λ_k(x) = T · d · (1 + c_k(x)) electrons per pixel, d the dose per frame and pixel, where c_k is
//!    c with the exposure filter of the dose received by mid-frame and shifted by the frame's drift; counts are
//!    Poisson(λ_k) (negative λ, which the linear model allows for strong contrast, counts 0 and is reported).
//! 5. Truth = Σ_k λ_k without drift: the expectation of the aligned sum of all frames.

use crate::error::{config, Result, SimError};
use crate::fft::{Fft2, Spectrum, C32};
use crate::ice::{self, IceParams};
use crate::optics::{self, Ctf};
use crate::projection::{self, Projector};
use crate::rng::{self, Purpose};
use crate::scattering;
use crate::structure::Structure;
use rand::Rng;
use rand_distr::{Distribution, Normal, Poisson};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Every parameter of a simulation. Lengths in Å unless the name says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Number of micrographs (movies).
    pub micrographs: usize,
    /// Image width and height in pixels.
    pub width: usize,
    pub height: usize,
    /// Pixel size (Å).
    pub pixel_size: f64,
    /// Frames per movie.
    pub frames: usize,
    /// Total dose (e⁻/Å²) over all frames, split evenly.
    pub dose: f64,
    /// Particles per micrograph; `None` = as many as cover `coverage` of the area.
    pub particles: Option<usize>,
    /// Fraction of the area covered by particle discs when `particles` is `None`.
    pub coverage: f64,
    /// Range of the mean defocus (µm, underfocus positive), drawn uniformly per micrograph.
    pub defocus_um: [f64; 2],
    /// Largest |defocus U − V| (µm), drawn uniformly per micrograph; the angle is uniform in [0°, 180°).
    pub astigmatism_um: f64,
    pub voltage_kv: f64,
    pub cs_mm: f64,
    pub amplitude_contrast: f64,
    /// CTF envelope B-factor (Å²): partial coherence and other optical losses.
    pub ctf_bfactor: f64,
    /// B-factor (Å²) blurring every atom (thermal motion and conformational spread).
    pub atom_bfactor: f64,
    /// Mean ice thickness (Å).
    pub ice_thickness: f64,
    /// Relative standard deviation of the ice thickness over a micrograph.
    pub ice_variation: f64,
    /// Correlation length (Å) of the thickness variation.
    pub ice_correlation: f64,
    /// Include the molecular structure noise of amorphous ice (the 3.7 Å ring).
    pub ice_structure: bool,
    /// Beam-induced drift: standard deviation (Å) of each per-frame step of a random walk in x and y; 0 = none.
    pub drift: f64,
    /// Dose-dependent decay of the signal (Grant & Grigorieff 2015 critical exposure).
    pub exposure_filter: bool,
    /// Detector point-spread σ in pixels (Gaussian MTF); 0 = only the pixel's own box average.
    pub mtf_sigma_px: f64,
    pub seed: u64,
}

impl Default for SimConfig {
    /// Typical single-particle conditions (FACTS.md §5): 300 kV, Cs 2.7 mm, A 0.07, 40 e⁻/Å² over 40 frames,
    /// 0.8–2.5 µm defocus, 1 Å pixels, 30 nm of ice.
    fn default() -> SimConfig {
        SimConfig {
            micrographs: 1,
            width: 1024,
            height: 1024,
            pixel_size: 1.0,
            frames: 40,
            dose: 40.0,
            particles: None,
            coverage: 0.25,
            defocus_um: [0.8, 2.5],
            astigmatism_um: 0.05,
            voltage_kv: 300.0,
            cs_mm: 2.7,
            amplitude_contrast: 0.07,
            ctf_bfactor: 20.0,
            atom_bfactor: 20.0,
            ice_thickness: 300.0,
            ice_variation: 0.02,
            ice_correlation: 1000.0,
            ice_structure: true,
            drift: 0.3,
            exposure_filter: true,
            mtf_sigma_px: 0.0,
            seed: 0,
        }
    }
}

/// The largest expected count per pixel and frame: keeps counts far inside mode 6 (uint16).
const MAX_DOSE_PER_PIXEL_FRAME: f64 = 1000.0;

impl SimConfig {
    /// Check every parameter; errors name the command-line flag.
    pub fn validate(&self) -> Result<()> {
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        if self.micrographs == 0 {
            return Err(config("--micrographs", "must be at least 1"));
        }
        if self.width < 16 || self.height < 16 || self.width > 32768 || self.height > 32768 {
            return Err(config(
                "--size",
                format!(
                    "{}x{} pixels: each side must be 16–32768",
                    self.width, self.height
                ),
            ));
        }
        if !(finite_pos(self.pixel_size) && self.pixel_size <= 20.0) {
            return Err(config(
                "--pixel-size",
                format!("{} Å: must be > 0 and ≤ 20", self.pixel_size),
            ));
        }
        if self.frames == 0 || self.frames > 10_000 {
            return Err(config(
                "--frames",
                format!("{}: must be 1–10000", self.frames),
            ));
        }
        if !finite_pos(self.dose) {
            return Err(config(
                "--dose",
                format!("{} e/Å²: the total dose must be positive", self.dose),
            ));
        }
        let per_px = self.dose / self.frames as f64 * self.pixel_size.powi(2);
        if per_px > MAX_DOSE_PER_PIXEL_FRAME {
            return Err(config(
                "--dose",
                format!(
                    "{per_px:.0} electrons per pixel per frame is beyond counting-detector conditions (at most \
                     {MAX_DOSE_PER_PIXEL_FRAME}); use more --frames or a smaller --pixel-size"
                ),
            ));
        }
        if !(finite_pos(self.coverage) && self.coverage < 0.55) {
            return Err(config(
                "--coverage",
                format!(
                    "{}: must be in (0, 0.55); random packing of discs jams near 0.547",
                    self.coverage
                ),
            ));
        }
        let [d0, d1] = self.defocus_um;
        if !(finite_pos(d0) && d1.is_finite() && d0 <= d1 && d1 <= 20.0) {
            return Err(config(
                "--defocus",
                format!("{d0}:{d1} µm: need 0 < MIN ≤ MAX ≤ 20 (underfocus positive)"),
            ));
        }
        if !(finite_nonneg(self.astigmatism_um) && self.astigmatism_um < 2.0 * d0) {
            return Err(config(
                "--astigmatism",
                format!(
                    "{} µm: must be ≥ 0 and below twice the smallest defocus",
                    self.astigmatism_um
                ),
            ));
        }
        if !(self.voltage_kv.is_finite() && (60.0..=1000.0).contains(&self.voltage_kv)) {
            return Err(config(
                "--voltage",
                format!("{} kV: must be 60–1000", self.voltage_kv),
            ));
        }
        if !(finite_nonneg(self.cs_mm) && self.cs_mm <= 10.0) {
            return Err(config("--cs", format!("{} mm: must be 0–10", self.cs_mm)));
        }
        if !(finite_nonneg(self.amplitude_contrast) && self.amplitude_contrast < 1.0) {
            return Err(config(
                "--amplitude-contrast",
                format!("{}: must be in [0, 1)", self.amplitude_contrast),
            ));
        }
        if !finite_nonneg(self.ctf_bfactor) {
            return Err(config(
                "--ctf-bfactor",
                format!("{} Å²: must be ≥ 0", self.ctf_bfactor),
            ));
        }
        if !(finite_nonneg(self.atom_bfactor) && self.atom_bfactor <= 500.0) {
            return Err(config(
                "--atom-bfactor",
                format!("{} Å²: must be 0–500", self.atom_bfactor),
            ));
        }
        if !(finite_nonneg(self.ice_thickness) && self.ice_thickness <= 5000.0) {
            return Err(config(
                "--ice-thickness",
                format!("{} Å: must be 0–5000", self.ice_thickness),
            ));
        }
        if !(finite_nonneg(self.ice_variation) && self.ice_variation < 0.5) {
            return Err(config(
                "--ice-variation",
                format!("{}: must be in [0, 0.5)", self.ice_variation),
            ));
        }
        if !finite_pos(self.ice_correlation) {
            return Err(config(
                "--ice-correlation",
                format!("{} Å: must be > 0", self.ice_correlation),
            ));
        }
        if !finite_nonneg(self.drift) {
            return Err(config("--drift", format!("{} Å: must be ≥ 0", self.drift)));
        }
        if !(finite_nonneg(self.mtf_sigma_px) && self.mtf_sigma_px <= 10.0) {
            return Err(config(
                "--mtf-sigma",
                format!("{} pixels: must be 0–10", self.mtf_sigma_px),
            ));
        }
        Ok(())
    }

    /// Expected electrons per pixel per frame before attenuation.
    pub fn dose_per_pixel_frame(&self) -> f64 {
        self.dose / self.frames as f64 * self.pixel_size.powi(2)
    }
}

/// One particle in a micrograph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Particle {
    /// Centre (the structure's centroid) in pixels from the image's first pixel corner, x along rows.
    pub x_px: f64,
    pub y_px: f64,
    /// Rotation applied to the model (centred on its centroid) before projecting along z: unit quaternion.
    pub quaternion_wxyz: [f64; 4],
    /// The same rotation as ZYZ Euler angles (rot, tilt, psi), R = Rz(psi) Ry(tilt) Rz(rot).
    pub euler_zyz_deg: [f64; 3],
}

/// Everything drawn for one micrograph, plus what its simulation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MicrographMeta {
    pub index: usize,
    pub name: String,
    pub ctf: Ctf,
    /// Shift (pixels) of each frame relative to the truth; frame 0 is never shifted.
    pub drift_px: Vec<[f64; 2]>,
    pub particles: Vec<Particle>,
    /// Mean projected potential v̄ (V·Å) and the transmission T = exp(−2Aσv̄).
    pub mean_potential_v_a: f64,
    pub transmission: f64,
    /// Pixels × frames whose expected count was negative and was set to 0 (0 in realistic conditions).
    pub clamped_pixels: u64,
    /// Mean of the truth image (electrons per pixel over the whole exposure).
    pub truth_mean: f64,
}

/// A simulated micrograph held in memory.
pub struct Micrograph {
    /// `frames[k]` is frame k, row-major `height × width` counts.
    pub frames: Vec<Vec<u16>>,
    /// Expected sum of all frames without drift (electrons per pixel, f32).
    pub truth: Vec<f32>,
    pub meta: MicrographMeta,
}

/// A prepared simulation: the structure's projection tables and the FFT plans for the image size.
pub struct Simulator {
    cfg: SimConfig,
    projector: Projector,
    fft: Fft2,
    structure_name: String,
    structure_sha256: String,
    implicit_hydrogens: bool,
}

/// Name of micrograph `index`: `sim_0000`, `sim_0001`, …
pub fn micrograph_name(index: usize) -> String {
    format!("sim_{index:04}")
}

impl Simulator {
    pub fn new(cfg: SimConfig, structure: &Structure) -> Result<Simulator> {
        cfg.validate()?;
        let projector = Projector::new(
            structure,
            cfg.pixel_size,
            cfg.atom_bfactor,
            scattering::ice_mean_potential(),
        );
        let diameter = 2.0 * projector.radius;
        if cfg.ice_thickness < diameter {
            return Err(config(
                "--ice-thickness",
                format!(
                    "{} Å is thinner than the particle ({} is {diameter:.0} Å across); particles must be embedded \
                     in the ice",
                    cfg.ice_thickness, structure.name
                ),
            ));
        }
        Ok(Simulator {
            fft: Fft2::new(cfg.width, cfg.height),
            projector,
            structure_name: structure.name.clone(),
            structure_sha256: structure.sha256.clone(),
            implicit_hydrogens: !structure.has_hydrogens,
            cfg,
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Particle radius used for placement (Å): the farthest atom plus 3 Å for its potential's tail.
    pub fn particle_radius(&self) -> f64 {
        self.projector.radius + 3.0
    }

    /// Particles per micrograph: the explicit number, or what covers `coverage` of the area.
    pub fn particles_per_micrograph(&self) -> usize {
        let c = &self.cfg;
        c.particles.unwrap_or_else(|| {
            let area = (c.width * c.height) as f64 * c.pixel_size.powi(2);
            (c.coverage * area / (std::f64::consts::PI * self.particle_radius().powi(2))).floor()
                as usize
        })
    }

    /// Draw the random parameters of micrograph `index` (defocus, particles, drift). Fails when the particles do
    /// not fit.
    pub fn plan(&self, index: usize) -> Result<MicrographMeta> {
        let c = &self.cfg;
        let mut r = rng::stream(c.seed, index, Purpose::Optics, 0, 0);
        let mean_df = r.random_range(c.defocus_um[0]..=c.defocus_um[1]) * 1e4;
        let astig = r.random_range(0.0..=c.astigmatism_um) * 1e4;
        let angle = r.random_range(0.0..180.0);
        let ctf = Ctf {
            defocus_u: mean_df + astig / 2.0,
            defocus_v: mean_df - astig / 2.0,
            astigmatism_angle_deg: angle,
            cs_mm: c.cs_mm,
            volts: c.voltage_kv * 1e3,
            amplitude_contrast: c.amplitude_contrast,
            bfactor: c.ctf_bfactor,
        };
        let particles = self.place(index)?;
        let mut r = rng::stream(c.seed, index, Purpose::Drift, 0, 0);
        let step =
            Normal::new(0.0, c.drift / c.pixel_size).expect("validated: drift ≥ 0 and finite");
        let mut pos = [0.0f64; 2];
        let drift_px = (0..c.frames)
            .map(|k| {
                if k > 0 {
                    pos[0] += step.sample(&mut r);
                    pos[1] += step.sample(&mut r);
                }
                pos
            })
            .collect();
        Ok(MicrographMeta {
            index,
            name: micrograph_name(index),
            ctf,
            drift_px,
            particles,
            mean_potential_v_a: 0.0,
            transmission: 0.0,
            clamped_pixels: 0,
            truth_mean: 0.0,
        })
    }

    /// Random sequential addition of non-overlapping discs, fully inside the image.
    fn place(&self, index: usize) -> Result<Vec<Particle>> {
        let c = &self.cfg;
        let n = self.particles_per_micrograph();
        let rad = self.particle_radius() / c.pixel_size;
        let (w, h) = (c.width as f64, c.height as f64);
        if n > 0 && (w < 2.0 * rad || h < 2.0 * rad) {
            return Err(SimError::NoRoom(format!(
                "a particle of {} ({:.0} Å across) does not fit in {}x{} pixels of {} Å; use a larger --size or \
                 --pixel-size, or --particles 0",
                self.structure_name,
                2.0 * self.particle_radius(),
                c.width,
                c.height,
                c.pixel_size
            )));
        }
        let mut r = rng::stream(c.seed, index, Purpose::Placement, 0, 0);
        let mut placed: Vec<Particle> = Vec::with_capacity(n);
        let max_attempts = 1000 * n.max(1);
        let mut attempts = 0;
        while placed.len() < n {
            attempts += 1;
            if attempts > max_attempts {
                return Err(SimError::NoRoom(format!(
                    "only {} of {n} particles of {} ({:.0} Å across) fit without overlap in {}x{} pixels of {} Å \
                     ({max_attempts} random tries); use --particles {} or fewer, or a larger --size",
                    placed.len(),
                    self.structure_name,
                    2.0 * self.particle_radius(),
                    c.width,
                    c.height,
                    c.pixel_size,
                    placed.len()
                )));
            }
            let x = r.random_range(rad..=w - rad);
            let y = r.random_range(rad..=h - rad);
            let min_d2 = (2.0 * rad).powi(2);
            if placed
                .iter()
                .all(|p| (p.x_px - x).powi(2) + (p.y_px - y).powi(2) >= min_d2)
            {
                let q = projection::uniform_quaternion(r.random(), r.random(), r.random());
                let euler = projection::euler_zyz_deg(&projection::quaternion_matrix(q));
                placed.push(Particle {
                    x_px: x,
                    y_px: y,
                    quaternion_wxyz: q,
                    euler_zyz_deg: euler,
                });
            }
        }
        Ok(placed)
    }

    /// Δv: particles (minus displaced ice) plus the ice fields, V·Å per pixel, without the ice's mean V_ice·t₀.
    pub fn potential(&self, meta: &MicrographMeta) -> Vec<f32> {
        let c = &self.cfg;
        let (nx, ny) = (c.width, c.height);
        let mut v = ice::ice_field(
            &self.fft,
            c.pixel_size,
            &IceParams {
                thickness: c.ice_thickness,
                variation: c.ice_variation,
                correlation_length: c.ice_correlation,
                structure_noise: c.ice_structure,
            },
            c.seed,
            meta.index,
        );
        // Boxes are projected in parallel and added in particle order, so the sum does not depend on threads.
        for chunk in meta.particles.chunks(32) {
            let boxes: Vec<_> = chunk
                .par_iter()
                .map(|p| {
                    let rot = projection::quaternion_matrix(p.quaternion_wxyz);
                    self.projector.project(&rot, p.x_px, p.y_px)
                })
                .collect();
            for (bx, x0, y0) in boxes {
                let side = (bx.len() as f64).sqrt() as usize;
                for j in 0..side {
                    let y = y0 + j as i64;
                    if y < 0 || y >= ny as i64 {
                        continue;
                    }
                    let row = &mut v[y as usize * nx..(y as usize + 1) * nx];
                    for i in 0..side {
                        let x = x0 + i as i64;
                        if x >= 0 && x < nx as i64 {
                            row[x as usize] += bx[j * side + i];
                        }
                    }
                }
            }
        }
        v
    }

    /// The contrast spectrum 2σ·CTF·MTF·FFT(Δv) (DC removed), the mean potential v̄ and the transmission T.
    fn contrast_spectrum(&self, meta: &MicrographMeta, dv: &[f32]) -> (Spectrum, f64, f64) {
        let c = &self.cfg;
        let volts = c.voltage_kv * 1e3;
        let sigma = optics::interaction_constant(volts);
        let mean_dv = dv.par_iter().map(|&x| x as f64).sum::<f64>() / dv.len() as f64;
        let vbar = scattering::ice_mean_potential() * c.ice_thickness + mean_dv;
        let transmission = (-2.0 * c.amplitude_contrast * sigma * vbar).exp();
        let mut s = self.fft.forward(dv);
        let ny = s.ny;
        let (p, mtf) = (c.pixel_size, c.mtf_sigma_px);
        let ctf = meta.ctf;
        s.data.par_chunks_mut(ny).enumerate().for_each(|(kx, col)| {
            for (ky, z) in col.iter_mut().enumerate() {
                if kx == 0 && ky == 0 {
                    *z = C32::default();
                    continue;
                }
                let (fx, fy) = self.fft.freq(kx, ky);
                let g = 2.0
                    * sigma
                    * ctf.value(fx / p, fy / p)
                    * optics::detector_mtf((fx * fx + fy * fy).sqrt(), mtf);
                *z *= g as f32;
            }
        });
        (s, vbar, transmission)
    }

    /// 1/(2 N_e(q)) per spectrum element (Å²/e⁻), for the exposure filter.
    fn decay_rates(&self) -> Vec<f32> {
        let c = &self.cfg;
        let ny = c.height;
        let mut out = vec![0f32; self.fft.nkx() * ny];
        out.par_chunks_mut(ny).enumerate().for_each(|(kx, col)| {
            for (ky, v) in col.iter_mut().enumerate() {
                let (fx, fy) = self.fft.freq(kx, ky);
                let q = (fx * fx + fy * fy).sqrt() / c.pixel_size;
                *v = (0.5 / optics::critical_exposure(q, c.voltage_kv * 1e3)) as f32;
            }
        });
        out
    }

    /// Simulate micrograph `index`, handing each frame to `sink(k, counts)` as soon as it is drawn (one frame in
    /// memory at a time). Returns the truth and the metadata.
    pub fn simulate_streaming(
        &self,
        index: usize,
        mut sink: impl FnMut(usize, &[u16]) -> Result<()>,
    ) -> Result<(Vec<f32>, MicrographMeta)> {
        let c = &self.cfg;
        let mut meta = self.plan(index)?;
        let dv = self.potential(&meta);
        let (spec, vbar, t) = self.contrast_spectrum(&meta, &dv);
        drop(dv);
        meta.mean_potential_v_a = vbar;
        meta.transmission = t;
        let d = c.dose_per_pixel_frame();
        let dose_frame = c.dose / c.frames as f64; // e⁻/Å² per frame
        let nf = c.frames;
        let rates = c.exposure_filter.then(|| self.decay_rates());
        let drifting = meta.drift_px.iter().any(|s| s[0] != 0.0 || s[1] != 0.0);

        // Truth: T·(F·d + d·IFFT[C · Σ_k decay_k]); Σ_k exp(−(k+½)·D·a) = r^½ (1 − r^F)/(1 − r), r = exp(−D·a).
        let truth_spec = match &rates {
            None => None,
            Some(rates) => {
                let mut s = Spectrum {
                    nkx: spec.nkx,
                    ny: spec.ny,
                    data: spec.data.clone(),
                };
                s.data
                    .par_iter_mut()
                    .zip(rates.par_iter())
                    .for_each(|(z, &a)| {
                        let x = dose_frame * a as f64;
                        let sum = if x < 1e-12 {
                            nf as f64
                        } else {
                            let r = (-x).exp();
                            r.sqrt() * (1.0 - r.powi(nf as i32)) / (1.0 - r)
                        };
                        *z *= sum as f32;
                    });
                Some(s)
            }
        };
        let truth_contrast = match &truth_spec {
            Some(s) => self.fft.inverse(s),
            None => self
                .fft
                .inverse(&spec)
                .into_iter()
                .map(|v| v * nf as f32)
                .collect(),
        };
        drop(truth_spec);
        let truth: Vec<f32> = truth_contrast
            .par_iter()
            .map(|&cs| (t * d * (nf as f64 + cs as f64)) as f32)
            .collect();
        drop(truth_contrast);
        meta.truth_mean = truth.par_iter().map(|&v| v as f64).sum::<f64>() / truth.len() as f64;

        // Frames. Without drift or decay every frame has the same expectation: one inverse FFT serves all.
        let shared = (rates.is_none() && !drifting).then(|| self.fft.inverse(&spec));
        // Decay factor of frame k, exp(−(k+½)·D·a), kept as a running product (no exp per frame and element).
        let mut decay: Option<(Vec<f32>, Vec<f32>)> = rates.as_ref().map(|r| {
            let (half, full) = ((0.5 * dose_frame) as f32, dose_frame as f32);
            (
                r.par_iter().map(|&a| (-half * a).exp()).collect(),
                r.par_iter().map(|&a| (-full * a).exp()).collect(),
            )
        });
        let mut counts = vec![0u16; c.width * c.height];
        for k in 0..nf {
            let owned;
            let contrast: &[f32] = match &shared {
                Some(s) => s,
                None => {
                    let mut s = Spectrum {
                        nkx: spec.nkx,
                        ny: spec.ny,
                        data: spec.data.clone(),
                    };
                    self.frame_filter(
                        &mut s,
                        k,
                        &meta,
                        decay.as_ref().map(|(cur, _)| cur.as_slice()),
                    );
                    owned = self.fft.inverse(&s);
                    &owned
                }
            };
            if let Some((cur, ratio)) = &mut decay {
                cur.par_iter_mut()
                    .zip(ratio.par_iter())
                    .for_each(|(c, r)| *c *= r);
            }
            meta.clamped_pixels += self.sample_counts(contrast, t * d, index, k, &mut counts);
            sink(k, &counts)?;
        }
        Ok((truth, meta))
    }

    /// Multiply a frame's spectrum by its exposure decay (`decay`, for the cumulative dose at mid-frame) and its
    /// drift shift.
    fn frame_filter(
        &self,
        s: &mut Spectrum,
        k: usize,
        meta: &MicrographMeta,
        decay: Option<&[f32]>,
    ) {
        let ny = s.ny;
        let [dx, dy] = meta.drift_px[k];
        let (nx_f, ny_f) = (self.cfg.width as f64, self.cfg.height as f64);
        // Shift by (dx, dy): multiply by exp(−2πi (kx dx / nx + ky dy / ny)), separable in kx and ky.
        let phase = |k: f64, d: f64, n: f64| {
            let a = -2.0 * std::f64::consts::PI * k * d / n;
            C32::new(a.cos() as f32, a.sin() as f32)
        };
        let py: Vec<C32> = (0..ny)
            .map(|ky| {
                let (_, fy) = self.fft.freq(0, ky);
                phase(fy * ny_f, dy, ny_f)
            })
            .collect();
        s.data.par_chunks_mut(ny).enumerate().for_each(|(kx, col)| {
            let px = phase(kx as f64, dx, nx_f);
            for (ky, z) in col.iter_mut().enumerate() {
                let mut f = px * py[ky];
                if let Some(dk) = decay {
                    f *= dk[kx * ny + ky];
                }
                *z *= f;
            }
        });
    }

    /// Poisson counts of λ = scale·(1 + contrast); returns how many λ were negative (counted as 0).
    fn sample_counts(
        &self,
        contrast: &[f32],
        scale: f64,
        index: usize,
        frame: usize,
        out: &mut [u16],
    ) -> u64 {
        let nx = self.cfg.width;
        let seed = self.cfg.seed;
        out.par_chunks_mut(nx)
            .zip(contrast.par_chunks(nx))
            .enumerate()
            .map(|(row, (dst, src))| {
                let mut r = rng::stream(seed, index, Purpose::Counts, frame, row);
                let mut clamped = 0u64;
                for (o, &cv) in dst.iter_mut().zip(src) {
                    let lambda = (scale * (1.0 + cv as f64)) as f32;
                    *o = if lambda > 0.0 {
                        let p = Poisson::new(lambda).expect("λ is positive and finite");
                        // λ ≤ 2000 (validated dose), so the count fits u16 with overwhelming margin.
                        p.sample(&mut r).min(u16::MAX as f32) as u16
                    } else {
                        clamped += (lambda < 0.0) as u64;
                        0
                    };
                }
                clamped
            })
            .sum()
    }

    /// Simulate micrograph `index` in memory (all frames).
    pub fn simulate_micrograph(&self, index: usize) -> Result<Micrograph> {
        let mut frames = Vec::with_capacity(self.cfg.frames);
        let (truth, meta) = self.simulate_streaming(index, |_, f| {
            frames.push(f.to_vec());
            Ok(())
        })?;
        Ok(Micrograph {
            frames,
            truth,
            meta,
        })
    }

    /// The parts of simulation.json that do not depend on the micrograph.
    pub fn describe(&self) -> serde_json::Value {
        let c = &self.cfg;
        let volts = c.voltage_kv * 1e3;
        serde_json::json!({
            "structure": {
                "name": self.structure_name,
                "sha256": self.structure_sha256,
                "atoms": self.projector.n_atoms(),
                "elements": self.projector.table_elements,
                "radius_a": self.projector.radius,
                "implicit_hydrogens": self.implicit_hydrogens,
                "implicit_h_per_heavy_atom": if self.implicit_hydrogens { projection::IMPLICIT_H_PER_HEAVY } else { 0.0 },
                "displaced_volume_per_heavy_atom_a3": projection::DISPLACED_VOLUME_PER_HEAVY,
                "particle_potential_integral_v_a3": self.projector.particle_integral,
            },
            "derived": {
                "wavelength_a": optics::wavelength(volts),
                "interaction_constant_rad_per_v_a": optics::interaction_constant(volts),
                "ice_mean_potential_v": scattering::ice_mean_potential(),
                "dose_per_frame_e_per_px": c.dose_per_pixel_frame(),
                "particles_per_micrograph": self.particles_per_micrograph(),
                "placement_radius_a": self.particle_radius(),
            },
        })
    }
}

/// What [`write_dataset`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub micrograph: usize,
    pub frame: usize,
    /// Frames written so far over the whole data set, and the total.
    pub done: usize,
    pub total: usize,
}

/// Where a data set's files go.
pub fn movie_path(out: &Path, name: &str) -> PathBuf {
    out.join("movies").join(format!("{name}.mrcs"))
}
pub fn truth_path(out: &Path, name: &str) -> PathBuf {
    out.join("truth").join(format!("{name}.mrc"))
}

/// Simulate `cfg.micrographs` movies into `out`: `movies/NAME.mrcs` (mode 6 counts), `truth/NAME.mrc` (mode 2) and
/// `simulation.json`. Every file is written under a temporary name and renamed when complete; all parameters
/// (including particle placement) are checked before anything is written. Refuses to overwrite an existing
/// simulation unless `overwrite`.
pub fn write_dataset(
    cfg: &SimConfig,
    structure: &Structure,
    out: &Path,
    overwrite: bool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<serde_json::Value> {
    let sim = Simulator::new(cfg.clone(), structure)?;
    // Plans are cheap: draw them all first so that a misfit fails before any output exists.
    let plans = (0..cfg.micrographs)
        .map(|i| sim.plan(i))
        .collect::<Result<Vec<_>>>()?;
    drop(plans);
    let json_path = out.join("simulation.json");
    if json_path.exists() && !overwrite {
        return Err(SimError::Exists(json_path));
    }
    for sub in ["movies", "truth"] {
        let d = out.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| SimError::Fs {
            path: d.clone(),
            msg: "cannot create the output directory",
            source: e,
        })?;
    }
    let p = cfg.pixel_size as f32;
    let movie_opts = cryoden_io::WriteOptions {
        mode: cryoden_io::Mode::Uint16,
        ..cryoden_io::WriteOptions::with_voxel_size(p)
    };
    let truth_opts = cryoden_io::WriteOptions::with_voxel_size(p);
    let total = cfg.micrographs * cfg.frames;
    let mut metas = Vec::with_capacity(cfg.micrographs);
    let mut buf = vec![0f32; cfg.width * cfg.height];
    for i in 0..cfg.micrographs {
        let name = micrograph_name(i);
        let mut w = cryoden_io::StackWriter::create(
            movie_path(out, &name),
            cfg.width,
            cfg.height,
            &movie_opts,
        )?;
        let (truth, meta) = sim.simulate_streaming(i, |k, counts| {
            buf.par_iter_mut()
                .zip(counts.par_iter())
                .for_each(|(b, &c)| *b = c as f32);
            w.append(&buf)?;
            progress(Progress {
                micrograph: i,
                frame: k,
                done: i * cfg.frames + k + 1,
                total,
            });
            Ok(())
        })?;
        w.finish()?;
        cryoden_io::write(
            truth_path(out, &name),
            &truth,
            [cfg.width, cfg.height, 1],
            &truth_opts,
        )?;
        metas.push(meta);
    }
    let mut doc = serde_json::json!({
        "cryoden_version": env!("CARGO_PKG_VERSION"),
        "seed": cfg.seed,
        "config": cfg,
        "units": {
            "movies": "counts per pixel per frame (MRC mode 6)",
            "truth": "expected electrons per pixel summed over all frames, drift-free (MRC mode 2)",
            "lengths": "Å unless the key says _px or _um; defocus in Å inside ctf",
            "particle_position": "pixels from the corner of the first pixel; x along rows (MRC x)",
        },
        "micrographs": metas,
    });
    if let (Some(d), serde_json::Value::Object(extra)) = (doc.as_object_mut(), sim.describe()) {
        d.extend(extra);
    }
    let text = serde_json::to_string_pretty(&doc).expect("JSON of plain data");
    cryoden_io::write_atomic(&json_path, |w| {
        use std::io::Write;
        w.write_all(text.as_bytes())
            .map_err(|source| cryoden_io::Error::Io {
                path: json_path.clone(),
                what: "cannot write",
                source,
            })
    })?;
    Ok(doc)
}

//! Vitreous ice: the projected potential of the solvent layer beyond its mean.
//!
//! Two parts, both Gaussian random fields fixed for a micrograph (the specimen does not change between frames):
//! - thickness variation: t(x) = t₀ (1 + ε g(x)), g a unit-variance field with Gaussian correlation of length L,
//!   contributing V_ice · t₀ ε g(x) (low-frequency background);
//! - molecular structure noise: a slab of n = 0.0314 molecules/Å³ and thickness t₀ has projected-potential power
//!   spectrum P(q) = n t₀ (2π a₀ e)² |f_water(q)|² S(q) (V²·Å⁴), with S(q) a model of the structure factor of
//!   low-density amorphous ice (see [`structure_factor`]).
//!
//! A field with power spectrum P(q) on an nx × ny grid of pixel p is made from unit white noise W:
//! g = IFFT(W · √P(q) / p) (then Var g = Σ_q P(q) Δq², Δq² = 1/(nx ny p²)).

use crate::fft::Fft2;
use crate::rng::{self, Purpose};
use crate::scattering::{self, TWO_PI_A0_E};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use std::f64::consts::PI;

/// Structure factor of the molecular centres of low-density amorphous ice, Q = 2πq in Å⁻¹: S(0) = 0.06 (the
/// compressibility limit n k_B T κ_T of water near 0 °C), a first diffraction peak of height 2.5 at Q₁ = 1.69 Å⁻¹
/// (the "3.7 Å ice ring"), half-width 0.15 Å⁻¹ on the low side and 0.4 Å⁻¹ on the high side, and 1 beyond. A
/// smooth approximation of the measured curve (Bowron et al. 2006, J. Chem. Phys. 125:194502), not a fit.
pub fn structure_factor(q: f64) -> f64 {
    let big_q = 2.0 * PI * q;
    let (q1, peak) = (1.69, 2.5);
    if big_q <= q1 {
        0.06 + (peak - 0.06) * (-(big_q - q1).powi(2) / (2.0 * 0.15f64.powi(2))).exp()
    } else {
        1.0 + (peak - 1.0) * (-(big_q - q1).powi(2) / (2.0 * 0.4f64.powi(2))).exp()
    }
}

/// Power spectrum (V²·Å⁴) of the projected potential of an ice slab of `thickness` Å at frequency q (Å⁻¹).
pub fn structure_psd(q: f64, thickness: f64) -> f64 {
    scattering::ICE_MOLECULES_PER_A3
        * thickness
        * TWO_PI_A0_E.powi(2)
        * scattering::water_form_factor_sq(q)
        * structure_factor(q)
}

fn sinc_pi(f: f64) -> f64 {
    if f.abs() < 1e-12 {
        1.0
    } else {
        (PI * f).sin() / (PI * f)
    }
}

/// Unit white Gaussian noise, one RNG stream per row (thread-count independent).
fn white_noise(nx: usize, ny: usize, seed: u64, index: usize, purpose: Purpose) -> Vec<f32> {
    let mut w = vec![0f32; nx * ny];
    w.par_chunks_mut(nx).enumerate().for_each(|(row, out)| {
        let mut r = rng::stream(seed, index, purpose, 0, row);
        for v in out {
            *v = StandardNormal.sample(&mut r);
        }
    });
    w
}

/// A Gaussian random field with power spectrum `psd(q)` (q in Å⁻¹), pixel-averaged (sinc² of the pixel), zero mean.
fn field(
    fft: &Fft2,
    pixel: f64,
    seed: u64,
    index: usize,
    purpose: Purpose,
    psd: impl Fn(f64) -> f64 + Sync,
) -> Vec<f32> {
    let w = white_noise(fft.nx, fft.ny, seed, index, purpose);
    let mut s = fft.forward(&w);
    let ny = s.ny;
    s.data.par_chunks_mut(ny).enumerate().for_each(|(kx, col)| {
        for (ky, v) in col.iter_mut().enumerate() {
            let (fx, fy) = fft.freq(kx, ky);
            let q = (fx * fx + fy * fy).sqrt() / pixel;
            let amp = if kx == 0 && ky == 0 {
                0.0
            } else {
                psd(q).sqrt() / pixel * sinc_pi(fx) * sinc_pi(fy)
            };
            *v *= amp as f32;
        }
    });
    fft.inverse(&s)
}

/// The ice's projected potential beyond its mean (V·Å), for micrograph `index`.
pub struct IceParams {
    pub thickness: f64,
    pub variation: f64,
    pub correlation_length: f64,
    pub structure_noise: bool,
}

pub fn ice_field(fft: &Fft2, pixel: f64, p: &IceParams, seed: u64, index: usize) -> Vec<f32> {
    let (nx, ny) = (fft.nx, fft.ny);
    let mut out = vec![0f32; nx * ny];
    let v_ice = scattering::ice_mean_potential();
    if p.variation > 0.0 {
        // Gaussian covariance exp(−r²/2L²) has spectrum 2πL² exp(−2π²L²q²); normalised to unit variance over
        // the field, so ε is exactly the relative standard deviation of the thickness in this micrograph.
        let l = p.correlation_length;
        let mut g = field(fft, pixel, seed, index, Purpose::IceThickness, |q| {
            2.0 * PI * l * l * (-2.0 * PI * PI * l * l * q * q).exp()
        });
        let n = g.len() as f64;
        let mean = g.iter().map(|&v| v as f64).sum::<f64>() / n;
        let sd = (g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let scale = if sd > 0.0 {
            v_ice * p.thickness * p.variation / sd
        } else {
            0.0
        };
        g.par_iter_mut()
            .for_each(|v| *v = ((*v as f64 - mean) * scale) as f32);
        out = g;
    }
    if p.structure_noise {
        let t = p.thickness;
        let s = field(fft, pixel, seed, index, Purpose::IceStructure, |q| {
            structure_psd(q, t)
        });
        out.par_iter_mut()
            .zip(s.par_iter())
            .for_each(|(o, v)| *o += v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_factor_shape() {
        assert!((structure_factor(0.0) - 0.06).abs() < 1e-3);
        let peak = 1.69 / (2.0 * PI);
        assert!((structure_factor(peak) - 2.5).abs() < 1e-9);
        assert!((structure_factor(1.0) - 1.0).abs() < 1e-3);
    }

    /// The generated field has the variance its spectrum predicts: Σ P(q) Δq² with the pixel sinc² (within 5 %).
    #[test]
    fn field_variance_matches_spectrum() {
        let (nx, ny, p) = (128, 96, 1.0);
        let fft = Fft2::new(nx, ny);
        let g = field(&fft, p, 3, 0, Purpose::IceStructure, |q| {
            structure_psd(q, 300.0)
        });
        let var = g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / g.len() as f64;
        let mut want = 0.0;
        for ky in 0..ny {
            for kx in 0..nx {
                if kx == 0 && ky == 0 {
                    continue;
                }
                let fx = if kx <= nx / 2 {
                    kx as f64
                } else {
                    kx as f64 - nx as f64
                } / nx as f64;
                let fy = if ky <= ny / 2 {
                    ky as f64
                } else {
                    ky as f64 - ny as f64
                } / ny as f64;
                let q = (fx * fx + fy * fy).sqrt() / p;
                want += structure_psd(q, 300.0) * (sinc_pi(fx) * sinc_pi(fy)).powi(2)
                    / (nx * ny) as f64
                    / (p * p);
            }
        }
        assert!((var / want - 1.0).abs() < 0.05, "{var} vs {want}");
    }
}

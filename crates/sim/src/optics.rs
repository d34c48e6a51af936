//! Microscope optics: relativistic wavelength, interaction constant, contrast transfer function, the dose-dependent
//! signal decay of Grant & Grigorieff (2015) and the detector MTF.
//!
//! Sign conventions follow RELION/CTFFIND: defocus is positive for underfocus, U ≥ V, the astigmatism angle is
//! measured from the x axis to the U direction, and CTF(q) = −(√(1−A²) sin χ + A cos χ) with
//! χ(q) = π λ Δf(α) q² − (π/2) Cs λ³ q⁴, so that at low frequency in underfocus a positive potential (protein)
//! darkens the image.

use std::f64::consts::PI;

/// Electron rest energy m₀c² in eV.
const REST_ENERGY_EV: f64 = 510_998.95;

/// Relativistic electron wavelength in Å at accelerating voltage `volts`: λ = h / √(2 m₀ e V (1 + eV / 2m₀c²)).
pub fn wavelength(volts: f64) -> f64 {
    // h / √(2 m₀ e · 1 V) = 12.264 259 Å.
    12.264_259 / (volts * (1.0 + volts / (2.0 * REST_ENERGY_EV))).sqrt()
}

/// Interaction constant σ in rad/(V·Å): σ = (2π / λV) · (m₀c² + eV) / (2m₀c² + eV) (Kirkland eq. 5.6).
pub fn interaction_constant(volts: f64) -> f64 {
    2.0 * PI / (wavelength(volts) * volts) * (REST_ENERGY_EV + volts)
        / (2.0 * REST_ENERGY_EV + volts)
}

/// CTF parameters of one micrograph.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ctf {
    /// Defocus along the astigmatism angle (Å, positive = underfocus).
    pub defocus_u: f64,
    /// Defocus perpendicular to it (Å), ≤ `defocus_u`.
    pub defocus_v: f64,
    /// Angle of the U direction from the x axis (degrees).
    pub astigmatism_angle_deg: f64,
    /// Spherical aberration (mm).
    pub cs_mm: f64,
    /// Accelerating voltage (V).
    pub volts: f64,
    /// Amplitude contrast fraction A (0–1).
    pub amplitude_contrast: f64,
    /// Envelope B-factor (Å²): amplitude × exp(−B q² / 4).
    pub bfactor: f64,
}

impl Ctf {
    /// Defocus (Å) in direction `alpha` (radians from x).
    pub fn defocus_at(&self, alpha: f64) -> f64 {
        let a0 = self.astigmatism_angle_deg.to_radians();
        0.5 * (self.defocus_u
            + self.defocus_v
            + (self.defocus_u - self.defocus_v) * (2.0 * (alpha - a0)).cos())
    }

    /// Phase aberration χ at frequency (qx, qy) in Å⁻¹.
    pub fn chi(&self, qx: f64, qy: f64) -> f64 {
        let q2 = qx * qx + qy * qy;
        let lambda = wavelength(self.volts);
        let cs = self.cs_mm * 1e7;
        PI * lambda * self.defocus_at(qy.atan2(qx)) * q2 - 0.5 * PI * cs * lambda.powi(3) * q2 * q2
    }

    /// CTF value including the B-factor envelope.
    pub fn value(&self, qx: f64, qy: f64) -> f64 {
        let chi = self.chi(qx, qy);
        let a = self.amplitude_contrast;
        let env = (-self.bfactor * (qx * qx + qy * qy) / 4.0).exp();
        -((1.0 - a * a).sqrt() * chi.sin() + a * chi.cos()) * env
    }

    /// Frequencies (Å⁻¹) of the first `n` zeros along direction `alpha` (radians), solved analytically:
    /// the CTF vanishes where χ = kπ − arcsin(A), k = 1, 2, …, a quadratic in q².
    pub fn zeros(&self, alpha: f64, n: usize) -> Vec<f64> {
        let lambda = wavelength(self.volts);
        let cs = self.cs_mm * 1e7;
        let df = self.defocus_at(alpha);
        let phi = self.amplitude_contrast.asin();
        (1..=n)
            .filter_map(|k| {
                let c = k as f64 - phi / PI; // χ/π at the zero
                                             // (Cs λ³ / 2) u² − λ Δf u + c = 0, u = q²; the smaller root is the one reached first.
                let u = if cs == 0.0 {
                    c / (lambda * df)
                } else {
                    let disc = (lambda * df).powi(2) - 2.0 * cs * lambda.powi(3) * c;
                    if disc < 0.0 {
                        return None;
                    }
                    (lambda * df - disc.sqrt()) / (cs * lambda.powi(3))
                };
                (u > 0.0).then(|| u.sqrt())
            })
            .collect()
    }
}

/// Critical exposure N_e(q) in e⁻/Å² (Grant & Grigorieff 2015, eLife 4:e06980, fit at 300 kV):
/// N_e = 0.245 q^−1.665 + 2.81, scaled by 0.8 at 200 kV (as in their unblur/summovie; linear in between).
pub fn critical_exposure(q: f64, volts: f64) -> f64 {
    let scale = (0.8 + 0.2 * (volts - 200e3) / 100e3).clamp(0.8, 1.0);
    if q <= 0.0 {
        return f64::INFINITY;
    }
    (0.245 * q.powf(-1.665) + 2.81) * scale
}

/// Amplitude remaining after cumulative exposure `n` e⁻/Å²: exp(−n / 2N_e(q)).
pub fn exposure_decay(q: f64, n: f64, volts: f64) -> f64 {
    (-n / (2.0 * critical_exposure(q, volts))).exp()
}

/// Gaussian detector point-spread of `sigma_px` pixels: MTF(f) = exp(−2π² σ² f²), f in cycles/pixel.
pub fn detector_mtf(f_cycles_per_px: f64, sigma_px: f64) -> f64 {
    (-2.0 * PI * PI * sigma_px * sigma_px * f_cycles_per_px * f_cycles_per_px).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wavelength_and_sigma_at_300_kv() {
        // Reference values: λ(300 kV) = 0.019687 Å, λ(200 kV) = 0.025079 Å; σ(300 kV) = 6.526e-4 rad/(V·Å).
        assert!(
            (wavelength(300e3) - 0.019_687).abs() < 2e-6,
            "{}",
            wavelength(300e3)
        );
        assert!(
            (wavelength(200e3) - 0.025_079).abs() < 2e-6,
            "{}",
            wavelength(200e3)
        );
        let s = interaction_constant(300e3);
        assert!((s - 6.526e-4).abs() < 2e-6, "{s}");
    }

    fn ctf(df_u: f64, df_v: f64, cs: f64, a: f64) -> Ctf {
        Ctf {
            defocus_u: df_u,
            defocus_v: df_v,
            astigmatism_angle_deg: 30.0,
            cs_mm: cs,
            volts: 300e3,
            amplitude_contrast: a,
            bfactor: 0.0,
        }
    }

    /// The CTF vanishes at its analytic zeros and changes sign across each (|CTF| < 1e-9 at the zero, opposite signs
    /// 0.1 % either side), for both astigmatic axes and a direction in between.
    #[test]
    fn ctf_zeros_at_analytic_frequencies() {
        for c in [
            ctf(15_000.0, 15_000.0, 0.0, 0.0),
            ctf(15_000.0, 12_000.0, 2.7, 0.07),
            ctf(8_000.0, 7_500.0, 2.7, 0.1),
        ] {
            for alpha in [30f64.to_radians(), 120f64.to_radians(), 75f64.to_radians()] {
                let zs = c.zeros(alpha, 8);
                assert_eq!(zs.len(), 8);
                for (k, &q) in zs.iter().enumerate() {
                    let (cx, sy) = (alpha.cos(), alpha.sin());
                    let at = |q: f64| c.value(q * cx, q * sy);
                    assert!(at(q).abs() < 1e-9, "zero {k} at {q}: {}", at(q));
                    assert!(
                        at(q * 0.999) * at(q * 1.001) < 0.0,
                        "no sign change at zero {k}"
                    );
                }
                // Without Cs and amplitude contrast the zeros are the textbook √(k / λΔf).
                if c.cs_mm == 0.0 && c.amplitude_contrast == 0.0 {
                    let l = wavelength(300e3);
                    assert!((zs[0] - (1.0 / (l * 15_000.0)).sqrt()).abs() < 1e-12);
                }
            }
        }
        // In underfocus a positive potential is darkened at low frequency (CTF < 0).
        assert!(ctf(15_000.0, 15_000.0, 2.7, 0.07).value(0.01, 0.0) < 0.0);
    }

    #[test]
    fn astigmatism_axes() {
        let c = ctf(20_000.0, 10_000.0, 2.7, 0.07);
        assert!((c.defocus_at(30f64.to_radians()) - 20_000.0).abs() < 1e-9);
        assert!((c.defocus_at(120f64.to_radians()) - 10_000.0).abs() < 1e-9);
    }

    #[test]
    fn exposure_filter_limits() {
        // Low frequencies survive, 3 Å is mostly gone after 40 e/Å².
        assert!(exposure_decay(0.01, 40.0, 300e3) > 0.95);
        assert!(exposure_decay(1.0 / 3.0, 40.0, 300e3) < 0.05);
        assert_eq!(exposure_decay(0.0, 40.0, 300e3), 1.0);
        assert!(critical_exposure(0.2, 200e3) < critical_exposure(0.2, 300e3));
    }
}

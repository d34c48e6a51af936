//! 2-D real FFTs and the ring statistics built on them: Fourier ring correlation (FRC) and radially averaged
//! power spectra.
//!
//! Rings: a coefficient at `(fx, fy)` cycles/pixel (`fx = kx/nx`, `fy = ky/ny`) falls in ring
//! `round(sqrt(fx² + fy²) · n)` with `n = min(nx, ny)`, so ring `i` is the frequency `i/n` cycles/pixel and ring
//! `n/2` is Nyquist; the corners beyond Nyquist are left out. Only the half plane `kx ≥ 0` is stored: the other
//! half is its complex conjugate, so its coefficients count twice in every sum.

use crate::filters::signed_freq;
use crate::Error;
use realfft::RealFftPlanner;
use rustfft::num_complex::Complex;
use rustfft::FftPlanner;
use serde::{Deserialize, Serialize};

/// The half spectrum of a real image: `ny` rows of `ncol = nx/2 + 1` coefficients, row-major.
pub struct HalfSpectrum {
    pub nx: usize,
    pub ny: usize,
    pub ncol: usize,
    pub data: Vec<Complex<f64>>,
}

/// Forward FFT of a real row-major `nx × ny` image (unnormalised, as numpy's `rfft2`).
pub fn real_fft_2d(img: &[f64], nx: usize, ny: usize) -> HalfSpectrum {
    let ncol = nx / 2 + 1;
    let mut data = vec![Complex::new(0.0, 0.0); ncol * ny];
    let r2c = RealFftPlanner::<f64>::new().plan_fft_forward(nx);
    let mut row_in = r2c.make_input_vec();
    let mut scratch = r2c.make_scratch_vec();
    for j in 0..ny {
        row_in.copy_from_slice(&img[j * nx..(j + 1) * nx]);
        // Lengths come from the plan itself, so this cannot fail.
        r2c.process_with_scratch(
            &mut row_in,
            &mut data[j * ncol..(j + 1) * ncol],
            &mut scratch,
        )
        .expect("realfft buffer lengths from its own plan");
    }
    columns_fft(&mut data, ncol, ny, false);
    HalfSpectrum { nx, ny, ncol, data }
}

/// Inverse of [`real_fft_2d`], normalised so that `inverse(forward(x)) = x`.
pub fn inverse_real_2d(mut spec: HalfSpectrum) -> Vec<f64> {
    let (nx, ny, ncol) = (spec.nx, spec.ny, spec.ncol);
    columns_fft(&mut spec.data, ncol, ny, true);
    let c2r = RealFftPlanner::<f64>::new().plan_fft_inverse(nx);
    let mut scratch = c2r.make_scratch_vec();
    let mut out = vec![0.0; nx * ny];
    let norm = 1.0 / (nx * ny) as f64;
    for j in 0..ny {
        let row = &mut spec.data[j * ncol..(j + 1) * ncol];
        // The DC and (even nx) Nyquist terms of a real signal's spectrum are real; rounding leaves tiny imaginary
        // parts that realfft rejects.
        row[0].im = 0.0;
        if nx.is_multiple_of(2) {
            row[ncol - 1].im = 0.0;
        }
        c2r.process_with_scratch(row, &mut out[j * nx..(j + 1) * nx], &mut scratch)
            .expect("realfft buffer lengths from its own plan");
    }
    out.iter_mut().for_each(|v| *v *= norm);
    out
}

fn columns_fft(data: &mut [Complex<f64>], ncol: usize, ny: usize, inverse: bool) {
    let mut planner = FftPlanner::<f64>::new();
    let fft = if inverse {
        planner.plan_fft_inverse(ny)
    } else {
        planner.plan_fft_forward(ny)
    };
    let mut col = vec![Complex::new(0.0, 0.0); ny];
    for i in 0..ncol {
        for j in 0..ny {
            col[j] = data[j * ncol + i];
        }
        fft.process(&mut col);
        for j in 0..ny {
            data[j * ncol + i] = col[j];
        }
    }
}

/// Visit every stored coefficient inside Nyquist with its ring index and its weight (2 for coefficients whose
/// conjugate twin is not stored, else 1).
fn for_each_ring_coeff(nx: usize, ny: usize, mut f: impl FnMut(usize, usize, f64)) -> usize {
    let ncol = nx / 2 + 1;
    let n = nx.min(ny);
    let nrings = n / 2 + 1;
    for ky in 0..ny {
        let fy = signed_freq(ky, ny) as f64 / ny as f64;
        for kx in 0..ncol {
            let fx = kx as f64 / nx as f64;
            let ring = ((fx * fx + fy * fy).sqrt() * n as f64).round() as usize;
            if ring >= nrings {
                continue;
            }
            let twin_stored = kx == 0 || (nx.is_multiple_of(2) && kx == nx / 2);
            f(ky * ncol + kx, ring, if twin_stored { 1.0 } else { 2.0 });
        }
    }
    nrings
}

/// Width of the cosine taper at each edge, as a fraction of the side: images are not periodic, and the jump
/// between opposite edges would put the same broadband "cross" into the spectra of both images, inflating the
/// FRC at high frequency. The taper removes it; the image mean is removed first so the window does not smear
/// the DC term over the lowest rings.
pub const TAPER_FRACTION: f64 = 0.125;

fn taper(n: usize) -> Vec<f64> {
    let e = ((n as f64 * TAPER_FRACTION) as usize).max(1);
    (0..n)
        .map(|i| {
            let d = i.min(n - 1 - i);
            if d >= e {
                1.0
            } else {
                0.5 - 0.5 * (std::f64::consts::PI * (d as f64 + 0.5) / e as f64).cos()
            }
        })
        .collect()
}

/// Mean-subtracted image times the separable cosine-edge window, in f64.
fn apodize(img: &[f32], nx: usize, ny: usize) -> Vec<f64> {
    let mean = img.iter().map(|&v| v as f64).sum::<f64>() / img.len().max(1) as f64;
    let (tx, ty) = (taper(nx), taper(ny));
    let mut out = Vec::with_capacity(nx * ny);
    for (j, row) in img.chunks(nx).enumerate() {
        out.extend(
            row.iter()
                .zip(&tx)
                .map(|(&v, &wx)| (v as f64 - mean) * wx * ty[j]),
        );
    }
    out
}

/// A Fourier ring correlation curve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Frc {
    /// Ring frequencies, cycles per pixel (0 to 0.5).
    pub freq: Vec<f64>,
    /// The correlation per ring (the DC ring included).
    pub frc: Vec<f64>,
    /// Coefficients per ring, over the full plane.
    pub count: Vec<f64>,
    /// Where the curve first falls below 1/7 (linear interpolation between rings), cycles per pixel; `None` if
    /// it never does before Nyquist.
    pub crossing_freq: Option<f64>,
}

/// The 1/7 threshold of Rosenthal & Henderson (2003).
pub const FRC_THRESHOLD: f64 = 1.0 / 7.0;

impl Frc {
    /// Resolution at the 1/7 crossing in Å, given the pixel size in Å. When the curve never crosses, the
    /// resolution is at least Nyquist: `(2·pixel_size, false)`; otherwise `(value, true)`.
    pub fn resolution(&self, pixel_size: f64) -> (f64, bool) {
        match self.crossing_freq {
            Some(f) => (pixel_size / f, true),
            None => (2.0 * pixel_size, false),
        }
    }
}

/// FRC of two images of the same shape: per ring `Re Σ F₁F₂* / sqrt(Σ|F₁|² Σ|F₂|²)` (0 for a ring where
/// either image has no power), after removing each image's mean and tapering its edges ([`TAPER_FRACTION`]).
pub fn frc(a: &[f32], b: &[f32], nx: usize, ny: usize) -> Result<Frc, Error> {
    if a.len() != nx * ny || b.len() != nx * ny {
        return Err(Error::ShapeMismatch(format!(
            "FRC of {} and {} pixels for a {nx}×{ny} image",
            a.len(),
            b.len()
        )));
    }
    let fa = real_fft_2d(&apodize(a, nx, ny), nx, ny);
    let fb = real_fft_2d(&apodize(b, nx, ny), nx, ny);
    let n = nx.min(ny);
    let nrings = n / 2 + 1;
    let (mut num, mut d1, mut d2, mut count) = (
        vec![0.0; nrings],
        vec![0.0; nrings],
        vec![0.0; nrings],
        vec![0.0; nrings],
    );
    for_each_ring_coeff(nx, ny, |k, ring, w| {
        let (p, q) = (fa.data[k], fb.data[k]);
        num[ring] += w * (p * q.conj()).re;
        d1[ring] += w * p.norm_sqr();
        d2[ring] += w * q.norm_sqr();
        count[ring] += w;
    });
    let frc: Vec<f64> = (0..nrings)
        .map(|i| {
            let d = (d1[i] * d2[i]).sqrt();
            if d > 0.0 {
                num[i] / d
            } else {
                0.0
            }
        })
        .collect();
    let freq: Vec<f64> = (0..nrings).map(|i| i as f64 / n as f64).collect();
    let crossing_freq = (1..nrings).find(|&i| frc[i] < FRC_THRESHOLD).map(|i| {
        let (f0, f1, c0, c1) = (freq[i - 1], freq[i], frc[i - 1], frc[i]);
        if c0 <= FRC_THRESHOLD || c0 == c1 {
            f0.max(freq[1] * 0.5)
        } else {
            f0 + (f1 - f0) * (c0 - FRC_THRESHOLD) / (c0 - c1)
        }
    });
    Ok(Frc {
        freq,
        frc,
        count,
        crossing_freq,
    })
}

/// A radially averaged power spectrum.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PowerSpectrum {
    /// Ring frequencies, cycles per pixel.
    pub freq: Vec<f64>,
    /// Mean of `|F|² / (nx·ny)` over each ring: for white noise of variance σ² every ring is σ² (Parseval).
    pub power: Vec<f64>,
}

/// Radially averaged power spectrum of a row-major `nx × ny` image, mean removed and edges tapered as for
/// [`frc`].
pub fn power_spectrum(img: &[f32], nx: usize, ny: usize) -> Result<PowerSpectrum, Error> {
    if img.len() != nx * ny {
        return Err(Error::ShapeMismatch(format!(
            "{} pixels for a {nx}×{ny} image",
            img.len()
        )));
    }
    let windowed = apodize(img, nx, ny);
    // The window removes power: divide by its mean square so white noise of variance σ² still reads σ².
    let w2: f64 = {
        let (tx, ty) = (taper(nx), taper(ny));
        let sx: f64 = tx.iter().map(|v| v * v).sum::<f64>() / nx as f64;
        let sy: f64 = ty.iter().map(|v| v * v).sum::<f64>() / ny as f64;
        sx * sy
    };
    let f = real_fft_2d(&windowed, nx, ny);
    let n = nx.min(ny);
    let nrings = n / 2 + 1;
    let (mut p, mut c) = (vec![0.0; nrings], vec![0.0; nrings]);
    for_each_ring_coeff(nx, ny, |k, ring, w| {
        p[ring] += w * f.data[k].norm_sqr();
        c[ring] += w;
    });
    let norm = (nx * ny) as f64 * w2;
    Ok(PowerSpectrum {
        freq: (0..nrings).map(|i| i as f64 / n as f64).collect(),
        power: p
            .iter()
            .zip(&c)
            .map(|(p, c)| if *c > 0.0 { p / c / norm } else { 0.0 })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn noise(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect()
    }

    #[test]
    fn fft_round_trip() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (nx, ny) in [(16, 16), (15, 22), (33, 8)] {
            let x: Vec<f64> = (0..nx * ny).map(|_| rng.random::<f64>()).collect();
            let back = inverse_real_2d(real_fft_2d(&x, nx, ny));
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() < 1e-12, "{nx}×{ny}");
            }
        }
    }

    #[test]
    fn frc_of_an_image_with_itself_is_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for (nx, ny) in [(128, 128), (96, 130), (127, 64)] {
            let a = noise(&mut rng, nx * ny);
            let f = frc(&a, &a, nx, ny).unwrap();
            for (i, v) in f.frc.iter().enumerate() {
                assert!((v - 1.0).abs() < 1e-12, "{nx}×{ny} ring {i}: {v}");
            }
            assert_eq!(f.crossing_freq, None);
            assert_eq!(f.resolution(1.5), (3.0, false));
        }
    }

    #[test]
    fn frc_of_independent_noise_is_near_zero() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (nx, ny) = (256, 256);
        let (a, b) = (noise(&mut rng, nx * ny), noise(&mut rng, nx * ny));
        let f = frc(&a, &b, nx, ny).unwrap();
        // Each ring correlates count/2 independent complex pairs, so its FRC has a standard deviation of about
        // 1/sqrt(count); 5 of them bound every ring past the first four.
        for i in 4..f.frc.len() {
            let bound = 5.0 / f.count[i].sqrt();
            assert!(
                f.frc[i].abs() < bound,
                "ring {i}: {} (bound {bound})",
                f.frc[i]
            );
        }
        let mean: f64 = f.frc[4..].iter().sum::<f64>() / (f.frc.len() - 4) as f64;
        // The mean over ~124 rings has a standard deviation of about 0.007.
        assert!(mean.abs() < 0.03, "mean FRC of independent noise {mean}");
        assert!(
            f.crossing_freq.unwrap() < 16.0 / 256.0,
            "{:?}",
            f.crossing_freq
        );
    }

    #[test]
    fn frc_of_signal_plus_equal_noise_is_one_half() {
        // Shared white signal and independent white noise of the same variance: expected FRC 1/2 in every ring.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (nx, ny) = (256, 256);
        let s = noise(&mut rng, nx * ny);
        let a: Vec<f32> = s
            .iter()
            .map(|v| v + rng.sample::<f32, _>(StandardNormal))
            .collect();
        let b: Vec<f32> = s
            .iter()
            .map(|v| v + rng.sample::<f32, _>(StandardNormal))
            .collect();
        let f = frc(&a, &b, nx, ny).unwrap();
        let mean: f64 = f.frc[8..].iter().sum::<f64>() / (f.frc.len() - 8) as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }

    #[test]
    fn frc_crossing_is_interpolated_to_the_threshold() {
        // A low-pass signal shared by both images: FRC falls from ~1 to ~0 at the filter edge.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (nx, ny) = (128, 128);
        let s = crate::filters::lowpass(&noise(&mut rng, nx * ny), nx, ny, 0.2);
        let a: Vec<f32> = s
            .iter()
            .map(|v| v + 0.05 * rng.sample::<f32, _>(StandardNormal))
            .collect();
        let b: Vec<f32> = s
            .iter()
            .map(|v| v + 0.05 * rng.sample::<f32, _>(StandardNormal))
            .collect();
        let f = frc(&a, &b, nx, ny).unwrap();
        let c = f
            .crossing_freq
            .unwrap_or_else(|| panic!("no crossing: {:?}", f.frc));
        assert!(c > 0.2 && c < 0.4, "crossing at {c} cycles/px");
        let (res, crossed) = f.resolution(1.0);
        assert!(crossed && (res - 1.0 / c).abs() < 1e-12);
    }

    #[test]
    fn power_spectrum_of_white_noise_is_flat_at_its_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (nx, ny) = (400, 320);
        let a: Vec<f32> = noise(&mut rng, nx * ny).iter().map(|v| 2.0 * v).collect();
        let p = power_spectrum(&a, nx, ny).unwrap();
        let mean: f64 = p.power[4..].iter().sum::<f64>() / (p.power.len() - 4) as f64;
        // About 10⁵ tapered coefficients: a relative standard deviation near 0.4 %; allow 2 %.
        assert!((mean - 4.0).abs() < 0.08, "{mean}");
    }
}

//! Full-reference image metrics: the least-squares affine fit, MSE, PSNR and SSIM.
//!
//! Denoisers output arbitrary scale and offset (a Noise2Noise network learns the *target's* units, which for half
//! sums is not the truth's), so scores against truth are computed after the affine map `a·estimate + b` that best
//! fits the truth in the least-squares sense. The data range used by PSNR and SSIM is `max(truth) − min(truth)`.
//!
//! PSNR and SSIM follow scikit-image 0.26 exactly (`peak_signal_noise_ratio`, and `structural_similarity` with
//! `gaussian_weights=True, sigma=1.5, use_sample_covariance=False`: an 11-tap Gaussian window, σ 1.5, truncated at
//! 3.5 σ, K1 = 0.01, K2 = 0.03, the mean taken over the image cropped by the 5-pixel window radius); the tests
//! check this against scikit-image itself.

use crate::filters::gaussian_filter_f64;
use crate::Error;
use serde::{Deserialize, Serialize};

/// SSIM constants of Wang et al. (2004), as in scikit-image.
pub const SSIM_K1: f64 = 0.01;
pub const SSIM_K2: f64 = 0.03;
/// Standard deviation of SSIM's Gaussian window, in pixels.
pub const SSIM_SIGMA: f64 = 1.5;
/// scikit-image truncates the window at 3.5 σ: radius `int(3.5·1.5 + 0.5)` = 5, 11 taps.
pub const SSIM_TRUNCATE: f64 = 3.5;

/// `truth ≈ scale · estimate + offset`, least squares.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Affine {
    pub scale: f64,
    pub offset: f64,
}

impl Affine {
    pub const IDENTITY: Affine = Affine {
        scale: 1.0,
        offset: 0.0,
    };

    pub fn apply(&self, x: &[f32]) -> Vec<f64> {
        x.iter()
            .map(|&v| self.scale * v as f64 + self.offset)
            .collect()
    }
}

fn check_same_len(a: &[f32], b: &[f32]) -> Result<(), Error> {
    if a.len() != b.len() {
        return Err(Error::ShapeMismatch(format!(
            "{} pixels vs {} pixels",
            a.len(),
            b.len()
        )));
    }
    if a.is_empty() {
        return Err(Error::ShapeMismatch("empty image".into()));
    }
    Ok(())
}

/// The affine map from `estimate` to `truth` minimising `Σ (scale·e + offset − t)²`. A constant estimate gets
/// scale 0 and the truth's mean as offset.
pub fn fit_affine(estimate: &[f32], truth: &[f32]) -> Result<Affine, Error> {
    check_same_len(estimate, truth)?;
    let n = estimate.len() as f64;
    let me = estimate.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mt = truth.iter().map(|&v| v as f64).sum::<f64>() / n;
    // Centred sums: stable where the raw moments would cancel.
    let (mut see, mut set) = (0.0f64, 0.0f64);
    for (&e, &t) in estimate.iter().zip(truth) {
        let de = e as f64 - me;
        see += de * de;
        set += de * (t as f64 - mt);
    }
    let scale = if see > 0.0 { set / see } else { 0.0 };
    Ok(Affine {
        scale,
        offset: mt - scale * me,
    })
}

/// Mean squared error, accumulated in f64.
pub fn mse(a: &[f32], b: &[f32]) -> Result<f64, Error> {
    check_same_len(a, b)?;
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum();
    Ok(s / a.len() as f64)
}

fn mse_f64(a: &[f64], b: &[f32]) -> f64 {
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x - y as f64;
            d * d
        })
        .sum();
    s / a.len() as f64
}

/// `max(truth) − min(truth)`: the data range PSNR and SSIM use throughout cryoden.
pub fn data_range(truth: &[f32]) -> f64 {
    let (lo, hi) = truth
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v as f64), hi.max(v as f64))
        });
    hi - lo
}

/// PSNR in dB, `10·log10(data_range² / MSE)`, as `skimage.metrics.peak_signal_noise_ratio(truth, test,
/// data_range=data_range)`. Infinite when the images are equal.
pub fn psnr(test: &[f32], truth: &[f32], data_range: f64) -> Result<f64, Error> {
    let m = mse(test, truth)?;
    Ok(10.0 * (data_range * data_range / m).log10())
}

/// Mean SSIM as `skimage.metrics.structural_similarity(truth, test, data_range=data_range,
/// gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`. Images are row-major `nx × ny`, at least
/// 11 × 11. Symmetric in its two images.
pub fn ssim(
    test: &[f32],
    truth: &[f32],
    nx: usize,
    ny: usize,
    data_range: f64,
) -> Result<f64, Error> {
    check_same_len(test, truth)?;
    let x: Vec<f64> = test.iter().map(|&v| v as f64).collect();
    ssim_f64(&x, truth, nx, ny, data_range)
}

fn ssim_f64(x: &[f64], truth: &[f32], nx: usize, ny: usize, data_range: f64) -> Result<f64, Error> {
    let radius = (SSIM_TRUNCATE * SSIM_SIGMA + 0.5) as usize;
    let win = 2 * radius + 1;
    if x.len() != nx * ny {
        return Err(Error::ShapeMismatch(format!(
            "{} pixels for a {nx}×{ny} image",
            x.len()
        )));
    }
    if nx < win || ny < win {
        return Err(Error::ShapeMismatch(format!(
            "SSIM needs images of at least {win}×{win}, got {nx}×{ny}"
        )));
    }
    let y: Vec<f64> = truth.iter().map(|&v| v as f64).collect();
    let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
    let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
    let xy: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a * b).collect();
    let f = |img: &[f64]| gaussian_filter_f64(img, nx, ny, SSIM_SIGMA, SSIM_TRUNCATE);
    let (ux, uy, uxx, uyy, uxy) = (f(x), f(&y), f(&xx), f(&yy), f(&xy));
    let c1 = (SSIM_K1 * data_range).powi(2);
    let c2 = (SSIM_K2 * data_range).powi(2);
    let mut sum = 0.0f64;
    for j in radius..ny - radius {
        for i in radius..nx - radius {
            let k = j * nx + i;
            let (mx, my) = (ux[k], uy[k]);
            let vx = uxx[k] - mx * mx;
            let vy = uyy[k] - my * my;
            let vxy = uxy[k] - mx * my;
            let a = (2.0 * mx * my + c1) * (2.0 * vxy + c2);
            let b = (mx * mx + my * my + c1) * (vx + vy + c2);
            sum += a / b;
        }
    }
    Ok(sum / ((nx - 2 * radius) * (ny - 2 * radius)) as f64)
}

/// Scores of one estimate against the truth, after the affine fit.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct TruthScores {
    /// PSNR (dB) of `affine(estimate)` against the truth.
    pub psnr: f64,
    /// SSIM of `affine(estimate)` against the truth.
    pub ssim: f64,
    /// MSE of `affine(estimate)` against the truth, in the truth's units.
    pub mse: f64,
    /// The fitted map.
    pub affine: Affine,
    /// `max(truth) − min(truth)`.
    pub data_range: f64,
}

/// Fit the affine map from `estimate` to `truth`, then PSNR and SSIM of the mapped estimate.
pub fn score_against_truth(
    estimate: &[f32],
    truth: &[f32],
    nx: usize,
    ny: usize,
) -> Result<TruthScores, Error> {
    let affine = fit_affine(estimate, truth)?;
    let mapped = affine.apply(estimate);
    let range = data_range(truth);
    let m = mse_f64(&mapped, truth);
    Ok(TruthScores {
        psnr: 10.0 * (range * range / m).log10(),
        ssim: ssim_f64(&mapped, truth, nx, ny, range)?,
        mse: m,
        affine,
        data_range: range,
    })
}

/// The held-out Noise2Noise error `MSE(f(A), B)`: `B`'s noise is independent of `A`, so this equals
/// `MSE(f(A), truth) + var(noise of B)` in expectation and ranks denoisers as the MSE to the truth would.
pub fn n2n_error(denoised_a: &[f32], half_b: &[f32]) -> Result<f64, Error> {
    mse(denoised_a, half_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_fit_recovers_exact_map() {
        let e: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let t: Vec<f32> = e.iter().map(|v| 2.5 * v - 0.75).collect();
        let a = fit_affine(&e, &t).unwrap();
        // f32 inputs: the map holds to f32 rounding of `t`.
        assert!((a.scale - 2.5).abs() < 1e-6, "{a:?}");
        assert!((a.offset + 0.75).abs() < 1e-6, "{a:?}");
    }

    #[test]
    fn psnr_of_identical_images_is_infinite_and_ssim_is_one() {
        let t: Vec<f32> = (0..400).map(|i| (i as f32 * 0.1).cos()).collect();
        assert!(psnr(&t, &t, data_range(&t)).unwrap().is_infinite());
        let s = ssim(&t, &t, 20, 20, data_range(&t)).unwrap();
        assert!((s - 1.0).abs() < 1e-12, "{s}");
    }

    #[test]
    fn mismatched_sizes_are_an_error() {
        assert!(mse(&[1.0, 2.0], &[1.0]).is_err());
        assert!(
            ssim(&[0.0; 100], &[0.0; 100], 10, 10, 1.0).is_err(),
            "10×10 is smaller than the window"
        );
    }
}

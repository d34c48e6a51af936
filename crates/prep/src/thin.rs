//! Binomial thinning: one counted micrograph → two independent Poisson half images.
//!
//! If a pixel's count is `n ~ Poisson(λ)` and `a | n ~ Binomial(n, 1/2)`, then `a` and `b = n − a` are independent
//! `Poisson(λ/2)` variables. So splitting each pixel's count this way yields an exact Noise2Noise pair with half
//! the dose each — valid ONLY when the values are raw Poisson counts (see docs/DATA.md: counting-mode data, summed
//! without dose weighting, and either not gain-normalised or divided by the gain first).

use rand::SeedableRng;
use rand_distr::{Binomial, Distribution};

/// Why an image cannot be thinned.
#[derive(Debug, Clone, PartialEq)]
pub enum ThinFault {
    /// A value (after division by the gain) is not a non-negative integer within `tolerance`.
    NotCount { x: usize, y: usize, value: f64 },
    /// A gain value is not finite and positive (0 is accepted where the image is 0: a dead pixel).
    BadGain { x: usize, y: usize, value: f32 },
}

/// Largest distance from an integer accepted for a count (absorbs f32 rounding of `value / gain`).
pub const COUNT_TOLERANCE: f64 = 1e-3;

/// Splits `image` (values = counts × gain, or plain counts when `gain` is `None`) into two halves in the same
/// units as the input (each half's counts multiplied back by the gain). Deterministic for a given `seed`.
pub fn thin(
    image: &[f32],
    w: usize,
    gain: Option<&[f32]>,
    seed: u64,
) -> Result<(Vec<f32>, Vec<f32>), ThinFault> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut a = Vec::with_capacity(image.len());
    let mut b = Vec::with_capacity(image.len());
    for (i, &v) in image.iter().enumerate() {
        let g = match gain {
            Some(g) => {
                let g = g[i];
                if g == 0.0 && v == 0.0 {
                    // A dead pixel (gain 0) recorded nothing: both halves get nothing.
                    a.push(0.0);
                    b.push(0.0);
                    continue;
                }
                if !(g.is_finite() && g > 0.0) {
                    return Err(ThinFault::BadGain {
                        x: i % w,
                        y: i / w,
                        value: g,
                    });
                }
                g
            }
            None => 1.0,
        };
        let c = v as f64 / g as f64;
        let n = c.round();
        if !(c.is_finite() && n >= 0.0 && (c - n).abs() <= COUNT_TOLERANCE) {
            return Err(ThinFault::NotCount {
                x: i % w,
                y: i / w,
                value: c,
            });
        }
        let n = n as u64;
        // Binomial::new only fails for p outside [0, 1].
        let k = if n == 0 {
            0
        } else {
            Binomial::new(n, 0.5)
                .map(|d| d.sample(&mut rng))
                .unwrap_or(0)
        };
        a.push(k as f32 * g);
        b.push((n - k) as f32 * g);
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::Poisson;

    fn stats(a: &[f32], b: &[f32]) -> (f64, f64, f64, f64, f64) {
        let n = a.len() as f64;
        let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
        let va = a.iter().map(|&v| (v as f64 - ma).powi(2)).sum::<f64>() / n;
        let vb = b.iter().map(|&v| (v as f64 - mb).powi(2)).sum::<f64>() / n;
        let cov = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - ma) * (y as f64 - mb))
            .sum::<f64>()
            / n;
        (ma, mb, va, vb, cov / (va * vb).sqrt())
    }

    #[test]
    fn halves_are_independent_poisson_with_half_the_mean() {
        // Flat exposure λ = 6 counts/px, 512² pixels: the halves must be Poisson(3), uncorrelated.
        let n = 512 * 512;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let img: Vec<f32> = (0..n)
            .map(|_| Poisson::new(6.0f64).unwrap().sample(&mut rng) as f32)
            .collect();
        let (a, b) = thin(&img, 512, None, 11).unwrap();
        for i in 0..n {
            assert_eq!(a[i] + b[i], img[i]);
        }
        let (ma, mb, va, vb, corr) = stats(&a, &b);
        // Standard error of a mean of 262144 Poisson(3) values is 0.0034; tolerances are ~6 standard errors.
        assert!(
            (ma - 3.0).abs() < 0.02 && (mb - 3.0).abs() < 0.02,
            "means {ma} {mb}"
        );
        // Poisson: variance = mean (standard error of the variance ≈ 0.01).
        assert!(
            (va - 3.0).abs() < 0.06 && (vb - 3.0).abs() < 0.06,
            "variances {va} {vb}"
        );
        // Independence: correlation ≈ 0 (standard error 1/sqrt(n) ≈ 0.002; a plain split of n would give −1..1).
        assert!(corr.abs() < 0.012, "correlation {corr}");
    }

    #[test]
    fn gain_converts_values_to_counts_and_back() {
        let gain = [0.5f32, 2.0, 1.25, 4.0];
        let counts = [3.0f32, 0.0, 8.0, 1.0];
        let img: Vec<f32> = counts.iter().zip(&gain).map(|(c, g)| c * g).collect();
        let (a, b) = thin(&img, 2, Some(&gain), 0).unwrap();
        for i in 0..4 {
            assert!((a[i] + b[i] - img[i]).abs() < 1e-6);
            let ka = a[i] / gain[i];
            assert!((ka - ka.round()).abs() < 1e-6 && ka >= 0.0 && ka <= counts[i]);
        }
    }

    #[test]
    fn rejects_non_counts() {
        // A gain-normalised or dose-weighted image has fractional values: refused, with the first pixel named.
        let err = thin(&[2.0, 3.4, 1.0, 0.0], 2, None, 0).unwrap_err();
        assert_eq!(
            err,
            ThinFault::NotCount {
                x: 1,
                y: 0,
                value: 3.4000000953674316
            }
        );
        assert!(matches!(
            thin(&[1.0, -1.0], 2, None, 0),
            Err(ThinFault::NotCount { x: 1, y: 0, .. })
        ));
        assert!(matches!(
            thin(&[1.0, f32::NAN], 2, None, 0),
            Err(ThinFault::NotCount { x: 1, .. })
        ));
        assert!(matches!(
            thin(&[1.0, 1.0], 2, Some(&[1.0, 0.0]), 0),
            Err(ThinFault::BadGain { x: 1, .. })
        ));
        assert_eq!(thin(&[0.0], 1, Some(&[0.0]), 0), Ok((vec![0.0], vec![0.0])));
        assert!(matches!(
            thin(&[1.0, 1.0], 2, Some(&[1.0, -2.0]), 0),
            Err(ThinFault::BadGain { x: 1, .. })
        ));
    }
}

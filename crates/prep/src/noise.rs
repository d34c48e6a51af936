//! Synthetic noise for `prepare --clean`: two independently noised copies of a clean image form a Noise2Noise
//! pair whose clean truth is known.

use crate::normalize::{self, Affine, Method, StatsFault};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Poisson};
use serde::{Deserialize, Serialize};

/// `gaussian:SIGMA` or `poisson:DOSE` (see [`NoiseModel::from_str`](std::str::FromStr)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum NoiseModel {
    /// The clean image is normalised (by `--normalize`, from its own statistics); each copy then gets independent
    /// Gaussian noise of standard deviation `sigma` in those normalised units.
    Gaussian { sigma: f64 },
    /// The clean image (non-negative, e.g. `simulate`'s truth) is scaled to a mean of `dose` counts per pixel and
    /// each copy is an independent Poisson draw of it; the pair is then normalised like even/odd halves.
    Poisson { dose: f64 },
}

impl std::str::FromStr for NoiseModel {
    type Err = String;
    fn from_str(s: &str) -> Result<NoiseModel, String> {
        let bad = || {
            format!("bad noise model {s:?}: use gaussian:SIGMA (e.g. gaussian:0.1) or poisson:DOSE (e.g. poisson:20, counts per pixel)")
        };
        let (kind, val) = s.split_once(':').ok_or_else(bad)?;
        let v: f64 = val.trim().parse().map_err(|_| bad())?;
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{}: the value must be positive", bad()));
        }
        match kind.trim() {
            "gaussian" => Ok(NoiseModel::Gaussian { sigma: v }),
            "poisson" => Ok(NoiseModel::Poisson { dose: v }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for NoiseModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoiseModel::Gaussian { sigma } => write!(f, "gaussian:{sigma}"),
            NoiseModel::Poisson { dose } => write!(f, "poisson:{dose}"),
        }
    }
}

/// Why a clean image cannot be noised.
#[derive(Debug, Clone, PartialEq)]
pub enum NoiseFault {
    Stats(StatsFault),
    /// Poisson noise needs a non-negative image with a positive mean.
    Negative {
        index: usize,
        value: f32,
    },
    ZeroMean,
}

/// Two normalised noisy copies of `clean` and the normalisation that was applied (in the units of the copies
/// before normalisation: clean units for Gaussian, counts for Poisson).
pub fn noisy_pair(
    clean: &[f32],
    model: NoiseModel,
    method: Method,
    seed: u64,
) -> Result<(Vec<f32>, Vec<f32>, Affine), NoiseFault> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    match model {
        NoiseModel::Gaussian { sigma } => {
            let mut tmp = clean.to_vec();
            let (c, s) = normalize::center_spread(&mut tmp, method).map_err(NoiseFault::Stats)?;
            let aff = Affine {
                offset: c,
                scale: s,
            };
            let mut base = clean.to_vec();
            aff.apply(&mut base);
            let n = Normal::new(0.0f64, sigma).map_err(|_| NoiseFault::ZeroMean)?;
            let a = base
                .iter()
                .map(|&v| (v as f64 + n.sample(&mut rng)) as f32)
                .collect();
            let b = base
                .iter()
                .map(|&v| (v as f64 + n.sample(&mut rng)) as f32)
                .collect();
            Ok((a, b, aff))
        }
        NoiseModel::Poisson { dose } => {
            if let Some(index) = clean.iter().position(|v| !v.is_finite()) {
                return Err(NoiseFault::Stats(StatsFault::NonFinite { index }));
            }
            if let Some(index) = clean.iter().position(|&v| v < 0.0) {
                return Err(NoiseFault::Negative {
                    index,
                    value: clean[index],
                });
            }
            let mean = clean.iter().map(|&v| v as f64).sum::<f64>() / clean.len() as f64;
            if mean.is_nan() || mean <= 0.0 {
                return Err(NoiseFault::ZeroMean);
            }
            let k = dose / mean;
            let mut draw = |v: f32| {
                let lam = v as f64 * k;
                if lam > 0.0 {
                    Poisson::new(lam)
                        .map(|p| p.sample(&mut rng) as f32)
                        .unwrap_or(0.0)
                } else {
                    0.0
                }
            };
            let mut a: Vec<f32> = clean.iter().map(|&v| draw(v)).collect();
            let mut b: Vec<f32> = clean.iter().map(|&v| draw(v)).collect();
            let aff = normalize::for_halves(&a, &b, method).map_err(NoiseFault::Stats)?;
            aff.apply(&mut a);
            aff.apply(&mut b);
            Ok((a, b, aff))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(
            "gaussian:0.1".parse(),
            Ok(NoiseModel::Gaussian { sigma: 0.1 })
        );
        assert_eq!("poisson:20".parse(), Ok(NoiseModel::Poisson { dose: 20.0 }));
        assert!("gaussian".parse::<NoiseModel>().is_err());
        assert!("gaussian:-1".parse::<NoiseModel>().is_err());
        assert!("speckle:1".parse::<NoiseModel>().is_err());
    }

    #[test]
    fn gaussian_copies_have_the_requested_sigma_and_independent_noise() {
        let clean: Vec<f32> = (0..65536)
            .map(|i| ((i % 256) as f32 / 25.0).sin())
            .collect();
        let (a, b, aff) = noisy_pair(
            &clean,
            NoiseModel::Gaussian { sigma: 0.2 },
            Method::Zscore,
            3,
        )
        .unwrap();
        let mut base = clean.clone();
        aff.apply(&mut base);
        let na: Vec<f64> = a.iter().zip(&base).map(|(x, c)| (x - c) as f64).collect();
        let nb: Vec<f64> = b.iter().zip(&base).map(|(x, c)| (x - c) as f64).collect();
        let n = na.len() as f64;
        let sa = (na.iter().map(|v| v * v).sum::<f64>() / n).sqrt();
        let corr = na.iter().zip(&nb).map(|(x, y)| x * y).sum::<f64>() / n / (sa * sa);
        // Standard errors: sigma 0.2/sqrt(2n) ≈ 0.0006, correlation 1/sqrt(n) ≈ 0.004.
        assert!((sa - 0.2).abs() < 0.003, "{sa}");
        assert!(corr.abs() < 0.02, "{corr}");
    }

    #[test]
    fn poisson_refuses_negative_clean() {
        let r = noisy_pair(
            &[1.0, -0.5],
            NoiseModel::Poisson { dose: 5.0 },
            Method::P95,
            0,
        );
        assert_eq!(
            r.unwrap_err(),
            NoiseFault::Negative {
                index: 1,
                value: -0.5
            }
        );
    }
}

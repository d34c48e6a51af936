//! Per-micrograph normalisation, computed once from the sum of the two halves and applied identically to both.
//!
//! Both methods produce an affine map `x' = (x − offset) / scale` in the units of ONE half, derived from the sum
//! `s = even + odd` (the best estimate of the image, and the same numbers whichever half is the input):
//! - `p95` (default): `offset = median(s) / 2`, `scale = P95(|s − median(s)|) / 2`;
//! - `zscore`: `offset = mean(s) / 2`, `scale = std(s) / 2` (population standard deviation).
//!
//! Quantiles use the nearest-rank rule: for n values sorted ascending `v[0..n]`, the q-quantile is
//! `v[ceil(q·n) − 1]` (so the median is the lower median). Both halves get the same affine map, so the
//! Noise2Noise condition (the target's expectation given the input equals the clean image) survives the map.

use serde::{Deserialize, Serialize};

/// How micrographs are normalised (recorded in the manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Median and 95th percentile of the absolute deviation from the median (robust to hot pixels, carbon and
    /// ice contamination).
    P95,
    /// Mean and standard deviation.
    Zscore,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        match s {
            "p95" => Ok(Method::P95),
            "zscore" => Ok(Method::Zscore),
            _ => Err(format!("unknown normalisation {s:?}: use p95 or zscore")),
        }
    }
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::P95 => "p95",
            Method::Zscore => "zscore",
        }
    }
}

/// `x' = (x − offset) / scale`, in the units of the image it is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Affine {
    pub offset: f64,
    pub scale: f64,
}

impl Affine {
    pub fn apply(&self, img: &mut [f32]) {
        for v in img.iter_mut() {
            *v = ((*v as f64 - self.offset) / self.scale) as f32;
        }
    }
}

/// Why statistics cannot be computed.
#[derive(Debug, Clone, PartialEq)]
pub enum StatsFault {
    /// The first non-finite pixel (index into the image).
    NonFinite { index: usize },
    /// The spread is 0 (constant image, or more than 95 % of the pixels equal for `p95`).
    NoSpread { center: f64 },
}

/// Centre and spread of `values` (consumed as scratch: reordered, then overwritten) by `method`.
pub fn center_spread(values: &mut [f32], method: Method) -> Result<(f64, f64), StatsFault> {
    let (c, s) = match method {
        Method::Zscore => return zscore(values),
        Method::P95 => {
            check_finite(values)?;
            let m = quantile(values, 0.5) as f64;
            for v in values.iter_mut() {
                *v = (*v as f64 - m).abs() as f32;
            }
            (m, quantile(values, 0.95) as f64)
        }
    };
    check_spread(c, s)
}

/// Mean and standard deviation (population), in two f64 passes; `values` is only read (no copy needed, unlike
/// [`center_spread`]'s `p95`).
pub fn zscore(values: &[f32]) -> Result<(f64, f64), StatsFault> {
    let n = values.len() as f64;
    // A sum of f32 values in f64 cannot overflow, so a NaN or infinity among them is the only way to a
    // non-finite sum: the check costs no pass of its own.
    let sum = lane_sum(values, |v| v as f64);
    if !sum.is_finite() {
        check_finite(values)?;
    }
    let mean = sum / n;
    let var = lane_sum(values, |v| {
        let d = v as f64 - mean;
        d * d
    }) / n;
    check_spread(mean, var.sqrt())
}

/// Independent f64 accumulators per pass. One running f64 sum is bound by the add's latency (~20 ms per pass
/// over a 4096² image, which made the statistics the slowest step of a GPU denoising run); in lanes the compiler
/// keeps them in vector registers. The order of the additions is fixed, so the result does not depend on the
/// machine.
const LANES: usize = 16;

fn lane_sum(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let (chunks, rest) = values.as_chunks::<LANES>();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a += f(v);
    }
    acc.iter().sum()
}

fn check_finite(values: &[f32]) -> Result<(), StatsFault> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(StatsFault::NonFinite { index }),
        None => Ok(()),
    }
}

fn check_spread(c: f64, s: f64) -> Result<(f64, f64), StatsFault> {
    if s.is_nan() || s <= 0.0 {
        return Err(StatsFault::NoSpread { center: c });
    }
    Ok((c, s))
}

/// Normalisation of a half pair from the statistics of their sum (see the module documentation).
pub fn for_halves(even: &[f32], odd: &[f32], method: Method) -> Result<Affine, StatsFault> {
    let mut sum: Vec<f32> = even.iter().zip(odd).map(|(a, b)| a + b).collect();
    // A NaN in either half would vanish from neither sum; report the half's own index.
    let (c, s) = center_spread(&mut sum, method)?;
    Ok(Affine {
        offset: c / 2.0,
        scale: s / 2.0,
    })
}

/// Nearest-rank q-quantile: `v[ceil(q·n) − 1]` of the sorted values (`values` is reordered).
pub fn quantile(values: &mut [f32], q: f64) -> f32 {
    let n = values.len();
    let k = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    *values.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut v: Vec<f32> = (1..=20).rev().map(|i| i as f32).collect();
        assert_eq!(quantile(&mut v, 0.5), 10.0);
        assert_eq!(quantile(&mut v, 0.95), 19.0);
        assert_eq!(quantile(&mut v, 1.0), 20.0);
        assert_eq!(quantile(&mut v, 0.0), 1.0);
    }

    #[test]
    fn p95_definition() {
        // s = 0..=99: median (lower) 49, |s − 49| ranges 0..50; its 95th percentile (rank 95 of 100) is 47.
        let even: Vec<f32> = (0..100).map(|i| i as f32 / 2.0).collect();
        let a = for_halves(&even, &even, Method::P95).unwrap();
        assert_eq!(
            a,
            Affine {
                offset: 24.5,
                scale: 23.5
            }
        );
        let mut x = even.clone();
        a.apply(&mut x);
        assert!((x[49] - 0.0).abs() < 1e-6);
    }

    #[test]
    fn zscore_gives_zero_mean_unit_std_on_the_sum() {
        let even: Vec<f32> = (0..1000).map(|i| ((i * 31) % 17) as f32).collect();
        let odd: Vec<f32> = (0..1000).map(|i| ((i * 7) % 13) as f32).collect();
        let a = for_halves(&even, &odd, Method::Zscore).unwrap();
        // Applying the map to both halves and summing = z-scoring the sum, up to a factor 2.
        let (mut e, mut o) = (even.clone(), odd.clone());
        a.apply(&mut e);
        a.apply(&mut o);
        let s: Vec<f64> = e
            .iter()
            .zip(&o)
            .map(|(a, b)| (*a as f64 + *b as f64) / 2.0)
            .collect();
        let m = s.iter().sum::<f64>() / 1000.0;
        let sd = (s.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 1000.0).sqrt();
        assert!(m.abs() < 1e-6 && (sd - 1.0).abs() < 1e-6, "{m} {sd}");
    }

    #[test]
    fn zscore_in_lanes_matches_one_running_sum() {
        // Counts-like values with a ragged tail (not a multiple of the lanes).
        let v: Vec<f32> = (0..100_003)
            .map(|i| 1000.0 + ((i * 7919) % 613) as f32 * 0.37)
            .collect();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let (m, s) = zscore(&v).unwrap();
        // Two summation orders of the same f64 terms: agreement to ~1e-15 relative.
        assert!((m - mean).abs() <= 1e-12 * mean, "{m} vs {mean}");
        assert!((s - sd).abs() <= 1e-10 * sd, "{s} vs {sd}");
    }

    #[test]
    fn zscore_names_the_first_non_finite_pixel() {
        let mut v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        v[700] = f32::INFINITY;
        v[900] = f32::NAN;
        assert_eq!(zscore(&v), Err(StatsFault::NonFinite { index: 700 }));
        v[3] = f32::NEG_INFINITY;
        assert_eq!(zscore(&v), Err(StatsFault::NonFinite { index: 3 }));
    }

    #[test]
    fn constant_and_nan_refused() {
        let c = vec![3.0f32; 64];
        assert_eq!(
            for_halves(&c, &c, Method::P95),
            Err(StatsFault::NoSpread { center: 6.0 })
        );
        assert_eq!(
            for_halves(&c, &c, Method::Zscore),
            Err(StatsFault::NoSpread { center: 6.0 })
        );
        let mut n = c.clone();
        n[9] = f32::NAN;
        assert_eq!(
            for_halves(&c, &n, Method::P95),
            Err(StatsFault::NonFinite { index: 9 })
        );
    }
}

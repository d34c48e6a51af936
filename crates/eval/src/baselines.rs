//! Classical baselines on the same data as the models: the raw input, a Gaussian blur and a Fourier low-pass,
//! each filter with its parameter chosen on tuning data by the same score the report shows.

use crate::filters::{gaussian_blur, lowpass};
use crate::metrics::{n2n_error, score_against_truth};
use crate::Error;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Gaussian σ values tried, pixels.
pub const GAUSSIAN_SIGMAS: &[f64] = &[0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0];
/// Low-pass cutoffs tried, cycles/pixel (Nyquist 0.5).
pub const LOWPASS_CUTOFFS: &[f64] = &[
    0.01, 0.015, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4,
];
/// Tuning looks at the central crop of at most this many pixels a side of each image: the best parameter is a
/// property of the noise and the signal's spectrum, not of the image size, and the crop keeps tuning cheap.
pub const TUNE_CROP: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineKind {
    /// The input unchanged.
    Raw,
    /// Gaussian blur, parameter σ in pixels.
    GaussianBlur,
    /// Butterworth low-pass, parameter the cutoff in cycles/pixel.
    LowPass,
}

impl BaselineKind {
    pub fn grid(&self) -> &'static [f64] {
        match self {
            BaselineKind::Raw => &[],
            BaselineKind::GaussianBlur => GAUSSIAN_SIGMAS,
            BaselineKind::LowPass => LOWPASS_CUTOFFS,
        }
    }
}

/// A baseline with its parameter.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub kind: BaselineKind,
    pub param: f64,
}

impl Baseline {
    pub const RAW: Baseline = Baseline {
        kind: BaselineKind::Raw,
        param: 0.0,
    };

    pub fn apply(&self, img: &[f32], nx: usize, ny: usize) -> Vec<f32> {
        match self.kind {
            BaselineKind::Raw => img.to_vec(),
            BaselineKind::GaussianBlur => gaussian_blur(img, nx, ny, self.param),
            BaselineKind::LowPass => lowpass(img, nx, ny, self.param),
        }
    }

    /// A short name for tables and legends: `raw`, `gaussian σ=1.5 px`, `low-pass 0.1 /px`.
    pub fn label(&self) -> String {
        match self.kind {
            BaselineKind::Raw => "raw input".into(),
            BaselineKind::GaussianBlur => format!("gaussian σ={} px", self.param),
            BaselineKind::LowPass => format!("low-pass {} /px", self.param),
        }
    }
}

/// What tuning maximises or minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Criterion {
    /// Mean PSNR against the truth after the affine fit (higher is better).
    PsnrToTruth,
    /// Mean held-out Noise2Noise error `MSE(f(A), B)` (lower is better).
    N2nError,
}

/// One tuning image: the filter's input and what it is scored against (the truth, or the other half set).
pub struct TunePair<'a> {
    pub input: &'a [f32],
    pub target: &'a [f32],
    pub nx: usize,
    pub ny: usize,
}

/// The outcome of a parameter search, every tried value kept for the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tuning {
    pub kind: BaselineKind,
    pub criterion: Criterion,
    /// `(parameter, mean score)` for every value of the grid.
    pub tried: Vec<(f64, f64)>,
    pub best: Baseline,
    pub images: usize,
    pub crop: usize,
}

fn central_crop(img: &[f32], nx: usize, ny: usize, size: usize) -> (Vec<f32>, usize, usize) {
    let (cx, cy) = (nx.min(size), ny.min(size));
    let (x0, y0) = ((nx - cx) / 2, (ny - cy) / 2);
    let mut out = Vec::with_capacity(cx * cy);
    for j in y0..y0 + cy {
        out.extend_from_slice(&img[j * nx + x0..j * nx + x0 + cx]);
    }
    (out, cx, cy)
}

/// Try every value of `kind`'s grid on the pairs and keep the best by `criterion`.
pub fn tune(kind: BaselineKind, pairs: &[TunePair], criterion: Criterion) -> Result<Tuning, Error> {
    if pairs.is_empty() {
        return Err(Error::Invalid(
            "baseline tuning needs at least one image".into(),
        ));
    }
    if kind == BaselineKind::Raw {
        return Err(Error::Invalid(
            "the raw baseline has no parameter to tune".into(),
        ));
    }
    let crops: Vec<(Vec<f32>, Vec<f32>, usize, usize)> = pairs
        .iter()
        .map(|p| {
            let (i, cx, cy) = central_crop(p.input, p.nx, p.ny, TUNE_CROP);
            let (t, _, _) = central_crop(p.target, p.nx, p.ny, TUNE_CROP);
            (i, t, cx, cy)
        })
        .collect();
    let tried: Vec<(f64, f64)> = kind
        .grid()
        .par_iter()
        .map(|&param| {
            let b = Baseline { kind, param };
            let mut total = 0.0;
            for (input, target, cx, cy) in &crops {
                let out = b.apply(input, *cx, *cy);
                total += match criterion {
                    Criterion::PsnrToTruth => score_against_truth(&out, target, *cx, *cy)?.psnr,
                    Criterion::N2nError => n2n_error(&out, target)?,
                };
            }
            Ok((param, total / crops.len() as f64))
        })
        .collect::<Result<_, Error>>()?;
    let better = |a: f64, b: f64| match criterion {
        Criterion::PsnrToTruth => a > b,
        Criterion::N2nError => a < b,
    };
    let mut best = tried[0];
    for &t in &tried[1..] {
        if better(t.1, best.1) {
            best = t;
        }
    }
    Ok(Tuning {
        kind,
        criterion,
        tried,
        best: Baseline {
            kind,
            param: best.0,
        },
        images: pairs.len(),
        crop: TUNE_CROP,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    #[test]
    fn tuning_finds_an_interior_optimum_on_smooth_signal_plus_noise() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (nx, ny) = (128, 128);
        let white: Vec<f32> = (0..nx * ny).map(|_| rng.sample(StandardNormal)).collect();
        let truth = gaussian_blur(&white, nx, ny, 3.0);
        let noisy: Vec<f32> = truth
            .iter()
            .map(|v| v + 0.1 * rng.sample::<f32, _>(StandardNormal))
            .collect();
        let pairs = [TunePair {
            input: &noisy,
            target: &truth,
            nx,
            ny,
        }];
        let t = tune(BaselineKind::GaussianBlur, &pairs, Criterion::PsnrToTruth).unwrap();
        let s = t.best.param;
        assert!(
            s > GAUSSIAN_SIGMAS[0] && s < *GAUSSIAN_SIGMAS.last().unwrap(),
            "σ={s}, {:?}",
            t.tried
        );
        let raw = score_against_truth(&noisy, &truth, nx, ny).unwrap().psnr;
        let best = t
            .tried
            .iter()
            .map(|x| x.1)
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(best > raw + 1.0, "tuned blur {best} dB vs raw {raw} dB");
        let l = tune(BaselineKind::LowPass, &pairs, Criterion::N2nError).unwrap();
        assert_eq!(l.tried.len(), LOWPASS_CUTOFFS.len());
    }
}

//! `cryoden evaluate`: models and baselines on the same micrographs, scored against a truth and/or by the
//! held-out Noise2Noise error and FRC of two independent half sets.
//!
//! Data: with a truth, `input` micrographs are matched to `truth` micrographs by file stem; with half sets,
//! `half_a` is matched to `half_b` the same way. Every method (raw input, tuned Gaussian blur, tuned low-pass,
//! each model) sees the same images. Numbers and curves go into [`Evaluation`] (the `--json` output); the
//! figures and `report.html` are made from it by [`crate::report`].

use crate::baselines::{tune, Baseline, BaselineKind, Criterion, TunePair, Tuning};
use crate::fourier::{frc, power_spectrum};
use crate::metrics::{n2n_error, score_against_truth, TruthScores};
use crate::Error;
use cryoden_infer::files::stem;
use cryoden_infer::Denoiser;
use cryoden_nn::Backend;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Pairs of files matched by stem.
#[derive(Clone, Debug, Serialize)]
pub struct Pair {
    pub name: String,
    pub a: PathBuf,
    pub b: PathBuf,
}

/// Matches every file of `a` with the file of `b` of the same stem; a file of `a` without a partner is an error
/// naming it (files of `b` without a partner are ignored: a truth directory may hold more micrographs).
pub fn match_by_stem(a: &[PathBuf], b: &[PathBuf], what_b: &str) -> Result<Vec<Pair>, Error> {
    let by_stem: HashMap<String, &PathBuf> = b.iter().map(|p| (stem(p), p)).collect();
    a.iter()
        .map(|p| {
            let name = stem(p);
            let partner = by_stem.get(&name).ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: no {what_b} file named {name}.* to compare with; give matching file names",
                    p.display()
                ))
            })?;
            Ok(Pair {
                name,
                a: p.clone(),
                b: (*partner).clone(),
            })
        })
        .collect()
}

/// A model to evaluate.
pub struct ModelEntry<B: Backend> {
    /// Short name for tables and legends.
    pub name: String,
    pub checkpoint: PathBuf,
    pub denoiser: Denoiser<B>,
}

/// What to evaluate on.
pub struct Inputs {
    /// `(noisy input, truth)` pairs.
    pub truth: Vec<Pair>,
    /// `(half A, half B)` pairs.
    pub halves: Vec<Pair>,
    /// Pairs to tune the baselines on (`(input, truth)` if `truth` is given, else `(A, B)`); empty = the
    /// evaluation pairs themselves (reported as such).
    pub tune_truth: Vec<Pair>,
    pub tune_halves: Vec<Pair>,
    /// Pixel size in Å for FRC resolutions; `None` = from the first input's header (0 there = unknown).
    pub pixel_size: Option<f64>,
}

/// One method's description in the report.
#[derive(Clone, Debug, Serialize)]
pub struct MethodInfo {
    pub name: String,
    /// `model`, `raw`, `gaussian-blur` or `low-pass`.
    pub kind: String,
    pub checkpoint: Option<PathBuf>,
    pub arch: Option<String>,
    /// Context used per tile (models), pixels.
    pub context: Option<usize>,
    pub baseline: Option<Baseline>,
    /// Seconds spent denoising/filtering all evaluation images.
    pub seconds: f64,
}

/// Per method (outer, same order as `methods`) per image (inner).
#[derive(Clone, Debug, Serialize)]
pub struct TruthResults {
    pub images: Vec<String>,
    pub scores: Vec<Vec<TruthScores>>,
    pub mean_psnr: Vec<f64>,
    pub mean_ssim: Vec<f64>,
    /// Mean FRC of each method's output with the truth, over images (curve per method).
    pub frc_freq: Vec<f64>,
    pub frc_to_truth: Vec<Vec<f64>>,
    /// Power spectra (mean over images) of each method's output after the affine map into truth units, then
    /// of the truth itself (last).
    pub power_freq: Vec<f64>,
    pub power: Vec<Vec<f64>>,
    pub power_truth: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HalfResults {
    pub images: Vec<String>,
    /// `MSE(f(A), B)` per method per image, and its mean.
    pub n2n_error: Vec<Vec<f64>>,
    pub mean_n2n_error: Vec<f64>,
    /// FRC of `f(A)` with `f(B)`: resolution at 1/7 in Å (or pixels when the pixel size is unknown), per method
    /// per image; `None` when the curve never crosses (better than Nyquist).
    pub frc_resolution: Vec<Vec<Option<f64>>>,
    pub frc_freq: Vec<f64>,
    /// Mean FRC curve per method over images.
    pub frc: Vec<Vec<f64>>,
    pub mean_frc_resolution: Vec<Option<f64>>,
}

/// Everything the report shows (the `--json` output).
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub cryoden_version: String,
    /// Å per pixel used for FRC resolutions; 0 = unknown (resolutions then in pixels).
    pub pixel_size: f64,
    pub methods: Vec<MethodInfo>,
    pub tuning: Vec<Tuning>,
    /// Where the baselines were tuned: `separate` (the --tune-* data) or `evaluation` (the evaluated images
    /// themselves, which favours the baselines).
    pub tuned_on: String,
    pub truth: Option<TruthResults>,
    pub halves: Option<HalfResults>,
    /// Loss curves of the models' runs (metrics.jsonl next to the checkpoint), per model.
    pub loss_curves: Vec<LossCurve>,
    #[serde(skip)]
    pub sample: Option<Sample>,
}

/// The first image of the evaluation, kept for the picture panels.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub nx: usize,
    pub ny: usize,
    pub input: Vec<f32>,
    /// Each method's output, mapped into truth units when there is a truth.
    pub outputs: Vec<Vec<f32>>,
    pub truth: Option<Vec<f32>>,
    /// First-layer conv weights (PyTorch layout `[cout, cin, k, k]` flattened, with cout, cin, k) per model,
    /// and their biases.
    pub first_layers: Vec<FirstLayer>,
}

#[derive(Clone, Debug)]
pub struct FirstLayer {
    pub model: String,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub cout: usize,
    pub cin: usize,
    pub k: usize,
    /// `relu` or `leaky-relu-0.1`: what follows the first conv.
    pub activation: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct LossCurve {
    pub model: String,
    pub file: PathBuf,
    /// `(step, training loss)` per step.
    pub steps: Vec<(f64, f64)>,
    /// `(step at the end of the epoch, mean training loss, validation loss)` per epoch.
    pub epochs: Vec<(f64, Option<f64>, Option<f64>)>,
}

/// Reads `metrics.jsonl` (the format of `cryoden train`); lines that do not parse are skipped.
pub fn read_loss_curve(model: &str, file: &Path) -> Result<LossCurve, Error> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Error::Invalid(format!(
            "{}: cannot read the training log ({e})",
            file.display()
        ))
    })?;
    let (mut steps, mut epochs) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v["step"].as_f64().unwrap_or(0.0);
        match v["kind"].as_str() {
            Some("step") => {
                if let Some(l) = v["loss"].as_f64() {
                    steps.push((step, l));
                }
            }
            Some("epoch") => epochs.push((step, v["loss"].as_f64(), v["val_loss"].as_f64())),
            _ => {}
        }
    }
    Ok(LossCurve {
        model: model.into(),
        file: file.to_path_buf(),
        steps,
        epochs,
    })
}

fn read_image(path: &Path) -> Result<(Vec<f32>, usize, usize, f64), Error> {
    let m = cryoden_io::read(path)?;
    if m.nz() > 1 {
        return Err(Error::Invalid(format!(
            "{}: a stack of {} images; evaluation takes single micrographs",
            path.display(),
            m.nz()
        )));
    }
    let px = m.voxel_size()[0] as f64;
    let (nx, ny) = (m.nx(), m.ny());
    Ok((m.data, nx, ny, px))
}

/// `(a, b, nx, ny, pixel size of a)`.
type PairData = (Vec<f32>, Vec<f32>, usize, usize, f64);

fn read_pair(p: &Pair) -> Result<PairData, Error> {
    let (a, nx, ny, px) = read_image(&p.a)?;
    let (b, bx, by, _) = read_image(&p.b)?;
    if (nx, ny) != (bx, by) {
        return Err(Error::ShapeMismatch(format!(
            "{} is {nx}×{ny} but {} is {bx}×{by}",
            p.a.display(),
            p.b.display()
        )));
    }
    Ok((a, b, nx, ny, px))
}

fn tune_baselines(pairs: &[Pair], criterion: Criterion) -> Result<Vec<Tuning>, Error> {
    let data: Vec<(Vec<f32>, Vec<f32>, usize, usize)> = pairs
        .iter()
        .map(|p| read_pair(p).map(|(a, b, nx, ny, _)| (a, b, nx, ny)))
        .collect::<Result<_, _>>()?;
    let tp: Vec<TunePair> = data
        .iter()
        .map(|(a, b, nx, ny)| TunePair {
            input: a,
            target: b,
            nx: *nx,
            ny: *ny,
        })
        .collect();
    Ok(vec![
        tune(BaselineKind::GaussianBlur, &tp, criterion)?,
        tune(BaselineKind::LowPass, &tp, criterion)?,
    ])
}

fn first_layer<B: Backend>(
    name: &str,
    d: &Denoiser<B>,
    params: &[f32],
    model: &cryoden_nn::Model,
) -> Option<FirstLayer> {
    let table = model.params();
    let e = table
        .entries()
        .iter()
        .find(|e| e.kind == cryoden_nn::ParamKind::ConvWeight)?;
    let b = table
        .entries()
        .iter()
        .find(|b| b.name == e.name.replace(".weight", ".bias"))?;
    let mut weight = vec![0.0f32; e.len()];
    table.to_torch(e, &params[e.range()], &mut weight);
    let activation = match d.arch() {
        cryoden_nn::Arch::Unet { .. } => "relu",
        _ => "leaky-relu-0.1",
    };
    Some(FirstLayer {
        model: name.into(),
        weight,
        bias: params[b.range()].to_vec(),
        cout: e.shape[0],
        cin: e.shape[1],
        k: e.shape[2],
        activation: activation.into(),
    })
}

fn accumulate(sum: &mut Vec<f64>, v: &[f64]) {
    if sum.is_empty() {
        sum.resize(v.len(), 0.0);
    }
    for (s, x) in sum.iter_mut().zip(v) {
        *s += x;
    }
}

/// Runs the whole evaluation. `progress(done, total, what)` is called as images are processed.
pub fn evaluate<B: Backend>(
    models: &mut [ModelEntry<B>],
    inputs: &Inputs,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Evaluation, Error> {
    if inputs.truth.is_empty() && inputs.halves.is_empty() {
        return Err(Error::Invalid(
            "nothing to evaluate: give --input with --truth, and/or --half-a with --half-b".into(),
        ));
    }
    // Tune the baselines first: by PSNR against the truth when there is one, else by the N2N error.
    let (tune_pairs, criterion, separate) = if !inputs.truth.is_empty() {
        let sep = !inputs.tune_truth.is_empty();
        (
            if sep {
                &inputs.tune_truth
            } else {
                &inputs.truth
            },
            Criterion::PsnrToTruth,
            sep,
        )
    } else {
        let sep = !inputs.tune_halves.is_empty();
        (
            if sep {
                &inputs.tune_halves
            } else {
                &inputs.halves
            },
            Criterion::N2nError,
            sep,
        )
    };
    progress(0, 1, "tuning baselines");
    let tuning = tune_baselines(tune_pairs, criterion)?;
    let mut methods: Vec<MethodInfo> = vec![MethodInfo {
        name: "raw input".into(),
        kind: "raw".into(),
        checkpoint: None,
        arch: None,
        context: None,
        baseline: Some(Baseline::RAW),
        seconds: 0.0,
    }];
    for t in &tuning {
        methods.push(MethodInfo {
            name: t.best.label(),
            kind: match t.kind {
                BaselineKind::GaussianBlur => "gaussian-blur".into(),
                _ => "low-pass".into(),
            },
            checkpoint: None,
            arch: None,
            context: None,
            baseline: Some(t.best),
            seconds: 0.0,
        });
    }
    let n_base = methods.len();
    for m in models.iter() {
        methods.push(MethodInfo {
            name: m.name.clone(),
            kind: "model".into(),
            checkpoint: Some(m.checkpoint.clone()),
            arch: Some(m.denoiser.arch().describe()),
            context: Some(m.denoiser.context()),
            baseline: None,
            seconds: 0.0,
        });
    }
    let nm = methods.len();
    let total = inputs.truth.len() + inputs.halves.len();
    let mut done = 0;
    let mut pixel_size = inputs.pixel_size;
    // Applies method `k` to an image, timing it.
    let mut apply = |k: usize,
                     img: &[f32],
                     nx: usize,
                     ny: usize,
                     methods: &mut [MethodInfo]|
     -> Result<Vec<f32>, Error> {
        let t0 = Instant::now();
        let out = if k < n_base {
            methods[k]
                .baseline
                .expect("baselines carry their parameters")
                .apply(img, nx, ny)
        } else {
            models[k - n_base]
                .denoiser
                .denoise(img, nx, ny)
                .map_err(|e| Error::Invalid(format!("model {}: {e}", methods[k].name)))?
        };
        methods[k].seconds += t0.elapsed().as_secs_f64();
        Ok(out)
    };
    let mut sample: Option<Sample> = None;

    let truth = if inputs.truth.is_empty() {
        None
    } else {
        let mut scores = vec![Vec::new(); nm];
        let (mut frc_sum, mut pow_sum, mut pow_truth) =
            (vec![Vec::new(); nm], vec![Vec::new(); nm], Vec::new());
        let (mut frc_freq, mut power_freq) = (Vec::new(), Vec::new());
        for p in &inputs.truth {
            progress(done, total, &p.name);
            let (input, truth, nx, ny, px) = read_pair(p)?;
            pixel_size.get_or_insert(px);
            let mut outs = Vec::new();
            for k in 0..nm {
                let out = apply(k, &input, nx, ny, &mut methods)?;
                let s = score_against_truth(&out, &truth, nx, ny)?;
                let mapped: Vec<f32> = s.affine.apply(&out).into_iter().map(|v| v as f32).collect();
                let f = frc(&mapped, &truth, nx, ny)?;
                accumulate(&mut frc_sum[k], &f.frc);
                frc_freq = f.freq;
                let ps = power_spectrum(&mapped, nx, ny)?;
                accumulate(&mut pow_sum[k], &ps.power);
                power_freq = ps.freq;
                scores[k].push(s);
                if sample.is_none() {
                    outs.push(mapped);
                }
            }
            accumulate(&mut pow_truth, &power_spectrum(&truth, nx, ny)?.power);
            if sample.is_none() {
                sample = Some(Sample {
                    name: p.name.clone(),
                    nx,
                    ny,
                    input,
                    outputs: outs,
                    truth: Some(truth),
                    first_layers: Vec::new(),
                });
            }
            done += 1;
        }
        let n = inputs.truth.len() as f64;
        let mean = |v: &Vec<TruthScores>, f: fn(&TruthScores) -> f64| {
            v.iter().map(f).sum::<f64>() / v.len() as f64
        };
        Some(TruthResults {
            images: inputs.truth.iter().map(|p| p.name.clone()).collect(),
            mean_psnr: scores.iter().map(|v| mean(v, |s| s.psnr)).collect(),
            mean_ssim: scores.iter().map(|v| mean(v, |s| s.ssim)).collect(),
            scores,
            frc_freq,
            frc_to_truth: frc_sum
                .into_iter()
                .map(|v| v.into_iter().map(|x| x / n).collect())
                .collect(),
            power_freq,
            power: pow_sum
                .into_iter()
                .map(|v| v.into_iter().map(|x| x / n).collect())
                .collect(),
            power_truth: pow_truth.into_iter().map(|x| x / n).collect(),
        })
    };

    let halves = if inputs.halves.is_empty() {
        None
    } else {
        let mut err = vec![Vec::new(); nm];
        let mut res = vec![Vec::new(); nm];
        let mut frc_sum = vec![Vec::new(); nm];
        let mut frc_freq = Vec::new();
        for p in &inputs.halves {
            progress(done, total, &p.name);
            let (a, b, nx, ny, px) = read_pair(p)?;
            pixel_size.get_or_insert(px);
            let mut outs = Vec::new();
            for k in 0..nm {
                let fa = apply(k, &a, nx, ny, &mut methods)?;
                let fb = apply(k, &b, nx, ny, &mut methods)?;
                err[k].push(n2n_error(&fa, &b)?);
                let f = frc(&fa, &fb, nx, ny)?;
                res[k].push(f.crossing_freq);
                accumulate(&mut frc_sum[k], &f.frc);
                frc_freq = f.freq.clone();
                if sample.is_none() {
                    outs.push(fa);
                }
            }
            if sample.is_none() {
                sample = Some(Sample {
                    name: p.name.clone(),
                    nx,
                    ny,
                    input: a,
                    outputs: outs,
                    truth: None,
                    first_layers: Vec::new(),
                });
            }
            done += 1;
        }
        let px = pixel_size.unwrap_or(0.0);
        let to_res = |f: Option<f64>| f.map(|f| if px > 0.0 { px / f } else { 1.0 / f });
        let n = inputs.halves.len() as f64;
        let mean_frc: Vec<Vec<f64>> = frc_sum
            .into_iter()
            .map(|v| v.into_iter().map(|x| x / n).collect())
            .collect();
        let mean_res = mean_frc
            .iter()
            .map(|c| {
                let i = (1..c.len()).find(|&i| c[i] < crate::fourier::FRC_THRESHOLD)?;
                let (f0, f1, c0, c1) = (frc_freq[i - 1], frc_freq[i], c[i - 1], c[i]);
                let f = if c0 > c1 {
                    f0 + (f1 - f0) * (c0 - crate::fourier::FRC_THRESHOLD) / (c0 - c1)
                } else {
                    f0
                };
                to_res(Some(f.max(frc_freq[1] * 0.5)))
            })
            .collect();
        Some(HalfResults {
            images: inputs.halves.iter().map(|p| p.name.clone()).collect(),
            mean_n2n_error: err
                .iter()
                .map(|v| v.iter().sum::<f64>() / v.len() as f64)
                .collect(),
            n2n_error: err,
            frc_resolution: res
                .into_iter()
                .map(|v| v.into_iter().map(to_res).collect())
                .collect(),
            frc_freq,
            frc: mean_frc,
            mean_frc_resolution: mean_res,
        })
    };
    progress(total, total, "done");

    let mut loss_curves = Vec::new();
    for m in models.iter() {
        let log = m
            .checkpoint
            .parent()
            .unwrap_or(Path::new("."))
            .join("metrics.jsonl");
        if log.is_file() {
            loss_curves.push(read_loss_curve(&m.name, &log)?);
        }
    }
    if let Some(s) = sample.as_mut() {
        for m in models.iter() {
            if let Ok(w) = cryoden_nn::checkpoint::load_weights(&m.checkpoint, None) {
                if let Some(f) = first_layer(&m.name, &m.denoiser, &w.params, &w.model) {
                    s.first_layers.push(f);
                }
            }
        }
    }
    Ok(Evaluation {
        cryoden_version: env!("CARGO_PKG_VERSION").into(),
        pixel_size: pixel_size.unwrap_or(0.0),
        methods,
        tuning,
        tuned_on: if separate {
            "separate".into()
        } else {
            "evaluation".into()
        },
        truth,
        halves,
        loss_curves,
        sample,
    })
}

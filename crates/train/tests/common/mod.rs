//! Test datasets written straight to disk in `cryoden prepare`'s format (manifest.json + four MRC stacks), with
//! their clean truth kept in memory so tests can measure PSNR.

#![allow(dead_code)]

use cryoden_prep::manifest::{Counts, FileEntry, Files, Manifest, Micrograph, Source, Split};
use cryoden_prep::noise::NoiseModel;
use cryoden_prep::normalize::{Affine, Method};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use sha2::{Digest, Sha256};
use std::path::Path;

/// One split: `n` pairs of `p × p` images, sample-major, and the clean images they were made from.
#[derive(Clone)]
pub struct SplitData {
    pub input: Vec<f32>,
    pub target: Vec<f32>,
    pub clean: Vec<f32>,
}

impl SplitData {
    pub fn len(&self, p: usize) -> usize {
        self.input.len() / (p * p)
    }
}

/// Smooth random images: a sum of Gaussian blobs (σ 2–5 px, random signs), scaled to unit standard deviation.
pub fn smooth_images(n: usize, p: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * p * p);
    for _ in 0..n {
        let mut img = vec![0.0f64; p * p];
        for _ in 0..8 {
            let (cy, cx) = (
                rng.random_range(0.0..p as f64),
                rng.random_range(0.0..p as f64),
            );
            let s = rng.random_range(2.0..5.0f64);
            let a = rng.random_range(-1.0..1.0f64);
            for y in 0..p {
                for x in 0..p {
                    let d2 = (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2);
                    img[y * p + x] += a * (-d2 / (2.0 * s * s)).exp();
                }
            }
        }
        let mean = img.iter().sum::<f64>() / img.len() as f64;
        let sd = (img.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / img.len() as f64)
            .sqrt()
            .max(1e-6);
        out.extend(img.iter().map(|v| ((v - mean) / sd) as f32));
    }
    out
}

/// `n` clean smooth images and two independent Gaussian-noised copies (σ = `sigma`).
pub fn noisy_split(n: usize, p: usize, sigma: f64, rng: &mut ChaCha8Rng) -> SplitData {
    let clean = smooth_images(n, p, rng);
    let noise = Normal::new(0.0, sigma).unwrap();
    let input = clean
        .iter()
        .map(|&c| (c as f64 + noise.sample(rng)) as f32)
        .collect();
    let target = clean
        .iter()
        .map(|&c| (c as f64 + noise.sample(rng)) as f32)
        .collect();
    SplitData {
        input,
        target,
        clean,
    }
}

/// A small dataset: `n_train` / `n_val` pairs of `p × p`, noise σ = 1 on unit-variance smooth images.
pub fn make(
    dir: &Path,
    p: usize,
    n_train: usize,
    n_val: usize,
    seed: u64,
) -> (SplitData, SplitData) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let train = noisy_split(n_train, p, 1.0, &mut rng);
    let val = noisy_split(n_val, p, 1.0, &mut rng);
    write(dir, p, &train, &val);
    (train, val)
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the four stacks and a manifest that matches them (one pseudo-micrograph per split).
pub fn write(dir: &Path, p: usize, train: &SplitData, val: &SplitData) {
    std::fs::create_dir_all(dir).unwrap();
    let opts = cryoden_io::WriteOptions::default();
    let mut entries = Vec::new();
    for (name, data) in [
        ("train_input.mrcs", &train.input),
        ("train_target.mrcs", &train.target),
        ("val_input.mrcs", &val.input),
        ("val_target.mrcs", &val.target),
    ] {
        let path = dir.join(name);
        cryoden_io::write(&path, data, [p, p, data.len() / (p * p)], &opts).unwrap();
        entries.push(FileEntry {
            name: name.into(),
            bytes: std::fs::metadata(&path).unwrap().len(),
            sha256: sha256(&path),
        });
    }
    let (nt, nv) = (train.len(p), val.len(p));
    let micrograph = |name: &str, split, n: usize| Micrograph {
        name: name.into(),
        even: format!("{name}.mrc"),
        odd: format!("{name}.mrc"),
        split,
        width: p * n,
        height: p,
        pixel_size: 1.0,
        normalization: Affine {
            offset: 0.0,
            scale: 1.0,
        },
        first_patch: 0,
        patch_count: n,
        x_starts: (0..n).map(|i| i * p).collect(),
        y_starts: vec![0],
    };
    let mut micrographs = vec![micrograph("train0", Split::Train, nt)];
    if nv > 0 {
        micrographs.push(micrograph("val0", Split::Val, nv));
    }
    let [ti, tt, vi, vt]: [FileEntry; 4] = entries.try_into().unwrap();
    let m = Manifest {
        format: "cryoden-dataset".into(),
        version: 1,
        tool: "cryoden-train tests".into(),
        patch_size: p,
        stride: p,
        normalize: Method::Zscore,
        source: Source::Clean {
            dir: "synthetic".into(),
            noise: NoiseModel::Gaussian { sigma: 1.0 },
        },
        seed: 0,
        val_fraction: 0.2,
        counts: Counts { train: nt, val: nv },
        files: Files {
            train_input: ti,
            train_target: tt,
            val_input: vi,
            val_target: vt,
        },
        micrographs,
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
}

/// Overwrites pixel `index` (counted over the whole stack) of a dataset stack with `value` — NaN and infinity
/// included, which the MRC writer rightly refuses — and updates the manifest's checksum.
pub fn poison(dir: &Path, file: &str, index: usize, value: f32) {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join(file);
    let ext = cryoden_io::MrcStack::open(&path)
        .unwrap()
        .ext_header()
        .len() as u64;
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(1024 + ext + 4 * index as u64))
        .unwrap();
    f.write_all(&value.to_le_bytes()).unwrap();
    drop(f);
    let mpath = dir.join("manifest.json");
    let mut m: Manifest = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    let sha = sha256(&path);
    for e in [
        &mut m.files.train_input,
        &mut m.files.train_target,
        &mut m.files.val_input,
        &mut m.files.val_target,
    ] {
        if e.name == file {
            e.sha256 = sha.clone();
        }
    }
    std::fs::write(&mpath, serde_json::to_string_pretty(&m).unwrap()).unwrap();
}

/// PSNR in dB of `x` against `clean`, with the clean images' full range as the peak.
pub fn psnr(x: &[f32], clean: &[f32]) -> f64 {
    let (lo, hi) = clean
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let mse = x
        .iter()
        .zip(clean)
        .map(|(&a, &b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / x.len() as f64;
    10.0 * (((hi - lo) as f64).powi(2) / mse).log10()
}

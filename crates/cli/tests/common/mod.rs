//! Helpers shared by the end-to-end tests: tiny micrographs and a tiny checkpoint written in the test, the real
//! binary run on them.

#![allow(dead_code)] // each test file uses a different subset

use cryoden_nn::{checkpoint, Arch, Model};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The widths of the test model: 3 levels, so images must be at least 4×4 (two 2×2 pools).
pub const WIDTHS: [usize; 3] = [4, 8, 16];
pub const MIN_SIDE: usize = 4;

pub fn cryoden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cryoden"))
}

/// Runs `cryoden ARGS`, returning the output with stdout/stderr as text.
pub fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (Output, String, String) {
    let out = cryoden()
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("the cryoden binary runs");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    (out, so, se)
}

/// xorshift64* → uniform (0, 1]; Box–Muller for Gaussians. Deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// A smooth "specimen": a few Gaussian blobs on a gentle ramp, values around 10.
pub fn clean(nx: usize, ny: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let blobs: Vec<(f64, f64, f64)> = (0..6)
        .map(|_| {
            (
                r.uniform() * nx as f64,
                r.uniform() * ny as f64,
                2.0 + r.uniform() * nx.min(ny) as f64 / 8.0,
            )
        })
        .collect();
    let mut v = Vec::with_capacity(nx * ny);
    for y in 0..ny {
        for x in 0..nx {
            let mut s = 10.0 + 0.01 * x as f64;
            for &(cx, cy, w) in &blobs {
                let d2 = (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2);
                s += 3.0 * (-d2 / (2.0 * w * w)).exp();
            }
            v.push(s as f32);
        }
    }
    v
}

/// `clean` plus white Gaussian noise of standard deviation `sigma`.
pub fn noisy(clean: &[f32], sigma: f64, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed ^ 0xABCD);
    clean
        .iter()
        .map(|&c| (c as f64 + sigma * r.normal()) as f32)
        .collect()
}

/// Header values the outputs must keep.
pub const VOXEL: f32 = 1.25;
pub const ORIGIN: [f32; 3] = [12.5, -7.0, 0.0];

pub fn write_mrc(path: &Path, data: &[f32], dims: [usize; 3]) {
    let opts = cryoden_io::WriteOptions {
        origin: ORIGIN,
        labels: vec!["written by the cryoden CLI tests".into()],
        ..cryoden_io::WriteOptions::with_voxel_size(VOXEL)
    };
    cryoden_io::write(path, data, dims, &opts).unwrap();
}

/// A noisy micrograph `nx × ny` at `dir/name`.
pub fn micrograph(dir: &Path, name: &str, nx: usize, ny: usize, seed: u64) -> PathBuf {
    let p = dir.join(name);
    write_mrc(&p, &noisy(&clean(nx, ny, seed), 1.0, seed), [nx, ny, 1]);
    p
}

/// A checkpoint of an untrained `unet[4,8,16]` (weights as initialised, seed 7), as `cryoden train` writes one.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let arch = Arch::Unet {
        widths: WIDTHS.to_vec(),
    };
    let model = Model::new(arch).unwrap();
    let params = model.init_params(7);
    let p = dir.join("tiny.safetensors");
    checkpoint::save_weights(
        &p,
        &model,
        &params,
        &serde_json::json!({"normalize": "zscore"}),
    )
    .unwrap();
    p
}

/// Names of the files in `dir`, sorted (empty when it does not exist).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

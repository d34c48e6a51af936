//! Whole-model behaviour of denoising: tiled = whole image, headers kept, units restored, bad inputs.

use cryoden_infer::{
    context_radius, default_context, plan_outputs, run, Denoiser, Error, Format, Normalization,
    Options, RunOptions, Status,
};
use cryoden_nn::{checkpoint, cpu::Cpu, Arch, Model};
use cryoden_prep::normalize::Method;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

fn small_unet() -> (Model, Vec<f32>) {
    let model = Model::new(Arch::Unet {
        widths: vec![4, 8, 8],
    })
    .unwrap();
    let params = model.init_params(3);
    (model, params)
}

/// `small_unet` saved as `dir/model.safetensors` (no metadata); returns its path.
fn small_unet_checkpoint(dir: &Path) -> std::path::PathBuf {
    let (model, params) = small_unet();
    let ckpt = dir.join("model.safetensors");
    checkpoint::save_weights(&ckpt, &model, &params, &serde_json::json!({})).unwrap();
    ckpt
}

fn denoiser(tile: usize, context: Option<usize>, batch: usize) -> Denoiser<Cpu> {
    let (model, params) = small_unet();
    let norm = Normalization {
        method: Method::Zscore,
        from_checkpoint: true,
    };
    Denoiser::new(
        Cpu::new(1).unwrap(),
        model,
        &params,
        norm,
        "test".into(),
        Options {
            tile,
            context,
            batch,
        },
    )
    .unwrap()
}

fn noise_image(nx: usize, ny: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..nx * ny)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tiled_output_equals_whole_image_output() {
    // 150 × 118 is not a multiple of the alignment (4), so padding is exercised too.
    let (nx, ny) = (150, 118);
    let img = noise_image(nx, ny, 1);
    let whole = denoiser(4096, None, 1)
        .denoise_normalized(&img, nx, ny)
        .unwrap();
    let arch = Arch::Unet {
        widths: vec![4, 8, 8],
    };
    assert!(default_context(&arch) >= context_radius(&arch));
    for (tile, batch) in [(16, 1), (24, 3), (40, 4)] {
        let tiled = denoiser(tile, None, batch)
            .denoise_normalized(&img, nx, ny)
            .unwrap();
        // f32 sums in a different order at most; 1e-4 is the tolerance.
        let d = max_diff(&whole, &tiled);
        assert!(
            d <= 1e-4,
            "tile {tile} batch {batch}: max |tiled − whole| = {d}"
        );
    }
    // Without context the seams show: the test can tell.
    let seams = denoiser(16, Some(0), 1)
        .denoise_normalized(&img, nx, ny)
        .unwrap();
    assert!(
        max_diff(&whole, &seams) > 1e-3,
        "no context should differ from the whole image"
    );
}

#[test]
fn denoise_restores_the_input_units() {
    let (nx, ny) = (64, 64);
    let img: Vec<f32> = noise_image(nx, ny, 2)
        .iter()
        .map(|v| 1000.0 + 50.0 * v)
        .collect();
    let out = denoiser(1024, None, 1).denoise(&img, nx, ny).unwrap();
    let mean = out.iter().map(|&v| v as f64).sum::<f64>() / out.len() as f64;
    // An untrained network outputs values of order 1 in normalised units: back in input units they sit near
    // the input's mean (1000) within a few spreads (50).
    assert!((mean - 1000.0).abs() < 200.0, "{mean}");
}

#[test]
fn too_small_images_are_refused() {
    let e = denoiser(1024, None, 1)
        .denoise(&[0.0, 1.0, 2.0, 3.0], 2, 2)
        .unwrap_err();
    assert!(matches!(e, Error::TooSmall { min: 4, .. }), "{e}");
    assert!(e.to_string().contains("smaller than"));
}

fn write_mrc(path: &Path, data: &[f32], nx: usize, ny: usize) {
    let mut o = cryoden_io::WriteOptions::with_voxel_size(1.23);
    o.origin = [10.0, 20.0, 0.0];
    cryoden_io::write(path, data, [nx, ny, 1], &o).unwrap();
}

#[test]
fn batch_run_keeps_headers_and_skips_unreadable_files() {
    let d = tempfile::tempdir().unwrap();
    let (model, params) = small_unet();
    let ckpt = d.path().join("model.safetensors");
    checkpoint::save_weights(
        &ckpt,
        &model,
        &params,
        &serde_json::json!({"normalize": "p95"}),
    )
    .unwrap();
    let (nx, ny) = (48, 40);
    let inputs = vec![
        d.path().join("a.mrc"),
        d.path().join("b.mrc"),
        d.path().join("c.mrc"),
    ];
    write_mrc(&inputs[0], &noise_image(nx, ny, 4), nx, ny);
    std::fs::write(&inputs[1], b"not an MRC file").unwrap();
    write_mrc(&inputs[2], &noise_image(nx, ny, 5), nx, ny);
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let jobs = plan_outputs(&inputs, &out_dir, "_dn", Format::Mrc).unwrap();
    let mut dn = Denoiser::load(Cpu::new(1).unwrap(), &ckpt, Options::default()).unwrap();
    assert_eq!(dn.normalization().method, Method::P95);
    let opts = RunOptions {
        format: Format::Mrc,
        skip_existing: false,
        label: "cryoden test label model.safetensors".into(),
        writers: 1,
    };
    let mut seen = Vec::new();
    let s = run(&mut dn, &jobs, &opts, |o| {
        seen.push((o.input.clone(), matches!(o.status, Status::Failed(_))))
    });
    assert_eq!((s.denoised, s.failed, s.skipped), (2, 1, 0));
    assert_eq!(
        seen.iter()
            .filter(|x| x.1)
            .map(|x| x.0.clone())
            .collect::<Vec<_>>(),
        vec![inputs[1].clone()]
    );
    assert!(
        !jobs[1].output.exists(),
        "nothing written for the unreadable file"
    );
    let m = cryoden_io::read(&jobs[0].output).unwrap();
    assert_eq!((m.nx(), m.ny()), (nx, ny));
    assert!((m.voxel_size()[0] - 1.23).abs() < 1e-6);
    assert_eq!(m.header.origin, [10.0, 20.0, 0.0]);
    assert!(m
        .header
        .label_strings()
        .iter()
        .any(|l| l.contains("cryoden test label")));
    // --skip-existing leaves the finished outputs alone and retries the failed one.
    let opts = RunOptions {
        skip_existing: true,
        ..opts
    };
    let s = run(&mut dn, &jobs, &opts, |_| {});
    assert_eq!((s.denoised, s.failed, s.skipped), (0, 1, 2));
}

/// Two writer threads (what machines with ≥ 4 cores use) write the same files, byte for byte, as one.
#[test]
fn two_writers_write_what_one_writes() {
    let d = tempfile::tempdir().unwrap();
    let ckpt = small_unet_checkpoint(d.path());
    let (nx, ny) = (40, 32);
    let inputs: Vec<_> = (0..7)
        .map(|k| {
            let p = d.path().join(format!("m{k}.mrc"));
            write_mrc(&p, &noise_image(nx, ny, 10 + k), nx, ny);
            p
        })
        .collect();
    let mut dn = Denoiser::load(Cpu::new(1).unwrap(), &ckpt, Options::default()).unwrap();
    let mut outputs = Vec::new();
    for writers in [1, 2] {
        let out_dir = d.path().join(format!("out{writers}"));
        std::fs::create_dir(&out_dir).unwrap();
        let jobs = plan_outputs(&inputs, &out_dir, "", Format::Mrc).unwrap();
        let opts = RunOptions {
            format: Format::Mrc,
            skip_existing: false,
            label: "cryoden test".into(),
            writers,
        };
        let mut reported = 0;
        let s = run(&mut dn, &jobs, &opts, |_| reported += 1);
        assert_eq!((s.denoised, s.failed, reported), (7, 0, 7));
        outputs.push(
            jobs.iter()
                .map(|j| std::fs::read(&j.output).unwrap())
                .collect::<Vec<_>>(),
        );
    }
    assert!(
        outputs[0] == outputs[1],
        "outputs differ between 1 and 2 writers"
    );
}

/// The pipeline's three paths give each file what `Denoiser::denoise` gives its image, bit for bit: single-section
/// files one window covers (no host copy: read into pooled transfer memory, written from it), a padded one (cut
/// and placed) and a two-section stack (gathered section by section), over several pool reuses.
#[test]
fn pipeline_paths_equal_denoising_each_image() {
    let d = tempfile::tempdir().unwrap();
    let ckpt = small_unet_checkpoint(d.path());
    // (nx, ny, nz): 40 × 32 is aligned (4) and inside one default 1024 tile; 150 × 118 is padded.
    let shapes = [
        (40, 32, 1),
        (150, 118, 1),
        (40, 32, 2),
        (40, 32, 1),
        (40, 32, 1),
    ];
    let mut images = Vec::new();
    let inputs: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(k, &(nx, ny, nz))| {
            let p = d.path().join(format!("m{k}.mrc"));
            let data: Vec<f32> = (0..nz)
                .flat_map(|z| noise_image(nx, ny, 40 + 3 * k as u64 + z as u64))
                .map(|v| 100.0 + 7.0 * v)
                .collect();
            let o = cryoden_io::WriteOptions::with_voxel_size(1.0);
            cryoden_io::write(&p, &data, [nx, ny, nz], &o).unwrap();
            images.push(data);
            p
        })
        .collect();
    let mut dn = Denoiser::load(Cpu::new(1).unwrap(), &ckpt, Options::default()).unwrap();
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let jobs = plan_outputs(&inputs, &out_dir, "", Format::Mrc).unwrap();
    let opts = RunOptions {
        format: Format::Mrc,
        skip_existing: false,
        label: "cryoden test".into(),
        writers: 2,
    };
    let s = run(&mut dn, &jobs, &opts, |_| {});
    assert_eq!((s.denoised, s.failed), (5, 0));
    assert_eq!(
        s.profile.direct, 3,
        "the three aligned single-section files"
    );
    for (k, (job, &(nx, ny, nz))) in jobs.iter().zip(&shapes).enumerate() {
        let got = cryoden_io::read(&job.output).unwrap().data;
        let want: Vec<f32> = images[k]
            .chunks(nx * ny)
            .flat_map(|sec| dn.denoise(sec, nx, ny).unwrap())
            .collect();
        assert_eq!(got.len(), nx * ny * nz);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "file {k} ({nx}×{ny}×{nz}) differs"
        );
    }
}

#[test]
fn a_file_that_is_not_a_checkpoint_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.safetensors");
    std::fs::write(&p, b"garbage").unwrap();
    let e = Denoiser::load(Cpu::new(1).unwrap(), &p, Options::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("bad.safetensors"), "{e}");
}

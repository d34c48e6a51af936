//! Parity with Topaz itself: cryoden's `topaz-unet`, loaded from a checkpoint that `import` wrote from Topaz's
//! `unet_L2_v0.2.2.sav`, gives Topaz's own `UDenoiseNet` output (with its pretrained weights, built as Topaz's
//! `load_model` builds it) on the same normalised input, on CPU, within 1e-4 relative L2 — and the whole
//! `topaz denoise --patch-size -1` pipeline (standardise, network, un-standardise) within the same bound, both
//! written out here and through `cryoden denoise`'s own `Denoiser` (tiled, normalisation from the metadata).
//! The input is a crop of a real micrograph (mrcfile's `epu2.9_example.mrc`, Falcon counting, from
//! `$CRYODEN_TESTDATA`).

mod common;

use std::path::PathBuf;

use cryoden_nn::checkpoint::load_weights;
use cryoden_nn::cpu::Cpu;
use cryoden_nn::{Arch, TrainState};

const REL_L2: f64 = 1e-4;

fn testdata() -> PathBuf {
    let dir = std::env::var_os("CRYODEN_TESTDATA").unwrap_or_else(|| {
        panic!("CRYODEN_TESTDATA is not set: run scripts/test.sh (it fetches the files into .cache/testdata)")
    });
    PathBuf::from(dir)
}

fn rel_l2(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut num, mut den, mut max) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = x as f64 - y as f64;
        num += d * d;
        den += y as f64 * y as f64;
        max = max.max(d.abs());
    }
    ((num / den).sqrt(), max)
}

#[test]
fn topaz_unet_gives_topaz_output_on_a_real_micrograph() {
    let mic = testdata().join("mrcfile/epu2.9_example.mrc");
    assert!(
        mic.is_file(),
        "{} is missing: run scripts/setup-python.sh",
        mic.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("topaz-unet.safetensors");
    let imported = cryoden_topaz::import(
        &common::pretrained_dir().join("unet_L2_v0.2.2.sav"),
        cryoden_topaz::ArchChoice::Auto,
    )
    .unwrap();
    cryoden_topaz::write_checkpoint(&imported, &ckpt).unwrap();

    // A 160×192 crop from the middle of the 4096² micrograph: odd sizes appear in the pooling pyramid.
    let (h, w) = (160usize, 192usize);
    let reference = tmp.path().join("topaz.safetensors");
    let script = common::python_dir().join("topaz_reference.py");
    common::run_python(&[
        script.to_str().unwrap(),
        mic.to_str().unwrap(),
        reference.to_str().unwrap(),
        "--crop",
        &format!("2000,1900,{h},{w}"),
        "--checkpoint",
        ckpt.to_str().unwrap(),
    ]);
    let (tensors, _) = common::read_dump(&reference);
    let get = |name: &str| {
        tensors
            .iter()
            .find(|t| t.0 == name)
            .map(|t| t.2.clone())
            .unwrap()
    };

    // The checkpoint loads strictly into Topaz's own class (python/models.py) and gives its output exactly.
    let (r, _) = rel_l2(&get("ckpt_output"), &get("net_output"));
    assert_eq!(
        r, 0.0,
        "the cryoden checkpoint in PyTorch differs from Topaz's pretrained model"
    );

    let weights = load_weights(&ckpt, Some(&Arch::TopazUnet)).unwrap();
    assert_eq!(weights.meta["normalize"], "zscore");
    let be = Cpu::new(0).unwrap();
    let state = TrainState::new(&be, &weights.model, &weights.params).unwrap();
    let mut acts = weights.model.activations(&be, 1, h, w).unwrap();
    let run = |acts: &mut cryoden_nn::Activations<Cpu>, x: &[f32]| {
        acts.upload_input(&be, x).unwrap();
        weights.model.forward(&be, &state.params, acts).unwrap();
        let mut y = vec![0.0f32; h * w];
        acts.download_output(&be, &mut y).unwrap();
        y
    };

    // 1. The network on Topaz's normalised input.
    let y = run(&mut acts, &get("normalised"));
    let (r, max) = rel_l2(&y, &get("net_output"));
    println!("topaz parity: network output rel L2 {r:.2e}, max |diff| {max:.2e}");
    assert!(
        r <= REL_L2,
        "network output differs from Topaz's: rel L2 {r:.3e} > {REL_L2:.0e}"
    );

    // 2. The whole pipeline from the raw crop: z-score (mean, sample std), network, inverse map.
    let raw = get("input");
    let n = raw.len() as f64;
    let mean = raw.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (raw.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let x: Vec<f32> = raw
        .iter()
        .map(|&v| ((v as f64 - mean) / std) as f32)
        .collect();
    let y: Vec<f32> = run(&mut acts, &x)
        .iter()
        .map(|&v| (v as f64 * std + mean) as f32)
        .collect();
    let (r, max) = rel_l2(&y, &get("denoised"));
    println!("topaz parity: denoised micrograph rel L2 {r:.2e}, max |diff| {max:.2e} (pixel values ~{mean:.1})");
    assert!(
        r <= REL_L2,
        "denoised crop differs from topaz denoise: rel L2 {r:.3e} > {REL_L2:.0e}"
    );

    // 3. `cryoden denoise -m CKPT` itself: the infer crate's Denoiser (normalisation from the checkpoint metadata,
    // tiles with context; here 64² tiles so the crop is cut into several) against `topaz denoise --patch-size -1`.
    let opts = cryoden_infer::Options {
        tile: 64,
        context: None,
        batch: 2,
    };
    let mut dn = cryoden_infer::Denoiser::load(Cpu::new(0).unwrap(), &ckpt, opts).unwrap();
    assert!(dn.normalization().from_checkpoint);
    let y = dn.denoise(&raw, w, h).unwrap();
    let (r, max) = rel_l2(&y, &get("denoised"));
    println!(
        "topaz parity: cryoden denoise (64² tiles + context) rel L2 {r:.2e}, max |diff| {max:.2e}"
    );
    assert!(
        r <= REL_L2,
        "cryoden denoise differs from topaz denoise: rel L2 {r:.3e} > {REL_L2:.0e}"
    );
}

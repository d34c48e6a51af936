//! End-to-end tests of the training loop on small datasets written in `cryoden prepare`'s format.

mod common;

use cryoden_nn::cpu::Cpu;
use cryoden_nn::{Arch, Model};
use cryoden_train::checkpoint;
use cryoden_train::loader::{BatchSpec, Batches};
use cryoden_train::metrics::{self, Kind};
use cryoden_train::plan::EpochPlan;
use cryoden_train::{
    train, AugmentConfig, Device, Error, LoaderChoice, LoaderKind, Observer, Quiet, RunOptions,
    TrainConfig,
};
use std::path::Path;

fn tiny_config(epochs: u64) -> TrainConfig {
    let mut c = TrainConfig::new(Arch::Unet { widths: vec![4, 8] });
    c.epochs = epochs;
    c.batch = 4;
    c.seed = 3;
    c.crop = Some(12);
    c.adam.lr = 1e-3;
    c.sample_every = 2;
    c
}

fn opts(data: &Path, out: &Path, loader: LoaderChoice) -> RunOptions {
    RunOptions {
        data: data.into(),
        out: out.into(),
        loader,
        prefetch: 2,
        device: Device::Cpu,
        resume: false,
    }
}

/// Stops the run (like a kill, no checkpoint) once `after` steps have been taken.
struct StopAfter(u64);
impl Observer for StopAfter {
    fn stop_requested(&mut self) -> bool {
        self.0 -= 1;
        self.0 == 0
    }
}

fn weights(path: &Path, model: &Model) -> Vec<u32> {
    checkpoint::load_weights(path, model)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn streaming_and_in_memory_loaders_give_identical_batches_from_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    common::make(dir.path(), 16, 21, 3, 1);
    let mem = cryoden_train::data::open(dir.path(), LoaderChoice::InMemory).unwrap();
    let map = cryoden_train::data::open(dir.path(), LoaderChoice::Streaming).unwrap();
    assert_eq!(
        (mem.kind, map.kind),
        (LoaderKind::InMemory, LoaderKind::Streaming)
    );
    let spec = BatchSpec {
        seed: 9,
        batch: 4,
        crop: 12,
        augment: AugmentConfig::ALL,
    };
    let a: Vec<_> = Batches::sync(mem.train.clone(), spec, 0, 0, 3).collect();
    let b: Vec<_> = Batches::prefetch(map.train.clone(), spec, 0, 0, 3, 2).collect();
    assert_eq!(a.len(), 3 * 5);
    assert!(a == b, "the two loaders must give bit-identical batches");
    // Every epoch has its own order.
    assert_ne!(a[0].input, a[5].input);
}

#[test]
fn streaming_and_in_memory_runs_end_with_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::make(&data, 16, 12, 4, 2);
    let be = Cpu::new(2).unwrap();
    let c = tiny_config(2);
    let (ra, rb) = (dir.path().join("a"), dir.path().join("b"));
    train(
        &be,
        &c,
        &opts(&data, &ra, LoaderChoice::InMemory),
        &mut Quiet,
    )
    .unwrap();
    train(
        &be,
        &c,
        &opts(&data, &rb, LoaderChoice::Streaming),
        &mut Quiet,
    )
    .unwrap();
    let model = Model::new(c.arch.clone()).unwrap();
    assert_eq!(
        weights(&ra.join("last.safetensors"), &model),
        weights(&rb.join("last.safetensors"), &model)
    );
}

#[test]
fn a_killed_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::make(&data, 16, 12, 5, 3);
    let be = Cpu::new(2).unwrap();
    let c = tiny_config(3); // 3 steps per epoch
    let full = dir.path().join("full");
    let s = train(
        &be,
        &c,
        &opts(&data, &full, LoaderChoice::InMemory),
        &mut Quiet,
    )
    .unwrap();
    assert_eq!((s.epochs_done, s.steps, s.stopped), (3, 9, false));

    let model = Model::new(c.arch.clone()).unwrap();
    let want = weights(&full.join("last.safetensors"), &model);
    let want_best = weights(&full.join("best.safetensors"), &model);
    // Killed: before the first checkpoint (step 2), mid-epoch (step 5), right after the epoch-2 checkpoint's
    // last step... (step 6 stops before validation, so the run restarts epoch 2), and twice in a row.
    for stops in [vec![2], vec![5], vec![6], vec![4, 4]] {
        let run = dir.path().join(format!("killed{stops:?}"));
        let mut o = opts(&data, &run, LoaderChoice::Streaming);
        let mut first = true;
        for &k in &stops {
            let s = train(
                &be,
                &c,
                &RunOptions {
                    resume: !first,
                    ..o.clone()
                },
                &mut StopAfter(k),
            )
            .unwrap();
            assert!(s.stopped, "{stops:?}: the observer stops the run");
            first = false;
        }
        o.resume = true;
        let s = train(&be, &c, &o, &mut Quiet).unwrap();
        assert_eq!(
            (s.epochs_done, s.steps, s.stopped),
            (3, 9, false),
            "{stops:?}"
        );
        assert!(
            want == weights(&run.join("last.safetensors"), &model),
            "{stops:?}: last weights differ"
        );
        assert!(
            want_best == weights(&run.join("best.safetensors"), &model),
            "{stops:?}: best weights differ"
        );
        // The Adam state too.
        let (_, m1, v1, e1) = checkpoint::load_last(&full, &model).unwrap().unwrap();
        let (_, m2, v2, e2) = checkpoint::load_last(&run, &model).unwrap().unwrap();
        assert!(m1 == m2 && v1 == v2, "{stops:?}: Adam moments differ");
        assert_eq!(
            (e1.step, e1.epochs_done, e1.best),
            (e2.step, e2.epochs_done, e2.best)
        );
        // metrics.jsonl holds each step and epoch exactly once, in order.
        let recs = metrics::read(&run.join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = recs
            .iter()
            .filter(|r| r.kind == Kind::Step)
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, (1..=9).collect::<Vec<_>>(), "{stops:?}");
        let epochs: Vec<u64> = recs
            .iter()
            .filter(|r| r.kind == Kind::Epoch)
            .map(|r| r.epoch)
            .collect();
        assert_eq!(epochs, vec![1, 2, 3]);
        let full_recs = metrics::read(&full.join("metrics.jsonl")).unwrap();
        let losses =
            |r: &[metrics::Record]| r.iter().map(|r| (r.loss, r.val_loss)).collect::<Vec<_>>();
        assert_eq!(
            losses(&recs),
            losses(&full_recs),
            "{stops:?}: the resumed run logged other losses"
        );
    }
}

#[test]
fn a_resumed_run_can_train_further_but_not_change_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::make(&data, 16, 8, 2, 4);
    let be = Cpu::new(1).unwrap();
    let run = dir.path().join("run");
    train(
        &be,
        &tiny_config(1),
        &opts(&data, &run, LoaderChoice::InMemory),
        &mut Quiet,
    )
    .unwrap();
    let resume = RunOptions {
        resume: true,
        ..opts(&data, &run, LoaderChoice::InMemory)
    };
    let mut other = tiny_config(2);
    other.adam.lr = 5e-4;
    let e = train(&be, &other, &resume, &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("changes adam.lr (run has 0.001, asked 0.0005)"),
        "{e}"
    );
    let state = run.join(checkpoint::LAST_STATE);
    let epoch1 = std::fs::read(&state).unwrap();
    let s = train(&be, &tiny_config(2), &resume, &mut Quiet).unwrap();
    assert_eq!(s.epochs_done, 2);
    // Another dataset is refused.
    let data2 = dir.path().join("data2");
    common::make(&data2, 16, 8, 2, 40);
    let e = train(
        &be,
        &tiny_config(3),
        &RunOptions {
            data: data2,
            ..resume.clone()
        },
        &mut Quiet,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("resume with the original dataset"),
        "{e}"
    );
    // Checkpoint files from different steps (a kill between the two renames) are detected, not mixed.
    std::fs::write(&state, &epoch1).unwrap();
    let e = train(&be, &tiny_config(3), &resume, &mut Quiet).unwrap_err();
    assert!(
        e.to_string().contains(
            "last.safetensors is from step 4 but last.optimizer.safetensors is from step 2"
        ),
        "{e}"
    );
    // A fresh run never overwrites one.
    let e = train(
        &be,
        &tiny_config(1),
        &opts(&data, &run, LoaderChoice::InMemory),
        &mut Quiet,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("already holds a training run"),
        "{e}"
    );
}

#[test]
fn outputs_config_metrics_checkpoints_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::make(&data, 16, 8, 3, 5);
    let be = Cpu::new(1).unwrap();
    let run = dir.path().join("run");
    let c = tiny_config(2);
    train(&be, &c, &opts(&data, &run, LoaderChoice::Auto), &mut Quiet).unwrap();
    let rec = cryoden_train::read_run_record(&run).unwrap();
    assert_eq!(rec.config, c);
    assert_eq!(
        (
            rec.patch_size,
            rec.crop,
            rec.train_pairs,
            rec.val_pairs,
            rec.steps_per_epoch
        ),
        (16, 12, 8, 3, 2)
    );
    assert_eq!(rec.manifest_sha256.len(), 64);
    let recs = metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(recs.len(), 2 * 2 + 2);
    for r in &recs {
        assert!(r.loss.is_some_and(f64::is_finite), "{r:?}");
        assert!(r.images_per_s > 0.0 && r.elapsed_s > 0.0, "{r:?}");
        assert_eq!(r.lr, 1e-3);
        assert_eq!(r.val_loss.is_some(), r.kind == Kind::Epoch);
    }
    for f in [
        "best.safetensors",
        "last.safetensors",
        checkpoint::LAST_STATE,
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    for name in ["input", "output", "target"] {
        for ext in ["mrc", "png"] {
            let p = run.join(format!("samples/epoch0002_{name}.{ext}"));
            assert!(p.is_file(), "{} missing", p.display());
        }
    }
    assert!(
        !run.join("samples/epoch0001_output.mrc").exists(),
        "--sample-every 2"
    );
    let out = cryoden_io::read(run.join("samples/epoch0002_input.mrc")).unwrap();
    assert_eq!(out.data.len(), 12 * 12);
    // No temporary files left behind.
    for e in std::fs::read_dir(&run).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with('.'), "leftover {n}");
    }
}

/// Trains briefly on noisy copies of smooth images and checks that validation PSNR against the clean images
/// rises clearly above the noisy input's.
#[test]
fn denoising_is_learned() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = 32;
    let (_, val) = common::make(&data, p, 192, 16, 6);
    let be = Cpu::new(2).unwrap();
    let mut c = TrainConfig::new(Arch::Unet {
        widths: vec![16, 32],
    });
    c.epochs = 6;
    c.batch = 8;
    c.adam.lr = 3e-3;
    c.seed = 1;
    c.sample_every = 0;
    let run = dir.path().join("run");
    let s = train(
        &be,
        &c,
        &opts(&data, &run, LoaderChoice::InMemory),
        &mut Quiet,
    )
    .unwrap();
    let model = Model::new(c.arch.clone()).unwrap();
    let params = checkpoint::load_weights(&run.join("best.safetensors"), &model).unwrap();
    let n = val.len(p);
    let mut acts = model.activations(&be, n, p, p).unwrap();
    let buf = {
        use cryoden_nn::Backend;
        let mut b = be.alloc(params.len()).unwrap();
        be.upload(&params, &mut b, 0).unwrap();
        b
    };
    acts.upload_input(&be, &val.input).unwrap();
    model.forward(&be, &buf, &mut acts).unwrap();
    let mut out = vec![0.0; n * p * p];
    acts.download_output(&be, &mut out).unwrap();
    let noisy = common::psnr(&val.input, &val.clean);
    let denoised = common::psnr(&out, &val.clean);
    eprintln!(
        "validation PSNR: noisy {noisy:.2} dB, denoised {denoised:.2} dB, best {:?}",
        s.best
    );
    // Margin asserted: at least 10 dB (10× lower mean squared error than the noisy input); measured 12.9 dB.
    assert!(
        denoised >= noisy + 10.0,
        "noisy {noisy:.2} dB, denoised {denoised:.2} dB"
    );
}

#[test]
fn non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = 16;
    let (tr, val) = common::make(&data, p, 9, 2, 7);
    let c = tiny_config(3); // batch 4: 2 steps per epoch, one pair left out of each epoch
                            // A NaN in a pair that epoch 1 leaves out and epoch 2 uses.
    let e1 = EpochPlan::new(c.seed, 0, 9, 4, p, 12, c.augment);
    let e2 = EpochPlan::new(c.seed, 1, 9, 4, p, 12, c.augment);
    let bad = (0..9u32)
        .find(|i| e1.items.iter().all(|(j, _)| j != i) && e2.items.iter().any(|(j, _)| j == i))
        .expect("some pair is left out of epoch 1 but used in epoch 2") as usize;
    // Every pixel of the input, so any crop sees it.
    common::write(&data, p, &tr, &val);
    for k in bad * p * p..(bad + 1) * p * p {
        common::poison(&data, "train_input.mrcs", k, f32::NAN);
    }
    let be = Cpu::new(1).unwrap();
    let run = dir.path().join("run");
    let e = train(
        &be,
        &c,
        &opts(&data, &run, LoaderChoice::InMemory),
        &mut Quiet,
    )
    .unwrap_err();
    assert!(matches!(e, Error::NonFinite { epoch: 2, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("training loss is NaN at step"), "{msg}");
    assert!(msg.contains("last.safetensors (epoch 1), is kept"), "{msg}");
    let (_, _, _, es) = checkpoint::load_last(&run, &Model::new(c.arch.clone()).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((es.epochs_done, es.step), (1, 2));
    let last = metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!((last.kind, last.loss), (Kind::Step, None));

    // A NaN in the validation set stops at the first validation, with nothing to keep.
    common::make(&data, p, 8, 2, 8);
    common::poison(&data, "val_target.mrcs", 8 * p + 8, f32::INFINITY); // inside the centre crop
    let run = dir.path().join("run2");
    let e = train(
        &be,
        &tiny_config(1),
        &opts(&data, &run, LoaderChoice::Streaming),
        &mut Quiet,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("validation loss is inf at step 2 (epoch 1)"),
        "{e}"
    );
    assert!(e.to_string().contains("no checkpoint"), "{e}");
}

#[test]
fn bad_datasets_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let be = Cpu::new(1).unwrap();
    let run = |data: &Path, c: &TrainConfig| {
        let out = dir.path().join(format!("run{}", rand_suffix()));
        let e = train(&be, c, &opts(data, &out, LoaderChoice::Auto), &mut Quiet)
            .unwrap_err()
            .to_string();
        assert!(!out.exists(), "nothing is written when the input is bad");
        e
    };

    // A manifest that does not match its stacks.
    let d = dir.path().join("mismatch");
    common::make(&d, 16, 8, 2, 9);
    let mpath = d.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["files"]["train_input"]["bytes"] = serde_json::json!(12345);
    std::fs::write(&mpath, serde_json::to_string(&m).unwrap()).unwrap();
    let e = run(&d, &tiny_config(1));
    assert!(
        e.contains("train_input.mrcs") && e.contains("manifest.json says 12345"),
        "{e}"
    );

    // A patch size the architecture cannot take: unet with 3 levels pools twice, so sizes must be divisible by 4.
    let d = dir.path().join("odd");
    common::make(&d, 18, 8, 2, 10);
    let mut c = tiny_config(1);
    c.arch = Arch::Unet {
        widths: vec![4, 8, 16],
    };
    c.crop = None;
    let e = run(&d, &c);
    assert!(
        e.contains("patch size 18") && e.contains("divisible by 4") && e.contains("16 or 20"),
        "{e}"
    );
    c.crop = Some(14);
    let e = run(&d, &c);
    assert!(
        e.contains("--crop 14") && e.contains("divisible by 4"),
        "{e}"
    );
    c.crop = Some(24);
    let e = run(&d, &c);
    assert!(
        e.contains("--crop 24 is larger than the dataset's 18x18 patches"),
        "{e}"
    );

    // No validation part.
    let d = dir.path().join("noval");
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let tr = common::noisy_split(8, 16, 1.0, &mut rng);
    let empty = common::SplitData {
        input: vec![],
        target: vec![],
        clean: vec![],
    };
    common::write(&d, 16, &tr, &empty);
    let e = run(&d, &tiny_config(1));
    assert!(
        e.contains("no validation pairs") && e.contains("cryoden prepare"),
        "{e}"
    );

    // Fewer training pairs than one batch.
    let d = dir.path().join("few");
    common::make(&d, 16, 3, 2, 11);
    let e = run(&d, &tiny_config(1));
    assert!(
        e.contains("3 training pairs are fewer than one batch of 4"),
        "{e}"
    );

    // Not a dataset at all.
    let e = run(&dir.path().join("nothing"), &tiny_config(1));
    assert!(
        e.contains("manifest.json") && e.contains("cryoden prepare"),
        "{e}"
    );
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

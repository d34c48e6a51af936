//! `prepare` end to end: the dataset reads back through `Dataset::open` with the documented normalisation and
//! patch placement; same seed → identical bytes; one test per bad input, each checking that nothing was written.

use cryoden_io::{Mode, WriteOptions};
use cryoden_prep::manifest::Split;
use cryoden_prep::noise::NoiseModel;
use cryoden_prep::normalize::Method;
use cryoden_prep::prepare::{plan, write, Inputs, PrepareOptions};
use cryoden_prep::Dataset;
use rand::SeedableRng;
use rand_distr::{Distribution, Poisson};
use std::path::{Path, PathBuf};

fn img(w: usize, h: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..w * h)
        .map(|i| {
            let lam = 4.0 + 2.0 * ((i % w) as f64 * 0.2).sin();
            Poisson::new(lam).unwrap().sample(&mut rng) as f32
        })
        .collect()
}

fn put(path: &Path, data: &[f32], w: usize, h: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    cryoden_io::write(
        path,
        data,
        [w, h, data.len() / (w * h)],
        &WriteOptions::with_voxel_size(1.25),
    )
    .unwrap();
}

/// `n` micrographs of w × h in root/even and root/odd.
fn halves(root: &Path, n: usize, w: usize, h: usize) {
    for k in 0..n {
        put(
            &root.join(format!("even/mic{k:02}.mrc")),
            &img(w, h, 2 * k as u64),
            w,
            h,
        );
        put(
            &root.join(format!("odd/mic{k:02}.mrc")),
            &img(w, h, 2 * k as u64 + 1),
            w,
            h,
        );
    }
}

fn opts(out: PathBuf) -> PrepareOptions {
    PrepareOptions {
        out,
        patch: 32,
        stride: None,
        val_fraction: 0.34,
        normalize: Method::P95,
        seed: 1,
        preview: 0,
    }
}

fn run(inputs: &Inputs, o: &PrepareOptions) -> cryoden_prep::Result<cryoden_prep::Manifest> {
    let p = plan(inputs, o)?;
    write(&p, &mut |_, _| {})
}

fn halves_inputs(root: &Path) -> Inputs {
    Inputs::Halves {
        even_dir: root.join("even"),
        odd_dir: root.join("odd"),
    }
}

/// Nothing of a failed run is left: no output directory, no temporary directory beside it.
fn assert_nothing_written(out: &Path) {
    assert!(!out.exists(), "{} exists", out.display());
    let parent = out.parent().unwrap();
    for e in std::fs::read_dir(parent).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".partial-"), "temporary left behind: {n}");
    }
}

#[test]
fn dataset_reads_back_with_documented_normalisation_and_patches() {
    let t = tempfile::tempdir().unwrap();
    let (w, h) = (100, 80);
    halves(t.path(), 3, w, h);
    let out = t.path().join("ds");
    let mut o = opts(out.clone());
    o.preview = 4;
    let m = run(&halves_inputs(t.path()), &o).unwrap();
    // x starts 0, 32, 64 + far-edge 68; y starts 0, 32 + far-edge 48: 12 patches per micrograph, 1 of 3 held out.
    assert_eq!((m.counts.train, m.counts.val), (24, 12));
    assert!(out.join("preview.png").is_file());
    let ds = Dataset::open(&out).unwrap();
    ds.verify_checksums().unwrap();
    assert_eq!(ds.train().len(), 24);
    for g in &ds.manifest().micrographs {
        assert_eq!(g.x_starts, vec![0, 32, 64, 68]);
        assert_eq!(g.y_starts, vec![0, 32, 48]);
        assert!((g.pixel_size - 1.25).abs() < 1e-6);
        let even = cryoden_io::read(&g.even).unwrap().data;
        let odd = cryoden_io::read(&g.odd).unwrap().data;
        // p95 by its definition in docs/DATA.md, computed here independently by sorting.
        let mut s: Vec<f32> = even.iter().zip(&odd).map(|(a, b)| a + b).collect();
        s.sort_by(f32::total_cmp);
        let q = |v: &[f32], p: f64| v[((p * v.len() as f64).ceil() as usize).max(1) - 1];
        let med = q(&s, 0.5);
        let mut dev: Vec<f32> = s.iter().map(|v| (v - med).abs()).collect();
        dev.sort_by(f32::total_cmp);
        let (offset, scale) = (med as f64 / 2.0, q(&dev, 0.95) as f64 / 2.0);
        assert_eq!(
            (g.normalization.offset, g.normalization.scale),
            (offset, scale)
        );
        let pairs = ds.split(g.split);
        for (j, &y0) in g.y_starts.iter().enumerate() {
            for (i, &x0) in g.x_starts.iter().enumerate() {
                let k = g.first_patch + j * g.x_starts.len() + i;
                let (a, b) = pairs.pair(k);
                for (r, (ra, rb)) in a.chunks(32).zip(b.chunks(32)).enumerate() {
                    for c in 0..32 {
                        let src = (y0 + r) * w + x0 + c;
                        let want_a = ((even[src] as f64 - offset) / scale) as f32;
                        let want_b = ((odd[src] as f64 - offset) / scale) as f32;
                        assert_eq!(
                            (ra[c], rb[c]),
                            (want_a, want_b),
                            "{} patch {k} ({c}, {r})",
                            g.name
                        );
                    }
                }
            }
        }
    }
    // Split by micrograph: each micrograph's patches are all in one split.
    assert_eq!(ds.manifest().micrographs_of(Split::Val).count(), 1);
}

#[test]
fn same_seed_gives_identical_datasets() {
    let t = tempfile::tempdir().unwrap();
    halves(t.path(), 10, 64, 64);
    let inputs = halves_inputs(t.path());
    let a = run(&inputs, &opts(t.path().join("a"))).unwrap();
    let b = run(&inputs, &opts(t.path().join("b"))).unwrap();
    assert_eq!(a, b);
    for n in [
        "train_input.mrcs",
        "train_target.mrcs",
        "val_input.mrcs",
        "val_target.mrcs",
        "manifest.json",
    ] {
        assert_eq!(
            std::fs::read(t.path().join("a").join(n)).unwrap(),
            std::fs::read(t.path().join("b").join(n)).unwrap(),
            "{n}"
        );
    }
    // Another seed holds out other micrographs (3 of 10: C(10,3) = 120 possible sets).
    let mut o = opts(t.path().join("c"));
    o.seed = 2;
    let c = run(&inputs, &o).unwrap();
    let val = |m: &cryoden_prep::Manifest| -> Vec<String> {
        m.micrographs_of(Split::Val)
            .map(|g| g.name.clone())
            .collect()
    };
    assert_eq!(val(&a).len(), 3);
    assert_ne!(val(&a), val(&c));
}

#[test]
fn clean_images_with_synthetic_noise() {
    let t = tempfile::tempdir().unwrap();
    for k in 0..3 {
        let c: Vec<f32> = (0..64 * 64)
            .map(|i| 5.0 + ((i + k * 7) % 64) as f32 * 0.1)
            .collect();
        put(&t.path().join(format!("truth/t{k}.mrc")), &c, 64, 64);
    }
    for noise in ["gaussian:0.1", "poisson:3"] {
        let out = t.path().join(noise.replace(':', "_"));
        let inputs = Inputs::Clean {
            dir: t.path().join("truth"),
            noise: noise.parse::<NoiseModel>().unwrap(),
        };
        let m = run(&inputs, &opts(out.clone())).unwrap();
        assert_eq!(m.counts.train + m.counts.val, 12);
        let ds = Dataset::open(&out).unwrap();
        let (a, b) = ds.train().pair(0);
        assert_ne!(a, b, "{noise}: the two copies must carry independent noise");
    }
}

#[test]
fn manifest_is_checked_against_the_stacks() {
    let t = tempfile::tempdir().unwrap();
    halves(t.path(), 2, 40, 40);
    let out = t.path().join("ds");
    let mut o = opts(out.clone());
    o.val_fraction = 0.5;
    run(&halves_inputs(t.path()), &o).unwrap();
    let mpath = out.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    // An unknown field is refused.
    std::fs::write(&mpath, text.replacen("{", "{\n  \"extra\": 1,", 1)).unwrap();
    let msg = Dataset::open(&out).err().unwrap().to_string();
    assert!(msg.contains("unknown field `extra`"), "{msg}");
    // A count that disagrees with the micrographs' patch ranges is refused.
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["counts"]["train"] = serde_json::json!(5);
    std::fs::write(&mpath, serde_json::to_string(&v).unwrap()).unwrap();
    let msg = Dataset::open(&out).err().unwrap().to_string();
    assert!(msg.contains("counts.train is 5"), "{msg}");
    std::fs::write(&mpath, &text).unwrap();
    Dataset::open(&out).unwrap();
    // A modified stack fails the checksum; a truncated one fails open.
    let stack = out.join("train_input.mrcs");
    let mut bytes = std::fs::read(&stack).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&stack, &bytes).unwrap();
    let msg = Dataset::open(&out)
        .unwrap()
        .verify_checksums()
        .unwrap_err()
        .to_string();
    assert!(msg.contains("SHA-256"), "{msg}");
    std::fs::write(&stack, &bytes[..bytes.len() - 4]).unwrap();
    let msg = Dataset::open(&out).err().unwrap().to_string();
    assert!(
        msg.contains("train_input.mrcs") && msg.contains("bytes but manifest.json says"),
        "{msg}"
    );
}

// ---- bad inputs: one fault each; clear message, nothing written ----

#[test]
fn mismatched_shapes() {
    let t = tempfile::tempdir().unwrap();
    halves(t.path(), 2, 64, 64);
    put(&t.path().join("odd/mic01.mrc"), &img(64, 60, 9), 64, 60);
    let out = t.path().join("ds");
    let msg = run(&halves_inputs(t.path()), &opts(out.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("odd/mic01.mrc") && msg.contains("64 x 60") && msg.contains("64 x 64"),
        "{msg}"
    );
    assert_nothing_written(&out);
}

#[test]
fn missing_partner_and_mismatched_names() {
    let t = tempfile::tempdir().unwrap();
    halves(t.path(), 2, 64, 64);
    std::fs::rename(
        t.path().join("odd/mic01.mrc"),
        t.path().join("odd/mic1.mrc"),
    )
    .unwrap();
    let out = t.path().join("ds");
    let msg = run(&halves_inputs(t.path()), &opts(out.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("no odd partner") && msg.contains("mic01"),
        "{msg}"
    );
    assert!(
        msg.contains("no even partner") && msg.contains("mic1;"),
        "{msg}"
    );
    assert_nothing_written(&out);
}

#[test]
fn patch_larger_than_the_image() {
    let t = tempfile::tempdir().unwrap();
    halves(t.path(), 2, 30, 64);
    let out = t.path().join("ds");
    let msg = run(&halves_inputs(t.path()), &opts(out.clone()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("30 x 64 is smaller than --patch 32"), "{msg}");
    assert_nothing_written(&out);
}

#[test]
fn constant_image() {
    let t = tempfile::tempdir().unwrap();
    halves(t.path(), 3, 64, 64);
    // The last micrograph in name order: the first ones are already streamed into the stacks when it fails.
    put(
        &t.path().join("even/mic02.mrc"),
        &vec![2.0; 64 * 64],
        64,
        64,
    );
    put(&t.path().join("odd/mic02.mrc"), &vec![2.0; 64 * 64], 64, 64);
    for (method, words) in [
        (Method::P95, "no spread"),
        (Method::Zscore, "constant image"),
    ] {
        let out = t.path().join("ds");
        let mut o = opts(out.clone());
        o.normalize = method;
        o.val_fraction = 0.0;
        let msg = run(&halves_inputs(t.path()), &o).unwrap_err().to_string();
        assert!(msg.contains("mic02.mrc") && msg.contains(words), "{msg}");
        assert_nothing_written(&out);
    }
}

#[test]
fn nan_pixels() {
    let t = tempfile::tempdir().unwrap();
    halves(t.path(), 2, 64, 64);
    // cryoden-io refuses to write NaN, so poke one into a written file (mode 2, no extended header).
    let p = t.path().join("odd/mic01.mrc");
    let mut bytes = std::fs::read(&p).unwrap();
    let at = 1024 + 4 * (64 * 5 + 3);
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let out = t.path().join("ds");
    let msg = run(&halves_inputs(t.path()), &opts(out.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("odd/mic01.mrc") && msg.to_lowercase().contains("nan"),
        "{msg}"
    );
    assert_nothing_written(&out);
}

#[test]
fn a_stack_is_not_a_half() {
    let t = tempfile::tempdir().unwrap();
    halves(t.path(), 2, 64, 64);
    let two: Vec<f32> = img(64, 64, 1).into_iter().chain(img(64, 64, 2)).collect();
    put(&t.path().join("even/mic00.mrc"), &two, 64, 64);
    let out = t.path().join("ds");
    let msg = run(&halves_inputs(t.path()), &opts(out.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("holds 2 images") && msg.contains("cryoden split"),
        "{msg}"
    );
    assert_nothing_written(&out);
}

#[test]
fn one_micrograph_cannot_be_split_and_existing_output_is_kept() {
    let t = tempfile::tempdir().unwrap();
    halves(t.path(), 1, 64, 64);
    let out = t.path().join("ds");
    let msg = run(&halves_inputs(t.path()), &opts(out.clone()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--val-fraction 0"), "{msg}");
    assert_nothing_written(&out);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let mut o = opts(out.clone());
    o.val_fraction = 0.0;
    let msg = run(&halves_inputs(t.path()), &o).unwrap_err().to_string();
    assert!(msg.contains("not empty"), "{msg}");
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
}

#[test]
fn integer_mode_halves_and_motioncor_names() {
    // MotionCor2 layout: NAME_EVN / NAME_ODD in one directory beside the full sum; mode 6 (uint16) files.
    let t = tempfile::tempdir().unwrap();
    let mc = t.path().join("mc");
    std::fs::create_dir_all(&mc).unwrap();
    let o16 = WriteOptions {
        mode: Mode::Uint16,
        ..WriteOptions::default()
    };
    for k in 0..2 {
        for (suf, s) in [("_EVN", 0u64), ("_ODD", 1), ("", 2)] {
            let p = mc.join(format!("m{k}{suf}.mrc"));
            cryoden_io::write(&p, &img(48, 48, 10 * k + s), [48, 48, 1], &o16).unwrap();
        }
    }
    let out = t.path().join("ds");
    let inputs = Inputs::Halves {
        even_dir: mc.clone(),
        odd_dir: mc.clone(),
    };
    let mut o = opts(out.clone());
    o.val_fraction = 0.5;
    let m = run(&inputs, &o).unwrap();
    let names: Vec<_> = m.micrographs.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names.len(), 2);
    assert!(m
        .micrographs
        .iter()
        .all(|g| g.even.ends_with("_EVN.mrc") && g.odd.ends_with("_ODD.mrc")));
}

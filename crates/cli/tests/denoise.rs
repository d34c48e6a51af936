//! `cryoden denoise` end to end on tiny micrographs and an untrained tiny U-Net written by the test: output
//! formats, header kept, `--skip-existing`, `--shard`, and every bad input (corrupt file in a list, broken or
//! contradictory checkpoint, image below the model's minimum, stack as PNG).

mod common;

use common::*;
use std::path::Path;

fn read(p: &Path) -> cryoden_io::Mrc {
    cryoden_io::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn mrc_and_mrc16_outputs_have_the_input_size_and_keep_its_header() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let inp = micrograph(t.path(), "mic_001.mrc", 40, 28, 1);
    for (format, mode) in [
        ("mrc", cryoden_io::Mode::Float32),
        ("mrc16", cryoden_io::Mode::Float16),
    ] {
        let out = t.path().join(format!("out_{format}"));
        let (o, _, se) = run(&[
            &"denoise",
            &"-m",
            &model,
            &inp,
            &"-o",
            &out,
            &"--suffix",
            &"_dn",
            &"--format",
            &format,
        ]);
        assert!(o.status.success(), "{se}");
        assert_eq!(names(&out), ["mic_001_dn.mrc"], "{se}");
        let m = read(&out.join("mic_001_dn.mrc"));
        assert_eq!((m.nx(), m.ny(), m.nz()), (40, 28, 1));
        assert_eq!(m.header.data_mode().unwrap(), mode);
        assert_eq!(m.data.len(), 40 * 28);
        assert!(m.data.iter().all(|v| v.is_finite()));
        // Header kept: voxel size and origin exactly as the input's.
        assert_eq!(m.voxel_size(), [VOXEL; 3]);
        assert_eq!(m.header.origin, ORIGIN);
        // A label names cryoden, its version and the model (file and architecture); the input's label stays.
        let labels = m.header.label_strings();
        assert!(
            labels
                .iter()
                .any(|l| l.contains("written by the cryoden CLI tests")),
            "{labels:?}"
        );
        let want_version = format!("cryoden {}", env!("CARGO_PKG_VERSION"));
        assert!(
            labels.iter().any(|l| l.contains(&want_version)
                && l.contains("tiny.safetensors")
                && l.contains("unet[4,8,16]")),
            "{labels:?}"
        );
    }
}

#[test]
fn denoised_output_is_in_the_input_units() {
    // The training normalisation is applied and inverted: an input around 10 with noise 1 comes back around 10,
    // whatever the (untrained) network does in normalised units. Tolerance: the output mean within 2 input
    // standard deviations of the input mean.
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let inp = micrograph(t.path(), "m.mrc", 32, 32, 3);
    let out = t.path().join("out");
    let (o, _, se) = run(&[&"denoise", &"-m", &model, &inp, &"-o", &out]);
    assert!(o.status.success(), "{se}");
    let (a, b) = (read(&inp).data, read(&out.join("m.mrc")).data);
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    let sd = (a
        .iter()
        .map(|&x| (x as f64 - mean(&a)).powi(2))
        .sum::<f64>()
        / a.len() as f64)
        .sqrt();
    assert!(
        (mean(&b) - mean(&a)).abs() < 2.0 * sd,
        "{} vs {}",
        mean(&b),
        mean(&a)
    );
}

#[test]
fn png_output_is_an_8_bit_image_of_the_input_size() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let inp = micrograph(t.path(), "a.mrc", 36, 20, 2);
    let out = t.path().join("png");
    let (o, _, se) = run(&[
        &"denoise",
        &"-m",
        &model,
        &inp,
        &"-o",
        &out,
        &"--format",
        &"png",
    ]);
    assert!(o.status.success(), "{se}");
    assert_eq!(names(&out), ["a.png"]);
    let b = std::fs::read(out.join("a.png")).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width, height (big-endian), bit depth, colour type (0 = greyscale).
    assert_eq!(&b[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    assert_eq!((be(16), be(20), b[24], b[25]), (36, 20, 8, 0));
}

#[test]
fn png_refuses_a_stack_before_denoising_anything() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let single = micrograph(t.path(), "single.mrc", 16, 16, 4);
    let stack = t.path().join("stack.mrcs");
    let c = clean(16, 16, 5);
    let data: Vec<f32> = (0..3).flat_map(|k| noisy(&c, 1.0, k)).collect();
    write_mrc(&stack, &data, [16, 16, 3]);
    let out = t.path().join("png");
    let (o, _, se) = run(&[
        &"denoise",
        &"-m",
        &model,
        &single,
        &stack,
        &"-o",
        &out,
        &"--format",
        &"png",
    ]);
    assert!(!o.status.success());
    assert!(se.contains("stack.mrcs (3 sections)"), "{se}");
    assert!(se.contains("--format mrc"), "{se}");
    assert!(names(&out).is_empty(), "{:?}", names(&out));
    // As MRC the stack is denoised section by section.
    let (o, _, se) = run(&[&"denoise", &"-m", &model, &stack, &"-o", &out]);
    assert!(o.status.success(), "{se}");
    let m = read(&out.join("stack.mrc"));
    assert_eq!((m.nx(), m.ny(), m.nz()), (16, 16, 3));
}

#[test]
fn skip_existing_leaves_the_output_untouched_and_says_so() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let a = micrograph(t.path(), "a.mrc", 16, 16, 1);
    let b = micrograph(t.path(), "b.mrc", 16, 16, 2);
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // An existing output (here deliberately not even an MRC): --skip-existing must not read or replace it.
    let existing = out.join("a.mrc");
    std::fs::write(&existing, b"kept as it was").unwrap();
    let before = std::fs::metadata(&existing).unwrap().modified().unwrap();
    let (o, _, se) = run(&[
        &"denoise",
        &"-m",
        &model,
        &a,
        &b,
        &"-o",
        &out,
        &"--skip-existing",
    ]);
    assert!(o.status.success(), "{se}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"kept as it was");
    assert_eq!(
        std::fs::metadata(&existing).unwrap().modified().unwrap(),
        before
    );
    assert!(
        se.contains(&format!("skipped {}", a.display())),
        "stderr should name the skipped file: {se}"
    );
    assert!(se.contains("skipped 1"), "{se}");
    assert_eq!(read(&out.join("b.mrc")).nx(), 16);
    // Without the flag the output is replaced.
    let (o, _, se) = run(&[&"denoise", &"-m", &model, &a, &"-o", &out]);
    assert!(o.status.success(), "{se}");
    assert_eq!(read(&existing).nx(), 16);
}

#[test]
fn shards_are_disjoint_and_together_hold_every_input() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let dir = t.path().join("mics");
    std::fs::create_dir(&dir).unwrap();
    for k in 0..5 {
        micrograph(&dir, &format!("m{k}.mrc"), 8, 8, k);
    }
    let mut all = Vec::new();
    for i in 0..3 {
        let out = t.path().join(format!("shard{i}"));
        let shard = format!("{i}/3");
        let (o, _, se) = run(&[
            &"denoise", &"-m", &model, &dir, &"-o", &out, &"--shard", &shard,
        ]);
        assert!(o.status.success(), "{se}");
        let got = names(&out);
        // k mod 3 = i over the sorted list m0..m4.
        let want: Vec<String> = (0..5)
            .filter(|k| k % 3 == i)
            .map(|k| format!("m{k}.mrc"))
            .collect();
        assert_eq!(got, want);
        all.extend(got);
    }
    all.sort();
    let every: Vec<String> = (0..5).map(|k| format!("m{k}.mrc")).collect();
    assert_eq!(all, every, "the shards overlap or miss a file");
}

#[test]
fn bad_shard_specs_are_refused_with_the_expected_form() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let a = micrograph(t.path(), "a.mrc", 8, 8, 1);
    let out = t.path().join("out");
    for bad in ["2/2", "3/2", "0/0", "x", "1-2", "-1/2"] {
        let (o, _, se) = run(&[
            &"denoise",
            &"-m",
            &model,
            &a,
            &"-o",
            &out,
            &format!("--shard={bad}"),
        ]);
        assert!(!o.status.success(), "--shard {bad} was accepted");
        assert!(
            se.contains("expected i/n with 0 ≤ i < n"),
            "--shard {bad}: {se}"
        );
    }
    assert!(!out.exists());
}

#[test]
fn a_corrupt_file_in_a_list_is_named_and_skipped_the_rest_denoised_and_the_exit_is_non_zero() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let dir = t.path().join("mics");
    std::fs::create_dir(&dir).unwrap();
    micrograph(&dir, "a.mrc", 16, 16, 1);
    std::fs::write(dir.join("b.mrc"), vec![7u8; 3000]).unwrap(); // not an MRC file
    micrograph(&dir, "c.mrc", 16, 16, 3);
    // A valid header whose data block is cut short.
    let d = micrograph(&dir, "d.mrc", 16, 16, 4);
    let bytes = std::fs::read(&d).unwrap();
    std::fs::write(&d, &bytes[..bytes.len() - 100]).unwrap();
    micrograph(&dir, "e.mrc", 16, 16, 5);
    let out = t.path().join("out");
    let (o, so, se) = run(&[&"denoise", &"-m", &model, &dir, &"-o", &out, &"--json"]);
    assert!(!o.status.success(), "{se}");
    for bad in ["b.mrc", "d.mrc"] {
        let name = dir.join(bad).to_string_lossy().into_owned();
        let line = se
            .lines()
            .find(|l| l.starts_with("error:") && l.contains(&name))
            .unwrap_or_else(|| panic!("{bad} not named: {se}"));
        assert_eq!(line.matches(&name).count(), 1, "named once: {line}");
    }
    assert!(se.contains("truncated"), "{se}");
    assert!(se.contains("2 of 5 files failed"), "{se}");
    // The others are denoised; nothing (not even a temporary file) is left for the bad ones.
    assert_eq!(names(&out), ["a.mrc", "c.mrc", "e.mrc"]);
    let v: serde_json::Value = serde_json::from_str(&so).expect("--json prints JSON");
    assert_eq!(v["summary"]["denoised"], 3);
    assert_eq!(v["summary"]["failed"], 2);
    assert_eq!(v["failures"].as_array().unwrap().len(), 2);
}

#[test]
fn an_image_smaller_than_the_model_minimum_is_named_with_the_minimum() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let small = micrograph(t.path(), "small.mrc", MIN_SIDE - 1, 9, 1);
    let ok = micrograph(t.path(), "ok.mrc", 8, 8, 2);
    let out = t.path().join("out");
    let (o, _, se) = run(&[&"denoise", &"-m", &model, &small, &ok, &"-o", &out]);
    assert!(!o.status.success(), "{se}");
    let line = se
        .lines()
        .find(|l| l.contains(&*small.to_string_lossy()))
        .unwrap_or_else(|| panic!("small.mrc not named: {se}"));
    assert!(
        line.contains(&format!("{MIN_SIDE}×{MIN_SIDE} minimum")),
        "{line}"
    );
    assert!(line.contains("3×9"), "{line}");
    assert_eq!(names(&out), ["ok.mrc"]);
}

/// Rewrites the `arch` entry of a safetensors file's metadata (the tensors stay).
fn set_arch(path: &Path, arch: &cryoden_nn::Arch) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    header["__metadata__"]["arch"] =
        serde_json::Value::String(serde_json::to_string(arch).unwrap());
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&b[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn broken_or_contradictory_checkpoints_are_clear_errors_and_nothing_is_written() {
    let t = tempfile::tempdir().unwrap();
    let inp = micrograph(t.path(), "a.mrc", 16, 16, 1);
    let out = t.path().join("out");
    let model = tiny_model(t.path());

    // Metadata says unet[4,8,32]; the tensors are unet[4,8,16]'s.
    let liar = t.path().join("liar.safetensors");
    std::fs::copy(&model, &liar).unwrap();
    set_arch(
        &liar,
        &cryoden_nn::Arch::Unet {
            widths: vec![4, 8, 32],
        },
    );
    let missing = t.path().join("missing.safetensors");
    let garbage = t.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file at all").unwrap();
    let cases: [(&Path, &[&str]); 3] = [
        (&liar, &["shape"]),
        (&missing, &["cannot read it", "cryoden train"]),
        (&garbage, &["safetensors"]),
    ];
    for (ckpt, words) in cases {
        let (o, _, se) = run(&[&"denoise", &"-m", &ckpt, &inp, &"-o", &out]);
        assert!(!o.status.success(), "{}: accepted", ckpt.display());
        assert!(
            se.contains(&*ckpt.to_string_lossy()),
            "the error should name {}: {se}",
            ckpt.display()
        );
        for w in words {
            assert!(
                se.contains(w),
                "{}: expected {w:?} in: {se}",
                ckpt.display()
            );
        }
        assert!(!se.contains("panicked"), "{se}");
        assert!(names(&out).is_empty(), "{:?}", names(&out));
    }
}

/// The default `--device auto` runs on the CPU in a build without CUDA and says so loudly, with the way to the GPU;
/// `--device cpu` is silent about it. (In a `--features cuda` build on a GPU machine auto picks cuda:0 instead.)
#[test]
#[cfg(not(feature = "cuda"))]
fn default_device_falls_back_to_the_cpu_loudly_and_cpu_is_quiet() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let inp = micrograph(t.path(), "m.mrc", 32, 32, 5);
    let out = t.path().join("out");
    let (o, _, se) = run(&[&"denoise", &"-m", &model, &inp, &"-o", &out]);
    assert!(o.status.success(), "{se}");
    assert!(
        se.contains("WARNING")
            && se.contains("RUNNING ON THE CPU")
            && se.contains("--features cuda"),
        "{se}"
    );
    let out2 = t.path().join("out2");
    let (o, _, se) = run(&[
        &"denoise",
        &"-m",
        &model,
        &inp,
        &"-o",
        &out2,
        &"--device",
        &"cpu",
    ]);
    assert!(o.status.success(), "{se}");
    assert!(!se.contains("WARNING"), "{se}");
    assert_eq!(
        read(&out.join("m.mrc")).data,
        read(&out2.join("m.mrc")).data
    );
}

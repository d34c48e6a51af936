//! `cryoden info` end to end: text and JSON output on files we write and on mrcfile's real-world files, and the
//! error path (one bad file reported, the others still printed, non-zero exit).

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn cryoden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cryoden"))
}

fn testdata() -> PathBuf {
    let d = std::env::var("CRYODEN_TESTDATA")
        .expect("CRYODEN_TESTDATA is not set: run scripts/test.sh (or scripts/setup-python.sh and set it to .cache/testdata)");
    PathBuf::from(d).join("mrcfile")
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8(out.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn json_has_the_documented_keys_and_computed_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ramp.mrcs");
    // 4 x 3 x 2 stack, values 0..24: mean 11.5, population std sqrt((24² - 1) / 12).
    let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let opts = cryoden_io::WriteOptions {
        mode: cryoden_io::Mode::Uint16,
        byte_order: cryoden_io::ByteOrder::Big,
        ..cryoden_io::WriteOptions::with_voxel_size(1.5)
    };
    cryoden_io::write(&p, &data, [4, 3, 2], &opts).unwrap();
    let out = cryoden()
        .arg("info")
        .arg("--json")
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = &json_lines(&out.stdout)[0];
    for key in [
        "nx",
        "ny",
        "nz",
        "mode",
        "voxel_size",
        "exttyp",
        "nsymbt",
        "byte_order",
        "min",
        "max",
        "mean",
        "std",
    ] {
        assert!(v.get(key).is_some(), "missing key {key} in {v}");
    }
    assert_eq!(
        (v["nx"].as_u64(), v["ny"].as_u64(), v["nz"].as_u64()),
        (Some(4), Some(3), Some(2))
    );
    assert_eq!(v["mode"], 6);
    assert_eq!(v["byte_order"], "big");
    assert_eq!(v["voxel_size"], serde_json::json!([1.5, 1.5, 1.5]));
    assert_eq!(
        (v["min"].as_f64(), v["max"].as_f64()),
        (Some(0.0), Some(23.0))
    );
    assert!((v["mean"].as_f64().unwrap() - 11.5).abs() < 1e-12);
    let std = ((24.0f64 * 24.0 - 1.0) / 12.0).sqrt();
    assert!(
        (v["std"].as_f64().unwrap() - std).abs() < 1e-12,
        "{}",
        v["std"]
    );
    assert_eq!(v["deviations"], serde_json::json!([]));
}

#[test]
fn real_files_one_object_each_with_fei_metadata() {
    let td = testdata();
    let files = [
        "epu2.9_example.mrc",
        "fei-extended.mrc",
        "EMD-3001.map",
        "emd_3197.map.gz",
    ];
    let out = cryoden()
        .arg("info")
        .arg("--json")
        .args(files.iter().map(|f| td.join(f)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_lines(&out.stdout);
    assert_eq!(v.len(), 4);
    // Values mrcfile 1.5.4 reports for these files (see crates/io/tests/mrcfile.rs for the full cross-check).
    assert_eq!(
        (
            v[0]["nx"].as_u64(),
            v[0]["mode"].as_i64(),
            v[0]["exttyp"].as_str()
        ),
        (Some(4096), Some(6), Some("FEI2"))
    );
    assert_eq!(v[0]["nsymbt"], 909312);
    assert!((v[0]["fei"]["dose_e_per_a2"].as_f64().unwrap() - 41.171).abs() < 1e-3);
    assert_eq!(
        (v[0]["min"].as_f64(), v[0]["max"].as_f64()),
        (Some(2790.0), Some(9661.0))
    );
    assert_eq!(v[1]["exttyp"], "FEI1");
    assert_eq!(v[2]["axis_order"], serde_json::json!([3, 1, 2]));
    assert_eq!(v[3]["gzip"], true);
    assert_eq!(v[3]["voxel_size"][0].as_f64().unwrap() as f32, 11.4f32);
}

#[test]
fn text_output_and_a_bad_file_among_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.mrc");
    cryoden_io::write(
        &good,
        &[1.0, 2.0, 3.0, 4.0],
        [2, 2, 1],
        &cryoden_io::WriteOptions::with_voxel_size(0.5),
    )
    .unwrap();
    let bad = dir.path().join("bad.mrc");
    std::fs::write(&bad, b"").unwrap();
    let missing = dir.path().join("missing.mrc");
    let out = cryoden()
        .arg("info")
        .args([&bad, &good, &missing])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("good.mrc")
            && stdout.contains("2 x 2 x 1")
            && stdout.contains("0.5 x 0.5 x 0.5"),
        "{stdout}"
    );
    assert!(
        stderr.contains("bad.mrc") && stderr.contains("empty"),
        "{stderr}"
    );
    assert!(stderr.contains("missing.mrc"), "{stderr}");
    assert!(
        stderr.contains("2 of 3 files could not be read"),
        "{stderr}"
    );
}

#[test]
fn nan_is_counted_and_listed_as_a_deviation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nan.mrc");
    cryoden_io::write(
        &p,
        &[1.0, 2.0, 3.0, 4.0],
        [2, 2, 1],
        &cryoden_io::WriteOptions::default(),
    )
    .unwrap();
    let mut b = std::fs::read(&p).unwrap();
    b[1024 + 8..1024 + 12].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    // info itself does not decode strictly into f32 (it streams statistics), so NaN is counted, and listed as a
    // deviation, in both modes.
    for flag in [None, Some("--permissive")] {
        let out = cryoden()
            .arg("info")
            .arg("--json")
            .args(flag)
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = &json_lines(&out.stdout)[0];
        assert_eq!(v["non_finite"], 1);
        assert!(
            (v["mean"].as_f64().unwrap() - 7.0 / 3.0).abs() < 1e-12,
            "{}",
            v["mean"]
        );
        assert!(v["deviations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["field"] == "data"));
    }
}

#[test]
fn tiff_movie() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("movie.tif");
    let frames: Vec<f32> = (0..5 * 4 * 3).map(|i| (i % 7) as f32).collect();
    cryoden_io::tiff::write_stack(
        &p,
        &frames,
        5,
        4,
        cryoden_io::TiffSample::U16,
        cryoden_io::TiffCompression::Lzw,
    )
    .unwrap();
    let out = cryoden()
        .arg("info")
        .arg("--json")
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = &json_lines(&out.stdout)[0];
    assert_eq!(
        (v["format"].as_str(), v["dtype"].as_str()),
        (Some("tiff"), Some("uint16"))
    );
    assert_eq!(
        (v["nx"].as_u64(), v["ny"].as_u64(), v["nz"].as_u64()),
        (Some(5), Some(4), Some(3))
    );
    assert_eq!(
        (v["min"].as_f64(), v["max"].as_f64()),
        (Some(0.0), Some(6.0))
    );
}

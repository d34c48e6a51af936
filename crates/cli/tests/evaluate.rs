//! `cryoden evaluate` end to end on tiny micrographs and an untrained tiny U-Net written by the test: with a
//! truth and with half sets, `--json` holds the numbers for the model and every baseline, and report.html with
//! its figures exists.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

const N: usize = 48;

/// `dir/noisy/mK.mrc` + `dir/truth/mK.mrc` (or `dir/a/` + `dir/b/`: two independent noisy halves of one truth).
fn dataset(dir: &Path, halves: bool) {
    let (d1, d2) = if halves {
        ("a", "b")
    } else {
        ("noisy", "truth")
    };
    for d in [d1, d2] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    for k in 0..2u64 {
        let c = clean(N, N, 10 + k);
        let name = format!("m{k}.mrc");
        write_mrc(&dir.join(d1).join(&name), &noisy(&c, 1.0, 2 * k), [N, N, 1]);
        let second = if halves { noisy(&c, 1.0, 2 * k + 1) } else { c };
        write_mrc(&dir.join(d2).join(&name), &second, [N, N, 1]);
    }
}

/// Every `src="*.png"` of report.html exists next to it; returns how many there are.
fn figures_exist(report: &Path) -> usize {
    let html = std::fs::read_to_string(report).unwrap();
    let dir = report.parent().unwrap();
    let mut n = 0;
    for part in html.split("src=\"").skip(1) {
        let src = &part[..part.find('"').unwrap()];
        if src.ends_with(".png") {
            assert!(dir.join(src).is_file(), "{src} is referenced but missing");
            n += 1;
        }
    }
    n
}

fn method_kinds(v: &Value) -> Vec<String> {
    v["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn with_a_truth_json_holds_psnr_and_ssim_for_the_model_and_baselines_and_the_report_exists() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    dataset(t.path(), false);
    let out = t.path().join("report");
    let (o, so, se) = run(&[
        &"evaluate",
        &"-m",
        &model,
        &"--input",
        &t.path().join("noisy"),
        &"--truth",
        &t.path().join("truth"),
        &"-o",
        &out,
        &"--json",
    ]);
    assert!(o.status.success(), "{se}");
    let v: Value = serde_json::from_str(&so).expect("--json prints JSON");
    let kinds = method_kinds(&v);
    for k in ["model", "raw", "gaussian-blur", "low-pass"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    let tr = &v["truth"];
    assert_eq!(tr["images"].as_array().unwrap().len(), 2);
    for key in ["mean_psnr", "mean_ssim"] {
        let vals = tr[key].as_array().unwrap();
        assert_eq!(vals.len(), kinds.len(), "{key}");
        for x in vals {
            let x = x.as_f64().unwrap_or_else(|| panic!("{key}: {x}"));
            assert!(x.is_finite(), "{key}: {x}");
            if key == "mean_ssim" {
                assert!((-1.0..=1.0).contains(&x), "{key}: {x}");
            }
        }
    }
    // Noise σ 1 on a signal of a few units: a Gaussian blur tuned on these images beats the raw input.
    let psnr = |kind: &str| {
        let k = kinds.iter().position(|x| x == kind).unwrap();
        tr["mean_psnr"][k].as_f64().unwrap()
    };
    assert!(psnr("gaussian-blur") > psnr("raw"), "{}", tr["mean_psnr"]);
    assert_eq!(v["pixel_size"].as_f64().unwrap(), VOXEL as f64);
    let report = out.join("report.html");
    assert!(
        figures_exist(&report) >= 3,
        "report.html shows too few figures"
    );
    assert!(se.contains("report:"), "{se}");
}

#[test]
fn with_half_sets_json_holds_the_n2n_error_and_frc_for_the_model_and_baselines_and_the_report_exists(
) {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    dataset(t.path(), true);
    let out = t.path().join("report");
    let (o, so, se) = run(&[
        &"evaluate",
        &"-m",
        &model,
        &"--half-a",
        &t.path().join("a"),
        &"--half-b",
        &t.path().join("b"),
        &"-o",
        &out,
        &"--json",
    ]);
    assert!(o.status.success(), "{se}");
    let v: Value = serde_json::from_str(&so).expect("--json prints JSON");
    let kinds = method_kinds(&v);
    for k in ["model", "raw", "gaussian-blur", "low-pass"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    assert!(v["truth"].is_null());
    let h = &v["halves"];
    let n2n = h["mean_n2n_error"].as_array().unwrap();
    assert_eq!(n2n.len(), kinds.len());
    // MSE(f(A), B) ≥ B's noise variance (1) up to sampling error on 2 × 48² pixels: stated bound 0.8.
    for x in n2n {
        assert!(x.as_f64().unwrap() > 0.8, "{n2n:?}");
    }
    // Raw: MSE(A, B) = 2σ² = 2 (tolerance 0.3 for 4608 pixels).
    let raw = kinds.iter().position(|x| x == "raw").unwrap();
    assert!((n2n[raw].as_f64().unwrap() - 2.0).abs() < 0.3, "{n2n:?}");
    // A resolution per method: a number, or null when the curve never falls below 1/7.
    let res = h["mean_frc_resolution"].as_array().unwrap();
    assert_eq!(res.len(), kinds.len());
    assert!(res.iter().all(|r| r.is_null() || r.as_f64().is_some()));
    assert_eq!(h["frc"].as_array().unwrap().len(), kinds.len());
    let report = out.join("report.html");
    assert!(
        figures_exist(&report) >= 3,
        "report.html shows too few figures"
    );
}

/// Without the `cuda` feature the refusal says how to get it (with it, the GPU run covers the path).
#[cfg(not(feature = "cuda"))]
#[test]
fn evaluate_on_cuda_without_the_feature_says_how_to_get_it() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    dataset(t.path(), true);
    let (o, _, se) = run(&[
        &"evaluate",
        &"-m",
        &model,
        &"--half-a",
        &t.path().join("a"),
        &"--half-b",
        &t.path().join("b"),
        &"-o",
        &t.path().join("r"),
        &"--device",
        &"cuda",
    ]);
    assert!(!o.status.success());
    assert!(se.contains("--features cuda"), "{se}");
}

//! PSNR, SSIM and the Gaussian filter against scikit-image and scipy, through `$CRYODEN_PYTHON`.
//!
//! The reference script (run as `$CRYODEN_PYTHON -c`):
//! ```python
//! peak_signal_noise_ratio(truth, test, data_range=R)
//! structural_similarity(truth, test, data_range=R, gaussian_weights=True, sigma=1.5,
//!                       use_sample_covariance=False)
//! ```
//! on float64 copies of the f32 images, with `R = truth.max() - truth.min()`, and the same after the
//! least-squares affine fit `numpy.polyfit(test, truth, 1)`.

use cryoden_eval::{data_range, filters, psnr, score_against_truth, ssim};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::process::Command;

fn python() -> String {
    std::env::var("CRYODEN_PYTHON").expect(
        "CRYODEN_PYTHON is not set: these tests compare against scikit-image; run scripts/test.sh or set \
         CRYODEN_PYTHON to a Python with numpy, scipy and scikit-image (e.g. /work/main/.venv/bin/python)",
    )
}

fn write_f32(path: &Path, data: &[f32]) {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

const SCRIPT: &str = r#"
import json, sys
import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
out = []
for case in json.loads(sys.argv[1]):
    nx, ny = case["nx"], case["ny"]
    test = np.fromfile(case["test"], dtype="<f4").reshape(ny, nx).astype(np.float64)
    truth = np.fromfile(case["truth"], dtype="<f4").reshape(ny, nx).astype(np.float64)
    R = truth.max() - truth.min()
    ssim = lambda a: structural_similarity(truth, a, data_range=R, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False)
    scale, offset = np.polyfit(test.ravel(), truth.ravel(), 1)
    fitted = scale * test + offset
    out.append(dict(
        psnr=peak_signal_noise_ratio(truth, test, data_range=R), ssim=ssim(test),
        psnr_fit=peak_signal_noise_ratio(truth, fitted, data_range=R), ssim_fit=ssim(fitted),
        scale=scale, offset=offset,
        blur=gaussian_filter(test, 2.0, truncate=4.0, mode="reflect").ravel().tolist(),
    ))
print(json.dumps(out))
"#;

#[test]
fn psnr_and_ssim_equal_scikit_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut cases = Vec::new();
    let mut images = Vec::new();
    for (k, (nx, ny)) in [(64usize, 64usize), (37, 53), (11, 11), (100, 20)]
        .into_iter()
        .enumerate()
    {
        // A truth with structure, and an estimate that is a noisy, rescaled, shifted copy.
        let truth: Vec<f32> = (0..nx * ny)
            .map(|i| {
                ((i % nx) as f32 * 0.3).sin() * ((i / nx) as f32 * 0.2).cos()
                    + rng.random::<f32>() * 0.5
            })
            .collect();
        let test: Vec<f32> = truth
            .iter()
            .map(|v| 3.0 * v - 7.0 + (rng.random::<f32>() - 0.5) * 2.0)
            .collect();
        let (tp, gp) = (
            dir.path().join(format!("test{k}.f32")),
            dir.path().join(format!("truth{k}.f32")),
        );
        write_f32(&tp, &test);
        write_f32(&gp, &truth);
        cases.push(serde_json::json!({"nx": nx, "ny": ny, "test": tp, "truth": gp}));
        images.push((nx, ny, test, truth));
    }
    let out = Command::new(python())
        .args(["-c", SCRIPT, &serde_json::to_string(&cases).unwrap()])
        .output()
        .expect("running $CRYODEN_PYTHON");
    assert!(
        out.status.success(),
        "reference script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for ((nx, ny, test, truth), w) in images.iter().zip(&want) {
        let (nx, ny) = (*nx, *ny);
        let r = data_range(truth);
        let f = |k: &str| w[k].as_f64().unwrap();
        // Tolerance 1e-6 (dB for PSNR, absolute for SSIM): both sides sum in f64 over the same f32 values.
        let tol = 1e-6;
        let p = psnr(test, truth, r).unwrap();
        assert!(
            (p - f("psnr")).abs() < tol,
            "{nx}×{ny} PSNR {p} vs {}",
            f("psnr")
        );
        let s = ssim(test, truth, nx, ny, r).unwrap();
        assert!(
            (s - f("ssim")).abs() < tol,
            "{nx}×{ny} SSIM {s} vs {}",
            f("ssim")
        );
        let fit = score_against_truth(test, truth, nx, ny).unwrap();
        assert!(
            (fit.psnr - f("psnr_fit")).abs() < tol,
            "{nx}×{ny} fitted PSNR {} vs {}",
            fit.psnr,
            f("psnr_fit")
        );
        assert!(
            (fit.ssim - f("ssim_fit")).abs() < tol,
            "{nx}×{ny} fitted SSIM {} vs {}",
            fit.ssim,
            f("ssim_fit")
        );
        assert!((fit.affine.scale - f("scale")).abs() < 1e-9 * f("scale").abs().max(1.0));
        assert!((fit.affine.offset - f("offset")).abs() < 1e-9 * f("offset").abs().max(1.0));
        // The Gaussian baseline is scipy's gaussian_filter (output f32: tolerance 1e-5 relative to |x| ≤ ~12).
        let blur = filters::gaussian_blur(test, nx, ny, 2.0);
        for (i, (a, b)) in blur.iter().zip(w["blur"].as_array().unwrap()).enumerate() {
            let b = b.as_f64().unwrap();
            assert!(
                (*a as f64 - b).abs() < 1e-5,
                "{nx}×{ny} blur pixel {i}: {a} vs {b}"
            );
        }
    }
}

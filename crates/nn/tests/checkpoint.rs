//! Checkpoints: round trips, PyTorch layout on disk, typed errors on mismatches; initialisation statistics.
#![allow(clippy::identity_op, clippy::erasing_op)] // index arithmetic spelled out for clarity

use cryoden_nn::checkpoint::{
    load_optimizer, load_weights, params_from_torch, read_meta, save_optimizer, save_weights,
};
use cryoden_nn::{AdamParams, Arch, Model, NnError};
use safetensors::SafeTensors;

fn unet() -> Model {
    Model::new(Arch::Unet {
        widths: vec![4, 8, 16],
    })
    .unwrap()
}

#[test]
fn weights_round_trip_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let m = unet();
    let p = m.init_params(5);
    let meta =
        serde_json::json!({"normalisation": {"mean": 0.5, "std": 2.0}, "dataset_sha256": "ab12"});
    save_weights(&path, &m, &p, &meta).unwrap();
    let w = load_weights(&path, Some(m.arch())).unwrap();
    assert_eq!(w.params, p);
    assert_eq!(w.meta, meta);
    assert_eq!(w.model.arch(), m.arch());
    let (arch, meta2) = read_meta(&path).unwrap();
    assert_eq!((&arch, &meta2), (m.arch(), &meta));
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn weights_on_disk_are_pytorch_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let m = unet();
    let mut p = vec![0.0f32; m.params().len()];
    // Mark weight [o=1, i=2, ky=0, kx=1] of enc1.conv1 ([8, 4, 3, 3]); internal layout is [o, ky, kx, i].
    let e = m.params().get("enc1.conv1.weight").unwrap();
    p[e.offset + ((1 * 3 + 0) * 3 + 1) * 4 + 2] = 42.0;
    // And up0.weight [in=8, out=4, a=1, b=0]; internal [in, a, b, out] puts it at ((in·2 + a)·2 + b)·4 + out.
    let u = m.params().get("up0.weight").unwrap();
    assert_eq!(u.shape, vec![8, 4, 2, 2]);
    p[u.offset + ((3 * 2 + 1) * 2 + 0) * 4 + 2] = 7.0;
    save_weights(&path, &m, &p, &serde_json::Value::Null).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("enc1.conv1.weight").unwrap();
    assert_eq!(t.shape(), &[8, 4, 3, 3]);
    let at = |d: &[u8], i: usize| f32::from_le_bytes(d[4 * i..4 * i + 4].try_into().unwrap());
    assert_eq!(at(t.data(), ((1 * 4 + 2) * 3 + 0) * 3 + 1), 42.0);
    let t = st.tensor("up0.weight").unwrap();
    assert_eq!(at(t.data(), ((3 * 4 + 2) * 2 + 1) * 2 + 0), 7.0);
}

#[test]
fn optimizer_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    let m = unet();
    let mv = m.init_params(1);
    let vv: Vec<f32> = m.init_params(2).iter().map(|v| v * v).collect();
    let adam = AdamParams {
        lr: 3e-4,
        ..Default::default()
    };
    let meta = serde_json::json!({"rng": [1, 2, 3], "epoch": 4});
    save_optimizer(&path, &m, &mv, &vv, 123, &adam, &meta).unwrap();
    let o = load_optimizer(&path, &m).unwrap();
    assert_eq!(
        (o.m, o.v, o.step, o.adam, o.meta),
        (mv, vv, 123, adam, meta)
    );
    // A weights loader refuses an optimizer file.
    assert!(matches!(
        load_weights(&path, None),
        Err(NnError::Checkpoint { .. })
    ));
}

#[test]
fn architecture_mismatch_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let m = unet();
    save_weights(&path, &m, &m.init_params(0), &serde_json::Value::Null).unwrap();
    let other = Arch::Unet { widths: vec![4, 8] };
    let err = load_weights(&path, Some(&other)).unwrap_err();
    assert!(matches!(err, NnError::ArchMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("unet[4,8,16]") && err.to_string().contains("w.safetensors"),
        "{err}"
    );
    let err = load_optimizer(&path, &Model::new(other).unwrap()).unwrap_err();
    assert!(
        matches!(
            err,
            NnError::Checkpoint { .. } | NnError::ArchMismatch { .. }
        ),
        "{err}"
    );
}

#[test]
fn torch_tensors_missing_extra_or_misshapen_are_named() {
    let m = unet();
    let src = std::path::Path::new("topaz.sav");
    let full = m.params().export_torch(&m.init_params(0)).unwrap();
    let as_refs = |v: &[(String, Vec<usize>, Vec<f32>)]| -> Vec<(String, Vec<usize>, Vec<f32>)> {
        v.to_vec()
    };
    let go = |v: &[(String, Vec<usize>, Vec<f32>)]| {
        params_from_torch(
            src,
            m.params(),
            v.iter()
                .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())),
        )
    };
    assert_eq!(go(&full).unwrap(), m.init_params(0));
    let mut missing = as_refs(&full);
    missing.retain(|t| t.0 != "dec0.conv2.bias");
    let e = go(&missing).unwrap_err();
    assert!(
        e.to_string().contains("dec0.conv2.bias") && e.to_string().contains("missing"),
        "{e}"
    );
    let mut extra = as_refs(&full);
    extra.push(("bn.weight".into(), vec![1], vec![0.0]));
    assert!(go(&extra).unwrap_err().to_string().contains("bn.weight"));
    let mut bad = as_refs(&full);
    bad[0].1 = vec![4, 1, 9];
    let e = go(&bad).unwrap_err();
    assert!(e.to_string().contains("shape [4, 1, 9]"), "{e}");
}

#[test]
fn garbage_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.safetensors");
    std::fs::write(&path, b"not a checkpoint").unwrap();
    let e = load_weights(&path, None).unwrap_err();
    assert!(
        e.to_string().contains("junk.safetensors") && e.to_string().contains("safetensors"),
        "{e}"
    );
    let e = load_weights(&dir.path().join("absent.safetensors"), None).unwrap_err();
    assert!(matches!(e, NnError::Io { .. }));
}

#[test]
fn init_follows_pytorch_default_bounds_and_is_seeded() {
    // PyTorch's default: U(−b, b) with b = 1/sqrt(fan_in) for weights (kaiming_uniform, a = √5) and biases;
    // fan_in = size(1)·k·k (for ConvTranspose2d size(1) is out_channels). A uniform's mean is 0 and its
    // variance b²/3; with n samples the sample variance is within 5·σ ≈ 5·b²·sqrt(4/45/n) of it.
    let m = Model::new(Arch::Unet {
        widths: vec![32, 64],
    })
    .unwrap();
    let p = m.init_params(9);
    assert_eq!(p, m.init_params(9));
    assert_ne!(p, m.init_params(10));
    for e in m.params().entries() {
        let v = &p[e.range()];
        let b = 1.0 / (e.fan_in as f64).sqrt();
        if e.name.starts_with("up0.") {
            // up0: ConvTranspose2d(64 → 32, 2): weight [64, 32, 2, 2], fan_in = 32·2·2.
            assert_eq!(e.fan_in, 32 * 4, "{}", e.name);
        }
        assert!(
            v.iter().all(|&x| f64::from(x).abs() <= b),
            "{} exceeds bound {b}",
            e.name
        );
        let n = v.len() as f64;
        if n >= 1000.0 {
            let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let var = v
                .iter()
                .map(|&x| (f64::from(x) - mean).powi(2))
                .sum::<f64>()
                / n;
            assert!(
                mean.abs() < 5.0 * b / (3.0 * n).sqrt(),
                "{} mean {mean}",
                e.name
            );
            let sd_var = b * b * (4.0 / 45.0 / n).sqrt();
            assert!(
                (var - b * b / 3.0).abs() < 5.0 * sd_var,
                "{} var {var} vs {}",
                e.name,
                b * b / 3.0
            );
        }
    }
    assert_eq!(m.params().get("enc0.conv1.weight").unwrap().fan_in, 9);
    assert_eq!(m.params().get("dec0.conv1.weight").unwrap().fan_in, 64 * 9);
}

//! Model-level tests: parameter counts and names, input-size errors.

use cryoden_nn::{cpu::Cpu, Arch, Model, NnError};

#[test]
fn topaz_param_counts_match_topaz() {
    // Counts printed by `sum(p.numel() for p in model.parameters())` on topaz 0.3.20's UDenoiseNet(base_width=11,
    // top_width=5) and UDenoiseNetSmall(width=11, top_width=5) (FACTS.md §4).
    let unet = Model::new(Arch::TopazUnet).unwrap();
    assert_eq!(unet.params().num_params(), 1_105_809);
    let small = Model::new(Arch::TopazUnetSmall).unwrap();
    assert_eq!(small.params().num_params(), 649_137);
}

#[test]
fn topaz_names_are_state_dict_keys() {
    let m = Model::new(Arch::TopazUnet).unwrap();
    let names: Vec<&str> = m
        .params()
        .entries()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let mut want = Vec::new();
    for i in 1..=6 {
        want.push(format!("enc{i}.0.weight"));
        want.push(format!("enc{i}.0.bias"));
    }
    for j in [5, 4, 3, 2] {
        for l in [0, 2] {
            want.push(format!("dec{j}.{l}.weight"));
            want.push(format!("dec{j}.{l}.bias"));
        }
    }
    for l in [0, 2, 4] {
        want.push(format!("dec1.{l}.weight"));
        want.push(format!("dec1.{l}.bias"));
    }
    assert_eq!(names, want);
    assert_eq!(
        m.params().get("enc1.0.weight").unwrap().shape,
        vec![48, 1, 11, 11]
    );
    assert_eq!(
        m.params().get("dec1.0.weight").unwrap().shape,
        vec![64, 97, 5, 5]
    );
}

#[test]
fn unet_names_and_count() {
    let m = Model::new(Arch::Unet {
        widths: vec![32, 64, 128, 256],
    })
    .unwrap();
    let t = m.params();
    assert_eq!(t.get("up2.weight").unwrap().shape, vec![256, 128, 2, 2]);
    assert_eq!(
        t.get("dec0.conv1.weight").unwrap().shape,
        vec![32, 64, 3, 3]
    );
    assert_eq!(t.get("out.weight").unwrap().shape, vec![1, 32, 1, 1]);
    assert_eq!(t.get("enc0.conv1.weight").unwrap().shape, vec![32, 1, 3, 3]);
    // Hand count: enc (1·32·9+32 + 32·32·9+32) + (32·64·9+64 + 64·64·9+64) + (64·128·9+128 + 128·128·9+128)
    // + (128·256·9+256 + 256·256·9+256); up (256·128·4+128) + (128·64·4+64) + (64·32·4+32);
    // dec (64·32·9+32 + 32·32·9+32) + (128·64·9+64 + 64·64·9+64) + (256·128·9+128 + 128·128·9+128); out 32+1.
    let enc = (288 + 32 + 9216 + 32)
        + (18432 + 64 + 36864 + 64)
        + (73728 + 128 + 147456 + 128)
        + (294912 + 256 + 589824 + 256);
    let up = (131072 + 128) + (32768 + 64) + (8192 + 32);
    let dec = (18432 + 32 + 9216 + 32) + (73728 + 64 + 36864 + 64) + (294912 + 128 + 147456 + 128);
    assert_eq!(t.num_params(), enc + up + dec + 33);
}

#[test]
fn unet_forward_flops_match_plan() {
    // The plan quotes ≈ 294 GFLOP per 1024² image for widths 32-64-128-256.
    let m = Model::new(Arch::Unet {
        widths: vec![32, 64, 128, 256],
    })
    .unwrap();
    let g = m.forward_flops(1, 1024, 1024) / 1e9;
    assert!((g - 294.0).abs() < 3.0, "forward GFLOP {g}");
}

#[test]
fn unet_rejects_sizes_not_divisible_and_names_valid_ones() {
    let m = Model::new(Arch::Unet {
        widths: vec![8, 16, 32],
    })
    .unwrap();
    let err = m.check_input(130, 128).unwrap_err();
    match &err {
        NnError::InputSize {
            divisor,
            h_lo,
            h_hi,
            ..
        } => assert_eq!((*divisor, *h_lo, *h_hi), (4, 128, 132)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("128 or 132"), "{err}");
    let be = Cpu::new(1).unwrap();
    assert!(m.activations(&be, 1, 130, 128).is_err());
}

#[test]
fn topaz_rejects_too_small_inputs() {
    let m = Model::new(Arch::TopazUnetSmall).unwrap();
    assert!(matches!(
        m.check_input(7, 64),
        Err(NnError::InputTooSmall { min: 8, .. })
    ));
    m.check_input(8, 9).unwrap();
}

#[test]
fn arch_names() {
    assert!(Arch::from_name("unet", Some(&[4])).is_err());
    assert!(Arch::from_name("topaz-unet", Some(&[4, 8])).is_err());
    assert!(Arch::from_name("resnet", None).is_err());
    assert_eq!(
        Arch::from_name("unet", None).unwrap(),
        Arch::Unet {
            widths: vec![32, 64, 128, 256]
        }
    );
}

/// Inference buffers: same forward output as the training buffers, about half the memory, and backward/loss
/// refuse them with an error that says what to allocate instead.
#[test]
fn inference_activations_forward_equals_training_forward() {
    use cryoden_nn::{train::eval_loss, Backend, LossKind};
    let be = Cpu::new(1).unwrap();
    for arch in [
        Arch::Unet {
            widths: vec![4, 8, 16],
        },
        Arch::TopazUnetSmall,
    ] {
        let model = Model::new(arch).unwrap();
        let params_host = model.init_params(3);
        let mut params = be.alloc(params_host.len()).unwrap();
        be.upload(&params_host, &mut params, 0).unwrap();
        let (n, h, w) = (2, 64, 48);
        let input: Vec<f32> = (0..n * h * w)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let mut train_acts = model.activations(&be, n, h, w).unwrap();
        let mut infer_acts = model.inference_activations(&be, n, h, w).unwrap();
        let mut outs = [vec![0.0f32; n * h * w], vec![0.0f32; n * h * w]];
        for (acts, out) in [&mut train_acts, &mut infer_acts]
            .into_iter()
            .zip(outs.iter_mut())
        {
            acts.upload_input(&be, &input).unwrap();
            model.forward(&be, &params, acts).unwrap();
            acts.download_output(&be, out).unwrap();
        }
        assert_eq!(
            outs[0], outs[1],
            "same ops in the same order must give identical outputs"
        );
        let (tb, ib) = (train_acts.bytes(&be), infer_acts.bytes(&be));
        assert!(
            ib * 10 < tb * 6,
            "inference buffers {ib} B should be well under training buffers {tb} B"
        );
        let mut grads = be.alloc(params_host.len()).unwrap();
        let err = model
            .backward(&be, &params, &mut grads, &mut infer_acts)
            .unwrap_err();
        assert!(err.to_string().contains("Model::activations"), "{err}");
        let err = eval_loss(&be, &model, &params, &mut infer_acts, LossKind::Mse).unwrap_err();
        assert!(err.to_string().contains("Model::activations"), "{err}");
    }
}

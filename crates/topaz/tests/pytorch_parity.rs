//! cryoden's CPU networks against PyTorch (llm.c's test_gpt2 in spirit): `python/verify.py` writes, for each
//! architecture at a small size, PyTorch's weights, batch, forward output, loss, every parameter gradient, the
//! weights after one Adam step and the losses of ten training steps; cryoden loads the same weights and must
//! reproduce them, f32 on CPU (TF32 off on the PyTorch side):
//!
//! | quantity | tolerance |
//! |---|---|
//! | forward output | max abs diff ≤ 1e-5 and relative L2 ≤ 1e-6 |
//! | loss | relative ≤ 1e-6 |
//! | every parameter gradient | relative L2 ≤ 1e-5 |
//! | every parameter after one Adam step (cryoden's Adam on PyTorch's gradients) | relative L2 ≤ 1e-6 |
//! | every parameter after one whole training step (our gradients, our Adam) | relative L2 ≤ 1e-5 |
//! | loss at each of ten Adam steps | relative ≤ 1e-5 |
//!
//! Why the whole step gets 1e-5, not 1e-6: Adam's first step moves each weight by `lr · g / (|g| + eps)`, about
//! `±lr` whatever the size of `g`, so an element whose gradient is tiny (|g| within a few hundred `eps`) turns the
//! last-bit differences of its f32 gradient (summed in another order than PyTorch's) into a visible difference of
//! its update. Perturbing PyTorch's own gradients by white noise of 1e-7 of their RMS (f32 rounding level) moves
//! `topaz-unet`'s `dec1.0.weight` after one step by 5.8e-6 relative L2. The Adam arithmetic itself is checked
//! separately, on PyTorch's gradients, at 1e-6.
//!
//! Run with `--nocapture` to see the measured numbers (docs/VERIFICATION.md records them).

mod common;

use std::collections::HashMap;
use std::path::Path;

use cryoden_nn::checkpoint::params_from_torch;
use cryoden_nn::cpu::Cpu;
use cryoden_nn::train::loss_and_gradients;
use cryoden_nn::{train_step, AdamParams, Arch, Backend, LossKind, Model, TrainState};

const FWD_MAX_ABS: f64 = 1e-5;
const FWD_REL_L2: f64 = 1e-6;
const LOSS_REL: f64 = 1e-6;
const GRAD_REL_L2: f64 = 1e-5;
const ADAM_REL_L2: f64 = 1e-6;
const STEP_REL_L2: f64 = 1e-5;
const TRAIN_LOSS_REL: f64 = 1e-5;

struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn read(path: &Path) -> Fixture {
        let (list, meta) = common::read_dump(path);
        let tensors = list.into_iter().map(|(n, s, v)| (n, (s, v))).collect();
        Fixture { tensors, meta }
    }
    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }
    fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [usize], &'a [f32])> + 'a {
        self.tensors.iter().filter_map(move |(n, (s, v))| {
            n.strip_prefix(prefix)
                .map(|n| (n, s.as_slice(), v.as_slice()))
        })
    }
}

/// ‖a − b‖₂ / ‖b‖₂ and max |a − b|, in f64.
fn diff(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den, mut max) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = x as f64 - y as f64;
        num += d * d;
        den += (y as f64) * (y as f64);
        max = max.max(d.abs());
    }
    ((num / den.max(f64::MIN_POSITIVE)).sqrt(), max)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

/// Everything measured for one architecture.
#[derive(Debug)]
struct Report {
    arch: String,
    shape: String,
    fwd_max_abs: f64,
    fwd_rel_l2: f64,
    loss_rel: f64,
    grad_worst: (f64, String),
    /// cryoden's Adam on PyTorch's gradients: weights after the step.
    adam_worst: (f64, String),
    /// cryoden's gradients and Adam (one whole training step): weights after the step, and the update w₁ − w₀.
    step_worst: (f64, String),
    update_worst: (f64, String),
    train_loss_worst: f64,
}

fn check(path: &Path) -> Report {
    let fx = Fixture::read(path);
    let arch: Arch = serde_json::from_str(&fx.meta["arch"]).expect("arch metadata");
    let loss_kind: LossKind =
        serde_json::from_value(serde_json::Value::String(fx.meta["loss"].clone())).unwrap();
    let adam: AdamParams = serde_json::from_str(&fx.meta["adam"]).expect("adam metadata");
    let model = Model::new(arch.clone()).unwrap();
    let p0 = params_from_torch(path, model.params(), fx.with_prefix("param.")).unwrap();

    let (shape, input) = fx.get("input");
    let (n, h, w) = (shape[0], shape[2], shape[3]);
    assert_eq!(shape[1], 1);
    let target = &fx.get("target").1;
    let be = Cpu::new(0).unwrap();
    let mut acts = model.activations(&be, n, h, w).unwrap();

    // Forward, loss, gradients.
    let mut state = TrainState::new(&be, &model, &p0).unwrap();
    acts.upload_input(&be, input).unwrap();
    acts.upload_target(&be, target).unwrap();
    let loss = loss_and_gradients(
        &be,
        &model,
        &state.params,
        &mut state.grads,
        &mut acts,
        loss_kind,
    )
    .unwrap();
    let mut out = vec![0.0f32; n * h * w];
    acts.download_output(&be, &mut out).unwrap();
    let (fwd_rel_l2, fwd_max_abs) = diff(&out, &fx.get("output").1);
    let loss_rel = rel(loss as f64, fx.get("loss").1[0] as f64);

    let grads = TrainState::download(&be, &state.grads).unwrap();
    let mut grad_worst = (0.0, String::new());
    for (name, gshape, g) in model.params().export_torch(&grads).unwrap() {
        let (tshape, tg) = fx.get(&format!("grad.{name}"));
        assert_eq!(&gshape, tshape, "{name}");
        let (r, _) = diff(&g, tg);
        if r >= grad_worst.0 {
            grad_worst = (r, name);
        }
    }

    // cryoden's Adam on PyTorch's gradients (the optimizer alone).
    let torch_grads = params_from_torch(path, model.params(), fx.with_prefix("grad.")).unwrap();
    let mut state = TrainState::new(&be, &model, &p0).unwrap();
    be.upload(&torch_grads, &mut state.grads, 0).unwrap();
    be.adam_step(
        &adam,
        1,
        &mut state.params,
        &state.grads,
        &mut state.m,
        &mut state.v,
    )
    .unwrap();
    let pa = TrainState::download(&be, &state.params).unwrap();
    let mut adam_worst = (0.0, String::new());
    for (name, _, v) in model.params().export_torch(&pa).unwrap() {
        let (r, _) = diff(&v, &fx.get(&format!("adam1.{name}")).1);
        if r >= adam_worst.0 {
            adam_worst = (r, name);
        }
    }

    // One whole training step from the initial weights, on the same batch.
    let mut state = TrainState::new(&be, &model, &p0).unwrap();
    train_step(
        &be, &model, &mut state, &mut acts, input, target, loss_kind, &adam,
    )
    .unwrap();
    let p1 = TrainState::download(&be, &state.params).unwrap();
    let before: HashMap<String, Vec<f32>> = model
        .params()
        .export_torch(&p0)
        .unwrap()
        .into_iter()
        .map(|(n, _, v)| (n, v))
        .collect();
    let mut step_worst = (0.0, String::new());
    let mut update_worst = (0.0, String::new());
    for (name, _, v) in model.params().export_torch(&p1).unwrap() {
        let theirs = &fx.get(&format!("adam1.{name}")).1;
        let (r, _) = diff(&v, theirs);
        if r >= step_worst.0 {
            step_worst = (r, name.clone());
        }
        let w0 = &before[&name];
        let ours_upd: Vec<f32> = v.iter().zip(w0).map(|(a, b)| a - b).collect();
        let theirs_upd: Vec<f32> = theirs.iter().zip(w0).map(|(a, b)| a - b).collect();
        let (r, _) = diff(&ours_upd, &theirs_upd);
        if r >= update_worst.0 {
            update_worst = (r, name);
        }
    }

    // Ten steps on the recorded batches, from the initial weights.
    let (tshape, tin) = fx.get("train.input");
    let ttgt = &fx.get("train.target").1;
    let tloss = &fx.get("train.loss").1;
    assert_eq!(tshape[0], tloss.len());
    let per = n * h * w;
    let mut state = TrainState::new(&be, &model, &p0).unwrap();
    let mut train_loss_worst: f64 = 0.0;
    for (s, &theirs) in tloss.iter().enumerate() {
        let l = train_step(
            &be,
            &model,
            &mut state,
            &mut acts,
            &tin[s * per..(s + 1) * per],
            &ttgt[s * per..(s + 1) * per],
            loss_kind,
            &adam,
        )
        .unwrap();
        train_loss_worst = train_loss_worst.max(rel(l as f64, theirs as f64));
    }

    Report {
        arch: arch.describe(),
        shape: format!("{n}x{h}x{w}"),
        fwd_max_abs,
        fwd_rel_l2,
        loss_rel,
        grad_worst,
        adam_worst,
        step_worst,
        update_worst,
        train_loss_worst,
    }
}

#[test]
fn cpu_matches_pytorch_for_all_architectures() {
    let dir = tempfile::tempdir().unwrap();
    let verify = common::python_dir().join("verify.py");
    common::run_python(&[
        verify.to_str().unwrap(),
        "--all",
        dir.path().to_str().unwrap(),
    ]);
    let mut failures = Vec::new();
    for name in ["unet", "topaz-unet", "topaz-unet-small"] {
        let r = check(&dir.path().join(format!("{name}.safetensors")));
        println!(
            "parity {} {}: forward max|diff| {:.2e} rel L2 {:.2e}; loss rel {:.2e}; worst gradient rel L2 {:.2e} ({}); \
             Adam on torch's gradients: worst weight rel L2 {:.2e} ({}); one training step: worst weight rel L2 \
             {:.2e} ({}), worst update rel L2 {:.2e} ({}); worst of 10 training losses rel {:.2e}",
            r.arch,
            r.shape,
            r.fwd_max_abs,
            r.fwd_rel_l2,
            r.loss_rel,
            r.grad_worst.0,
            r.grad_worst.1,
            r.adam_worst.0,
            r.adam_worst.1,
            r.step_worst.0,
            r.step_worst.1,
            r.update_worst.0,
            r.update_worst.1,
            r.train_loss_worst
        );
        let checks = [
            ("forward max |diff|", r.fwd_max_abs, FWD_MAX_ABS),
            ("forward relative L2", r.fwd_rel_l2, FWD_REL_L2),
            ("loss relative", r.loss_rel, LOSS_REL),
            ("gradient relative L2", r.grad_worst.0, GRAD_REL_L2),
            (
                "weights after one Adam step (torch's gradients) relative L2",
                r.adam_worst.0,
                ADAM_REL_L2,
            ),
            (
                "weights after one training step relative L2",
                r.step_worst.0,
                STEP_REL_L2,
            ),
            (
                "ten training losses relative",
                r.train_loss_worst,
                TRAIN_LOSS_REL,
            ),
        ];
        for (what, got, tol) in checks {
            if got.is_nan() || got > tol {
                failures.push(format!("{}: {what} {got:.3e} > {tol:.0e}", r.arch));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "PyTorch parity failed:\n{}",
        failures.join("\n")
    );
}

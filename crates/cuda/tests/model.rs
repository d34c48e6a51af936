//! Whole-model parity: the CUDA backend against the CPU reference backend (cryoden-nn), per architecture and
//! precision — output, loss, every parameter gradient, and the parameters after three Adam steps.
//! Tolerances (relative L2): f32 1e-5, tf32 1e-3, bf16 1e-2 (DESIGN). Needs a GPU: run with `--ignored`.

use cryoden_cuda::{CudaBackend, Precision};
use cryoden_nn::cpu::Cpu;
use cryoden_nn::train::loss_and_gradients;
use cryoden_nn::{train_step, AdamParams, Arch, Backend, LossKind, Model, TrainState};

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

/// Smooth-ish random images (so the U-Net's pooled levels see structure), seeded.
fn images(n: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut v = Vec::with_capacity(n * h * w);
    for b in 0..n {
        for y in 0..h {
            for x in 0..w {
                let base = ((x as f32 * 0.3 + b as f32).sin() + (y as f32 * 0.17).cos()) * 0.5;
                v.push(base + 0.3 * next());
            }
        }
    }
    v
}

struct Run {
    out: Vec<f32>,
    loss: f32,
    grads: Vec<f32>,
    params_after: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn run<B: Backend>(
    be: &B,
    model: &Model,
    init: &[f32],
    x: &[f32],
    t: &[f32],
    n: usize,
    h: usize,
    w: usize,
) -> Run {
    let mut state = TrainState::new(be, model, init).unwrap();
    let mut acts = model.activations(be, n, h, w).unwrap();
    acts.upload_input(be, x).unwrap();
    acts.upload_target(be, t).unwrap();
    let loss = loss_and_gradients(
        be,
        model,
        &state.params,
        &mut state.grads,
        &mut acts,
        LossKind::Mse,
    )
    .unwrap();
    let mut out = vec![0f32; n * h * w];
    acts.download_output(be, &mut out).unwrap();
    let grads = TrainState::download(be, &state.grads).unwrap();
    let adam = AdamParams {
        lr: 1e-3,
        ..AdamParams::default()
    };
    for _ in 0..3 {
        train_step(be, model, &mut state, &mut acts, x, t, LossKind::Mse, &adam).unwrap();
    }
    let params_after = TrainState::download(be, &state.params).unwrap();
    Run {
        out,
        loss,
        grads,
        params_after,
    }
}

fn check(arch: Arch, n: usize, h: usize, w: usize) {
    let model = Model::new(arch.clone()).unwrap();
    let init = model.init_params(7);
    let x = images(n, h, w, 1);
    let t: Vec<f32> = x
        .iter()
        .zip(images(n, h, w, 2))
        .map(|(a, b)| a + 0.2 * b)
        .collect();
    let cpu = Cpu::new(0).unwrap();
    let want = run(&cpu, &model, &init, &x, &t, n, h, w);
    let mut failures = Vec::new();
    // bf16 stores activations in bf16 (Model::activations allocates them as BufKind::Activation).
    for p in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        let be = CudaBackend::new(0, p).unwrap();
        let got = run(&be, &model, &init, &x, &t, n, h, w);
        let p_name = p.to_string();
        let e_out = rel_l2(&got.out, &want.out);
        let e_loss = ((got.loss - want.loss) / want.loss).abs() as f64;
        let e_grad = rel_l2(&got.grads, &want.grads);
        // Per-tensor gradient errors, worst one named.
        let mut worst = (0f64, String::new());
        for e in model.params().entries() {
            let r = e.offset..e.offset + e.shape.iter().product::<usize>();
            let err = rel_l2(&got.grads[r.clone()], &want.grads[r]);
            if err > worst.0 {
                worst = (err, e.name.clone());
            }
        }
        // Parameter *updates* after 3 Adam steps (parameters themselves barely move).
        let du_got: Vec<f32> = got
            .params_after
            .iter()
            .zip(&init)
            .map(|(a, b)| a - b)
            .collect();
        let du_want: Vec<f32> = want
            .params_after
            .iter()
            .zip(&init)
            .map(|(a, b)| a - b)
            .collect();
        let e_upd = rel_l2(&du_got, &du_want);
        let tol = p.parity_tolerance();
        println!(
            "{} {n}x{h}x{w} {p_name}: output {e_out:.2e}, loss {e_loss:.2e}, grads {e_grad:.2e} (worst tensor {} {:.2e}), \
             3-step Adam update {e_upd:.2e} (tol {tol:e})",
            arch.describe(),
            worst.1,
            worst.0
        );
        // DESIGN's criterion: output, loss and the gradient (whole flat buffer) within the precision's tolerance.
        let mut checks = vec![
            ("output", e_out, tol),
            ("loss", e_loss, tol),
            ("grads", e_grad, tol),
        ];
        // In f32 also every single tensor, and the Adam update (Adam divides by sqrt(v), which amplifies relative
        // differences of near-zero gradients: 10x). In tf32/bf16 small deep tensors (a 4x4-level bias) differ by
        // more than the whole buffer does; those figures are printed and recorded, not asserted.
        if p == Precision::F32 {
            checks.push(("worst grad tensor", worst.0, tol));
            checks.push(("adam update", e_upd, 10.0 * tol));
        }
        for (what, e, t) in checks {
            if e > t {
                failures.push(format!(
                    "{} {p_name} {what}: {e:e} > {t:e}",
                    arch.describe()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn unet_matches_cpu_per_precision() {
    check(
        Arch::from_name("unet", Some(&[8, 16, 32])).unwrap(),
        2,
        32,
        40,
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn unet_default_widths_match_cpu_per_precision() {
    check(Arch::from_name("unet", None).unwrap(), 1, 64, 64);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn topaz_unet_small_matches_cpu_per_precision() {
    check(
        Arch::from_name("topaz-unet-small", None).unwrap(),
        1,
        48,
        40,
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn topaz_unet_matches_cpu_per_precision() {
    check(Arch::from_name("topaz-unet", None).unwrap(), 1, 64, 64);
}

//! Training-level tests: a tiny U-Net overfits one batch; Adam equals a hand computation.

use cryoden_nn::{cpu::Cpu, train_step, AdamParams, Arch, Backend, LossKind, Model, TrainState};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn batch(n: usize, h: usize, w: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // A smooth target and a noisy copy as input: learnable with a few convs.
    let target: Vec<f32> = (0..n * h * w)
        .map(|i| {
            let (y, x) = ((i / w) % h, i % w);
            ((x as f32 * 0.7).sin() + (y as f32 * 0.4).cos()) * 0.5
        })
        .collect();
    let input = target
        .iter()
        .map(|&t| t + rng.random_range(-0.3f32..0.3))
        .collect();
    (input, target)
}

fn overfit(arch: Arch, h: usize, w: usize, steps: usize, lr: f64) -> (f32, f32) {
    let be = Cpu::new(2).unwrap();
    let model = Model::new(arch).unwrap();
    let mut state = TrainState::new(&be, &model, &model.init_params(1)).unwrap();
    let mut acts = model.activations(&be, 2, h, w).unwrap();
    let (input, target) = batch(2, h, w, 7);
    let adam = AdamParams {
        lr,
        ..Default::default()
    };
    let mut first = 0.0;
    let mut last = 0.0;
    for s in 0..steps {
        let l = train_step(
            &be,
            &model,
            &mut state,
            &mut acts,
            &input,
            &target,
            LossKind::Mse,
            &adam,
        )
        .unwrap();
        if s == 0 {
            first = l;
        }
        last = l;
    }
    (first, last)
}

#[test]
fn tiny_unet_overfits_one_batch() {
    let (first, last) = overfit(
        Arch::Unet {
            widths: vec![8, 16],
        },
        16,
        16,
        150,
        3e-3,
    );
    assert!(
        last < first / 10.0,
        "loss {first} -> {last}: did not fall 10x"
    );
}

#[test]
fn tiny_topaz_small_overfits_one_batch() {
    let (first, last) = overfit(Arch::TopazUnetSmall, 16, 12, 60, 1e-3);
    assert!(
        last < first / 10.0,
        "loss {first} -> {last}: did not fall 10x"
    );
}

#[test]
fn adam_matches_hand_computation() {
    // Two Adam steps on four values, computed by hand from torch.optim.Adam's update rule:
    // m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²; p −= lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + eps).
    let be = Cpu::new(1).unwrap();
    let hp = AdamParams {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-3,
        weight_decay: 0.5,
    };
    let p0 = [1.0f32, -2.0, 0.5, 0.0];
    let g = [[0.5f32, 0.25, -1.0, 0.0], [-0.5, 1.0, 2.0, 3.0]];
    let mut p = p0.to_vec();
    let (mut m, mut v) = (vec![0.0f32; 4], vec![0.0f32; 4]);
    for (t, gt) in g.iter().enumerate() {
        be.adam_step(&hp, t as u64 + 1, &mut p, &gt.to_vec(), &mut m, &mut v)
            .unwrap();
    }
    // f64 hand computation.
    let mut pe: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
    let (mut me, mut ve) = ([0.0f64; 4], [0.0f64; 4]);
    for (t, gt) in g.iter().enumerate() {
        let t = t as i32 + 1;
        for i in 0..4 {
            let gi = f64::from(gt[i]) + 0.5 * pe[i];
            me[i] = 0.9 * me[i] + 0.1 * gi;
            ve[i] = 0.99 * ve[i] + 0.01 * gi * gi;
            let denom = ve[i].sqrt() / (1.0 - 0.99f64.powi(t)).sqrt() + 1e-3;
            pe[i] -= 0.1 / (1.0 - 0.9f64.powi(t)) * me[i] / denom;
        }
    }
    for i in 0..4 {
        // f32 arithmetic against f64: 1e-6 relative.
        assert!(
            (f64::from(p[i]) - pe[i]).abs() <= 1e-6 * pe[i].abs().max(1.0),
            "p[{i}] {} vs {}",
            p[i],
            pe[i]
        );
        assert!((f64::from(m[i]) - me[i]).abs() <= 1e-6 * me[i].abs().max(1.0));
        assert!((f64::from(v[i]) - ve[i]).abs() <= 1e-6 * ve[i].abs().max(1.0));
    }
}

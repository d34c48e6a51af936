//! Whole-model gradient checks: `Model::backward` against central finite differences of `Model::forward` at tiny
//! sizes. Loss `L = Σ r·y` (random `r`, summed in f64) so the output gradient is exactly `r`. A few coordinates of
//! every parameter tensor are checked; tolerance: |numeric − analytic| ≤ 2e-2 · max|grad of that tensor| + 1e-4.
//! These networks are piecewise LINEAR in any single parameter (conv, ReLU/LeakyReLU, max-pool, nearest
//! upsampling), so a one-sided difference is exact unless a kink (ReLU sign change, max-pool switch) lies inside
//! the step; a coordinate passes when the central, forward or backward difference matches at step 1e-3 or 1e-4.

use cryoden_nn::{cpu::Cpu, Arch, Backend, Model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn check_model(arch: Arch, n: usize, h: usize, w: usize, per_tensor: usize) {
    let be = Cpu::new(2).unwrap();
    let model = Model::new(arch).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let params = model.init_params(3);
    let mut acts = model.activations(&be, n, h, w).unwrap();
    let input: Vec<f32> = (0..n * h * w)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let r: Vec<f32> = (0..n * h * w)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    acts.upload_input(&be, &input).unwrap();

    let loss = |p: &Vec<f32>, acts: &mut cryoden_nn::Activations<Cpu>| -> f64 {
        model.forward(&be, p, acts).unwrap();
        let mut y = vec![0.0f32; n * h * w];
        acts.download_output(&be, &mut y).unwrap();
        y.iter()
            .zip(&r)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum()
    };
    let mut p = params.clone();
    loss(&p, &mut acts);
    be.upload(&r, acts.doutput_mut(), 0).unwrap();
    let mut grads = vec![0.0f32; params.len()];
    model.backward(&be, &p, &mut grads, &mut acts).unwrap();

    let mut checked = 0;
    for e in model.params().entries() {
        let g = &grads[e.range()];
        let scale = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{}: gradient is all zero", e.name);
        for _ in 0..per_tensor {
            let i = e.offset + rng.random_range(0..e.len());
            let mut ok = false;
            let mut last = (0.0, 0.0);
            'steps: for h in [1e-3f32, 1e-4] {
                let x0 = p[i];
                let l0 = loss(&p, &mut acts);
                p[i] = x0 + h;
                let lp = loss(&p, &mut acts);
                p[i] = x0 - h;
                let lm = loss(&p, &mut acts);
                p[i] = x0;
                let hd = f64::from(h);
                for num in [(lp - lm) / (2.0 * hd), (lp - l0) / hd, (l0 - lm) / hd] {
                    last = (num, f64::from(grads[i]));
                    if (num - f64::from(grads[i])).abs() <= 2e-2 * f64::from(scale) + 1e-4 {
                        ok = true;
                        break 'steps;
                    }
                }
            }
            assert!(
                ok,
                "{} [{}]: numeric {}, analytic {}, tensor scale {scale}",
                e.name,
                i - e.offset,
                last.0,
                last.1
            );
            checked += 1;
        }
    }
    assert!(checked >= model.params().entries().len() * per_tensor);
}

#[test]
fn unet_gradients() {
    check_model(
        Arch::Unet {
            widths: vec![4, 6, 8],
        },
        2,
        8,
        12,
        4,
    );
}

#[test]
fn unet_two_levels_gradients() {
    check_model(Arch::Unet { widths: vec![3, 5] }, 1, 6, 4, 6);
}

#[test]
fn topaz_unet_small_gradients_odd_size() {
    // 13 → 6 → 3 → 1 and 10 → 5 → 2 → 1: floor pooling and non-integer nearest upsampling.
    check_model(Arch::TopazUnetSmall, 1, 13, 10, 3);
}

#[test]
fn topaz_unet_gradients_odd_size() {
    // 36 → 18 → 9 → 4 → 2 → 1 and 44 → 22 → 11 → 5 → 2 → 1.
    check_model(Arch::TopazUnet, 1, 36, 44, 2);
}

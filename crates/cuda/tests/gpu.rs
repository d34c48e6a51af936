//! GPU-vs-CPU parity of every op, per precision. These need an NVIDIA GPU, so they are #[ignore]d and run on the
//! device machine with `--ignored` (CI without a GPU stays green; it runs the CPU-side tests in src/).
//!
//! Each test draws fresh random inputs, poisons outputs with NaN first (an unwritten element fails), and compares
//! with the f64-accumulated CPU reference in tests/common by relative L2: f32 ≤ 1e-5, tf32 ≤ 1e-3, bf16 ≤ 1e-2.
//! Elementwise ops are exact up to the storage rounding, so they get tighter bounds.

mod common;

use common::*;
use cryoden_cuda::engine::{self, EngineMode};
use cryoden_cuda::{AdamStep, ConvGeom, CudaError, DType, Gpu, LossKind, MmaMode, Nhwc, Precision};

const GPU: &str = "needs an NVIDIA GPU: run on the device with `--ignored`";

fn gpu() -> Gpu {
    match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => panic!("cannot open cuda:0: {e}"),
    }
}

fn geoms() -> Vec<G> {
    vec![
        // odd sizes, few channels
        G {
            n: 2,
            h: 17,
            w: 19,
            cin: 3,
            cout: 8,
            k: 3,
            pad: 1,
            stride: 1,
        },
        // U-Net inner layer
        G {
            n: 2,
            h: 16,
            w: 16,
            cin: 32,
            cout: 64,
            k: 3,
            pad: 1,
            stride: 1,
        },
        // the 1-channel input conv
        G {
            n: 4,
            h: 24,
            w: 24,
            cin: 1,
            cout: 32,
            k: 3,
            pad: 1,
            stride: 1,
        },
        // the 1x1 output conv
        G {
            n: 2,
            h: 20,
            w: 20,
            cin: 32,
            cout: 1,
            k: 1,
            pad: 0,
            stride: 1,
        },
        // Topaz's 11x11 input conv
        G {
            n: 1,
            h: 30,
            w: 28,
            cin: 1,
            cout: 48,
            k: 11,
            pad: 5,
            stride: 1,
        },
    ]
}

fn cg(g: &G) -> ConvGeom {
    ConvGeom {
        n: g.n,
        h: g.h,
        w: g.w,
        cin: g.cin,
        cout: g.cout,
        k: g.k,
        pad: g.pad,
        stride: g.stride,
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn conv_forward_backward_match_cpu_per_precision() {
    let _ = GPU;
    let mut gpu = gpu();
    let mut rng = Rng::new(1);
    let mut report = Vec::new();
    for p in Precision::ALL {
        for g in geoms() {
            let c = cg(&g);
            let fan = (g.cin * g.k * g.k) as f32;
            let x = rng.vec(g.n * g.h * g.w * g.cin, 1.0);
            let w = rng.vec(c.weight_len(), 1.0 / fan.sqrt());
            let (oh, ow) = g.out();
            let dy = rng.vec(g.n * oh * ow * g.cout, 1.0);
            let dt = p.dtype();
            let xb = gpu.upload(&x, dt).unwrap();
            let wb = gpu.upload(&w, dt).unwrap();
            let dyb = gpu.upload(&dy, dt).unwrap();
            let yb = gpu.alloc(dy.len(), dt).unwrap();
            let dxb = gpu.alloc(x.len(), dt).unwrap();
            let dwb = gpu.alloc(w.len(), dt).unwrap();
            for b in [&yb, &dxb, &dwb] {
                gpu.fill(b, f32::NAN).unwrap();
            }
            gpu.conv_forward(
                p,
                &c,
                xb.view(c.in_shape()),
                wb.ptr(),
                yb.view(c.out_shape()),
                0.0,
            )
            .unwrap();
            gpu.conv_backward_data(
                p,
                &c,
                dyb.view(c.out_shape()),
                wb.ptr(),
                dxb.view(c.in_shape()),
                0.0,
            )
            .unwrap();
            gpu.conv_backward_filter(
                p,
                &c,
                xb.view(c.in_shape()),
                dyb.view(c.out_shape()),
                dwb.ptr(),
                0.0,
            )
            .unwrap();
            let errs = [
                rel_l2(&gpu.download(&yb).unwrap(), &conv_fwd(&g, &x, &w)),
                rel_l2(&gpu.download(&dxb).unwrap(), &conv_bwd_data(&g, &dy, &w)),
                rel_l2(&gpu.download(&dwb).unwrap(), &conv_bwd_filter(&g, &x, &dy)),
            ];
            println!(
                "{p} {c}: rel L2 fwd {:.2e} bwd-data {:.2e} bwd-filter {:.2e}",
                errs[0], errs[1], errs[2]
            );
            report.push((p, c, errs));
        }
    }
    for (gg, pp, ch) in gpu.conv_choices() {
        println!("{pp} {gg}: algorithms {ch:?}");
    }
    for (p, c, errs) in report {
        for (e, what) in errs
            .iter()
            .zip(["forward", "backward-data", "backward-filter"])
        {
            assert!(
                *e <= p.parity_tolerance(),
                "{p} {c} {what}: rel L2 {e:e} > {}",
                p.parity_tolerance()
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn conv_beta_accumulates() {
    let mut gpu = gpu();
    let mut rng = Rng::new(2);
    let g = G {
        n: 2,
        h: 9,
        w: 7,
        cin: 4,
        cout: 5,
        k: 3,
        pad: 1,
        stride: 1,
    };
    let c = cg(&g);
    let x = rng.vec(g.n * g.h * g.w * g.cin, 1.0);
    let w = rng.vec(c.weight_len(), 0.3);
    let y0 = rng.vec(c.out_shape().len(), 1.0);
    let xb = gpu.upload(&x, DType::F32).unwrap();
    let wb = gpu.upload(&w, DType::F32).unwrap();
    let yb = gpu.upload(&y0, DType::F32).unwrap();
    gpu.conv_forward(
        Precision::F32,
        &c,
        xb.view(c.in_shape()),
        wb.ptr(),
        yb.view(c.out_shape()),
        1.0,
    )
    .unwrap();
    let want: Vec<f32> = conv_fwd(&g, &x, &w)
        .iter()
        .zip(&y0)
        .map(|(a, b)| a + b)
        .collect();
    let e = rel_l2(&gpu.download(&yb).unwrap(), &want);
    assert!(e <= 1e-5, "beta = 1 must add: rel L2 {e:e}");
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn conv_transpose_matches_cpu_per_precision() {
    let mut gpu = gpu();
    let mut rng = Rng::new(3);
    let (n, h, w, cin, cout) = (2, 7, 9, 16, 8);
    for p in Precision::ALL {
        let dt = p.dtype();
        let x = rng.vec(n * h * w * cin, 1.0);
        let wt = rng.vec(cin * 4 * cout, 0.25);
        let dy = rng.vec(n * 4 * h * w * cout, 1.0);
        let xs = Nhwc::new(n, h, w, cin);
        let ys = Nhwc::new(n, 2 * h, 2 * w, cout);
        let xb = gpu.upload(&x, dt).unwrap();
        let wb = gpu.upload(&wt, dt).unwrap();
        let dyb = gpu.upload(&dy, dt).unwrap();
        let yb = gpu.alloc(ys.len(), dt).unwrap();
        let dxb = gpu.alloc(xs.len(), dt).unwrap();
        let dwb = gpu.alloc(wt.len(), dt).unwrap();
        for b in [&yb, &dxb, &dwb] {
            gpu.fill(b, f32::NAN).unwrap();
        }
        gpu.conv_transpose_forward(p, xb.view(xs), wb.ptr(), yb.view(ys), 0.0)
            .unwrap();
        gpu.conv_transpose_backward_data(p, dyb.view(ys), wb.ptr(), dxb.view(xs), 0.0)
            .unwrap();
        gpu.conv_transpose_backward_filter(p, xb.view(xs), dyb.view(ys), dwb.ptr(), 0.0)
            .unwrap();
        // References: the transposed conv is the adjoint of the strided conv of transpose_geom.
        let g = G {
            n,
            h: 2 * h,
            w: 2 * w,
            cin: cout,
            cout: cin,
            k: 2,
            pad: 0,
            stride: 2,
        };
        let want_y = convt_fwd(n, h, w, cin, cout, &x, &wt);
        assert!(
            rel_l2(&conv_bwd_data(&g, &x, &wt), &want_y) < 1e-6,
            "reference adjoint identity"
        );
        let want_dx = conv_fwd(&g, &dy, &wt);
        let want_dw = conv_bwd_filter(&g, &dy, &x);
        let errs = [
            rel_l2(&gpu.download(&yb).unwrap(), &want_y),
            rel_l2(&gpu.download(&dxb).unwrap(), &want_dx),
            rel_l2(&gpu.download(&dwb).unwrap(), &want_dw),
        ];
        println!(
            "{p} convT2x2 {cin}->{cout}: rel L2 {:.2e} {:.2e} {:.2e}",
            errs[0], errs[1], errs[2]
        );
        for e in errs {
            assert!(e <= p.parity_tolerance(), "{p}: rel L2 {e:e}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn bias_act_writes_only_its_channel_slice() {
    let mut gpu = gpu();
    let mut rng = Rng::new(4);
    for dt in [DType::F32, DType::Bf16] {
        // (slope, slice offset, slice channels, buffer channels): offset 3 (odd: bf16 takes the element kernel),
        // 2 (even: bf16 takes the channel-pair kernel), 8 or 16 with 8 or 16 channels (16-byte kernel).
        for (slope, off, cc, wc) in [
            (0.0f32, 3usize, 6usize, 10usize),
            (0.1, 3, 6, 10),
            (1.0, 3, 6, 10),
            (0.0, 2, 6, 10),
            (0.1, 2, 6, 10),
            (0.0, 8, 16, 32),
            (0.1, 16, 8, 24),
            (1.0, 0, 16, 16),
        ] {
            let s = Nhwc::new(2, 5, 7, cc);
            let whole = Nhwc::new(2, 5, 7, wc);
            let x = rng.vec(s.len(), 2.0);
            let bias = rng.vec(cc, 0.5);
            let xb = gpu.upload(&x, dt).unwrap();
            let bb = gpu.upload(&bias, DType::F32).unwrap();
            let cat = gpu.alloc(whole.len(), dt).unwrap();
            gpu.fill(&cat, 7.0).unwrap();
            gpu.bias_act(
                xb.view(s),
                Some(bb.ptr()),
                cat.channels(whole, off, cc),
                slope,
            )
            .unwrap();
            let got = gpu.download(&cat).unwrap();
            let mut worst = 0f32;
            for p in 0..s.pixels() {
                for c in 0..wc {
                    let g = got[p * wc + c];
                    if !(off..off + cc).contains(&c) {
                        assert_eq!(g, 7.0, "channel {c} outside the slice was touched");
                        continue;
                    }
                    let xin = if dt == DType::Bf16 {
                        bf16_round(x[p * cc + c - off])
                    } else {
                        x[p * cc + c - off]
                    };
                    let mut want = act(xin + bias[c - off], slope);
                    if dt == DType::Bf16 {
                        want = bf16_round(want);
                    }
                    worst = worst.max((g - want).abs());
                }
            }
            assert!(
                worst <= 1e-6,
                "{dt:?} slope {slope} slice {off}+{cc} of {wc}: max |diff| {worst}"
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn act_backward_and_bias_gradient() {
    let mut gpu = gpu();
    let mut rng = Rng::new(5);
    // extra = channels the wider dy buffer has beyond c, off = the slice's first channel: odd extra (5) takes the
    // general kernel, even (6) lets bf16 with even c take the channel-pair kernel, multiples of 8 with off 0 or 8
    // the 16-byte kernel.
    let cases = [
        (0.0f32, 32usize, 3000usize, 5usize, 2usize),
        (0.1, 1, 5000, 5, 2),
        (1.0, 48, 77, 5, 2),
        (0.0, 32, 3000, 6, 2),
        (0.1, 48, 999, 6, 2),
        (0.0, 32, 3001, 32, 0),
        (0.1, 16, 999, 8, 8),
        (0.0, 256, 333, 0, 0),
    ];
    for dt in [DType::F32, DType::Bf16] {
        for (slope, c, np, extra, off) in cases {
            let s = Nhwc::new(1, 1, np, c);
            let whole = Nhwc::new(1, 1, np, c + extra);
            let dy = rng.vec(np * (c + extra), 1.0);
            let y = rng.vec(np * c, 1.0);
            let dyb = gpu.upload(&dy, dt).unwrap();
            let yb = gpu.upload(&y, dt).unwrap();
            let dxb = gpu.alloc(np * c, dt).unwrap();
            let db = gpu.alloc(c, DType::F32).unwrap();
            gpu.fill(&dxb, f32::NAN).unwrap();
            gpu.fill(&db, f32::NAN).unwrap();
            // dy is a channel slice (offset `off`) of a wider buffer, as in the decoder's concat gradient.
            gpu.act_backward(
                dyb.channels(whole, off, c),
                Some(yb.view(s)),
                dxb.view(s),
                slope,
                Some((db.ptr(), DType::F32)),
                false,
            )
            .unwrap();
            let r = |v: f32| if dt == DType::Bf16 { bf16_round(v) } else { v };
            let mut want_dx = vec![0f32; np * c];
            let mut want_db = vec![0f64; c];
            for p in 0..np {
                for k in 0..c {
                    let g = r(dy[p * (c + extra) + off + k]);
                    let d = if r(y[p * c + k]) > 0.0 { g } else { g * slope };
                    want_dx[p * c + k] = r(d);
                    want_db[k] += d as f64;
                }
            }
            let want_db: Vec<f32> = want_db.into_iter().map(|v| v as f32).collect();
            let e_dx = rel_l2(&gpu.download(&dxb).unwrap(), &want_dx);
            let e_db = rel_l2(&gpu.download(&db).unwrap(), &want_db);
            assert!(
                e_dx <= 1e-7 && e_db <= 1e-5,
                "{dt:?} slope {slope} C {c} slice {off} of {}: dx {e_dx:e} dbias {e_db:e}",
                c + extra
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn maxpool_forward_backward_match_cpu() {
    let mut gpu = gpu();
    let mut rng = Rng::new(6);
    // Version 3 (and forward version 2) use 16-byte accesses where c allows (8, 16, 32 channels).
    for (dt, version) in [
        (DType::F32, 1),
        (DType::Bf16, 1),
        (DType::F32, 2),
        (DType::Bf16, 2),
        (DType::F32, 3),
        (DType::Bf16, 3),
    ] {
        gpu.maxpool_bwd_version = version;
        gpu.maxpool_fwd_version = if version == 3 { 2 } else { 1 };
        for (n, h, w, c) in [
            (2usize, 8usize, 10usize, 3usize),
            (1, 7, 9, 32),
            (3, 2, 2, 1),
            (1, 5, 3, 2),
            (2, 6, 8, 16),
            (1, 9, 4, 8),
        ] {
            let mut x = rng.vec(n * h * w * c, 1.0);
            if dt == DType::Bf16 {
                x.iter_mut().for_each(|v| *v = bf16_round(*v));
            }
            let (ho, wo) = (h / 2, w / 2);
            let dy = rng.vec(n * ho * wo * c, 1.0);
            let xs = Nhwc::new(n, h, w, c);
            let ys = Nhwc::new(n, ho, wo, c);
            let xb = gpu.upload(&x, dt).unwrap();
            let dyb = gpu.upload(&dy, dt).unwrap();
            let yb = gpu.alloc(ys.len(), dt).unwrap();
            let dxb = gpu.alloc(xs.len(), dt).unwrap();
            gpu.fill(&yb, f32::NAN).unwrap();
            gpu.fill(&dxb, f32::NAN).unwrap();
            gpu.maxpool2_forward(xb.view(xs), yb.view(ys)).unwrap();
            gpu.maxpool2_backward(xb.view(xs), dyb.view(ys), dxb.view(xs), false)
                .unwrap();
            assert_eq!(
                gpu.download(&yb).unwrap(),
                maxpool(n, h, w, c, &x),
                "{dt:?} forward {xs}"
            );
            let dyr: Vec<f32> = dy
                .iter()
                .map(|&v| if dt == DType::Bf16 { bf16_round(v) } else { v })
                .collect();
            let want = maxpool_bwd(n, h, w, c, &x, &dyr);
            assert_eq!(gpu.download(&dxb).unwrap(), want, "{dt:?} backward {xs}");
            // accumulate = true adds to what is there.
            gpu.maxpool2_backward(xb.view(xs), dyb.view(ys), dxb.view(xs), true)
                .unwrap();
            let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
            assert_eq!(gpu.download(&dxb).unwrap(), twice, "{dt:?} accumulate {xs}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn upsample_forward_backward_match_cpu() {
    let mut gpu = gpu();
    let mut rng = Rng::new(7);
    for (n, hi, wi, ho, wo, c) in [
        (2usize, 4usize, 5usize, 8usize, 10usize, 3usize),
        (1, 3, 5, 7, 11, 2),
        (1, 6, 6, 13, 12, 4),
    ] {
        let x = rng.vec(n * hi * wi * c, 1.0);
        let dy = rng.vec(n * ho * wo * c, 1.0);
        let xs = Nhwc::new(n, hi, wi, c);
        let ys = Nhwc::new(n, ho, wo, c);
        // Output written into channels 1.. of a wider (concat) buffer.
        let whole = Nhwc::new(n, ho, wo, c + 1);
        let xb = gpu.upload(&x, DType::F32).unwrap();
        let dyb = gpu.upload(&dy, DType::F32).unwrap();
        let cat = gpu.alloc(whole.len(), DType::F32).unwrap();
        let dxb = gpu.alloc(xs.len(), DType::F32).unwrap();
        gpu.fill(&cat, f32::NAN).unwrap();
        gpu.fill(&dxb, f32::NAN).unwrap();
        gpu.upsample_forward(xb.view(xs), cat.channels(whole, 1, c))
            .unwrap();
        gpu.upsample_backward(dyb.view(ys), dxb.view(xs), false)
            .unwrap();
        let got = gpu.download_view(cat.channels(whole, 1, c)).unwrap();
        assert_eq!(
            got,
            upsample(n, hi, wi, ho, wo, c, &x),
            "forward {xs} -> {ys}"
        );
        let e = rel_l2(
            &gpu.download(&dxb).unwrap(),
            &upsample_bwd(n, hi, wi, ho, wo, c, &dy),
        );
        assert!(e <= 1e-7, "backward {xs} -> {ys}: {e:e}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn loss_and_gradient_match_cpu() {
    let mut gpu = gpu();
    let mut rng = Rng::new(8);
    for dt in [DType::F32, DType::Bf16] {
        for kind in [LossKind::Mse, LossKind::L1] {
            let n = 300_007;
            let mut pred = rng.vec(n, 1.0);
            if dt == DType::Bf16 {
                pred.iter_mut().for_each(|v| *v = bf16_round(*v));
            }
            let target = rng.vec(n, 1.0);
            let s = Nhwc::new(1, 1, n, 1);
            let pb = gpu.upload(&pred, dt).unwrap();
            let tb = gpu.upload(&target, DType::F32).unwrap();
            let gb = gpu.alloc(n, dt).unwrap();
            let lb = gpu.alloc(1, DType::F32).unwrap();
            gpu.fill(&gb, f32::NAN).unwrap();
            gpu.loss(kind, pb.view(s), tb.ptr(), Some(gb.view(s)), lb.ptr())
                .unwrap();
            let mut want_loss = 0f64;
            let mut want_g = vec![0f32; n];
            for i in 0..n {
                let d = pred[i] as f64 - target[i] as f64;
                let (l, g) = match kind {
                    LossKind::Mse => (d * d, 2.0 * d),
                    LossKind::L1 => (d.abs(), d.signum() * (d != 0.0) as i32 as f64),
                };
                want_loss += l;
                want_g[i] = (g / n as f64) as f32;
            }
            want_loss /= n as f64;
            let got_loss = gpu.download(&lb).unwrap()[0] as f64;
            let mut e_g = rel_l2(&gpu.download(&gb).unwrap(), &want_g);
            if dt == DType::Bf16 {
                // The gradient is stored in bf16: compare with the rounded reference.
                let r: Vec<f32> = want_g.iter().map(|&v| bf16_round(v)).collect();
                e_g = rel_l2(&gpu.download(&gb).unwrap(), &r);
            }
            let e_l = ((got_loss - want_loss) / want_loss).abs();
            assert!(
                e_l <= 1e-6 && e_g <= 1e-6,
                "{dt:?} {kind:?}: loss {got_loss} vs {want_loss} ({e_l:e}), grad {e_g:e}"
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn adam_matches_pytorch_formula() {
    let mut gpu = gpu();
    let mut rng = Rng::new(9);
    for gdt in [DType::F32, DType::Bf16] {
        let n = 10_001;
        let mut p = rng.vec(n, 1.0);
        let pb = gpu.upload(&p, DType::F32).unwrap();
        let copy = gpu.alloc(n, DType::Bf16).unwrap();
        let mb = gpu.upload(&vec![0.0; n], DType::F32).unwrap();
        let vb = gpu.upload(&vec![0.0; n], DType::F32).unwrap();
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        for step in 1..=3u64 {
            let mut g = rng.vec(n, 0.1);
            if gdt == DType::Bf16 {
                g.iter_mut().for_each(|x| *x = bf16_round(*x));
            }
            let gb = gpu.upload(&g, gdt).unwrap();
            let h = AdamStep {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                step,
                grad_scale: 1.0,
            };
            gpu.adam(&pb, Some(&copy), &gb, &mb, &vb, &h).unwrap();
            let bc1 = 1.0 - 0.9f32.powi(step as i32);
            let bc2s = (1.0 - 0.999f32.powi(step as i32)).sqrt();
            for i in 0..n {
                let gi = g[i] + 0.01 * p[i];
                m[i] += (1.0 - 0.9) * (gi - m[i]);
                v[i] = 0.999 * v[i] + (1.0 - 0.999) * gi * gi;
                p[i] -= (1e-3 / bc1) * (m[i] / (v[i].sqrt() / bc2s + 1e-8));
            }
        }
        let e = rel_l2(&gpu.download(&pb).unwrap(), &p);
        let ec = rel_l2(&gpu.download(&copy).unwrap(), &p);
        assert!(e <= 1e-6, "{gdt:?} master weights: {e:e}");
        assert!(ec <= 4e-3, "{gdt:?} bf16 copy: {ec:e}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn bf16_round_trip_is_round_to_nearest_even() {
    let mut gpu = gpu();
    let vals = vec![
        1.0f32,
        1.0 + 1.0 / 256.0, // a tie: rounds to even (1.0)
        1.0 + 3.0 / 256.0, // a tie: rounds up to even
        -3.3,
        1e-30,
        65504.0,
        f32::INFINITY,
        0.0,
        -0.0,
    ];
    let b = gpu.upload(&vals, DType::Bf16).unwrap();
    let got = gpu.download(&b).unwrap();
    let want: Vec<f32> = vals.iter().map(|&v| bf16_round(v)).collect();
    assert_eq!(got, want);
    let nan = gpu.upload(&[f32::NAN], DType::Bf16).unwrap();
    assert!(gpu.download(&nan).unwrap()[0].is_nan());
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn doctor_report_on_a_gpu_machine() {
    let r = cryoden_cuda::probe::Report::collect();
    println!("{r}");
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(!r.gpus.is_empty());
    assert!(
        r.selfcheck.as_deref().unwrap_or("").starts_with("ok"),
        "{:?}",
        r.selfcheck
    );
    assert!(
        r.mapped_libraries.iter().any(|p| p.contains("libcuda.so")),
        "{:?}",
        r.mapped_libraries
    );
    assert!(
        r.mapped_libraries.iter().any(|p| p.contains("libcudnn")),
        "{:?}",
        r.mapped_libraries
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn kernel_cache_hit_on_second_open() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: set before any thread of this test reads it; other tests do not depend on XDG_CACHE_HOME's value.
    unsafe { std::env::set_var("XDG_CACHE_HOME", dir.path()) };
    let a = Gpu::open(0).unwrap();
    let b = Gpu::open(0).unwrap();
    println!("first: {}; second: {}", a.kernels_note, b.kernels_note);
    assert!(
        b.kernels_note.contains("from the cache"),
        "{}",
        b.kernels_note
    );
    let n = std::fs::read_dir(dir.path().join("cryoden/kernels"))
        .unwrap()
        .count();
    // elementwise.cu, and conv_mma.cu where the GPU has bf16 MMA (compute capability 8.0 and newer).
    let want = if a.info.compute_capability.0 >= 8 {
        2
    } else {
        1
    };
    assert_eq!(n, want, "one cached file per module");
}

/// Graph capture of the ops on the Gpu's stream, replayed: the same result as eager execution.
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn ops_replay_in_a_cuda_graph() {
    let mut gpu = gpu();
    let mut rng = Rng::new(10);
    let g = G {
        n: 2,
        h: 16,
        w: 16,
        cin: 8,
        cout: 16,
        k: 3,
        pad: 1,
        stride: 1,
    };
    let c = cg(&g);
    let x = rng.vec(c.in_shape().len(), 1.0);
    let w = rng.vec(c.weight_len(), 0.2);
    let bias = rng.vec(16, 0.1);
    let xb = gpu.upload(&x, DType::F32).unwrap();
    let wb = gpu.upload(&w, DType::F32).unwrap();
    let bb = gpu.upload(&bias, DType::F32).unwrap();
    let yb = gpu.alloc(c.out_shape().len(), DType::F32).unwrap();
    let pb = gpu.alloc(Nhwc::new(2, 8, 8, 16).len(), DType::F32).unwrap();
    gpu.conv_prepare(&c, Precision::F32).unwrap();
    let run = |gpu: &mut Gpu| {
        gpu.conv_forward(
            Precision::F32,
            &c,
            xb.view(c.in_shape()),
            wb.ptr(),
            yb.view(c.out_shape()),
            0.0,
        )
        .unwrap();
        gpu.bias_act(
            yb.view(c.out_shape()),
            Some(bb.ptr()),
            yb.view(c.out_shape()),
            0.0,
        )
        .unwrap();
        gpu.maxpool2_forward(yb.view(c.out_shape()), pb.view(Nhwc::new(2, 8, 8, 16)))
            .unwrap();
    };
    run(&mut gpu);
    let eager = gpu.download(&pb).unwrap();
    gpu.fill(&pb, f32::NAN).unwrap();
    gpu.sync().unwrap();
    gpu.stream
        .begin_capture(
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )
        .unwrap();
    run(&mut gpu);
    let graph = gpu
        .stream
        .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
        .unwrap()
        .unwrap();
    graph.launch().unwrap();
    assert_eq!(gpu.download(&pb).unwrap(), eager);
}

/// The direct kernels of the one-input-channel 3x3 conv (the U-Net's first layer): forward with bias and
/// activation fused, written into a channel slice of a wider buffer, and the weight gradient accumulated into an
/// f32 buffer; against the f64 CPU reference on the storage-rounded inputs. f32 ≤ 1e-6, bf16 ≤ 1e-2 (output
/// rounding) for the forward; the gradient is accumulated in f32 from rounded inputs: ≤ 1e-5.
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn direct_one_channel_conv_matches_cpu() {
    let mut gpu = gpu();
    let mut rng = Rng::new(11);
    for dt in [DType::F32, DType::Bf16] {
        let r = |v: f32| if dt == DType::Bf16 { bf16_round(v) } else { v };
        // (n, h, w, cout, buffer channels, slice offset, slope)
        for (n, h, w, cout, wc, off, slope) in [
            (2usize, 17usize, 19usize, 32usize, 32usize, 0usize, 0.0f32),
            (1, 5, 3, 16, 48, 16, 0.1),
            (3, 1, 9, 64, 64, 0, 1.0),
            (1, 64, 40, 8, 16, 8, 0.0),
        ] {
            let v = dt.vec_len();
            if cout % v != 0 || !(cout / v).is_power_of_two() || off % v != 0 || wc % v != 0 {
                continue;
            }
            let g = G {
                n,
                h,
                w,
                cin: 1,
                cout,
                k: 3,
                pad: 1,
                stride: 1,
            };
            let xs = Nhwc::new(n, h, w, 1);
            let ys = Nhwc::new(n, h, w, cout);
            let whole = Nhwc::new(n, h, w, wc);
            let x: Vec<f32> = rng.vec(xs.len(), 1.0).into_iter().map(r).collect();
            let wt: Vec<f32> = rng.vec(cout * 9, 0.5).into_iter().map(r).collect();
            let bias = rng.vec(cout, 0.3);
            let dy: Vec<f32> = rng.vec(ys.len(), 1.0).into_iter().map(r).collect();
            let xb = gpu.upload(&x, dt).unwrap();
            let wb = gpu.upload(&wt, dt).unwrap();
            let bb = gpu.upload(&bias, DType::F32).unwrap();
            let dyb = gpu.upload(&dy, dt).unwrap();
            let cat = gpu.alloc(whole.len(), dt).unwrap();
            gpu.fill(&cat, 7.0).unwrap();
            let yv = cat.channels(whole, off, cout);
            assert!(gpu.conv_in3_ok(cout, dt, &xb.view(xs), &yv), "{dt:?} {ys}");
            gpu.conv_in3_forward(xb.view(xs), wb.ptr(), Some(bb.ptr()), yv, slope)
                .unwrap();
            let conv = conv_fwd(&g, &x, &wt);
            let got = gpu.download(&cat).unwrap();
            let (mut got_y, mut want_y) = (Vec::new(), Vec::new());
            for p in 0..ys.pixels() {
                for c in 0..wc {
                    let v = got[p * wc + c];
                    if (off..off + cout).contains(&c) {
                        got_y.push(v);
                        want_y.push(act(conv[p * cout + c - off] + bias[c - off], slope));
                    } else {
                        assert_eq!(v, 7.0, "{dt:?}: channel {c} outside the slice was touched");
                    }
                }
            }
            let e_y = rel_l2(&got_y, &want_y);
            // Weight gradient accumulated onto 1.0 (grads are accumulated, +=).
            let dwb = gpu.upload(&vec![1.0; cout * 9], DType::F32).unwrap();
            gpu.conv_in3_backward_filter(xb.view(xs), dyb.view(ys), dwb.ptr())
                .unwrap();
            let want_dw: Vec<f32> = conv_bwd_filter(&g, &x, &dy)
                .into_iter()
                .map(|v| v + 1.0)
                .collect();
            let e_dw = rel_l2(&gpu.download(&dwb).unwrap(), &want_dw);
            let tol_y = if dt == DType::Bf16 { 1e-2 } else { 1e-6 };
            println!("{dt:?} conv3x3 1->{cout} on {n}x{h}x{w}: y {e_y:.2e}, dw {e_dw:.2e}");
            assert!(
                e_y <= tol_y && e_dw <= 1e-5,
                "{dt:?} {ys}: y {e_y:e}, dw {e_dw:e}"
            );
        }
    }
}

/// The 1x1 conv with one output channel (the U-Net's output layer): backward-data (16-byte version, dx = dy ⊗ w,
/// also accumulated), the direct forward with bias and activation fused, and the direct weight gradient accumulated
/// into f32; against the f64 CPU reference on storage-rounded inputs.
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn one_by_one_to_one_direct_kernels() {
    let mut gpu = gpu();
    let mut rng = Rng::new(12);
    let g = G {
        n: 2,
        h: 13,
        w: 11,
        cin: 32,
        cout: 1,
        k: 1,
        pad: 0,
        stride: 1,
    };
    let cg = ConvGeom {
        n: 2,
        h: 13,
        w: 11,
        cin: 32,
        cout: 1,
        k: 1,
        pad: 0,
        stride: 1,
    };
    for (p, dt) in [(Precision::F32, DType::F32), (Precision::Bf16, DType::Bf16)] {
        let r = |v: f32| if dt == DType::Bf16 { bf16_round(v) } else { v };
        let dy: Vec<f32> = rng
            .vec(cg.out_shape().len(), 1.0)
            .into_iter()
            .map(r)
            .collect();
        let w: Vec<f32> = rng.vec(32, 0.5).into_iter().map(r).collect();
        let dyb = gpu.upload(&dy, dt).unwrap();
        let wb = gpu.upload(&w, dt).unwrap();
        let dxb = gpu.alloc(cg.in_shape().len(), dt).unwrap();
        gpu.fill(&dxb, f32::NAN).unwrap();
        gpu.conv_backward_data(
            p,
            &cg,
            dyb.view(cg.out_shape()),
            wb.ptr(),
            dxb.view(cg.in_shape()),
            0.0,
        )
        .unwrap();
        let want: Vec<f32> = conv_bwd_data(&g, &dy, &w).into_iter().map(r).collect();
        assert_eq!(gpu.download(&dxb).unwrap(), want, "{dt:?}");
        gpu.conv_backward_data(
            p,
            &cg,
            dyb.view(cg.out_shape()),
            wb.ptr(),
            dxb.view(cg.in_shape()),
            1.0,
        )
        .unwrap();
        let twice: Vec<f32> = want.iter().map(|v| r(2.0 * v)).collect();
        let e = rel_l2(&gpu.download(&dxb).unwrap(), &twice);
        assert!(e <= 1e-7, "{dt:?} accumulate: {e:e}");

        // Forward: y = act(x · w + b), written into channel 1 of a 2-channel buffer.
        let x: Vec<f32> = rng
            .vec(cg.in_shape().len(), 1.0)
            .into_iter()
            .map(r)
            .collect();
        let xb = gpu.upload(&x, dt).unwrap();
        let b = [0.25f32];
        let bb = gpu.upload(&b, DType::F32).unwrap();
        let two = Nhwc::new(2, 13, 11, 2);
        let yb = gpu.alloc(two.len(), dt).unwrap();
        gpu.fill(&yb, 7.0).unwrap();
        let yv = yb.channels(two, 1, 1);
        assert!(gpu.conv1x1_to1_ok(dt, &xb.view(cg.in_shape()), &yv));
        gpu.conv1x1_to1_forward(xb.view(cg.in_shape()), wb.ptr(), Some(bb.ptr()), yv, 0.1)
            .unwrap();
        let conv = conv_fwd(&g, &x, &w);
        let got = gpu.download(&yb).unwrap();
        let got_y: Vec<f32> = got.iter().skip(1).step_by(2).copied().collect();
        assert!(
            got.iter().step_by(2).all(|&v| v == 7.0),
            "{dt:?}: channel 0 touched"
        );
        let want_y: Vec<f32> = conv.iter().map(|&v| act(v + b[0], 0.1)).collect();
        let e_y = rel_l2(&got_y, &want_y);
        // Weight gradient, accumulated onto 1.0.
        let dwb = gpu.upload(&[1.0f32; 32], DType::F32).unwrap();
        gpu.conv1x1_to1_backward_filter(
            xb.view(cg.in_shape()),
            dyb.view(cg.out_shape()),
            dwb.ptr(),
        )
        .unwrap();
        let want_dw: Vec<f32> = conv_bwd_filter(&g, &x, &dy)
            .into_iter()
            .map(|v| v + 1.0)
            .collect();
        let e_dw = rel_l2(&gpu.download(&dwb).unwrap(), &want_dw);
        let tol_y = if dt == DType::Bf16 { 1e-2 } else { 1e-6 };
        println!("{dt:?} conv1x1 32->1: y {e_y:.2e}, dw {e_dw:.2e}");
        assert!(
            e_y <= tol_y && e_dw <= 1e-5,
            "{dt:?}: y {e_y:e}, dw {e_dw:e}"
        );
    }
}

/// cuDNN's fused conv + bias + ReLU forward (cudnnConvolutionBiasActivationForward) against the f64 CPU reference,
/// per precision, with the bias given in f32 and in the storage dtype as the backend does. Shapes where cuDNN refuses
/// the fused call are listed (the backend then uses conv + its own bias/activation kernel, tested above).
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn fused_conv_bias_relu_matches_cpu() {
    let mut gpu = gpu();
    let mut rng = Rng::new(13);
    let mut ran = 0;
    for p in Precision::ALL {
        for g in geoms() {
            if g.stride != 1 || g.cin == 1 {
                continue;
            }
            let c = cg(&g);
            let fan = (g.cin * g.k * g.k) as f32;
            let dt = p.dtype();
            let r = |v: f32| if dt == DType::Bf16 { bf16_round(v) } else { v };
            let x: Vec<f32> = rng
                .vec(c.in_shape().len(), 1.0)
                .into_iter()
                .map(r)
                .collect();
            let w: Vec<f32> = rng
                .vec(c.weight_len(), 1.0 / fan.sqrt())
                .into_iter()
                .map(r)
                .collect();
            let bias: Vec<f32> = rng.vec(g.cout, 0.5).into_iter().map(r).collect();
            let xb = gpu.upload(&x, dt).unwrap();
            let wb = gpu.upload(&w, dt).unwrap();
            let b32 = gpu.upload(&bias, DType::F32).unwrap();
            let blp = gpu.upload(&bias, dt).unwrap();
            let yb = gpu.alloc(c.out_shape().len(), dt).unwrap();
            gpu.fill(&yb, f32::NAN).unwrap();
            let lp = (dt != DType::F32).then(|| blp.ptr());
            let ok = gpu
                .conv_forward_bias_relu(
                    p,
                    &c,
                    xb.view(c.in_shape()),
                    wb.ptr(),
                    b32.ptr(),
                    lp,
                    yb.view(c.out_shape()),
                )
                .unwrap();
            if !ok {
                println!("{p} {c}: cuDNN refuses the fused call");
                continue;
            }
            ran += 1;
            let want: Vec<f32> = conv_fwd(&g, &x, &w)
                .chunks(g.cout)
                .flat_map(|px| px.iter().zip(&bias).map(|(v, b)| act(v + b, 0.0)))
                .collect();
            let e = rel_l2(&gpu.download(&yb).unwrap(), &want);
            println!("{p} {c}: fused conv + bias + ReLU rel L2 {e:.2e}");
            assert!(e <= p.parity_tolerance(), "{p} {c}: {e:e}");
        }
    }
    println!(
        "fused conv + bias + ReLU ran on {ran} shapes: {:?}",
        gpu.fused_choices()
    );
}

/// Transposed-conv forward version 2 (GEMM + pixel shuffle with bias and activation fused) written into a channel
/// slice of a wider (concatenation) buffer, per precision, against the f64 CPU reference; channels outside the slice
/// untouched.
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn conv_transpose_gemm_shuffle_into_slice() {
    let mut gpu = gpu();
    let mut rng = Rng::new(14);
    let (n, h, w, cin, cout) = (2, 7, 9, 32, 16);
    for p in Precision::ALL {
        for (off, wc, slope) in [(16usize, 32usize, 1.0f32), (0, 16, 0.0), (8, 40, 0.1)] {
            let dt = p.dtype();
            let r = |v: f32| if dt == DType::Bf16 { bf16_round(v) } else { v };
            let x: Vec<f32> = rng.vec(n * h * w * cin, 1.0).into_iter().map(r).collect();
            let wt: Vec<f32> = rng.vec(cin * 4 * cout, 0.25).into_iter().map(r).collect();
            let bias = rng.vec(cout, 0.5);
            let xs = Nhwc::new(n, h, w, cin);
            let whole = Nhwc::new(n, 2 * h, 2 * w, wc);
            let xb = gpu.upload(&x, dt).unwrap();
            let wb = gpu.upload(&wt, dt).unwrap();
            let bb = gpu.upload(&bias, DType::F32).unwrap();
            let cat = gpu.alloc(whole.len(), dt).unwrap();
            gpu.fill(&cat, 7.0).unwrap();
            let ran = gpu
                .conv_transpose_forward_bias_act(
                    p,
                    xb.view(xs),
                    wb.ptr(),
                    Some(bb.ptr()),
                    cat.channels(whole, off, cout),
                    slope,
                )
                .unwrap();
            let v = dt.vec_len();
            assert_eq!(
                ran,
                off % v == 0 && wc % v == 0,
                "{p}: version 2 applies exactly when the slice is 16-byte aligned"
            );
            if !ran {
                continue;
            }
            let conv = convt_fwd(n, h, w, cin, cout, &x, &wt);
            let got = gpu.download(&cat).unwrap();
            let (mut gy, mut wy) = (Vec::new(), Vec::new());
            for px in 0..whole.pixels() {
                for c in 0..wc {
                    let g = got[px * wc + c];
                    if (off..off + cout).contains(&c) {
                        gy.push(g);
                        wy.push(act(conv[px * cout + c - off] + bias[c - off], slope));
                    } else {
                        assert_eq!(g, 7.0, "{p}: channel {c} outside the slice was touched");
                    }
                }
            }
            let e = rel_l2(&gy, &wy);
            println!("{p} convT2x2 {cin}->{cout} into channels {off}.. of {wc}: rel L2 {e:.2e}");
            assert!(e <= p.parity_tolerance(), "{p}: {e:e}");
        }
    }
}

/// Sets the process-wide engine mode for one test and restores `Auto` afterwards, even on panic.
struct ModeGuard;
impl ModeGuard {
    fn set(m: EngineMode) -> ModeGuard {
        engine::set_engine_mode(m);
        ModeGuard
    }
}
impl Drop for ModeGuard {
    fn drop(&mut self) {
        engine::set_engine_mode(EngineMode::Auto);
    }
}

/// One conv call in each direction with engines forced; returns the three outputs (None where cuDNN's backend API
/// has no acceptable engine for that call, which `Force` reports as `NoEngine`).
#[allow(clippy::too_many_arguments)]
fn forced_conv(
    gpu: &mut Gpu,
    p: Precision,
    g: &G,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    beta: f32,
    init: &[Vec<f32>; 3],
) -> [Option<Vec<f32>>; 3] {
    let c = cg(g);
    let dt = p.dtype();
    let xb = gpu.upload(x, dt).unwrap();
    let wb = gpu.upload(w, dt).unwrap();
    let dyb = gpu.upload(dy, dt).unwrap();
    let yb = gpu.upload(&init[0], dt).unwrap();
    let dxb = gpu.upload(&init[1], dt).unwrap();
    let dwb = gpu.upload(&init[2], dt).unwrap();
    let (xs, ys) = (c.in_shape(), c.out_shape());
    let ok = |r: Result<(), CudaError>| match r {
        Ok(()) => true,
        Err(CudaError::NoEngine { .. }) => false,
        Err(e) => panic!("{p} {c}: {e}"),
    };
    let f = ok(gpu.conv_forward(p, &c, xb.view(xs), wb.ptr(), yb.view(ys), beta));
    let d = ok(gpu.conv_backward_data(p, &c, dyb.view(ys), wb.ptr(), dxb.view(xs), beta));
    let b = ok(gpu.conv_backward_filter(p, &c, xb.view(xs), dyb.view(ys), dwb.ptr(), beta));
    [
        f.then(|| gpu.download(&yb).unwrap()),
        d.then(|| gpu.download(&dxb).unwrap()),
        b.then(|| gpu.download(&dwb).unwrap()),
    ]
}

/// The backend-API engines (engine.rs) forced for every direction and precision, beta 0 and beta 1, against the
/// CPU reference (f32 ≤ 1e-5, tf32 ≤ 1e-3, bf16 ≤ 1e-2). The U-Net inner layer must have an engine everywhere;
/// other shapes may lack one (printed).
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn backend_engines_match_cpu_forced() {
    let _mode = ModeGuard::set(EngineMode::Force);
    let mut gpu = gpu();
    let mut rng = Rng::new(11);
    let mut missing = Vec::new();
    for p in Precision::ALL {
        for (gi, g) in geoms().iter().enumerate() {
            let c = cg(g);
            let fan = (g.cin * g.k * g.k) as f32;
            let x = rng.vec(c.in_shape().len(), 1.0);
            let w = rng.vec(c.weight_len(), 1.0 / fan.sqrt());
            let dy = rng.vec(c.out_shape().len(), 1.0);
            let want = [
                conv_fwd(g, &x, &w),
                conv_bwd_data(g, &dy, &w),
                conv_bwd_filter(g, &x, &dy),
            ];
            let round = |v: &[f32]| -> Vec<f32> {
                if p == Precision::Bf16 {
                    v.iter().map(|&a| bf16_round(a)).collect()
                } else {
                    v.to_vec()
                }
            };
            for beta in [0.0f32, 1.0] {
                let init = [
                    rng.vec(want[0].len(), 1.0),
                    rng.vec(want[1].len(), 1.0),
                    rng.vec(want[2].len(), 0.1),
                ];
                let got = forced_conv(&mut gpu, p, g, &x, &w, &dy, beta, &init);
                for (i, dir) in ["forward", "backward-data", "backward-filter"]
                    .iter()
                    .enumerate()
                {
                    let Some(got) = &got[i] else {
                        assert_ne!(gi, 1, "{p} {c} {dir}: no engine for the U-Net layer");
                        missing.push(format!("{p} {c} {dir} beta {beta}"));
                        continue;
                    };
                    let want: Vec<f32> = if beta == 1.0 {
                        want[i]
                            .iter()
                            .zip(round(&init[i]))
                            .map(|(a, b)| a + b)
                            .collect()
                    } else {
                        want[i].clone()
                    };
                    let e = rel_l2(got, &want);
                    println!("{p} {c} {dir} beta {beta}: engine rel L2 {e:.2e}");
                    assert!(
                        e <= p.parity_tolerance(),
                        "{p} {c} {dir} beta {beta}: rel L2 {e:e} > {}",
                        p.parity_tolerance()
                    );
                }
            }
        }
    }
    let choices = gpu.engine_choices();
    for ch in &choices {
        println!(
            "{} {} {} beta {}: legacy algo {} {:.4} ms, engine {} {:?} ms",
            ch.precision,
            ch.geom,
            ch.direction.name(),
            ch.beta,
            ch.legacy_algo,
            ch.legacy_ms,
            ch.engine.as_ref().map_or("-".into(), |e| e.name()),
            ch.engine_ms
        );
        if ch.uses_engine {
            let e = ch.engine.as_ref().unwrap();
            if ch.precision == Precision::F32 {
                assert!(
                    !e.numerical.contains(&0),
                    "f32 mode ran a tensor-core engine {}",
                    e.name()
                );
            }
            assert!(
                !e.numerical.contains(&1),
                "down-converting engine {}",
                e.name()
            );
        }
    }
    let used = choices.iter().filter(|c| c.uses_engine).count();
    println!(
        "engines used for {used} of {} calls; none for: {missing:?}",
        choices.len()
    );
    assert!(
        used >= 3 * 3 * 2,
        "the U-Net layer alone makes 18 forced engine calls"
    );
}

/// Deterministic mode with engines forced: no NONDETERMINISTIC engine is picked, two runs of the weight gradient
/// (where atomics would show) are bit-identical, and both match the CPU.
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn backend_engines_deterministic_mode() {
    let _mode = ModeGuard::set(EngineMode::Force);
    let mut gpu = gpu();
    gpu.deterministic = true;
    let mut rng = Rng::new(12);
    let g = G {
        n: 4,
        h: 64,
        w: 64,
        cin: 64,
        cout: 64,
        k: 3,
        pad: 1,
        stride: 1,
    };
    let c = cg(&g);
    let x = rng.vec(c.in_shape().len(), 1.0);
    let w = rng.vec(c.weight_len(), 1.0 / 24.0);
    let dy = rng.vec(c.out_shape().len(), 1.0);
    let zeros = [
        vec![0.0; c.out_shape().len()],
        vec![0.0; c.in_shape().len()],
        vec![0.0; c.weight_len()],
    ];
    for p in Precision::ALL {
        let a = forced_conv(&mut gpu, p, &g, &x, &w, &dy, 0.0, &zeros);
        let b = forced_conv(&mut gpu, p, &g, &x, &w, &dy, 0.0, &zeros);
        let want = [
            conv_fwd(&g, &x, &w),
            conv_bwd_data(&g, &dy, &w),
            conv_bwd_filter(&g, &x, &dy),
        ];
        for i in 0..3 {
            let (ga, gb) = (a[i].as_ref().unwrap(), b[i].as_ref().unwrap());
            assert!(
                ga.iter().zip(gb).all(|(u, v)| u.to_bits() == v.to_bits()),
                "{p} direction {i}: two deterministic runs differ"
            );
            let e = rel_l2(ga, &want[i]);
            println!("{p} {c} direction {i}: deterministic engine rel L2 {e:.2e}");
            assert!(e <= p.parity_tolerance(), "{p} direction {i}: rel L2 {e:e}");
        }
    }
    for ch in gpu.engine_choices() {
        assert!(ch.uses_engine);
        let e = ch.engine.unwrap();
        println!(
            "{} {} {}: {}",
            ch.precision,
            ch.geom,
            ch.direction.name(),
            e.name()
        );
        assert!(
            !e.numerical.contains(&4),
            "non-deterministic engine {}",
            e.name()
        );
    }
}

/// cryoden's own 3x3 conv kernels (device/mma.rs: bf16; device/x3.rs: f32 as three TF32 products) against the f64
/// CPU reference (bf16: on bf16-rounded inputs), for every channel configuration they cover, sizes that are not multiples of the 16-pixel tile, inputs and outputs
/// that are channel slices of wider buffers (channels outside the slice must stay untouched), bias + ReLU /
/// LeakyReLU / identity, accumulation, the weight gradient added onto existing values, and grids capped below the
/// tile count (blocks looping over tiles).
/// Bounds: bf16's y and dx are rounded to bf16 once (relative L2 ≈ 1e-3), so ≤ 4e-3, its dw is accumulated and
/// stored in f32, so ≤ 1e-5; f32's are all ≤ 1e-6 (the per-op bound is 1e-5).
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn mma_conv_matches_cpu() {
    let mut gpu = gpu();
    gpu.mma_conv = MmaMode::Force;
    if gpu.info.compute_capability.0 < 8 {
        println!("skipped: compute capability below 8.0 has no bf16 / TF32 MMA");
        return;
    }
    own_convs_match_cpu(&mut gpu, DType::Bf16);
    own_convs_match_cpu(&mut gpu, DType::F32);
    let dt = DType::Bf16;
    // A shape the kernels do not cover is refused, not miscomputed.
    let g = ConvGeom {
        n: 1,
        h: 8,
        w: 8,
        cin: 16,
        cout: 32,
        k: 3,
        pad: 1,
        stride: 1,
    };
    let xb = gpu.alloc(g.in_shape().len(), dt).unwrap();
    let yb = gpu.alloc(g.out_shape().len(), dt).unwrap();
    assert!(!gpu.mma_conv_ok(&g, &xb.view(g.in_shape()), &yb.view(g.out_shape())));
    assert!(gpu
        .mma_conv_forward(
            &g,
            xb.view(g.in_shape()),
            0,
            None,
            yb.view(g.out_shape()),
            0.0,
            false
        )
        .is_err());
}

/// One dtype's own kernels (bf16: conv_mma.cu; f32: the 3×TF32 ones) against the CPU, every variant, uncapped and
/// with 2 blocks, on channel slices, in all three directions.
fn own_convs_match_cpu(gpu: &mut Gpu, dt: DType) {
    let mut rng = Rng::new(23);
    let f32 = dt == DType::F32;
    let r = |v: Vec<f32>| -> Vec<f32> {
        if f32 {
            v
        } else {
            v.into_iter().map(bf16_round).collect()
        }
    };
    // (n, h, w, cin, cout, x buffer channels, x offset, y buffer channels, y offset, slope, accumulate)
    let mut cases = vec![
        (
            2usize, 17usize, 19usize, 32usize, 32usize, 32usize, 0usize, 32usize, 0usize, 0.0f32,
            false,
        ),
        (1, 33, 40, 64, 32, 64, 0, 64, 32, 0.0, false),
        (2, 16, 16, 32, 64, 96, 32, 64, 0, 0.1, true),
        (1, 9, 50, 64, 64, 128, 64, 72, 8, 1.0, false),
        (3, 40, 7, 32, 32, 64, 32, 64, 0, 0.0, true),
    ];
    if f32 {
        // The 3×TF32 kernels also take 128 channels in (and so out, for backward-data), and cout 96 forward.
        cases.extend([
            (1, 12, 21, 128, 64, 128, 0, 64, 0, 0.0, false),
            (2, 9, 16, 64, 128, 96, 32, 160, 32, 0.1, true),
            (1, 17, 18, 128, 128, 128, 0, 128, 0, 1.0, false),
        ]);
    }
    for (n, h, w, cin, cout, xc, xo, yc, yo, slope, accumulate) in cases {
        let g = G {
            n,
            h,
            w,
            cin,
            cout,
            k: 3,
            pad: 1,
            stride: 1,
        };
        let c = cg(&g);
        let xs_whole = Nhwc::new(n, h, w, xc);
        let ys_whole = Nhwc::new(n, h, w, yc);
        let xw = r(rng.vec(xs_whole.len(), 1.0));
        let yw = r(rng.vec(ys_whole.len(), 1.0));
        let wt = r(rng.vec(c.weight_len(), 1.0 / ((9 * cin) as f32).sqrt()));
        let bias = rng.vec(cout, 0.3);
        let slice = |whole: &[f32], wc: usize, off: usize, ch: usize| -> Vec<f32> {
            whole
                .chunks(wc)
                .flat_map(|p| p[off..off + ch].to_vec())
                .collect()
        };
        let x = slice(&xw, xc, xo, cin);
        let y0 = slice(&yw, yc, yo, cout);
        let counts = gpu.mma_variants(&c, dt);
        // Uncapped, each block gets at most one tile of these small images; capped at 2 blocks, each block loops over
        // several tiles (the prefetch / buffer-swap paths and the weight gradient's sums across tiles).
        for (cap, v) in [None, Some(2)]
            .into_iter()
            .flat_map(|cap| (0..*counts.iter().max().unwrap()).map(move |v| (cap, v)))
        {
            // Each direction clamps v to its own variant count.
            gpu.mma_variant = Some(v);
            gpu.mma_max_blocks = cap;
            let xb = gpu.upload(&xw, dt).unwrap();
            let yb = gpu.upload(&yw, dt).unwrap();
            let wb = gpu.upload(&wt, dt).unwrap();
            let bb = gpu.upload(&bias, DType::F32).unwrap();
            let xv = xb.channels(xs_whole, xo, cin);
            let yv = yb.channels(ys_whole, yo, cout);
            assert!(gpu.mma_conv_ok(&c, &xv, &yv), "{c} {dt:?}: not supported");
            let label = format!(
                "{c} variant {v}, blocks {cap:?}: x[{xo}..] of {xc}, y[{yo}..] of {yc}, slope {slope}, acc {accumulate}"
            );
            // Forward: y = act(conv + bias) (+ y).
            assert!(gpu
                .mma_conv_forward(&c, xv, wb.ptr(), Some(bb.ptr()), yv, slope, accumulate)
                .unwrap());
            let conv = conv_fwd(&g, &x, &wt);
            let want: Vec<f32> = conv
                .iter()
                .enumerate()
                .map(|(i, v)| act(v + bias[i % cout], slope) + if accumulate { y0[i] } else { 0.0 })
                .collect();
            let got_whole = gpu.download(&yb).unwrap();
            for (i, (gv, wv)) in got_whole.iter().zip(&yw).enumerate() {
                let ch = i % yc;
                if !(yo..yo + cout).contains(&ch) {
                    assert_eq!(
                        gv, wv,
                        "{label}: forward touched channel {ch} outside its slice"
                    );
                }
            }
            let e_y = rel_l2(&slice(&got_whole, yc, yo, cout), &want);
            // Backward-data: dy is the y slice's values, dx written into x's slice (+ x when accumulating).
            let dy = slice(&got_whole, yc, yo, cout);
            let dxb = gpu.upload(&xw, dt).unwrap();
            let dxv = dxb.channels(xs_whole, xo, cin);
            assert!(gpu
                .mma_conv_backward_data(&c, yv, wb.ptr(), dxv, accumulate, None)
                .unwrap());
            let want_dx: Vec<f32> = conv_bwd_data(&g, &dy, &wt)
                .iter()
                .enumerate()
                .map(|(i, v)| v + if accumulate { x[i] } else { 0.0 })
                .collect();
            let got_dx_whole = gpu.download(&dxb).unwrap();
            for (i, (gv, wv)) in got_dx_whole.iter().zip(&xw).enumerate() {
                let ch = i % xc;
                if !(xo..xo + cin).contains(&ch) {
                    assert_eq!(
                        gv, wv,
                        "{label}: backward-data touched channel {ch} outside its slice"
                    );
                }
            }
            let e_dx = rel_l2(&slice(&got_dx_whole, xc, xo, cin), &want_dx);
            // Weight gradient, added onto 1.0.
            let dwb = gpu.upload(&vec![1.0; c.weight_len()], DType::F32).unwrap();
            assert!(gpu.mma_conv_backward_filter(&c, xv, yv, dwb.ptr()).unwrap());
            let want_dw: Vec<f32> = conv_bwd_filter(&g, &x, &dy)
                .into_iter()
                .map(|v| v + 1.0)
                .collect();
            let e_dw = rel_l2(&gpu.download(&dwb).unwrap(), &want_dw);
            println!("mma {dt:?} {label}: y {e_y:.2e}, dx {e_dx:.2e}, dw {e_dw:.2e}");
            // bf16: outputs rounded to bf16, weight gradients summed in f32. f32 (3×TF32): f32 accuracy; the
            // issue's per-op bound is 1e-5, cuDNN's FMA kernels land at ~1e-7.
            let (bound_y, bound_dw) = if f32 { (1e-6, 1e-6) } else { (4e-3, 1e-5) };
            assert!(
                e_y <= bound_y && e_dx <= bound_y && e_dw <= bound_dw,
                "{label}: y {e_y:e}, dx {e_dx:e}, dw {e_dw:e}"
            );
        }
    }
    gpu.mma_variant = None;
    gpu.mma_max_blocks = None;
}

/// The fused activation backwards (the pool backward, the output layer's backward-data and our MMA backward-data,
/// each followed by the previous layer's bias + activation backward in the same kernel) give the same dx, bit for
/// bit, as the two passes they replace, and the same bias gradient up to summation order; the identity's in-place
/// bias gradient leaves dy as it was.
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn fused_activation_backward_matches_two_passes() {
    let mut gpu = gpu();
    let mut rng = Rng::new(31);
    let dbias = |gpu: &mut Gpu, c: usize| {
        let b = gpu.alloc(c, DType::F32).unwrap();
        gpu.fill(&b, 0.5).unwrap();
        b
    };
    let check = |label: &str, dx: (Vec<f32>, Vec<f32>), db: (Vec<f32>, Vec<f32>)| {
        assert!(
            dx.0.iter()
                .zip(&dx.1)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{label}: dx differs from the two passes"
        );
        let e = rel_l2(&db.0, &db.1);
        println!("fused {label}: dx identical, db {e:.2e}");
        assert!(e <= 1e-5, "{label}: bias gradient {e:e}");
    };
    // Max-pool backward (accumulating into a concat slice, as the U-Net does) + ReLU / LeakyReLU backward: odd sizes
    // take the dropped-row/column path, strided slices the channel strides.
    for dt in [DType::F32, DType::Bf16] {
        for (n, h, w, c, slope, accumulate) in [
            (2usize, 8usize, 10usize, 32usize, 0.0f32, true),
            (1, 7, 9, 16, 0.1, false),
            (3, 5, 6, 8, 0.0, true),
            (1, 33, 17, 64, 0.0, false),
        ] {
            let (xs, ys) = (Nhwc::new(n, h, w, c), Nhwc::new(n, h / 2, w / 2, c));
            let cat = Nhwc::new(n, h, w, 2 * c);
            let x = rng.vec(cat.len(), 1.0);
            let dy = rng.vec(ys.len(), 1.0);
            let g0 = rng.vec(cat.len(), 1.0);
            let xb = gpu.upload(&x, dt).unwrap();
            let dyb = gpu.upload(&dy, dt).unwrap();
            let mut got = Vec::new();
            for fused in [false, true] {
                let gb = gpu.upload(&g0, dt).unwrap();
                let db = dbias(&mut gpu, c);
                let (xv, gv) = (xb.channels(cat, c, c), gb.channels(cat, c, c));
                if fused {
                    gpu.maxpool2_backward_act(
                        xv,
                        dyb.view(ys),
                        gv,
                        accumulate,
                        slope,
                        Some(db.ptr()),
                    )
                    .unwrap();
                } else {
                    gpu.maxpool2_backward(xv, dyb.view(ys), gv, accumulate)
                        .unwrap();
                    gpu.act_backward(gv, Some(xv), gv, slope, Some((db.ptr(), DType::F32)), true)
                        .unwrap();
                }
                got.push((gpu.download(&gb).unwrap(), gpu.download(&db).unwrap()));
            }
            let (b, a) = (got.pop().unwrap(), got.pop().unwrap());
            check(
                &format!("maxpool {dt:?} {xs} slope {slope} acc {accumulate}"),
                (a.0, b.0),
                (a.1, b.1),
            );
        }
    }
    // Backward-data of the 1x1 conv to one channel + the previous layer's ReLU backward.
    for dt in [DType::F32, DType::Bf16] {
        let (np, c) = (5000usize, 32usize);
        let (s1, sc) = (Nhwc::new(1, 1, np, 1), Nhwc::new(1, 1, np, c));
        let dyb = gpu.upload(&rng.vec(np, 1.0), dt).unwrap();
        let wb = gpu.upload(&rng.vec(c, 0.5), dt).unwrap();
        let yb = gpu.upload(&rng.vec(np * c, 1.0), dt).unwrap();
        let mut got = Vec::new();
        for fused in [false, true] {
            let dxb = gpu.alloc(np * c, dt).unwrap();
            gpu.fill(&dxb, f32::NAN).unwrap();
            let db = dbias(&mut gpu, c);
            if fused {
                let act = cryoden_cuda::ActGrad {
                    y: yb.view(sc),
                    slope: 0.0,
                    db: Some(db.ptr()),
                };
                gpu.conv1x1_to1_backward_data_act(dyb.view(s1), wb.ptr(), dxb.view(sc), act)
                    .unwrap();
            } else {
                gpu.conv1x1_to1_backward_data(dyb.view(s1), wb.ptr(), dxb.view(sc), false)
                    .unwrap();
                let (dxv, yv) = (dxb.view(sc), yb.view(sc));
                gpu.act_backward(dxv, Some(yv), dxv, 0.0, Some((db.ptr(), DType::F32)), true)
                    .unwrap();
            }
            got.push((gpu.download(&dxb).unwrap(), gpu.download(&db).unwrap()));
        }
        let (b, a) = (got.pop().unwrap(), got.pop().unwrap());
        check(&format!("1x1->1 {dt:?}"), (a.0, b.0), (a.1, b.1));
    }
    // Our MMA backward-data + ReLU backward, every variant, uncapped and with 2 blocks looping over tiles: 32 -> 32
    // runs the fused kernels, 64 -> 32 the unfused kernel + act_backward. The activation output is a strided slice.
    if gpu.info.compute_capability.0 >= 8 {
        gpu.mma_conv = MmaMode::Force;
        let dt = DType::Bf16;
        for (n, h, w, cin, cout) in [
            (2usize, 17usize, 19usize, 32usize, 32usize),
            (1, 40, 33, 32, 32),
            (1, 9, 20, 64, 32),
        ] {
            let g = ConvGeom {
                n,
                h,
                w,
                cin,
                cout,
                k: 3,
                pad: 1,
                stride: 1,
            };
            let xs = g.in_shape();
            let cat = Nhwc::new(n, h, w, 2 * cin);
            let yb = gpu.upload(&rng.vec(g.out_shape().len(), 1.0), dt).unwrap();
            let xb = gpu.upload(&rng.vec(cat.len(), 1.0), dt).unwrap();
            let wb = gpu
                .upload(
                    &rng.vec(9 * cin * cout, 1.0 / ((9 * cout) as f32).sqrt()),
                    dt,
                )
                .unwrap();
            let count = gpu.mma_variants(&g, DType::Bf16)[1];
            for (cap, v) in [None, Some(2)]
                .into_iter()
                .flat_map(|cap| (0..count).map(move |v| (cap, v)))
            {
                gpu.mma_variant = Some(v);
                gpu.mma_max_blocks = cap;
                let xv = xb.channels(cat, cin, cin);
                let mut got = Vec::new();
                for fused in [false, true] {
                    let dxb = gpu.alloc(xs.len(), dt).unwrap();
                    gpu.fill(&dxb, f32::NAN).unwrap();
                    let db = dbias(&mut gpu, cin);
                    let dxv = dxb.view(xs);
                    if fused {
                        let act = cryoden_cuda::ActGrad {
                            y: xv,
                            slope: 0.0,
                            db: Some(db.ptr()),
                        };
                        assert!(gpu
                            .mma_conv_backward_data(
                                &g,
                                yb.view(g.out_shape()),
                                wb.ptr(),
                                dxv,
                                false,
                                Some(act)
                            )
                            .unwrap());
                    } else {
                        assert!(gpu
                            .mma_conv_backward_data(
                                &g,
                                yb.view(g.out_shape()),
                                wb.ptr(),
                                dxv,
                                false,
                                None
                            )
                            .unwrap());
                        gpu.act_backward(
                            dxv,
                            Some(xv),
                            dxv,
                            0.0,
                            Some((db.ptr(), DType::F32)),
                            true,
                        )
                        .unwrap();
                    }
                    got.push((gpu.download(&dxb).unwrap(), gpu.download(&db).unwrap()));
                }
                let (b, a) = (got.pop().unwrap(), got.pop().unwrap());
                check(
                    &format!("mma {g} variant {v} blocks {cap:?}"),
                    (a.0, b.0),
                    (a.1, b.1),
                );
            }
        }
        gpu.mma_variant = None;
        gpu.mma_max_blocks = None;
    }
    // The identity's bias gradient in place: dy unchanged, db = its sum.
    for dt in [DType::F32, DType::Bf16] {
        let (np, c) = (3001usize, 32usize);
        let s = Nhwc::new(1, 1, np, c);
        let dy: Vec<f32> = rng
            .vec(np * c, 1.0)
            .into_iter()
            .map(|v| if dt == DType::Bf16 { bf16_round(v) } else { v })
            .collect();
        let dyb = gpu.upload(&dy, dt).unwrap();
        let db = dbias(&mut gpu, c);
        gpu.act_backward(
            dyb.view(s),
            None,
            dyb.view(s),
            1.0,
            Some((db.ptr(), DType::F32)),
            true,
        )
        .unwrap();
        assert_eq!(
            gpu.download(&dyb).unwrap(),
            dy,
            "{dt:?}: identity changed dy"
        );
        let mut want = vec![0.5f64; c];
        for p in 0..np {
            for k in 0..c {
                want[k] += dy[p * c + k] as f64;
            }
        }
        let want: Vec<f32> = want.into_iter().map(|v| v as f32).collect();
        let e = rel_l2(&gpu.download(&db).unwrap(), &want);
        assert!(e <= 1e-5, "{dt:?}: identity bias gradient {e:e}");
    }
}

/// cryoden's own transposed-conv forward (bf16, the U-Net's two upper levels) against the CPU, every variant, with
/// and without the grid capped at 2 blocks (blocks loop over tiles), into a channel slice whose other channels must
/// stay untouched; pixel counts that are not whole 64-pixel tiles.
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn mma_convt_matches_cpu() {
    let mut gpu = gpu();
    if gpu.info.compute_capability.0 < 8 {
        println!("skipped: compute capability below 8.0 has no bf16 MMA");
        return;
    }
    let mut rng = Rng::new(41);
    let dt = DType::Bf16;
    for (n, h, w, cin, cout, off, wc, slope) in [
        (
            2usize, 7usize, 9usize, 64usize, 32usize, 0usize, 64usize, 1.0f32,
        ),
        (1, 13, 11, 64, 32, 32, 64, 0.0),
        (3, 5, 4, 128, 64, 0, 128, 0.1),
        (1, 16, 16, 128, 64, 8, 72, 1.0),
    ] {
        let x: Vec<f32> = rng
            .vec(n * h * w * cin, 1.0)
            .into_iter()
            .map(bf16_round)
            .collect();
        let wt: Vec<f32> = rng
            .vec(cin * 4 * cout, 1.0 / (cin as f32).sqrt())
            .into_iter()
            .map(bf16_round)
            .collect();
        let bias = rng.vec(cout, 0.5);
        let xs = Nhwc::new(n, h, w, cin);
        let whole = Nhwc::new(n, 2 * h, 2 * w, wc);
        let xb = gpu.upload(&x, dt).unwrap();
        let wb = gpu.upload(&wt, dt).unwrap();
        let bb = gpu.upload(&bias, DType::F32).unwrap();
        let conv = convt_fwd(n, h, w, cin, cout, &x, &wt);
        let variants = gpu.mma_convt_variants(cin, cout);
        assert!(variants > 0, "{cin}->{cout}: no kernel");
        for (cap, v) in [None, Some(2)]
            .into_iter()
            .flat_map(|cap| (0..variants).map(move |v| (cap, v)))
        {
            gpu.mma_variant = Some(v);
            gpu.mma_max_blocks = cap;
            let cat = gpu.alloc(whole.len(), dt).unwrap();
            gpu.fill(&cat, 7.0).unwrap();
            let ran = gpu
                .mma_convt_forward(
                    xb.view(xs),
                    wb.ptr(),
                    Some(bb.ptr()),
                    cat.channels(whole, off, cout),
                    slope,
                )
                .unwrap();
            assert!(ran, "{cin}->{cout} variant {v}: did not run");
            let got = gpu.download(&cat).unwrap();
            let e = slice_error(&got, wc, off, cout, 7.0, |i| {
                act(conv[i] + bias[i % cout], slope)
            });
            println!("mma convT2x2 {xs} {cin}->{cout} into {off}.. of {wc}, slope {slope}, variant {v}, blocks {cap:?}: rel L2 {e:.2e}");
            assert!(e <= 4e-3, "variant {v}: {e:e}");
        }
    }
    gpu.mma_variant = None;
    gpu.mma_max_blocks = None;
}

/// The first layer (one input channel) on the tensor cores against the CPU, every variant, into a channel slice
/// whose other channels must stay untouched; image sizes that are not whole tiles; x with a channel stride.
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn mma_conv_in3_matches_cpu() {
    let mut gpu = gpu();
    if gpu.info.compute_capability.0 < 8 {
        println!("skipped: compute capability below 8.0 has no bf16 MMA");
        return;
    }
    let mut rng = Rng::new(43);
    let dt = DType::Bf16;
    for (n, h, w, cout, xc, wc, off, slope) in [
        (
            2usize, 17usize, 19usize, 32usize, 1usize, 32usize, 0usize, 0.0f32,
        ),
        (1, 40, 33, 32, 2, 64, 32, 0.1),
        (3, 9, 16, 64, 1, 72, 8, 1.0),
        (1, 1, 5, 32, 1, 32, 0, 0.0),
    ] {
        let g = G {
            n,
            h,
            w,
            cin: 1,
            cout,
            k: 3,
            pad: 1,
            stride: 1,
        };
        let xwhole = Nhwc::new(n, h, w, xc);
        let xw: Vec<f32> = rng
            .vec(xwhole.len(), 1.0)
            .into_iter()
            .map(bf16_round)
            .collect();
        let x: Vec<f32> = xw.chunks(xc).map(|p| p[0]).collect();
        let wt: Vec<f32> = rng.vec(cout * 9, 0.5).into_iter().map(bf16_round).collect();
        let bias = rng.vec(cout, 0.3);
        let whole = Nhwc::new(n, h, w, wc);
        let xb = gpu.upload(&xw, dt).unwrap();
        let wb = gpu.upload(&wt, dt).unwrap();
        let bb = gpu.upload(&bias, DType::F32).unwrap();
        let conv = conv_fwd(&g, &x, &wt);
        let variants = gpu.mma_conv_in3_variants(cout);
        assert!(variants > 0, "1->{cout}: no kernel");
        for v in 0..variants {
            gpu.mma_variant = Some(v);
            let cat = gpu.alloc(whole.len(), dt).unwrap();
            gpu.fill(&cat, 7.0).unwrap();
            let xv = xb.channels(xwhole, 0, 1);
            let ran = gpu
                .mma_conv_in3_forward(
                    xv,
                    wb.ptr(),
                    Some(bb.ptr()),
                    cat.channels(whole, off, cout),
                    slope,
                )
                .unwrap();
            assert!(ran, "1->{cout} variant {v}: did not run");
            let got = gpu.download(&cat).unwrap();
            let e = slice_error(&got, wc, off, cout, 7.0, |i| {
                act(conv[i] + bias[i % cout], slope)
            });
            println!("mma conv3x3 1->{cout} on {n}x{h}x{w} (x stride {xc}) into {off}.. of {wc}, slope {slope}, variant {v}: rel L2 {e:.2e}");
            assert!(e <= 4e-3, "variant {v}: {e:e}");
        }
        // Weight gradient, added onto 1.0, with dy the slice just written; uncapped and with 2 blocks looping
        // over the tiles.
        let dy: Vec<f32> = rng
            .vec(n * h * w * cout, 1.0)
            .into_iter()
            .map(bf16_round)
            .collect();
        let dyb = gpu.upload(&dy, dt).unwrap();
        let want: Vec<f32> = conv_bwd_filter(&g, &x, &dy)
            .into_iter()
            .map(|v| v + 1.0)
            .collect();
        let wv = gpu.mma_conv_in3_wgrad_variants(cout);
        for (cap, v) in [None, Some(2)]
            .into_iter()
            .flat_map(|cap| (0..wv).map(move |v| (cap, v)))
        {
            gpu.mma_variant = Some(v);
            gpu.mma_max_blocks = cap;
            let dwb = gpu.upload(&vec![1.0; cout * 9], DType::F32).unwrap();
            let ran = gpu
                .mma_conv_in3_backward_filter(
                    xb.channels(xwhole, 0, 1),
                    dyb.view(Nhwc::new(n, h, w, cout)),
                    dwb.ptr(),
                )
                .unwrap();
            assert!(ran, "1->{cout} weight gradient variant {v}: did not run");
            let e = rel_l2(&gpu.download(&dwb).unwrap(), &want);
            println!("mma conv3x3 1->{cout} on {n}x{h}x{w} weight gradient, variant {v}, blocks {cap:?}: rel L2 {e:.2e}");
            assert!(e <= 1e-5, "weight gradient variant {v}: {e:e}");
        }
    }
    gpu.mma_variant = None;
    gpu.mma_max_blocks = None;
}

/// Relative L2 error of the `c` channels at `off` of a `wc`-channel buffer against `want(i)` (i: index into the
/// packed `c`-channel tensor), after checking that every other channel still holds `fill`.
fn slice_error(
    got: &[f32],
    wc: usize,
    off: usize,
    c: usize,
    fill: f32,
    want: impl Fn(usize) -> f32,
) -> f64 {
    let (mut g, mut w) = (Vec::new(), Vec::new());
    for (px, row) in got.chunks(wc).enumerate() {
        for (ch, &v) in row.iter().enumerate() {
            if (off..off + c).contains(&ch) {
                g.push(v);
                w.push(want(px * c + ch - off));
            } else {
                assert_eq!(v, fill, "channel {ch} outside the slice was touched");
            }
        }
    }
    rel_l2(&g, &w)
}

/// f32 convs as three TF32 passes (crate::split, forced on wherever accurate enough): forward and
/// backward-data against the CPU within the f32 bound, with beta 0 and beta 1 (accumulating onto a known output),
/// and every (shape, direction) must have passed the first-call check (else this would test the FMA path).
#[test]
#[ignore = "needs an NVIDIA GPU: run on the device with `--ignored`"]
fn f32_convs_as_three_tf32_passes_match_cpu() {
    let mut gpu = gpu();
    gpu.f32_split = cryoden_cuda::SplitMode::Force;
    let mut rng = Rng::new(21);
    let p = Precision::F32;
    let mut shapes: Vec<G> = geoms();
    for (cin, cout) in [(32, 32), (64, 32)] {
        shapes.push(G {
            n: 2,
            h: 96,
            w: 80,
            cin,
            cout,
            k: 3,
            pad: 1,
            stride: 1,
        });
    }
    for g in &shapes {
        let c = cg(g);
        let fan = (g.cin * g.k * g.k) as f32;
        let x = rng.vec(g.n * g.h * g.w * g.cin, 1.0);
        let w = rng.vec(c.weight_len(), 1.0 / fan.sqrt());
        let dy = rng.vec(c.out_shape().len(), 1.0);
        let (xb, wb, dyb) = (
            gpu.upload(&x, DType::F32).unwrap(),
            gpu.upload(&w, DType::F32).unwrap(),
            gpu.upload(&dy, DType::F32).unwrap(),
        );
        let (y0, dx0) = (rng.vec(dy.len(), 1.0), rng.vec(x.len(), 1.0));
        let (want_y, want_dx) = (conv_fwd(g, &x, &w), conv_bwd_data(g, &dy, &w));
        for beta in [0.0f32, 1.0] {
            let yb = gpu.upload(&y0, DType::F32).unwrap();
            let dxb = gpu.upload(&dx0, DType::F32).unwrap();
            let (xv, yv) = (xb.view(c.in_shape()), yb.view(c.out_shape()));
            gpu.conv_forward(p, &c, xv, wb.ptr(), yv, beta).unwrap();
            let (dyv, dxv) = (dyb.view(c.out_shape()), dxb.view(c.in_shape()));
            gpu.conv_backward_data(p, &c, dyv, wb.ptr(), dxv, beta)
                .unwrap();
            let plus = |base: &[f32], r: &[f32]| -> Vec<f32> {
                r.iter().zip(base).map(|(a, b)| a + beta * b).collect()
            };
            let ey = rel_l2(&gpu.download(&yb).unwrap(), &plus(&y0, &want_y));
            let edx = rel_l2(&gpu.download(&dxb).unwrap(), &plus(&dx0, &want_dx));
            println!("{c} beta {beta}: rel L2 forward {ey:.2e}, backward-data {edx:.2e}");
            assert!(ey <= 1e-5 && edx <= 1e-5, "{c} beta {beta}: {ey:e} {edx:e}");
        }
    }
    let choices = gpu.split_choices();
    for ch in &choices {
        println!(
            "{} {:?}: distance from FMA {:.2e}, FMA {:.3} ms, three TF32 passes {:.3} ms, used {}",
            ch.geom, ch.direction, ch.distance, ch.fma_ms, ch.split_ms, ch.used
        );
    }
    // Every shape's forward went through the check; backward-data too except the 1x1 output conv's (a direct
    // kernel, no cuDNN call).
    let direct = shapes.iter().filter(|g| g.k == 1 && g.cout == 1).count();
    assert_eq!(choices.len(), 2 * shapes.len() - direct);
    assert!(
        choices.iter().all(|c| c.used),
        "a shape failed the accuracy check"
    );
}

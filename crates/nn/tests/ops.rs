//! Every CPU op against a direct (naive) implementation, and its backward against central finite differences of
//! its forward. Tolerances: forward vs naive f64 reference 1e-4 relative to the output scale (f32 GEMM over up to
//! a few hundred terms); gradients vs finite differences 2e-3 relative to the gradient scale (f32 forward, step
//! 1e-2 on O(1) data, smooth or piecewise-linear ops with random inputs away from kinks/ties).

use cryoden_nn::{
    cpu::Cpu, Activation, Backend, ConvGeom, ConvTGeom, Dims, LossKind, PoolGeom, UpsampleGeom,
    View,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Checks `analytic[i] ≈ d f / d x[i]` on `samples` random indices by central differences.
fn fd_check(
    name: &str,
    x: &mut [f32],
    analytic: &[f32],
    samples: usize,
    f: &mut dyn FnMut(&[f32]) -> f64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let scale = analytic
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(1e-3);
    let h = 1e-2f32;
    for _ in 0..samples {
        let i = rng.random_range(0..x.len());
        let x0 = x[i];
        x[i] = x0 + h;
        let fp = f(x);
        x[i] = x0 - h;
        let fm = f(x);
        x[i] = x0;
        let num = ((fp - fm) / (2.0 * f64::from(h))) as f32;
        let err = (num - analytic[i]).abs();
        assert!(
            err <= 2e-3 * scale,
            "{name}[{i}]: numeric {num}, analytic {}, scale {scale}",
            analytic[i]
        );
    }
}

fn close(name: &str, got: &[f32], want: &[f64]) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= 1e-4 * scale,
            "{name}[{i}]: got {g}, want {w}"
        );
    }
}

/// Direct convolution, PyTorch weight layout `[cout, cin, k, k]`, NHWC dense in/out, f64.
fn naive_conv(
    d: Dims,
    cin: usize,
    cout: usize,
    k: usize,
    x: &[f32],
    w_torch: &[f32],
    b: &[f32],
) -> Vec<f64> {
    let pad = (k / 2) as isize;
    let mut y = vec![0.0f64; d.pixels() * cout];
    for n in 0..d.n {
        for yy in 0..d.h {
            for xx in 0..d.w {
                for o in 0..cout {
                    let mut s = f64::from(b[o]);
                    for ky in 0..k {
                        for kx in 0..k {
                            let sy = yy as isize + ky as isize - pad;
                            let sx = xx as isize + kx as isize - pad;
                            if sy < 0 || sx < 0 || sy >= d.h as isize || sx >= d.w as isize {
                                continue;
                            }
                            for c in 0..cin {
                                let xv = x[((n * d.h + sy as usize) * d.w + sx as usize) * cin + c];
                                let wv = w_torch[((o * cin + c) * k + ky) * k + kx];
                                s += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    y[((n * d.h + yy) * d.w + xx) * cout + o] = s;
                }
            }
        }
    }
    y
}

/// PyTorch `[a, b, kh, kw]` → internal `[a, kh, kw, b]`.
fn to_internal(t: &[f32], a: usize, b: usize, k: usize) -> Vec<f32> {
    let mut o = vec![0.0; t.len()];
    for i in 0..a {
        for j in 0..b {
            for y in 0..k {
                for x in 0..k {
                    o[((i * k + y) * k + x) * b + j] = t[((i * b + j) * k + y) * k + x];
                }
            }
        }
    }
    o
}

fn act_f64(act: Activation, v: f64) -> f64 {
    match act {
        Activation::Identity => v,
        Activation::Relu => v.max(0.0),
        Activation::LeakyRelu(s) => {
            if v > 0.0 {
                v
            } else {
                v * f64::from(s)
            }
        }
    }
}

/// conv forward (through strided views) vs naive, then all three gradients vs finite differences.
fn conv_case(d: Dims, cin: usize, cout: usize, k: usize, act: Activation, threads: usize) {
    conv_case_views(d, cin, cout, k, act, threads, false)
}

/// With `dense`, input and output are dense tensors (the implicit-GEMM path of narrow 3×3 convs).
fn conv_case_views(
    d: Dims,
    cin: usize,
    cout: usize,
    k: usize,
    act: Activation,
    threads: usize,
    dense: bool,
) {
    let be = Cpu::new(threads).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64((cin * 31 + cout * 7 + k) as u64);
    let g = ConvGeom {
        dims: d,
        cin,
        cout,
        k,
    };
    let px = d.pixels();
    let x = rand_vec(&mut rng, px * cin);
    let w_t = rand_vec(&mut rng, g.weight_len());
    let b = rand_vec(&mut rng, cout);
    // Parameter buffer: [pad 3][w internal][b]; x lives in channels [2, 2+cin) of a stride cin+3 buffer;
    // y in channels [1, 1+cout) of a stride cout+2 buffer: exercises offsets and views.
    let w_off = 3;
    let b_off = 3 + g.weight_len();
    let mut params = vec![0.0f32; b_off + cout];
    params[w_off..b_off].copy_from_slice(&to_internal(&w_t, cout, cin, k));
    params[b_off..].copy_from_slice(&b);
    let (xv, yv) = if dense {
        (View::dense(cin), View::dense(cout))
    } else {
        (View::channels(cin + 3, 2), View::channels(cout + 2, 1))
    };
    let embed = |dense: &[f32], c: usize, v: View| {
        let mut o = vec![7.0f32; px * v.stride];
        for p in 0..px {
            o[p * v.stride + v.offset..][..c].copy_from_slice(&dense[p * c..][..c]);
        }
        o
    };
    let extract = |buf: &[f32], c: usize, v: View| -> Vec<f32> {
        (0..px)
            .flat_map(|p| buf[p * v.stride + v.offset..][..c].to_vec())
            .collect()
    };
    let xb = embed(&x, cin, xv);
    let mut ws = be.alloc(be.conv_workspace_len(&g)).unwrap();
    let mut yb = vec![5.0f32; px * yv.stride];
    be.conv2d_forward(
        &g,
        &xb,
        xv,
        &params,
        w_off,
        Some(b_off),
        act,
        &mut yb,
        yv,
        &mut ws,
    )
    .unwrap();
    let y = extract(&yb, cout, yv);
    let want: Vec<f64> = naive_conv(d, cin, cout, k, &x, &w_t, &b)
        .into_iter()
        .map(|v| act_f64(act, v))
        .collect();
    close("conv forward", &y, &want);
    // Untouched channels outside the view keep their value.
    if !dense {
        assert_eq!(yb[0], 5.0);
    }

    // Backward with L = Σ r·y, checked on the linear conv (the activation's backward is checked on its own in
    // `bias_act_forward_and_backward`, with inputs kept away from the kink that finite differences cannot cross).
    let act = Activation::Identity;
    be.conv2d_forward(
        &g,
        &xb,
        xv,
        &params,
        w_off,
        Some(b_off),
        act,
        &mut yb,
        yv,
        &mut ws,
    )
    .unwrap();
    let r = rand_vec(&mut rng, px * cout);
    let mut dyb = embed(&r, cout, yv);
    let mut grads = vec![0.0f32; params.len()];
    be.bias_act_backward(
        px,
        cout,
        act,
        &yb,
        yv,
        &mut dyb,
        yv,
        &mut grads,
        Some(b_off),
    )
    .unwrap();
    be.conv2d_backward_filter(&g, &xb, xv, &dyb, yv, &mut grads, w_off, &mut ws)
        .unwrap();
    let mut dxb = embed(&vec![0.0; px * cin], cin, xv);
    be.conv2d_backward_data(&g, &dyb, yv, &params, w_off, &mut dxb, xv, false, &mut ws)
        .unwrap();
    let dx = extract(&dxb, cin, xv);
    if !dense {
        assert_eq!(dxb[0], 7.0, "backward-data wrote outside its view");
    }

    let loss = |be: &Cpu, xb: &[f32], params: &[f32], ws: &mut Vec<f32>| -> f64 {
        let mut yb = vec![0.0f32; px * yv.stride];
        be.conv2d_forward(
            &g,
            &xb.to_vec(),
            xv,
            &params.to_vec(),
            w_off,
            Some(b_off),
            act,
            &mut yb,
            yv,
            ws,
        )
        .unwrap();
        dot(&extract(&yb, cout, yv), &r)
    };
    let mut xs = x.clone();
    fd_check("conv dx", &mut xs, &dx, 12, &mut |xs| {
        loss(&be, &embed(xs, cin, xv), &params, &mut ws)
    });
    let mut ps = params.clone();
    let dp = grads.clone();
    fd_check("conv dw/db", &mut ps, &dp, 24, &mut |ps| {
        loss(&be, &xb, ps, &mut ws)
    });

    // accumulate = true adds to what is there.
    let mut dx2 = dxb.clone();
    be.conv2d_backward_data(&g, &dyb, yv, &params, w_off, &mut dx2, xv, true, &mut ws)
        .unwrap();
    let d2 = extract(&dx2, cin, xv);
    for (a, b) in d2.iter().zip(&dx) {
        assert!((a - 2.0 * b).abs() <= 1e-5 * b.abs().max(1.0));
    }
}

#[test]
fn conv3x3_relu_views() {
    conv_case(Dims::new(2, 5, 6), 3, 4, 3, Activation::Relu, 2);
}

#[test]
fn conv1x1_identity() {
    conv_case(Dims::new(2, 4, 3), 5, 1, 1, Activation::Identity, 2);
}

#[test]
fn conv5x5_leaky_three_threads() {
    conv_case(Dims::new(1, 7, 5), 2, 3, 5, Activation::LeakyRelu(0.1), 3);
}

#[test]
fn conv11x11_one_input_channel() {
    conv_case(
        Dims::new(1, 12, 13),
        1,
        4,
        11,
        Activation::LeakyRelu(0.1),
        2,
    );
}

#[test]
fn conv_many_pixels_spans_chunks() {
    // K = 9·20 = 180 → 364-pixel chunks; 2·24·20 = 960 pixels cross chunk and image boundaries.
    conv_case(Dims::new(2, 24, 20), 20, 6, 3, Activation::Relu, 2);
}

#[test]
fn convt2x2_forward_and_gradients() {
    let be = Cpu::new(2).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let d = Dims::new(2, 3, 4);
    let (cin, cout) = (5, 3);
    let g = ConvTGeom { dims: d, cin, cout };
    let od = g.out_dims();
    let x = rand_vec(&mut rng, d.pixels() * cin);
    let w_t = rand_vec(&mut rng, g.weight_len()); // PyTorch [cin, cout, 2, 2]
    let b = rand_vec(&mut rng, cout);
    let mut params = to_internal(&w_t, cin, cout, 2);
    params.extend_from_slice(&b);
    let b_off = g.weight_len();
    // Output in channels [0, cout) of a concat buffer of 2·cout channels (the U-Net's layout).
    let yv = View::channels(2 * cout, 0);
    let mut ws = be.alloc(be.convt_workspace_len(&g)).unwrap();
    let fwd = |x: &[f32], p: &[f32], ws: &mut Vec<f32>| {
        let mut y = vec![9.0f32; od.pixels() * 2 * cout];
        be.convt2x2_forward(
            &g,
            &x.to_vec(),
            View::dense(cin),
            &p.to_vec(),
            0,
            Some(b_off),
            Activation::Identity,
            &mut y,
            yv,
            ws,
        )
        .unwrap();
        y
    };
    let y = fwd(&x, &params, &mut ws);
    // Naive: y[n, 2i+a, 2j+c, o] = b[o] + Σ x[n,i,j,ci] w[ci,o,a,c].
    for n in 0..d.n {
        for i in 0..d.h {
            for j in 0..d.w {
                for a in 0..2 {
                    for c in 0..2 {
                        for o in 0..cout {
                            let mut s = f64::from(b[o]);
                            for ci in 0..cin {
                                s += f64::from(x[((n * d.h + i) * d.w + j) * cin + ci])
                                    * f64::from(w_t[((ci * cout + o) * 2 + a) * 2 + c]);
                            }
                            let p = (n * od.h + 2 * i + a) * od.w + 2 * j + c;
                            let got = y[p * 2 * cout + o];
                            assert!((f64::from(got) - s).abs() < 1e-5, "convt y {got} vs {s}");
                            assert_eq!(y[p * 2 * cout + cout + o], 9.0, "wrote outside its view");
                        }
                    }
                }
            }
        }
    }
    let r = rand_vec(&mut rng, od.pixels() * 2 * cout);
    let loss = |y: &[f32]| -> f64 {
        (0..od.pixels())
            .map(|p| dot(&y[p * 2 * cout..][..cout], &r[p * 2 * cout..][..cout]))
            .sum()
    };
    let mut dy = r.clone();
    let mut grads = vec![0.0f32; params.len()];
    let yb = fwd(&x, &params, &mut ws);
    be.bias_act_backward(
        od.pixels(),
        cout,
        Activation::Identity,
        &yb,
        yv,
        &mut dy,
        yv,
        &mut grads,
        Some(b_off),
    )
    .unwrap();
    be.convt2x2_backward_filter(&g, &x, View::dense(cin), &dy, yv, &mut grads, 0, &mut ws)
        .unwrap();
    let mut dx = vec![0.0f32; x.len()];
    be.convt2x2_backward_data(
        &g,
        &dy,
        yv,
        &params,
        0,
        &mut dx,
        View::dense(cin),
        false,
        &mut ws,
    )
    .unwrap();
    let mut xs = x.clone();
    let mut ws2 = ws.clone();
    fd_check("convt dx", &mut xs, &dx, 16, &mut |xs| {
        loss(&fwd(xs, &params, &mut ws2))
    });
    let mut ps = params.clone();
    fd_check("convt dw/db", &mut ps, &grads, 24, &mut |ps| {
        loss(&fwd(&x, ps, &mut ws2))
    });
}

#[test]
fn maxpool_forward_and_gradient_odd_sizes() {
    let be = Cpu::new(2).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let d = Dims::new(2, 7, 5);
    let c = 3;
    let g = PoolGeom { dims: d, c };
    let od = g.out_dims();
    assert_eq!((od.h, od.w), (3, 2));
    let x = rand_vec(&mut rng, d.pixels() * c);
    // Output into channels [c, 2c) of a concat buffer.
    let yv = View::channels(2 * c, c);
    let fwd = |x: &[f32]| {
        let mut y = vec![0.0f32; od.pixels() * 2 * c];
        be.maxpool2_forward(&g, &x.to_vec(), View::dense(c), &mut y, yv)
            .unwrap();
        y
    };
    let y = fwd(&x);
    for n in 0..d.n {
        for i in 0..od.h {
            for j in 0..od.w {
                for ch in 0..c {
                    let m = [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .iter()
                        .map(|&(a, b)| x[((n * d.h + 2 * i + a) * d.w + 2 * j + b) * c + ch])
                        .fold(f32::NEG_INFINITY, f32::max);
                    assert_eq!(y[((n * od.h + i) * od.w + j) * 2 * c + c + ch], m);
                }
            }
        }
    }
    let r = rand_vec(&mut rng, od.pixels() * 2 * c);
    let loss = |y: &[f32]| -> f64 {
        (0..od.pixels())
            .map(|p| dot(&y[p * 2 * c + c..][..c], &r[p * 2 * c + c..][..c]))
            .sum()
    };
    let mut dx = vec![3.0f32; x.len()];
    be.maxpool2_backward(
        &g,
        &x,
        View::dense(c),
        &y,
        yv,
        &r,
        yv,
        &mut dx,
        View::dense(c),
        false,
    )
    .unwrap();
    // Dropped last row (h = 7) and last column (w = 5) get zero.
    assert!((0..d.w * c).all(|i| dx[(6 * d.w) * c + i] == 0.0));
    let mut xs = x.clone();
    fd_check("maxpool dx", &mut xs, &dx, 30, &mut |xs| loss(&fwd(xs)));
    // Accumulate adds.
    let mut dx2 = dx.clone();
    be.maxpool2_backward(
        &g,
        &x,
        View::dense(c),
        &y,
        yv,
        &r,
        yv,
        &mut dx2,
        View::dense(c),
        true,
    )
    .unwrap();
    assert!(dx2.iter().zip(&dx).all(|(a, b)| (a - 2.0 * b).abs() < 1e-6));
}

#[test]
fn maxpool_ties_go_to_the_first_element_as_torch() {
    let be = Cpu::new(1).unwrap();
    let g = PoolGeom {
        dims: Dims::new(1, 2, 2),
        c: 1,
    };
    let x = vec![1.0f32, 2.0, 2.0, 0.0];
    let mut y = vec![0.0f32; 1];
    be.maxpool2_forward(&g, &x, View::dense(1), &mut y, View::dense(1))
        .unwrap();
    let mut dx = vec![0.0f32; 4];
    be.maxpool2_backward(
        &g,
        &x,
        View::dense(1),
        &y,
        View::dense(1),
        &vec![1.0],
        View::dense(1),
        &mut dx,
        View::dense(1),
        false,
    )
    .unwrap();
    assert_eq!(dx, vec![0.0, 1.0, 0.0, 0.0]);
}

/// torch.nn.functional.interpolate(mode="nearest") source index, re-derived here independently:
/// floor(o · in / out) in f32, clamped (equal and doubled sizes give o and o/2).
fn torch_nearest(o: usize, input: usize, output: usize) -> usize {
    (((o as f32) * (input as f32 / output as f32)).floor() as usize).min(input - 1)
}

#[test]
fn upsample_nearest_exact_sizes_and_gradient() {
    let be = Cpu::new(2).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (h, w, oh, ow) in [(3, 2, 7, 5), (4, 4, 8, 8), (5, 3, 5, 6), (2, 3, 5, 7)] {
        let c = 2;
        let g = UpsampleGeom {
            dims: Dims::new(2, h, w),
            c,
            oh,
            ow,
        };
        let x = rand_vec(&mut rng, 2 * h * w * c);
        let yv = View::channels(c + 1, 0);
        let fwd = |x: &[f32]| {
            let mut y = vec![0.0f32; 2 * oh * ow * (c + 1)];
            be.upsample_nearest_forward(&g, &x.to_vec(), View::dense(c), &mut y, yv)
                .unwrap();
            y
        };
        let y = fwd(&x);
        for n in 0..2 {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (sy, sx) = (torch_nearest(oy, h, oh), torch_nearest(ox, w, ow));
                    for ch in 0..c {
                        assert_eq!(
                            y[((n * oh + oy) * ow + ox) * (c + 1) + ch],
                            x[((n * h + sy) * w + sx) * c + ch]
                        );
                    }
                }
            }
        }
        let r = rand_vec(&mut rng, y.len());
        let loss = |y: &[f32]| -> f64 {
            (0..2 * oh * ow)
                .map(|p| dot(&y[p * (c + 1)..][..c], &r[p * (c + 1)..][..c]))
                .sum()
        };
        let mut dx = vec![1.0f32; x.len()];
        be.upsample_nearest_backward(&g, &r, yv, &mut dx, View::dense(c), false)
            .unwrap();
        let mut xs = x.clone();
        fd_check("upsample dx", &mut xs, &dx, 20, &mut |xs| loss(&fwd(xs)));
    }
}

#[test]
fn copy_channels_concat_and_accumulate() {
    let be = Cpu::new(2).unwrap();
    let src = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // 3 pixels × 2 channels
    let mut dst = vec![0.0f32; 3 * 4];
    be.copy_channels(
        3,
        2,
        &src,
        View::dense(2),
        &mut dst,
        View::channels(4, 2),
        false,
    )
    .unwrap();
    assert_eq!(
        dst,
        vec![0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 5.0, 6.0]
    );
    be.copy_channels(
        3,
        1,
        &src,
        View::channels(2, 1),
        &mut dst,
        View::channels(4, 0),
        true,
    )
    .unwrap();
    assert_eq!(&dst[..4], &[2.0, 0.0, 1.0, 2.0]);
    assert!(be
        .copy_channels(
            3,
            2,
            &src,
            View::dense(2),
            &mut dst,
            View::channels(4, 3),
            false
        )
        .is_err());
}

#[test]
fn bias_act_forward_and_backward() {
    let be = Cpu::new(2).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (px, c) = (37, 70); // c > 64 exercises the blocked bias reduction
    for act in [
        Activation::Relu,
        Activation::LeakyRelu(0.1),
        Activation::Identity,
    ] {
        // Pre-activations at least 0.05 from the kink (finite differences step 1e-2, bias in ±0.02).
        let pre: Vec<f32> = rand_vec(&mut rng, px * c)
            .into_iter()
            .map(|v| v.signum() * (0.05 + v.abs()))
            .collect();
        let b: Vec<f32> = rand_vec(&mut rng, c)
            .into_iter()
            .map(|v| 0.02 * v)
            .collect();
        let mut y = pre.clone();
        be.bias_act_forward(px, c, act, &b, Some(0), &mut y, View::dense(c))
            .unwrap();
        let r = rand_vec(&mut rng, px * c);
        let mut dy = r.clone();
        let mut db = vec![0.0f32; c];
        be.bias_act_backward(
            px,
            c,
            act,
            &y,
            View::dense(c),
            &mut dy,
            View::dense(c),
            &mut db,
            Some(0),
        )
        .unwrap();
        let f = |pre: &[f32], b: &[f32]| {
            let mut y = pre.to_vec();
            be.bias_act_forward(px, c, act, &b.to_vec(), Some(0), &mut y, View::dense(c))
                .unwrap();
            dot(&y, &r)
        };
        let mut ps = pre.clone();
        fd_check("bias_act dpre", &mut ps, &dy, 20, &mut |ps| f(ps, &b));
        let mut bs = b.clone();
        fd_check("bias_act db", &mut bs, &db, 20, &mut |bs| f(&pre, bs));
    }
}

#[test]
fn losses_and_gradients() {
    let be = Cpu::new(2).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let n = 1000;
    let p = rand_vec(&mut rng, n);
    let t = rand_vec(&mut rng, n);
    for kind in [LossKind::Mse, LossKind::L1] {
        let mut d = vec![0.0f32; n];
        let mut l = vec![0.0f32; 1];
        be.loss_forward_backward(kind, n, &p, &t, &mut d, &mut l)
            .unwrap();
        let want: f64 = p
            .iter()
            .zip(&t)
            .map(|(&a, &b)| {
                let e = f64::from(a) - f64::from(b);
                if kind == LossKind::Mse {
                    e * e
                } else {
                    e.abs()
                }
            })
            .sum::<f64>()
            / n as f64;
        assert!((f64::from(l[0]) - want).abs() < 1e-6 * want);
        let mut ps = p.clone();
        fd_check("loss dp", &mut ps, &d, 20, &mut |ps| {
            let mut d = vec![0.0f32; n];
            let mut l = vec![0.0f32; 1];
            be.loss_forward_backward(kind, n, &ps.to_vec(), &t, &mut d, &mut l)
                .unwrap();
            f64::from(l[0])
        });
    }
}

#[test]
fn ops_reject_bad_shapes() {
    let be = Cpu::new(1).unwrap();
    let g = ConvGeom {
        dims: Dims::new(1, 4, 4),
        cin: 2,
        cout: 2,
        k: 2,
    };
    let x = vec![0.0f32; 32];
    let p = vec![0.0f32; 64];
    let mut y = vec![0.0f32; 32];
    let mut ws = vec![0.0f32; 10_000];
    let e = be.conv2d_forward(
        &g,
        &x,
        View::dense(2),
        &p,
        0,
        None,
        Activation::Identity,
        &mut y,
        View::dense(2),
        &mut ws,
    );
    assert!(e.unwrap_err().to_string().contains("even"));
    let g = ConvGeom { k: 3, ..g };
    let short = vec![0.0f32; 31];
    assert!(be
        .conv2d_forward(
            &g,
            &short,
            View::dense(2),
            &p,
            0,
            None,
            Activation::Identity,
            &mut y,
            View::dense(2),
            &mut ws
        )
        .is_err());
    let mut tiny_ws = vec![0.0f32; 1];
    assert!(be
        .conv2d_forward(
            &g,
            &x,
            View::dense(2),
            &p,
            0,
            None,
            Activation::Identity,
            &mut y,
            View::dense(2),
            &mut tiny_ws
        )
        .is_err());
}

#[test]
fn conv_narrow_kernel_widths() {
    // 16 and 32 output channels take the AVX-512 kernel where available (forward, and backward-data into 16
    // channels); 2·9·7 = 126 pixels leave remainders after 14- and 12-pixel tiles.
    conv_case(Dims::new(2, 9, 7), 16, 32, 3, Activation::Relu, 2);
    conv_case(Dims::new(1, 5, 5), 32, 16, 3, Activation::Identity, 1);
}

#[test]
fn conv_narrow_dense_implicit_gemm() {
    // Dense 3×3 with 16/32 output channels: interior pixels read the input rows directly, borders via im2col;
    // widths 1, 2 and 9 and chunk/row boundaries (2·37·20 = 1480 pixels > one 455-pixel chunk).
    conv_case_views(Dims::new(2, 37, 20), 16, 16, 3, Activation::Relu, 2, true);
    conv_case_views(
        Dims::new(2, 5, 9),
        8,
        32,
        3,
        Activation::LeakyRelu(0.1),
        3,
        true,
    );
    conv_case_views(Dims::new(1, 6, 1), 16, 16, 3, Activation::Identity, 2, true);
    conv_case_views(Dims::new(1, 4, 2), 32, 16, 3, Activation::Identity, 1, true);
}

//! GPU measurements for docs/PERFORMANCE.md (llm.c dev/cuda habit: every op timed in isolation, then the whole
//! training step), printed as JSON lines and a table.
//!
//! ```text
//! cudabench ops   [--batch 8] [--size 1024] [--precision f32,tf32,bf16] [--reps 20]
//! cudabench train [--batch 8] [--size 1024] [--precision f32,tf32,bf16] [--steps 10] [--arch unet]
//!                 [--engines off|auto|force] [--show-engines]
//! cudabench engines [--batch 8] [--size 1024] [--precision f32,tf32,bf16] [--engines auto|force]
//! ```
//! `--engines` picks the cuDNN convolution path (engine.rs): `off` legacy `cudnnFind*` picks only, `auto` backend-API
//! engines where they time faster (the default), `force` engines wherever one exists. `engines` prints, per U-Net
//! conv and precision, the legacy pick's time against the best engine's, with the engine's name and knobs.
//! Timing: CUDA events around each op (or step) on the backend's stream, after warm-up (which also runs
//! cudnnFind for the shape), median of `--reps`. Inputs are random, never zeros.

use cryoden_cuda::{ActGrad, ConvGeom, CudaBackend, DType, Gpu, LossKind, Nhwc, Precision};
use cryoden_nn::{AdamParams, Arch, Backend, Model, TrainState};
use std::time::Instant;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds of `f` over `reps` runs, timed with events on the GPU's stream.
fn time_ms(gpu: &mut Gpu, reps: usize, mut f: impl FnMut(&mut Gpu)) -> f64 {
    for _ in 0..2 {
        f(gpu);
    }
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let a = gpu
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        let b = gpu
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        a.record(&gpu.stream).unwrap();
        f(gpu);
        b.record(&gpu.stream).unwrap();
        b.synchronize().unwrap();
        v.push(a.elapsed_ms(&b).unwrap() as f64);
    }
    median(v)
}

fn random(gpu: &mut Gpu, n: usize, dt: DType, seed: u64) -> cryoden_cuda::Buf {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let host: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    gpu.upload(&host, dt).unwrap()
}

/// The plan's U-Net convolutions, level by level (3x3 encoder/decoder convs and the 1x1 output conv).
fn unet_convs(batch: usize, size: usize, widths: &[usize]) -> Vec<ConvGeom> {
    let mut convs = Vec::new();
    for (l, &w) in widths.iter().enumerate() {
        let s = size >> l;
        let cin = if l == 0 { 1 } else { widths[l - 1] };
        convs.push(ConvGeom {
            n: batch,
            h: s,
            w: s,
            cin,
            cout: w,
            k: 3,
            pad: 1,
            stride: 1,
        });
        convs.push(ConvGeom {
            n: batch,
            h: s,
            w: s,
            cin: w,
            cout: w,
            k: 3,
            pad: 1,
            stride: 1,
        });
        if l + 1 < widths.len() {
            convs.push(ConvGeom {
                n: batch,
                h: s,
                w: s,
                cin: 2 * w,
                cout: w,
                k: 3,
                pad: 1,
                stride: 1,
            });
        }
    }
    convs.push(ConvGeom {
        n: batch,
        h: size,
        w: size,
        cin: widths[0],
        cout: 1,
        k: 1,
        pad: 0,
        stride: 1,
    });
    convs
}

/// The decoder's 2x2 stride-2 transposed convs as the strided convs whose backward-data they are (their input
/// gradient is that conv's forward, their weight gradient its backward-filter).
fn unet_transposed(batch: usize, size: usize, widths: &[usize]) -> Vec<ConvGeom> {
    (0..widths.len() - 1)
        .map(|l| {
            let s = size >> (l + 1);
            cryoden_cuda::conv::transpose_geom(Nhwc::new(batch, s, s, widths[l + 1]), widths[l])
        })
        .collect()
}

/// Prints every backend-API decision made so far: legacy pick against the fastest acceptable engine.
fn print_engine_choices(gpu: &Gpu, label: &str) {
    println!(
        "{:<6} {:<44} {:<15} {:>4} {:>10} {:>10} {:>6}  engine (knobs) [notes]",
        "prec", "conv", "direction", "beta", "legacy ms", "engine ms", "uses"
    );
    for c in gpu.engine_choices() {
        println!(
            "{:<6} {:<44} {:<15} {:>4} {:>10.3} {:>10} {:>6}  {} (legacy algo {}, align {:?}, {} timed, {} refused, {} failed, distance {})",
            label,
            c.geom.to_string(),
            c.direction.name(),
            c.beta,
            c.legacy_ms,
            c.engine_ms.map_or("-".to_string(), |m| format!("{m:.3}")),
            if c.uses_engine { "engine" } else { "legacy" },
            c.engine.as_ref().map_or("-".to_string(), |e| e.name()),
            c.legacy_algo,
            c.align,
            c.timed,
            c.refused,
            c.failed,
            c.distance.map_or("-".to_string(), |d| format!("{d:.1e}"))
        );
        for f in c.failures.iter().take(3) {
            println!("       failed: {}", f.chars().take(160).collect::<String>());
        }
        println!(
            "JSON {}",
            serde_json::json!({"kind": "engine_choice", "label": label, "choice": c})
        );
    }
}

/// `cudabench engines`: autotunes every U-Net conv (and transposed conv) per precision, beta 0, and prints the
/// legacy pick's time against the best backend-API engine's, with the engine's name and knobs.
fn engines(args: &[String]) {
    let batch: usize = arg(args, "--batch", "8").parse().unwrap();
    let size: usize = arg(args, "--size", "1024").parse().unwrap();
    let precisions: Vec<Precision> = arg(args, "--precision", "f32,tf32,bf16")
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    set_mode(args);
    let widths = [32usize, 64, 128, 256];
    for &p in &precisions {
        let mut gpu = Gpu::open(0).unwrap();
        let t0 = Instant::now();
        let mut geoms = unet_convs(batch, size, &widths);
        geoms.extend(unet_transposed(batch, size, &widths));
        for g in geoms {
            gpu.conv_prepare(&g, p).unwrap();
        }
        eprintln!("{p}: tuned in {:.1} s", t0.elapsed().as_secs_f64());
        print_engine_choices(&gpu, p.name());
    }
}

/// `--engines off|auto|force` (default: CRYODEN_CUDNN_ENGINES, else auto).
fn set_mode(args: &[String]) {
    use cryoden_cuda::engine::{engine_mode, set_engine_mode, EngineMode};
    let m = match arg(args, "--engines", "").as_str() {
        "off" => EngineMode::Off,
        "auto" => EngineMode::Auto,
        "force" => EngineMode::Force,
        "" => engine_mode(),
        other => panic!("--engines {other}: expected off, auto or force"),
    };
    set_engine_mode(m);
    eprintln!("cuDNN backend-API engines: {m:?}");
}

fn ops(args: &[String]) {
    let batch: usize = arg(args, "--batch", "8").parse().unwrap();
    let size: usize = arg(args, "--size", "1024").parse().unwrap();
    let reps: usize = arg(args, "--reps", "20").parse().unwrap();
    let precisions: Vec<Precision> = arg(args, "--precision", "f32,tf32,bf16")
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    let widths = [32usize, 64, 128, 256];
    let mut gpu = Gpu::open(0).unwrap();
    eprintln!("{} | {}", gpu.info.name, gpu.kernels_note);
    println!(
        "{:<6} {:<44} {:>9} {:>9} {:>9} {:>8}",
        "prec", "op", "fwd ms", "bwd-d ms", "bwd-f ms", "TFLOP/s"
    );
    for &p in &precisions {
        let dt = p.dtype();
        let convs = unet_convs(batch, size, &widths);
        for g in convs {
            let x = random(&mut gpu, g.in_shape().len(), dt, 1);
            let w = random(&mut gpu, g.weight_len(), dt, 2);
            let dy = random(&mut gpu, g.out_shape().len(), dt, 3);
            let y = gpu.alloc(g.out_shape().len(), dt).unwrap();
            let dx = gpu.alloc(g.in_shape().len(), dt).unwrap();
            let dw = gpu.alloc(g.weight_len(), dt).unwrap();
            let ch = gpu.conv_prepare(&g, p).unwrap();
            let (xs, ys) = (g.in_shape(), g.out_shape());
            let f = time_ms(&mut gpu, reps, |gpu| {
                gpu.conv_forward(p, &g, x.view(xs), w.ptr(), y.view(ys), 0.0)
                    .unwrap()
            });
            let bd = time_ms(&mut gpu, reps, |gpu| {
                gpu.conv_backward_data(p, &g, dy.view(ys), w.ptr(), dx.view(xs), 0.0)
                    .unwrap()
            });
            let bf = time_ms(&mut gpu, reps, |gpu| {
                gpu.conv_backward_filter(p, &g, x.view(xs), dy.view(ys), dw.ptr(), 0.0)
                    .unwrap()
            });
            let tflops = 3.0 * 2.0 * g.macs() as f64 / ((f + bd + bf) * 1e-3) / 1e12;
            println!(
                "{:<6} {:<44} {:>9.3} {:>9.3} {:>9.3} {:>8.1}",
                p.name(),
                g.to_string(),
                f,
                bd,
                bf,
                tflops
            );
            // Forward with bias + ReLU: cuDNN conv then our 16-byte epilogue, against cuDNN's fused call.
            if g.cin > 1 && g.cout > 1 {
                let b32 = random(&mut gpu, g.cout, DType::F32, 30);
                let blp = random(&mut gpu, g.cout, dt, 31);
                let sep = time_ms(&mut gpu, reps, |gpu| {
                    gpu.conv_forward(p, &g, x.view(xs), w.ptr(), y.view(ys), 0.0)
                        .unwrap();
                    gpu.bias_act(y.view(ys), Some(b32.ptr()), y.view(ys), 0.0)
                        .unwrap();
                });
                let lp = (dt != DType::F32).then(|| blp.ptr());
                let fused_ok = gpu
                    .conv_forward_bias_relu(p, &g, x.view(xs), w.ptr(), b32.ptr(), lp, y.view(ys))
                    .unwrap();
                let fused = if fused_ok {
                    time_ms(&mut gpu, reps, |gpu| {
                        gpu.conv_forward_bias_relu(
                            p,
                            &g,
                            x.view(xs),
                            w.ptr(),
                            b32.ptr(),
                            lp,
                            y.view(ys),
                        )
                        .unwrap();
                    })
                } else {
                    f64::NAN
                };
                let bias_dt = gpu
                    .fused_choices()
                    .into_iter()
                    .find(|(gg, pp, _)| *gg == g && *pp == p)
                    .and_then(|c| c.2);
                println!(
                    "{:<6}   fwd + bias + ReLU: separate {:.3} ms, cuDNN fused {:.3} ms (bias {:?})",
                    p.name(),
                    sep,
                    fused,
                    bias_dt
                );
                println!(
                    "JSON {}",
                    serde_json::json!({"kind": "conv_bias_relu", "precision": p.name(), "geom": g, "separate_ms": sep,
                        "fused_ms": if fused.is_finite() { Some(fused) } else { None }, "bias_dtype": bias_dt.map(|d| d.suffix())})
                );
            }
            // cryoden's own tensor-core kernels (device/mma.rs) on the same shape, every variant: forward with bias +
            // ReLU fused, backward-data (flip + forward), weight gradient into f32 (+ the fixed-order sum of the
            // partials).
            // f32: the 3×TF32 kernels (device/x3.rs); tf32 has none.
            if p != Precision::Tf32 && gpu.mma_conv_ok(&g, &x.view(xs), &y.view(ys)) {
                let b32 = random(&mut gpu, g.cout, DType::F32, 40);
                let dw32 = gpu.alloc(g.weight_len(), DType::F32).unwrap();
                let db_in = gpu.alloc(g.cin, DType::F32).unwrap();
                let counts = gpu.mma_variants(&g, dt);
                let mut rows = [vec![], vec![], vec![], vec![]];
                for v in 0..*counts.iter().max().unwrap() {
                    gpu.mma_variant = Some(v);
                    if v < counts[0] {
                        rows[0].push(time_ms(&mut gpu, reps, |gpu| {
                            gpu.mma_conv_forward(
                                &g,
                                x.view(xs),
                                w.ptr(),
                                Some(b32.ptr()),
                                y.view(ys),
                                0.0,
                                false,
                            )
                            .unwrap();
                        }));
                    }
                    if v < counts[1] {
                        rows[1].push(time_ms(&mut gpu, reps, |gpu| {
                            gpu.mma_conv_backward_data(
                                &g,
                                dy.view(ys),
                                w.ptr(),
                                dx.view(xs),
                                false,
                                None,
                            )
                            .unwrap();
                        }));
                        // Fused with the previous layer's ReLU backward + bias gradient (x stands in for that
                        // layer's output); unfused shapes run it as a second pass.
                        rows[3].push(time_ms(&mut gpu, reps, |gpu| {
                            let act = ActGrad {
                                y: x.view(xs),
                                slope: 0.0,
                                db: Some(db_in.ptr()),
                            };
                            gpu.mma_conv_backward_data(
                                &g,
                                dy.view(ys),
                                w.ptr(),
                                dx.view(xs),
                                false,
                                Some(act),
                            )
                            .unwrap();
                        }));
                    }
                    if v < counts[2] {
                        rows[2].push(time_ms(&mut gpu, reps, |gpu| {
                            gpu.mma_conv_backward_filter(&g, x.view(xs), dy.view(ys), dw32.ptr())
                                .unwrap();
                        }));
                    }
                }
                gpu.mma_variant = None;
                let fmt = |v: &[f64]| {
                    v.iter()
                        .map(|t| format!("{t:.3}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
                let mt = 3.0 * 2.0 * g.macs() as f64
                    / ((best(&rows[0]) + best(&rows[1]) + best(&rows[2])) * 1e-3)
                    / 1e12;
                println!(
                    "{:<6}   mma variants (ms): fwd+bias+ReLU [{}], bwd-d [{}], bwd-d + prev ReLU bwd [{}], bwd-f [{}]; best {:.1} TFLOP/s",
                    p.name(),
                    fmt(&rows[0]),
                    fmt(&rows[1]),
                    fmt(&rows[3]),
                    fmt(&rows[2]),
                    mt
                );
                println!(
                    "JSON {}",
                    serde_json::json!({"kind": "conv_mma", "precision": p.name(), "geom": g, "fwd_bias_relu_ms": rows[0],
                        "bwd_data_ms": rows[1], "bwd_data_act_ms": rows[3], "bwd_filter_ms": rows[2], "best_tflops": mt})
                );
            }
            println!(
                "JSON {}",
                serde_json::json!({"kind": "conv", "precision": p.name(), "geom": g, "fwd_ms": f, "bwd_data_ms": bd,
                    "bwd_filter_ms": bf, "tflops": tflops, "algos": [ch[0].algo, ch[1].algo, ch[2].algo],
                    "workspace": [ch[0].workspace, ch[1].workspace, ch[2].workspace],
                    "tensor_ops": [ch[0].tensor_ops, ch[1].tensor_ops, ch[2].tensor_ops]})
            );
        }
        // Direct kernels of the one-channel layers against cuDNN's (the rows above): the 3x3 1 -> 32 input conv
        // (forward with bias + ReLU fused, weight gradient) and the 1x1 32 -> 1 output conv's backward-data (v1:
        // one element per thread; v2: 16-byte accesses).
        {
            let xs = Nhwc::new(batch, size, size, 1);
            let ys = Nhwc::new(batch, size, size, widths[0]);
            let x = random(&mut gpu, xs.len(), dt, 21);
            let w = random(&mut gpu, 9 * widths[0], dt, 22);
            let bias = random(&mut gpu, widths[0], DType::F32, 23);
            let dy = random(&mut gpu, ys.len(), dt, 24);
            let y = gpu.alloc(ys.len(), dt).unwrap();
            let dw = gpu.alloc(9 * widths[0], DType::F32).unwrap();
            if gpu.conv_in3_ok(widths[0], dt, &x.view(xs), &y.view(ys)) {
                // The direct kernel itself (our tensor-core version, which bf16 runs by default, below).
                let mode = gpu.mma_conv;
                gpu.mma_conv = cryoden_cuda::MmaMode::Off;
                let f = time_ms(&mut gpu, reps, |gpu| {
                    gpu.conv_in3_forward(x.view(xs), w.ptr(), Some(bias.ptr()), y.view(ys), 0.0)
                        .unwrap()
                });
                let bf = time_ms(&mut gpu, reps, |gpu| {
                    gpu.conv_in3_backward_filter(x.view(xs), dy.view(ys), dw.ptr())
                        .unwrap()
                });
                gpu.mma_conv = mode;
                let mut own = Vec::new();
                for v in 0..gpu.mma_conv_in3_variants(widths[0]) {
                    gpu.mma_variant = Some(v);
                    own.push(time_ms(&mut gpu, reps, |gpu| {
                        gpu.mma_conv_in3_forward(
                            x.view(xs),
                            w.ptr(),
                            Some(bias.ptr()),
                            y.view(ys),
                            0.0,
                        )
                        .unwrap();
                    }));
                }
                let mut own_w = Vec::new();
                for v in 0..gpu.mma_conv_in3_wgrad_variants(widths[0]) {
                    gpu.mma_variant = Some(v);
                    own_w.push(time_ms(&mut gpu, reps, |gpu| {
                        gpu.mma_conv_in3_backward_filter(x.view(xs), dy.view(ys), dw.ptr())
                            .unwrap();
                    }));
                }
                gpu.mma_variant = None;
                if p == Precision::Bf16 {
                    println!(
                        "{:<6}   conv3x3 1->{} on the tensor cores, variants (ms): fwd + bias + ReLU {:?}, weight gradient {:?}",
                        p.name(),
                        widths[0],
                        own,
                        own_w
                    );
                }
                let name = format!("conv3x3 1->{} direct (+bias+ReLU)", widths[0]);
                println!(
                    "{:<6} {:<44} {:>9.3} {:>9} {:>9.3}",
                    p.name(),
                    name,
                    f,
                    "",
                    bf
                );
                println!(
                    "JSON {}",
                    serde_json::json!({"kind": "conv_direct", "precision": p.name(), "op": name, "fwd_ms": f, "bwd_filter_ms": bf})
                );
            }
            let g1 = ConvGeom {
                n: batch,
                h: size,
                w: size,
                cin: widths[0],
                cout: 1,
                k: 1,
                pad: 0,
                stride: 1,
            };
            let d1 = random(&mut gpu, g1.out_shape().len(), dt, 25);
            let w1 = random(&mut gpu, widths[0], dt, 26);
            let x1 = random(&mut gpu, g1.in_shape().len(), dt, 27);
            let y1 = gpu.alloc(g1.out_shape().len(), dt).unwrap();
            let dw1 = gpu.alloc(widths[0], DType::F32).unwrap();
            if gpu.conv1x1_to1_ok(dt, &x1.view(g1.in_shape()), &y1.view(g1.out_shape())) {
                let f = time_ms(&mut gpu, reps, |gpu| {
                    gpu.conv1x1_to1_forward(
                        x1.view(g1.in_shape()),
                        w1.ptr(),
                        Some(bias.ptr()),
                        y1.view(g1.out_shape()),
                        1.0,
                    )
                    .unwrap()
                });
                let bf = time_ms(&mut gpu, reps, |gpu| {
                    gpu.conv1x1_to1_backward_filter(
                        x1.view(g1.in_shape()),
                        d1.view(g1.out_shape()),
                        dw1.ptr(),
                    )
                    .unwrap()
                });
                let name = format!("conv1x1 {}->1 direct (+bias)", widths[0]);
                println!(
                    "{:<6} {:<44} {:>9.3} {:>9} {:>9.3}",
                    p.name(),
                    name,
                    f,
                    "",
                    bf
                );
                println!(
                    "JSON {}",
                    serde_json::json!({"kind": "conv_direct", "precision": p.name(), "op": name, "fwd_ms": f, "bwd_filter_ms": bf})
                );
            }
            for version in [3u32, 4] {
                gpu.bias_act_version = version;
                let t = time_ms(&mut gpu, reps, |gpu| {
                    gpu.conv_backward_data(
                        p,
                        &g1,
                        d1.view(g1.out_shape()),
                        w1.ptr(),
                        y.view(ys),
                        0.0,
                    )
                    .unwrap()
                });
                let name = format!(
                    "conv1x1 {}->1 bwd-data own kernel v{}",
                    widths[0],
                    version - 2
                );
                println!("{:<6} {:<44} {:>9} {:>9.3}", p.name(), name, "", t);
                println!(
                    "JSON {}",
                    serde_json::json!({"kind": "conv_direct", "precision": p.name(), "op": name, "bwd_data_ms": t})
                );
            }
        }
        // Transposed conv 2x2 of the decoder's first level (64 -> 32 at size/2 -> size).
        {
            let xs = Nhwc::new(batch, size / 2, size / 2, widths[1]);
            let ys = Nhwc::new(batch, size, size, widths[0]);
            let x = random(&mut gpu, xs.len(), dt, 4);
            let w = random(&mut gpu, widths[1] * 4 * widths[0], dt, 5);
            let dy = random(&mut gpu, ys.len(), dt, 6);
            let y = gpu.alloc(ys.len(), dt).unwrap();
            let dx = gpu.alloc(xs.len(), dt).unwrap();
            let dw = gpu.alloc(widths[1] * 4 * widths[0], dt).unwrap();
            let f = time_ms(&mut gpu, reps, |gpu| {
                gpu.conv_transpose_forward(p, x.view(xs), w.ptr(), y.view(ys), 0.0)
                    .unwrap()
            });
            let bd = time_ms(&mut gpu, reps, |gpu| {
                gpu.conv_transpose_backward_data(p, dy.view(ys), w.ptr(), dx.view(xs), 0.0)
                    .unwrap()
            });
            let bf = time_ms(&mut gpu, reps, |gpu| {
                gpu.conv_transpose_backward_filter(p, x.view(xs), dy.view(ys), dw.ptr(), 0.0)
                    .unwrap()
            });
            // Forward with the bias, into a channel slice of the decoder's concatenation buffer: v1 = cuDNN
            // stride-2 backward-data into packed staging + our bias pass into the slice; v2 = GEMM + a shuffle with
            // the bias fused, writing the slice directly.
            {
                let cat = Nhwc::new(batch, size, size, 2 * widths[0]);
                let cb = gpu.alloc(cat.len(), dt).unwrap();
                let bias = random(&mut gpu, widths[0], DType::F32, 32);
                let v1 = time_ms(&mut gpu, reps, |gpu| {
                    gpu.conv_transpose_forward(p, x.view(xs), w.ptr(), y.view(ys), 0.0)
                        .unwrap();
                    gpu.bias_act(
                        y.view(ys),
                        Some(bias.ptr()),
                        cb.channels(cat, widths[0], widths[0]),
                        1.0,
                    )
                    .unwrap();
                });
                let mode = gpu.mma_conv;
                gpu.mma_conv = cryoden_cuda::MmaMode::Off; // v2 itself, not our kernel (below)
                let v2 = time_ms(&mut gpu, reps, |gpu| {
                    assert!(gpu
                        .conv_transpose_forward_bias_act(
                            p,
                            x.view(xs),
                            w.ptr(),
                            Some(bias.ptr()),
                            cb.channels(cat, widths[0], widths[0]),
                            1.0,
                        )
                        .unwrap());
                });
                gpu.mma_conv = mode;
                // v3: cryoden's own kernel (device/mma.rs `CONVT`), every variant.
                let mut v3 = Vec::new();
                let own = if p == Precision::Bf16 {
                    gpu.mma_convt_variants(widths[1], widths[0])
                } else {
                    0
                };
                for v in 0..own {
                    gpu.mma_variant = Some(v);
                    v3.push(time_ms(&mut gpu, reps, |gpu| {
                        assert!(gpu
                            .mma_convt_forward(
                                x.view(xs),
                                w.ptr(),
                                Some(bias.ptr()),
                                cb.channels(cat, widths[0], widths[0]),
                                1.0,
                            )
                            .unwrap());
                    }));
                }
                gpu.mma_variant = None;
                if !v3.is_empty() {
                    println!("{:<6}   convT fwd + bias into concat slice, v3 (own kernel) variants: {:?} ms", p.name(), v3);
                }
                println!(
                    "{:<6}   convT fwd + bias into concat slice: v1 {:.3} ms, v2 (GEMM + fused shuffle) {:.3} ms",
                    p.name(),
                    v1,
                    v2
                );
                println!(
                    "JSON {}",
                    serde_json::json!({"kind": "convt_bias", "precision": p.name(), "v1_ms": v1, "v2_ms": v2})
                );
            }
            let macs = (xs.len() * 4 * widths[0]) as f64;
            let tflops = 3.0 * 2.0 * macs / ((f + bd + bf) * 1e-3) / 1e12;
            let name = format!(
                "convT2x2 {}->{} on {}x{}",
                widths[1],
                widths[0],
                size / 2,
                size / 2
            );
            println!(
                "{:<6} {:<44} {:>9.3} {:>9.3} {:>9.3} {:>8.1}",
                p.name(),
                name,
                f,
                bd,
                bf,
                tflops
            );
            println!(
                "JSON {}",
                serde_json::json!({"kind": "convt", "precision": p.name(), "op": name, "fwd_ms": f, "bwd_data_ms": bd, "bwd_filter_ms": bf})
            );
        }
        // Elementwise ops at level 0 (memory-bound: GB/s = bytes read + written / time).
        let s0 = Nhwc::new(batch, size, size, widths[0]);
        let cat = Nhwc::new(batch, size, size, 2 * widths[0]);
        let e = dt.size() as f64;
        let a = random(&mut gpu, s0.len(), dt, 7);
        let b = random(&mut gpu, cat.len(), dt, 8);
        let bias = random(&mut gpu, widths[0], DType::F32, 9);
        let db = gpu.alloc(widths[0], DType::F32).unwrap();
        let pooled = gpu.alloc(s0.len() / 4, dt).unwrap();
        let ps = Nhwc::new(batch, size / 2, size / 2, widths[0]);
        let mut rows: Vec<(String, f64, f64)> = Vec::new();
        // Every kernel version of bias+activation (v1: one element per thread; v2: 2-D blocks; v3: bf16 pairs;
        // v4: 16-byte accesses), then the default (v4) stays.
        for version in [1u32, 2, 3, 4] {
            gpu.bias_act_version = version;
            let t = time_ms(&mut gpu, reps, |gpu| {
                gpu.bias_act(
                    a.view(s0),
                    Some(bias.ptr()),
                    b.channels(cat, widths[0], widths[0]),
                    0.0,
                )
                .unwrap()
            });
            rows.push((
                format!("bias+ReLU into concat slice (v{version})"),
                t,
                2.0 * s0.len() as f64 * e,
            ));
        }
        for (pairs, vec) in [(false, false), (true, false), (true, true)] {
            gpu.act_bwd_pairs = pairs;
            gpu.act_bwd_vec = vec;
            let t = time_ms(&mut gpu, reps, |gpu| {
                gpu.act_backward(
                    b.channels(cat, 0, widths[0]),
                    Some(a.view(s0)),
                    a.view(s0),
                    0.0,
                    Some((db.ptr(), DType::F32)),
                    false,
                )
                .unwrap()
            });
            let v = if vec {
                "v3 16-byte"
            } else if pairs {
                "v2 bf16 pairs"
            } else {
                "v1"
            };
            rows.push((
                format!("ReLU backward + bias grad ({v})"),
                t,
                3.0 * s0.len() as f64 * e,
            ));
        }
        for version in [1u32, 2] {
            gpu.maxpool_fwd_version = version;
            let t = time_ms(&mut gpu, reps, |gpu| {
                gpu.maxpool2_forward(b.channels(cat, widths[0], widths[0]), pooled.view(ps))
                    .unwrap()
            });
            rows.push((
                format!("maxpool2 fwd (from concat slice, v{version})"),
                t,
                1.25 * s0.len() as f64 * e,
            ));
        }
        for version in [1u32, 2, 3] {
            gpu.maxpool_bwd_version = version;
            let t = time_ms(&mut gpu, reps, |gpu| {
                gpu.maxpool2_backward(
                    b.channels(cat, widths[0], widths[0]),
                    pooled.view(ps),
                    a.view(s0),
                    false,
                )
                .unwrap()
            });
            rows.push((
                format!("maxpool2 bwd (v{version})"),
                t,
                2.25 * s0.len() as f64 * e,
            ));
        }
        // The U-Net's pool backward: added into the skip connection's gradient, then that conv's ReLU backward +
        // bias gradient; as two passes, then fused.
        let skip = b.channels(cat, widths[0], widths[0]);
        let gcat = random(&mut gpu, cat.len(), dt, 12);
        let gskip = gcat.channels(cat, widths[0], widths[0]);
        let t2 = time_ms(&mut gpu, reps, |gpu| {
            gpu.maxpool2_backward(skip, pooled.view(ps), gskip, true)
                .unwrap();
            gpu.act_backward(
                gskip,
                Some(skip),
                gskip,
                0.0,
                Some((db.ptr(), DType::F32)),
                true,
            )
            .unwrap()
        });
        rows.push((
            "maxpool2 bwd (accumulate) + ReLU bwd + bias grad, two passes".into(),
            t2,
            (2.25 + 1.0 + 3.0) * s0.len() as f64 * e,
        ));
        let t = time_ms(&mut gpu, reps, |gpu| {
            gpu.maxpool2_backward_act(skip, pooled.view(ps), gskip, true, 0.0, Some(db.ptr()))
                .unwrap()
        });
        rows.push((
            "maxpool2 bwd (accumulate) + ReLU bwd + bias grad, fused".into(),
            t,
            (2.25 + 1.0) * s0.len() as f64 * e,
        ));
        // The transposed conv's bias gradient (identity): reads its output gradient, writes nothing back.
        let t = time_ms(&mut gpu, reps, |gpu| {
            gpu.act_backward(gskip, None, gskip, 1.0, Some((db.ptr(), DType::F32)), true)
                .unwrap()
        });
        rows.push((
            "identity bias grad in place (read only)".into(),
            t,
            s0.len() as f64 * e,
        ));
        let img = Nhwc::new(batch, size, size, 1);
        let pred = random(&mut gpu, img.len(), dt, 10);
        let target = random(&mut gpu, img.len(), DType::F32, 11);
        let grad = gpu.alloc(img.len(), dt).unwrap();
        let lout = gpu.alloc(1, DType::F32).unwrap();
        let t = time_ms(&mut gpu, reps, |gpu| {
            gpu.loss(
                LossKind::Mse,
                pred.view(img),
                target.ptr(),
                Some(grad.view(img)),
                lout.ptr(),
            )
            .unwrap()
        });
        rows.push((
            "MSE loss + gradient".into(),
            t,
            img.len() as f64 * (2.0 * e + 4.0),
        ));
        let np = Model::new(Arch::from_name("unet", None).unwrap())
            .unwrap()
            .params()
            .len();
        let pb = random(&mut gpu, np, DType::F32, 12);
        let gb = random(&mut gpu, np, dt, 13);
        let mb = random(&mut gpu, np, DType::F32, 14);
        let vb = gpu.upload(&vec![1e-4; np], DType::F32).unwrap();
        let copy = gpu.alloc(np, DType::Bf16).unwrap();
        let h = cryoden_cuda::AdamStep {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 10,
            grad_scale: 1.0,
        };
        let t = time_ms(&mut gpu, reps, |gpu| {
            gpu.adam(
                &pb,
                if dt == DType::Bf16 { Some(&copy) } else { None },
                &gb,
                &mb,
                &vb,
                &h,
            )
            .unwrap()
        });
        rows.push((
            "Adam, whole flat buffer".into(),
            t,
            np as f64 * (4.0 * 6.0 + e),
        ));
        for (name, ms, bytes) in rows {
            let gbs = bytes / (ms * 1e-3) / 1e9;
            println!(
                "{:<6} {:<44} {:>9.3} {:>9} {:>9} {:>6.0} GB/s",
                p.name(),
                name,
                ms,
                "",
                "",
                gbs
            );
            println!(
                "JSON {}",
                serde_json::json!({"kind": "elementwise", "precision": p.name(), "op": name, "ms": ms, "gb_per_s": gbs})
            );
        }
    }
}

fn train(args: &[String]) {
    let batch: usize = arg(args, "--batch", "8").parse().unwrap();
    let size: usize = arg(args, "--size", "1024").parse().unwrap();
    let steps: usize = arg(args, "--steps", "10").parse().unwrap();
    let arch_name = arg(args, "--arch", "unet");
    // bf16 stores activations in bf16 (BufKind::Activation); "bf16s", the name of calls 3-6, is accepted for it.
    // A trailing "e" (f32e, bf16e) runs every step eagerly (no CUDA graph), to measure what the graph saves.
    let precisions: Vec<(Precision, bool, String)> =
        arg(args, "--precision", "f32,tf32,bf16,bf16e")
            .split(',')
            .map(|p| {
                let eager = p.len() > 3 && p.ends_with('e');
                let base = if eager { &p[..p.len() - 1] } else { p };
                let base = if base == "bf16s" { "bf16" } else { base };
                (base.parse().unwrap(), !eager, p.to_string())
            })
            .collect();
    set_mode(args);
    let arch = Arch::from_name(&arch_name, None).unwrap();
    let model = Model::new(arch.clone()).unwrap();
    let flops = 3.0 * model.forward_flops(batch, size, size);
    println!(
        "{:<6} {:<22} {:>10} {:>10} {:>9} {:>9} {:>10}",
        "prec", "arch", "ms/step", "img/s", "TFLOP/s", "GPU GiB", "setup s"
    );
    for (p, graphs, label) in precisions {
        let label = label.as_str();
        let t0 = Instant::now();
        let be = CudaBackend::new(0, p).unwrap();
        be.set_step_graphs(graphs);
        let (free0, _) = be.gpu().ctx.mem_get_info().unwrap();
        let mut state = TrainState::new(&be, &model, &model.init_params(0)).unwrap();
        let mut acts = model.activations(&be, batch, size, size).unwrap();
        let n = batch * size * size;
        let mut s = 12345u64;
        let x: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        let t: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.1 * ((i % 7) as f32 - 3.0) / 3.0)
            .collect();
        acts.upload_input(&be, &x).unwrap();
        acts.upload_target(&be, &t).unwrap();
        let adam = AdamParams {
            lr: 1e-4,
            ..AdamParams::default()
        };
        // Warm-up: finds algorithms, allocates staging, captures the step's graph (steps 2-3).
        let mut first = f32::NAN;
        for i in 0..4 {
            let l = cryoden_nn::train::train_step_uploaded(
                &be,
                &model,
                &mut state,
                &mut acts,
                cryoden_nn::LossKind::Mse,
                &adam,
            )
            .unwrap();
            if i == 0 {
                first = l;
            }
        }
        be.synchronize().unwrap();
        let setup = t0.elapsed().as_secs_f64();
        let mut times = Vec::new();
        let mut last = f32::NAN;
        for _ in 0..steps {
            let t1 = Instant::now();
            last = cryoden_nn::train::train_step_uploaded(
                &be,
                &model,
                &mut state,
                &mut acts,
                cryoden_nn::LossKind::Mse,
                &adam,
            )
            .unwrap();
            be.synchronize().unwrap();
            times.push(t1.elapsed().as_secs_f64() * 1e3);
        }
        let (captures, replays) = be.step_graph_stats();
        // One more step with per-op GPU timing (event pairs around each Backend call), for the breakdown.
        be.set_profiling(true);
        cryoden_nn::train::train_step_uploaded(
            &be,
            &model,
            &mut state,
            &mut acts,
            cryoden_nn::LossKind::Mse,
            &adam,
        )
        .unwrap();
        let prof = be.profile().unwrap();
        be.set_profiling(false);
        // Which convs our MMA kernels took over (device/mma.rs tuning: each variant and cuDNN on the first call).
        for c in be.gpu().mma_choices() {
            println!(
                "    mma {} {:?}: ours {:?} ms, cuDNN {:?} ms -> {}",
                c.geom,
                c.direction,
                c.ours_ms,
                c.cudnn_ms,
                c.picked
                    .map_or("cuDNN".to_string(), |v| format!("variant {v}"))
            );
        }
        // Which f32 convs run as three TF32 passes (split.rs: checked against FMA and timed on the first call).
        for c in be.gpu().split_choices() {
            println!(
                "    3xTF32 {} {:?}: distance {:.2e}, FMA {:.3} ms, split {:.3} ms -> {}",
                c.geom,
                c.direction,
                c.distance,
                c.fma_ms,
                c.split_ms,
                if c.used { "split" } else { "FMA" }
            );
        }
        let total: f64 = prof.iter().map(|p| p.1).sum();
        for (name, ms, calls) in &prof {
            println!(
                "    {:<28} {:>8.2} ms {:>5.1} %  ({calls} calls)",
                name,
                ms,
                100.0 * ms / total
            );
        }
        println!(
            "JSON {}",
            serde_json::json!({"kind": "train_profile", "precision": label, "ops": prof.iter().map(|(n, ms, c)| serde_json::json!({"op": n, "ms": ms, "calls": c})).collect::<Vec<_>>()})
        );
        let (free1, _) = be.gpu().ctx.mem_get_info().unwrap();
        let used_gib = (free0.saturating_sub(free1)) as f64 / (1u64 << 30) as f64;
        let ms = median(times.clone());
        let ips = batch as f64 / (ms * 1e-3);
        let tflops = flops / (ms * 1e-3) / 1e12;
        println!(
            "{:<6} {:<22} {:>10.2} {:>10.1} {:>9.1} {:>9.2} {:>10.1}   graph: {captures} captured, {replays} replayed",
            label,
            arch.describe(),
            ms,
            ips,
            tflops,
            used_gib,
            setup
        );
        println!(
            "JSON {}",
            serde_json::json!({"kind": "train", "precision": label, "arch": arch.describe(), "batch": batch, "size": size,
                "ms_per_step_median": ms, "ms_per_step_all": times, "images_per_s": ips, "tflops": tflops,
                "gpu_mem_gib_after_setup": used_gib, "first_loss": first, "last_loss": last, "backend": be.name(),
                "graph_captures": captures, "graph_replays": replays})
        );
        if args.iter().any(|a| a == "--show-engines") {
            print_engine_choices(&be.gpu(), label);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("ops") => ops(&args),
        Some("train") => train(&args),
        Some("engines") => engines(&args),
        _ => {
            eprintln!("usage: cudabench ops|train|engines [--batch N] [--size S] [--precision f32,tf32,bf16] [--reps N] [--steps N] [--engines off|auto|force] [--show-engines]");
            std::process::exit(2);
        }
    }
}

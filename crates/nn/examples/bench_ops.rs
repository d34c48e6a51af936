//! Per-op timings of the CPU backend on the layer shapes of a `unet` training step:
//! `cargo run --release -p cryoden-nn --example bench_ops -- [widths] [size] [batch] [threads] [reps]`.
//! Prints one line per (op, shape): ms per call and GFLOP/s, then the sum per op kind.

use std::time::Instant;

use cryoden_nn::{cpu::Cpu, Activation, Backend, ConvGeom, ConvTGeom, Dims, PoolGeom, View};

fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let widths: Vec<usize> = arg(0, "16,32,64,128")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let size: usize = arg(1, "128").parse()?;
    let n: usize = arg(2, "8").parse()?;
    let be = Cpu::new(arg(3, "2").parse()?)?;
    let reps: usize = arg(4, "5").parse()?;
    let mut convs = Vec::new();
    let mut convts = Vec::new();
    for (l, &w) in widths.iter().enumerate() {
        let d = Dims::new(n, size >> l, size >> l);
        let cin = if l == 0 { 1 } else { widths[l - 1] };
        convs.push(ConvGeom {
            dims: d,
            cin,
            cout: w,
            k: 3,
        });
        convs.push(ConvGeom {
            dims: d,
            cin: w,
            cout: w,
            k: 3,
        });
        if l + 1 < widths.len() {
            convs.push(ConvGeom {
                dims: d,
                cin: 2 * w,
                cout: w,
                k: 3,
            });
            convs.push(ConvGeom {
                dims: d,
                cin: w,
                cout: w,
                k: 3,
            });
            convts.push(ConvTGeom {
                dims: Dims::new(n, size >> (l + 1), size >> (l + 1)),
                cin: widths[l + 1],
                cout: w,
            });
        }
    }
    convs.push(ConvGeom {
        dims: Dims::new(n, size, size),
        cin: widths[0],
        cout: 1,
        k: 1,
    });
    let mut tot = [0.0f64; 6];
    for g in &convs {
        let px = g.dims.pixels();
        let x = vec![0.5f32; px * g.cin];
        let mut y = vec![0.0f32; px * g.cout];
        let p = vec![0.01f32; g.weight_len() + g.cout];
        let mut gr = vec![0.0f32; p.len()];
        let mut ws = be.alloc(be.conv_workspace_len(g))?;
        let mut dx = vec![0.0f32; px * g.cin];
        let (xv, yv) = (View::dense(g.cin), View::dense(g.cout));
        let f = time(reps, || {
            be.conv2d_forward(
                g,
                &x,
                xv,
                &p,
                0,
                Some(g.weight_len()),
                Activation::Relu,
                &mut y,
                yv,
                &mut ws,
            )
            .unwrap()
        });
        let bd = time(reps, || {
            be.conv2d_backward_data(g, &y, yv, &p, 0, &mut dx, xv, false, &mut ws)
                .unwrap()
        });
        let bf = time(reps, || {
            be.conv2d_backward_filter(g, &x, xv, &y, yv, &mut gr, 0, &mut ws)
                .unwrap()
        });
        let mut dy = y.clone();
        let ba = time(reps, || {
            be.bias_act_backward(
                px,
                g.cout,
                Activation::Relu,
                &y,
                yv,
                &mut dy,
                yv,
                &mut gr,
                Some(0),
            )
            .unwrap()
        });
        let gf = g.flops() / 1e6;
        println!(
            "conv {:>3}x{:<3} {:>3}->{:<3} k{}: fwd {:7.2} ms ({:5.0} GF/s)  bwd-data {:7.2} ({:5.0})  bwd-filter {:7.2} ({:5.0})  bias-act-bwd {:6.2}",
            g.dims.h, g.dims.w, g.cin, g.cout, g.k, f, gf / f, bd, gf / bd, bf, gf / bf, ba
        );
        tot[0] += f;
        tot[1] += bd;
        tot[2] += bf;
        tot[3] += ba;
    }
    for g in &convts {
        let od = g.out_dims();
        let x = vec![0.5f32; g.dims.pixels() * g.cin];
        let mut y = vec![0.0f32; od.pixels() * g.cout];
        let p = vec![0.01f32; g.weight_len() + g.cout];
        let mut gr = vec![0.0f32; p.len()];
        let mut ws = be.alloc(be.convt_workspace_len(g))?;
        let mut dx = vec![0.0f32; x.len()];
        let (xv, yv) = (View::dense(g.cin), View::dense(g.cout));
        let f = time(reps, || {
            be.convt2x2_forward(
                g,
                &x,
                xv,
                &p,
                0,
                Some(g.weight_len()),
                Activation::Identity,
                &mut y,
                yv,
                &mut ws,
            )
            .unwrap()
        });
        let bd = time(reps, || {
            be.convt2x2_backward_data(g, &y, yv, &p, 0, &mut dx, xv, false, &mut ws)
                .unwrap()
        });
        let bf = time(reps, || {
            be.convt2x2_backward_filter(g, &x, xv, &y, yv, &mut gr, 0, &mut ws)
                .unwrap()
        });
        println!("convt {:>3}x{:<3} {:>3}->{:<3}: fwd {f:7.2} ms  bwd-data {bd:7.2}  bwd-filter {bf:7.2}", g.dims.h, g.dims.w, g.cin, g.cout);
        tot[4] += f + bd + bf;
    }
    for (l, &w) in widths.iter().enumerate().take(widths.len() - 1) {
        let g = PoolGeom {
            dims: Dims::new(n, size >> l, size >> l),
            c: w,
        };
        let x = vec![0.5f32; g.dims.pixels() * w];
        let mut y = vec![0.0f32; g.out_dims().pixels() * w];
        let mut dx = x.clone();
        let v = View::dense(w);
        let f = time(reps, || be.maxpool2_forward(&g, &x, v, &mut y, v).unwrap());
        let b = time(reps, || {
            be.maxpool2_backward(&g, &x, v, &y, v, &y, v, &mut dx, v, true)
                .unwrap()
        });
        tot[5] += f + b;
    }
    println!(
        "sum: conv fwd {:.1} ms, bwd-data {:.1}, bwd-filter {:.1}, bias-act-bwd {:.1}, convt {:.1}, pool {:.1}; total {:.1}",
        tot[0], tot[1], tot[2], tot[3], tot[4], tot[5], tot.iter().sum::<f64>()
    );
    Ok(())
}

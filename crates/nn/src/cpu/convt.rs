//! 2×2 stride-2 transposed convolution on the CPU. Weights `[cin, 2, 2, cout]`.
//!
//! Every input pixel `(i, j)` feeds exactly the four output pixels `(2i+a, 2j+b)`, so one input row and one tap
//! `(a, b)` form a plain GEMM whose output rows are `2·stride` apart: `y_ab[W × cout] = x_row[W × cin] · W_ab`.
//! Input rows are split across threads; each writes only its own two output rows (forward) or input row
//! (backward-data), and sums its own partial weight gradient (backward-filter).

use super::conv::gemm;
use super::{split_range, SyncPtr};
use crate::backend::Activation;
use crate::shape::{ConvTGeom, View};
use crate::{NnError, Result};

/// Scratch: one `cin × 4·cout` partial weight gradient per thread.
pub(super) fn workspace_len(g: &ConvTGeom, threads: usize) -> usize {
    threads * g.weight_len()
}

/// `x` is the small side (n, h, w, cin), `y` the large side (n, 2h, 2w, cout).
#[allow(clippy::too_many_arguments)]
pub(super) fn check(
    g: &ConvTGeom,
    op: &'static str,
    x: &[f32],
    xv: View,
    y: &[f32],
    yv: View,
    params: &[f32],
    w_off: usize,
) -> Result<()> {
    xv.check(op, g.cin, g.dims.pixels(), x.len())?;
    yv.check(op, g.cout, g.out_dims().pixels(), y.len())?;
    if w_off + g.weight_len() > params.len() {
        return Err(NnError::Shape {
            op,
            msg: format!("weight at {w_off} exceeds parameter buffer"),
        });
    }
    Ok(())
}

/// Offset of output pixel (img, oy, ox) in view `v` of a `(2h, 2w)` map.
#[inline]
fn out_px(g: &ConvTGeom, img: usize, oy: usize, ox: usize) -> usize {
    let (oh, ow) = (2 * g.dims.h, 2 * g.dims.w);
    (img * oh + oy) * ow + ox
}

#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    g: &ConvTGeom,
    x: &[f32],
    xv: View,
    w: &[f32],
    b: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
    yv: View,
) {
    use rayon::prelude::*;
    let (h, wd, cin, cout) = (g.dims.h, g.dims.w, g.cin, g.cout);
    let yp = SyncPtr(y.as_mut_ptr());
    (0..g.dims.n * h).into_par_iter().for_each(|row| {
        let (img, i) = (row / h, row % h);
        let lhs = x[(row * wd) * xv.stride + xv.offset..].as_ptr();
        for a in 0..2 {
            for bb in 0..2 {
                let p = out_px(g, img, 2 * i + a, bb);
                // SAFETY: input row `row` alone produces output rows 2i and 2i+1 of image img.
                unsafe {
                    let dst = yp.get().add(p * yv.stride + yv.offset);
                    let rhs = w.as_ptr().add((a * 2 + bb) * cout);
                    gemm(
                        wd,
                        cout,
                        cin,
                        dst,
                        2 * yv.stride,
                        1,
                        false,
                        lhs,
                        xv.stride,
                        1,
                        rhs,
                        4 * cout,
                        1,
                    );
                }
            }
        }
        if b.is_some() || act != Activation::Identity {
            for a in 0..2 {
                for ox in 0..2 * wd {
                    let p = out_px(g, img, 2 * i + a, ox);
                    // SAFETY: same rows as above.
                    let px = unsafe {
                        std::slice::from_raw_parts_mut(
                            yp.get().add(p * yv.stride + yv.offset),
                            cout,
                        )
                    };
                    match b {
                        Some(b) => px
                            .iter_mut()
                            .zip(b)
                            .for_each(|(v, &b)| *v = act.apply(*v + b)),
                        None => px.iter_mut().for_each(|v| *v = act.apply(*v)),
                    }
                }
            }
        }
    });
}

/// `dx[i, j, c] (+)= Σ_{a,b,o} dy[2i+a, 2j+b, o] · w[c, a, b, o]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_data(
    g: &ConvTGeom,
    dy: &[f32],
    dyv: View,
    w: &[f32],
    dx: &mut [f32],
    dxv: View,
    accumulate: bool,
) {
    use rayon::prelude::*;
    let (h, wd, cin, cout) = (g.dims.h, g.dims.w, g.cin, g.cout);
    let xp = SyncPtr(dx.as_mut_ptr());
    (0..g.dims.n * h).into_par_iter().for_each(|row| {
        let (img, i) = (row / h, row % h);
        for a in 0..2 {
            for bb in 0..2 {
                let p = out_px(g, img, 2 * i + a, bb);
                let first = a == 0 && bb == 0;
                // SAFETY: input row `row` of dx is written by this task only.
                unsafe {
                    let dst = xp.get().add(row * wd * dxv.stride + dxv.offset);
                    let lhs = dy.as_ptr().add(p * dyv.stride + dyv.offset);
                    let rhs = w.as_ptr().add((a * 2 + bb) * cout);
                    let acc = accumulate || !first;
                    gemm(
                        wd,
                        cin,
                        cout,
                        dst,
                        dxv.stride,
                        1,
                        acc,
                        lhs,
                        2 * dyv.stride,
                        1,
                        rhs,
                        1,
                        4 * cout,
                    );
                }
            }
        }
    });
}

/// `dw[c, a, b, o] += Σ_{i,j} x[i, j, c] · dy[2i+a, 2j+b, o]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_filter(
    g: &ConvTGeom,
    x: &[f32],
    xv: View,
    dy: &[f32],
    dyv: View,
    dw: &mut [f32],
    ws: &mut [f32],
    threads: usize,
) {
    use rayon::prelude::*;
    let (h, wd, cin, cout) = (g.dims.h, g.dims.w, g.cin, g.cout);
    let wl = g.weight_len();
    ws[..threads * wl]
        .par_chunks_mut(wl)
        .enumerate()
        .for_each(|(t, partial)| {
            partial.fill(0.0);
            for row in split_range(g.dims.n * h, threads, t) {
                let (img, i) = (row / h, row % h);
                for a in 0..2 {
                    for bb in 0..2 {
                        let p = out_px(g, img, 2 * i + a, bb);
                        // SAFETY: `partial` is this thread's slab; x and dy are read in bounds.
                        unsafe {
                            let dst = partial.as_mut_ptr().add((a * 2 + bb) * cout);
                            let lhs = x.as_ptr().add(row * wd * xv.stride + xv.offset);
                            let rhs = dy.as_ptr().add(p * dyv.stride + dyv.offset);
                            gemm(
                                cin,
                                cout,
                                wd,
                                dst,
                                4 * cout,
                                1,
                                true,
                                lhs,
                                1,
                                xv.stride,
                                rhs,
                                2 * dyv.stride,
                                1,
                            );
                        }
                    }
                }
            }
        });
    for t in 0..threads {
        dw.iter_mut()
            .zip(&ws[t * wl..(t + 1) * wl])
            .for_each(|(d, &p)| *d += p);
    }
}

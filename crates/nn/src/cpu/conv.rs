//! k×k convolution (stride 1, zero "same" padding, odd k) on the CPU: im2col per chunk of pixels + GEMM.
//!
//! Weights are `[cout, k, k, cin]` = a row-major `[cout × K]` matrix with `K = k·k·cin`, the column order of the
//! im2col rows, so forward is `y[P × cout] = col[P × K] · Wᵀ`.
//! - forward: per thread a contiguous pixel range, processed in chunks that keep the im2col block in L2; bias and
//!   activation are applied to each chunk right after its GEMM, while it is in cache.
//! - backward-data: the gradient of a stride-1 same-padded conv is the same conv of `dy` with the filter flipped
//!   in space and its channel axes swapped (`W'[ci, ky, kx, co] = W[co, k-1-ky, k-1-kx, ci]`), so it reuses the
//!   forward kernel: no col2im scatter, no write conflicts between threads.
//! - backward-filter: `dW[cout × K] += dyᵀ[cout × P] · col[P × K]`, one partial sum per thread, reduced at the end.
//! - 1×1 convs skip im2col: the input itself (rows `stride` apart) is the matrix.
//! - Layers with 16 or 32 output channels use the register-tiled AVX-512 kernel of `kernel.rs` for the forward /
//!   backward-data product and for `dWᵀ`, where `gemm`'s narrow tiles are slow (about 5 % of a training step of
//!   `unet[16,32,64,128]` at 8 × 128², measured on the device machine's Xeon, 2 threads). When such a 3×3 conv
//!   reads a dense input, it skips im2col altogether (implicit GEMM: the three kernel rows of a pixel run are
//!   contiguous in NHWC and are read in place; only the two border pixels of each row go through im2col), which cut
//!   the forward of that step from ≈50 to ≈37 ms.

use super::{split_range, SyncPtr};
use crate::backend::Activation;
use crate::shape::{ConvGeom, View};
use crate::{NnError, Result};

/// Pixels per im2col chunk: about 256 KiB of im2col per chunk, at least 64 and at most 2048 rows.
fn chunk_pixels(kk: usize) -> usize {
    ((64 * 1024) / kk.max(1)).clamp(64, 2048)
}

fn kdim(g: &ConvGeom) -> usize {
    g.k * g.k * g.cin
}

/// Scratch: per thread an im2col block (largest of forward, and backward-data with swapped channels) plus a
/// `cout × K` partial weight gradient; once the flipped filter for backward-data.
pub(super) fn workspace_len(g: &ConvGeom, threads: usize) -> usize {
    let t = ConvGeom {
        cin: g.cout,
        cout: g.cin,
        ..*g
    };
    let col = |g: &ConvGeom| {
        if g.k == 1 {
            0
        } else {
            chunk_pixels(kdim(g)) * kdim(g)
        }
    };
    let per_thread = col(g).max(col(&t)) + g.cout * kdim(g);
    // + the flipped filter of backward-data, + Wᵀ for the narrow kernel.
    threads * per_thread + 2 * g.weight_len()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn check(
    g: &ConvGeom,
    op: &'static str,
    x: &[f32],
    xv: View,
    y: &[f32],
    yv: View,
    params: &[f32],
    w_off: usize,
    ws: &[f32],
    threads: usize,
) -> Result<()> {
    if g.k.is_multiple_of(2) {
        return Err(NnError::Shape {
            op,
            msg: format!("kernel size {} is even; only odd sizes are supported", g.k),
        });
    }
    let px = g.dims.pixels();
    xv.check(op, g.cin, px, x.len())?;
    yv.check(op, g.cout, px, y.len())?;
    if w_off + g.weight_len() > params.len() {
        return Err(NnError::Shape {
            op,
            msg: format!("weight at {w_off} exceeds parameter buffer"),
        });
    }
    let need = workspace_len(g, threads);
    if ws.len() < need {
        return Err(NnError::Shape {
            op,
            msg: format!("workspace of {} floats, need {need}", ws.len()),
        });
    }
    Ok(())
}

/// Writes the im2col rows of pixels `p0 .. p0 + np` into `col` (`np × K`, row-major, column order ky, kx, ci).
fn im2col(g: &ConvGeom, x: &[f32], xv: View, p0: usize, np: usize, col: &mut [f32]) {
    let (h, w, k, cin) = (g.dims.h, g.dims.w, g.k, g.cin);
    let pad = k / 2;
    let kk = k * k * cin;
    let hw = h * w;
    for (r, row) in col[..np * kk].chunks_exact_mut(kk).enumerate() {
        let p = p0 + r;
        let (img, rem) = (p / hw, p % hw);
        let (py, px) = (rem / w, rem % w);
        for ky in 0..k {
            let dst = &mut row[ky * k * cin..(ky + 1) * k * cin];
            let sy = py as isize + ky as isize - pad as isize;
            if sy < 0 || sy >= h as isize {
                dst.fill(0.0);
                continue;
            }
            // Valid kx: 0 <= px + kx - pad < w.
            let kx0 = pad.saturating_sub(px);
            let kx1 = (w + pad - px).min(k);
            dst[..kx0 * cin].fill(0.0);
            dst[kx1 * cin..].fill(0.0);
            let base = (img * hw + sy as usize * w) * xv.stride + xv.offset;
            let sx0 = px + kx0 - pad;
            if xv.stride == cin {
                // Dense input: the valid taps of this kernel row are one contiguous run.
                let s = base + sx0 * cin;
                dst[kx0 * cin..kx1 * cin].copy_from_slice(&x[s..s + (kx1 - kx0) * cin]);
            } else {
                for kx in kx0..kx1 {
                    let s = base + (sx0 + kx - kx0) * xv.stride;
                    dst[kx * cin..(kx + 1) * cin].copy_from_slice(&x[s..s + cin]);
                }
            }
        }
    }
}

/// `dst[m × n] (+)= lhs[m × k] · rhs[k × n]` with explicit (row, column) strides, single-threaded.
/// SAFETY (caller): every pointer addresses the described strided matrix inside a live allocation, and `dst`
/// is not written by another thread at the same time.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.add(i * dst_rs + j * dst_cs) = 0.0;
                }
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// `y (+)= act(conv(x, w) + b)` (act and bias only without `accumulate`). `w` is `[cout, k, k, cin]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    g: &ConvGeom,
    x: &[f32],
    xv: View,
    w: &[f32],
    b: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
    yv: View,
    accumulate: bool,
    ws: &mut [f32],
    threads: usize,
) {
    use rayon::prelude::*;
    let kk = kdim(g);
    let pc = chunk_pixels(kk);
    let col_len = if g.k == 1 { 0 } else { pc * kk };
    let total = g.dims.pixels();
    let yp = SyncPtr(y.as_mut_ptr());
    let slab = col_len.max(1);
    let narrow = super::kernel::handles(g.cout);
    // The narrow kernel reads Wᵀ (`K × cout`), built after the per-thread slabs.
    let (ws, wt) = ws.split_at_mut(threads * slab);
    if narrow {
        for co in 0..g.cout {
            for i in 0..kk {
                wt[i * g.cout + co] = w[co * kk + i];
            }
        }
    }
    let wt = &*wt;
    // 3×3 on a dense input: read the kernel rows straight from x (implicit GEMM), im2col only for border pixels.
    let implicit = narrow && g.k == 3 && xv.stride == g.cin;
    ws.par_chunks_mut(slab).enumerate().for_each(|(t, col)| {
        let range = split_range(total, threads, t);
        let mut p0 = range.start;
        while p0 < range.end {
            let np = pc.min(range.end - p0);
            // SAFETY: this thread alone writes output pixels p0 .. p0+np (its range), channels of view yv.
            unsafe {
                let dst = yp.get().add(p0 * yv.stride + yv.offset);
                if implicit {
                    implicit3x3(g, x, p0, np, wt, dst, yv.stride, accumulate, col);
                } else {
                    let (lhs, lhs_rs) = if g.k == 1 {
                        (x[p0 * xv.stride + xv.offset..].as_ptr(), xv.stride)
                    } else {
                        im2col(g, x, xv, p0, np, col);
                        (col.as_ptr(), kk)
                    };
                    if narrow {
                        let wp = wt.as_ptr();
                        super::kernel::gemm_narrow(
                            np, kk, lhs, lhs_rs, 1, wp, g.cout, g.cout, dst, yv.stride, accumulate,
                        );
                    } else {
                        gemm(
                            np,
                            g.cout,
                            kk,
                            dst,
                            yv.stride,
                            1,
                            accumulate,
                            lhs,
                            lhs_rs,
                            1,
                            w.as_ptr(),
                            1,
                            kk,
                        );
                    }
                }
                if !accumulate && (b.is_some() || act != Activation::Identity) {
                    for r in 0..np {
                        let row = std::slice::from_raw_parts_mut(dst.add(r * yv.stride), g.cout);
                        epilogue(row, b, act);
                    }
                }
            }
            p0 += np;
        }
    });
}

/// Implicit-GEMM 3×3 conv of pixels `p0 .. p0+np` of a dense input: for each image row in the range, the interior
/// pixels multiply the three input rows above/at/below directly (`3·cin` contiguous floats per kernel row and
/// pixel), the two border pixels of a row go through a one-pixel im2col.
///
/// # Safety
/// `dst` addresses output pixel `p0` (rows `ldc` apart) and this thread alone writes pixels `p0 .. p0+np`;
/// `super::kernel::handles(g.cout)`; `wt` is `Wᵀ` (`9·cin × cout`); `col` holds at least `9·cin` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn implicit3x3(
    g: &ConvGeom,
    x: &[f32],
    p0: usize,
    np: usize,
    wt: &[f32],
    dst: *mut f32,
    ldc: usize,
    accumulate: bool,
    col: &mut [f32],
) {
    use super::kernel::{gemm_narrow, gemm_narrow_segs, Seg};
    let (h, w, cin, cout) = (g.dims.h, g.dims.w, g.cin, g.cout);
    let (hw, kc, kk) = (h * w, 3 * cin, 9 * cin);
    let end = p0 + np;
    let mut p = p0;
    while p < end {
        let (img, rem) = (p / hw, p % hw);
        let (y, x0) = (rem / w, rem % w);
        let run_end = end.min(p - x0 + w);
        let x1 = x0 + (run_end - p);
        let (ia, ib) = (x0.max(1), x1.min(w - 1));
        if ia < ib {
            let mut segs = [Seg {
                a: std::ptr::null(),
                b: std::ptr::null(),
                k: 0,
            }; 3];
            let mut ns = 0;
            for ky in 0..3 {
                let sy = y as isize + ky as isize - 1;
                if sy < 0 || sy >= h as isize {
                    continue;
                }
                let row = ((img * h + sy as usize) * w + ia - 1) * cin;
                segs[ns] = Seg {
                    a: x.as_ptr().add(row),
                    b: wt.as_ptr().add(ky * kc * cout),
                    k: kc,
                };
                ns += 1;
            }
            let c = dst.add((p + (ia - x0) - p0) * ldc);
            gemm_narrow_segs(ib - ia, &segs[..ns], cin, cout, c, ldc, accumulate);
        }
        let borders: &[usize] = if w == 1 { &[0] } else { &[0, w - 1] };
        for &bx in borders {
            if bx < x0 || bx >= x1 {
                continue;
            }
            let q = p + (bx - x0);
            im2col(g, x, View::dense(cin), q, 1, col);
            gemm_narrow(
                1,
                kk,
                col.as_ptr(),
                kk,
                1,
                wt.as_ptr(),
                cout,
                cout,
                dst.add((q - p0) * ldc),
                ldc,
                accumulate,
            );
        }
        p = run_end;
    }
}

#[inline]
fn epilogue(row: &mut [f32], b: Option<&[f32]>, act: Activation) {
    match (b, act) {
        (Some(b), Activation::Relu) => row
            .iter_mut()
            .zip(b)
            .for_each(|(v, &b)| *v = (*v + b).max(0.0)),
        (Some(b), act) => row
            .iter_mut()
            .zip(b)
            .for_each(|(v, &b)| *v = act.apply(*v + b)),
        (None, act) => row.iter_mut().for_each(|v| *v = act.apply(*v)),
    }
}

/// `dx (+)= conv(dy, W')` with `W'[ci, ky, kx, co] = W[co, k-1-ky, k-1-kx, ci]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_data(
    g: &ConvGeom,
    dy: &[f32],
    dyv: View,
    w: &[f32],
    dx: &mut [f32],
    dxv: View,
    accumulate: bool,
    ws: &mut [f32],
    threads: usize,
) {
    let (k, cin, cout) = (g.k, g.cin, g.cout);
    let wl = g.weight_len();
    let (rest, wt) = ws.split_at_mut(ws.len() - wl);
    for co in 0..cout {
        for ky in 0..k {
            for kx in 0..k {
                let src = ((co * k + ky) * k + kx) * cin;
                for ci in 0..cin {
                    wt[((ci * k + (k - 1 - ky)) * k + (k - 1 - kx)) * cout + co] = w[src + ci];
                }
            }
        }
    }
    let t = ConvGeom {
        dims: g.dims,
        cin: cout,
        cout: cin,
        k,
    };
    forward(
        &t,
        dy,
        dyv,
        wt,
        None,
        Activation::Identity,
        dx,
        dxv,
        accumulate,
        rest,
        threads,
    );
}

/// `dw += dyᵀ · im2col(x)`, `dw` `[cout, k, k, cin]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_filter(
    g: &ConvGeom,
    x: &[f32],
    xv: View,
    dy: &[f32],
    dyv: View,
    dw: &mut [f32],
    ws: &mut [f32],
    threads: usize,
) {
    use rayon::prelude::*;
    let kk = kdim(g);
    let pc = chunk_pixels(kk);
    let col_len = if g.k == 1 { 0 } else { pc * kk };
    let part = g.cout * kk;
    let slab = col_len + part;
    let total = g.dims.pixels();
    // Narrow layers accumulate dWᵀ (`K × cout`) with the register-tiled kernel; others dW (`cout × K`) with gemm.
    let narrow = super::kernel::handles(g.cout);
    let implicit = narrow && g.k == 3 && xv.stride == g.cin;
    ws[..threads * slab]
        .par_chunks_mut(slab)
        .enumerate()
        .for_each(|(t, s)| {
            let (col, partial) = s.split_at_mut(col_len);
            partial.fill(0.0);
            let range = split_range(total, threads, t);
            let mut p0 = range.start;
            while p0 < range.end {
                let np = pc.min(range.end - p0);
                if implicit {
                    // SAFETY: `partial` is this thread's own slab; x and dy are read in bounds.
                    unsafe { implicit_filter3x3(g, x, dy, dyv, p0, np, partial.as_mut_ptr(), col) };
                    p0 += np;
                    continue;
                }
                let (rhs, rhs_rs) = if g.k == 1 {
                    (x[p0 * xv.stride + xv.offset..].as_ptr(), xv.stride)
                } else {
                    im2col(g, x, xv, p0, np, col);
                    (col.as_ptr(), kk)
                };
                let lhs = dy[p0 * dyv.stride + dyv.offset..].as_ptr();
                // SAFETY: `partial` is this thread's own slab; lhs/rhs are read-only strided views in bounds.
                unsafe {
                    if narrow {
                        let pp = partial.as_mut_ptr();
                        super::kernel::gemm_narrow(
                            kk, np, rhs, 1, rhs_rs, lhs, dyv.stride, g.cout, pp, g.cout, true,
                        );
                    } else {
                        let pp = partial.as_mut_ptr();
                        gemm(
                            g.cout, kk, np, pp, kk, 1, true, lhs, 1, dyv.stride, rhs, rhs_rs, 1,
                        );
                    }
                };
                p0 += np;
            }
        });
    for t in 0..threads {
        let partial = &ws[t * slab + col_len..t * slab + col_len + part];
        if narrow {
            for i in 0..kk {
                for co in 0..g.cout {
                    dw[co * kk + i] += partial[i * g.cout + co];
                }
            }
        } else {
            dw.iter_mut().zip(partial).for_each(|(d, &p)| *d += p);
        }
    }
}

/// Implicit-GEMM weight gradient of a narrow 3×3 conv on a dense input, pixels `p0 .. p0+np`:
/// `dWᵀ[ky·3cin + j, :] += Σ_pixels x[row(y+ky−1), pixel−1 + j/cin, j%cin] · dy[pixel, :]`, reading x in place;
/// border pixels via a one-pixel im2col.
///
/// # Safety
/// `partial` is this thread's `9·cin × cout` accumulator; `super::kernel::handles(g.cout)`; `col` holds at least
/// `9·cin` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn implicit_filter3x3(
    g: &ConvGeom,
    x: &[f32],
    dy: &[f32],
    dyv: View,
    p0: usize,
    np: usize,
    partial: *mut f32,
    col: &mut [f32],
) {
    use super::kernel::gemm_narrow;
    let (h, w, cin, cout) = (g.dims.h, g.dims.w, g.cin, g.cout);
    let (hw, kc, kk) = (h * w, 3 * cin, 9 * cin);
    let end = p0 + np;
    let dyp = |q: usize| dy.as_ptr().add(q * dyv.stride + dyv.offset);
    let mut p = p0;
    while p < end {
        let (img, rem) = (p / hw, p % hw);
        let (y, x0) = (rem / w, rem % w);
        let run_end = end.min(p - x0 + w);
        let x1 = x0 + (run_end - p);
        let (ia, ib) = (x0.max(1), x1.min(w - 1));
        if ia < ib {
            for ky in 0..3 {
                let sy = y as isize + ky as isize - 1;
                if sy < 0 || sy >= h as isize {
                    continue;
                }
                let a = x.as_ptr().add(((img * h + sy as usize) * w + ia - 1) * cin);
                let c = partial.add(ky * kc * cout);
                gemm_narrow(
                    kc,
                    ib - ia,
                    a,
                    1,
                    cin,
                    dyp(p + ia - x0),
                    dyv.stride,
                    cout,
                    c,
                    cout,
                    true,
                );
            }
        }
        let borders: &[usize] = if w == 1 { &[0] } else { &[0, w - 1] };
        for &bx in borders {
            if bx < x0 || bx >= x1 {
                continue;
            }
            let q = p + (bx - x0);
            im2col(g, x, View::dense(cin), q, 1, col);
            gemm_narrow(
                kk,
                1,
                col.as_ptr(),
                1,
                kk,
                dyp(q),
                dyv.stride,
                cout,
                partial,
                cout,
                true,
            );
        }
        p = run_end;
    }
}

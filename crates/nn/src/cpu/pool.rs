//! 2×2 max-pool, stride 2, floor mode (PyTorch's `nn.MaxPool2d(2)`), on the CPU.
//!
//! The backward routes each output gradient to the FIRST maximal element of its window in row-major order,
//! which is the element PyTorch's CPU kernel records (`val > maxval` keeps the first of equal values); it is
//! found again by comparing `x` with `y`, so no argmax indices are stored.

use super::SyncPtr;
use crate::shape::{PoolGeom, View};

pub(super) fn forward(g: &PoolGeom, x: &[f32], xv: View, y: &mut [f32], yv: View) {
    use rayon::prelude::*;
    let (h, w, c) = (g.dims.h, g.dims.w, g.c);
    let (oh, ow) = (h / 2, w / 2);
    let yp = SyncPtr(y.as_mut_ptr());
    (0..g.dims.n * oh).into_par_iter().for_each(|orow| {
        let (img, oy) = (orow / oh, orow % oh);
        for ox in 0..ow {
            let p00 = ((img * h + 2 * oy) * w + 2 * ox) * xv.stride + xv.offset;
            let p10 = p00 + w * xv.stride;
            let (r00, r01) = (&x[p00..p00 + c], &x[p00 + xv.stride..p00 + xv.stride + c]);
            let (r10, r11) = (&x[p10..p10 + c], &x[p10 + xv.stride..p10 + xv.stride + c]);
            // SAFETY: output row `orow` is written by this task only.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    yp.get().add((orow * ow + ox) * yv.stride + yv.offset),
                    c,
                )
            };
            for ch in 0..c {
                out[ch] = max_first(r00[ch], r01[ch], r10[ch], r11[ch]).0;
            }
        }
    });
}

/// Max of a window in PyTorch's scan order, and the index (0..4) of its first occurrence. NaN wins, as in torch.
#[inline(always)]
fn max_first(a: f32, b: f32, c: f32, d: f32) -> (f32, usize) {
    let mut m = a;
    let mut i = 0;
    for (j, v) in [b, c, d].into_iter().enumerate() {
        if v > m || v.is_nan() {
            m = v;
            i = j + 1;
        }
        if m.is_nan() {
            break;
        }
    }
    (m, i)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    g: &PoolGeom,
    x: &[f32],
    xv: View,
    _y: &[f32],
    _yv: View,
    dy: &[f32],
    dyv: View,
    dx: &mut [f32],
    dxv: View,
    accumulate: bool,
) {
    use rayon::prelude::*;
    let (h, w, c) = (g.dims.h, g.dims.w, g.c);
    let (oh, ow) = (h / 2, w / 2);
    let xp = SyncPtr(dx.as_mut_ptr());
    // One task per input row pair (plus the row dropped by floor, if any): rows 2·oy, 2·oy+1 (, h-1).
    let rows_per_img = oh + (h % 2);
    (0..g.dims.n * rows_per_img)
        .into_par_iter()
        .for_each(|task| {
            let (img, oy) = (task / rows_per_img, task % rows_per_img);
            // SAFETY: this task alone writes input rows 2·oy and 2·oy+1 (or the dropped last row) of image img.
            let px = |yy: usize, xx: usize| unsafe {
                std::slice::from_raw_parts_mut(
                    xp.get()
                        .add(((img * h + yy) * w + xx) * dxv.stride + dxv.offset),
                    c,
                )
            };
            if oy == oh {
                // The last row of an odd height gets no gradient.
                if !accumulate {
                    for xx in 0..w {
                        px(h - 1, xx).fill(0.0);
                    }
                }
                return;
            }
            for ox in 0..ow {
                let p00 = ((img * h + 2 * oy) * w + 2 * ox) * xv.stride + xv.offset;
                let p10 = p00 + w * xv.stride;
                let g0 = &dy[(((img * oh + oy) * ow + ox) * dyv.stride + dyv.offset)..][..c];
                let outs = [
                    px(2 * oy, 2 * ox),
                    px(2 * oy, 2 * ox + 1),
                    px(2 * oy + 1, 2 * ox),
                    px(2 * oy + 1, 2 * ox + 1),
                ];
                let [o0, o1, o2, o3] = outs;
                for ch in 0..c {
                    let (_, i) = max_first(
                        x[p00 + ch],
                        x[p00 + xv.stride + ch],
                        x[p10 + ch],
                        x[p10 + xv.stride + ch],
                    );
                    let gv = g0[ch];
                    let vals = [
                        (i == 0) as u8 as f32 * gv,
                        (i == 1) as u8 as f32 * gv,
                        (i == 2) as u8 as f32 * gv,
                        (i == 3) as u8 as f32 * gv,
                    ];
                    if accumulate {
                        o0[ch] += vals[0];
                        o1[ch] += vals[1];
                        o2[ch] += vals[2];
                        o3[ch] += vals[3];
                    } else {
                        o0[ch] = vals[0];
                        o1[ch] = vals[1];
                        o2[ch] = vals[2];
                        o3[ch] = vals[3];
                    }
                }
            }
            if w % 2 == 1 && !accumulate {
                px(2 * oy, w - 1).fill(0.0);
                px(2 * oy + 1, w - 1).fill(0.0);
            }
        });
}

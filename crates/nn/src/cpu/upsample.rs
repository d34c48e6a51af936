//! Nearest-neighbour resampling to an exact size, as `F.interpolate(x, size=(oh, ow), mode="nearest")`.
//!
//! PyTorch's source index for output index `o` (upsample_nearest kernels, align_corners absent): `o` when the sizes
//! are equal, `o >> 1` for an exact doubling, else `min(floor(o · (in / out) as f32), in - 1)`, computed in f32.

use super::SyncPtr;
use crate::shape::{UpsampleGeom, View};

#[inline]
pub(crate) fn src_index(o: usize, input: usize, output: usize) -> usize {
    if output == input {
        o
    } else if output == 2 * input {
        o >> 1
    } else {
        let scale = input as f32 / output as f32;
        ((o as f32 * scale).floor() as usize).min(input - 1)
    }
}

pub(super) fn forward(g: &UpsampleGeom, x: &[f32], xv: View, y: &mut [f32], yv: View) {
    use rayon::prelude::*;
    let (h, w, c, oh, ow) = (g.dims.h, g.dims.w, g.c, g.oh, g.ow);
    let yp = SyncPtr(y.as_mut_ptr());
    (0..g.dims.n * oh).into_par_iter().for_each(|orow| {
        let (img, oy) = (orow / oh, orow % oh);
        let sy = src_index(oy, h, oh);
        for ox in 0..ow {
            let sx = src_index(ox, w, ow);
            let s = ((img * h + sy) * w + sx) * xv.stride + xv.offset;
            // SAFETY: output row `orow` is written by this task only.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    yp.get().add((orow * ow + ox) * yv.stride + yv.offset),
                    c,
                )
            };
            out.copy_from_slice(&x[s..s + c]);
        }
    });
}

/// Each input pixel sums the output pixels that copied it. Tasks are input rows; the output rows mapping to one
/// input row form a contiguous range because the index map is monotone.
pub(super) fn backward(
    g: &UpsampleGeom,
    dy: &[f32],
    dyv: View,
    dx: &mut [f32],
    dxv: View,
    accumulate: bool,
) {
    use rayon::prelude::*;
    let (h, w, c, oh, ow) = (g.dims.h, g.dims.w, g.c, g.oh, g.ow);
    let xp = SyncPtr(dx.as_mut_ptr());
    (0..g.dims.n * h).into_par_iter().for_each(|row| {
        let (img, iy) = (row / h, row % h);
        // SAFETY: input row `row` is written by this task only.
        let px = |xx: usize| unsafe {
            std::slice::from_raw_parts_mut(
                xp.get().add((row * w + xx) * dxv.stride + dxv.offset),
                c,
            )
        };
        if !accumulate {
            for xx in 0..w {
                px(xx).fill(0.0);
            }
        }
        for oy in (0..oh).filter(|&oy| src_index(oy, h, oh) == iy) {
            for ox in 0..ow {
                let sx = src_index(ox, w, ow);
                let s = ((img * oh + oy) * ow + ox) * dyv.stride + dyv.offset;
                px(sx)
                    .iter_mut()
                    .zip(&dy[s..s + c])
                    .for_each(|(d, &v)| *d += v);
            }
        }
    });
}

//! Tiles with context: which windows of the (padded) image the network sees, and which part of each window's
//! output is kept.
//!
//! Along each axis the image (padded to a multiple of the model's alignment) is cut into cores of `tile` pixels;
//! each core is computed from a window reaching `context` pixels beyond it, shifted inwards at the image borders
//! so every window has the same size (one batch shape, one allocation, whatever the image size). Where the
//! window ends at the image border, the network pads there exactly as it would for the whole image; elsewhere
//! the context covers the receptive field. Images no larger than `tile + 2·context` are one window.

/// One window and the core it contributes, in padded-image coordinates along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First pixel of the window.
    pub win: usize,
    /// First pixel and length of the core (inside the window).
    pub core: usize,
    pub core_len: usize,
}

/// Windows along one axis of length `n` (a multiple of `align`); all windows are `len` long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AxisPlan {
    pub len: usize,
    pub segments: Vec<Segment>,
}

/// `tile` and `context` are rounded up to multiples of `align` (which `n` must be a multiple of).
pub fn plan_axis(n: usize, tile: usize, context: usize, align: usize) -> AxisPlan {
    debug_assert!(n.is_multiple_of(align) && n > 0);
    let tile = tile.max(1).div_ceil(align) * align;
    let context = context.div_ceil(align) * align;
    if n <= tile + 2 * context {
        return AxisPlan {
            len: n,
            segments: vec![Segment {
                win: 0,
                core: 0,
                core_len: n,
            }],
        };
    }
    let len = tile + 2 * context;
    let mut segments = Vec::new();
    let mut core = 0;
    while core < n {
        let core_len = tile.min(n - core);
        let win = core.saturating_sub(context).min(n - len);
        segments.push(Segment {
            win,
            core,
            core_len,
        });
        core += core_len;
    }
    AxisPlan { len, segments }
}

/// Position in `0..n` that padded position `i` mirrors (`d c b a | a b c d`, numpy's `symmetric`).
pub fn reflect_index(i: usize, n: usize) -> usize {
    let p = 2 * n;
    let i = i % p;
    if i < n {
        i
    } else {
        p - 1 - i
    }
}

/// Pads a row-major `nx × ny` image to `px × py` (both ≥ the image) by mirroring (`d c b a | a b c d`, the
/// same as numpy's `symmetric`), so the network sees image-like content rather than a step.
pub fn pad_reflect(img: &[f32], nx: usize, ny: usize, px: usize, py: usize) -> Vec<f32> {
    let m = reflect_index;
    let mut out = Vec::with_capacity(px * py);
    for j in 0..py {
        let row = &img[m(j, ny) * nx..(m(j, ny) + 1) * nx];
        out.extend_from_slice(row);
        out.extend((nx..px).map(|i| row[m(i, nx)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_axes_are_one_window() {
        let p = plan_axis(64, 1024, 32, 8);
        assert_eq!(
            p,
            AxisPlan {
                len: 64,
                segments: vec![Segment {
                    win: 0,
                    core: 0,
                    core_len: 64
                }]
            }
        );
    }

    #[test]
    fn cores_cover_the_axis_once_and_windows_stay_inside() {
        for (n, tile, ctx, align) in [(1000, 128, 40, 8), (4096, 1024, 64, 16), (520, 100, 3, 4)] {
            let p = plan_axis(n, tile, ctx, align);
            let mut next = 0;
            for s in &p.segments {
                assert_eq!(s.core, next);
                next += s.core_len;
                assert!(
                    s.win + p.len <= n && s.win <= s.core && s.core + s.core_len <= s.win + p.len
                );
                assert!(s.win.is_multiple_of(align));
                // Context on each side, unless the window meets the image border.
                let ctx = ctx.div_ceil(align) * align;
                assert!(s.win == 0 || s.core - s.win >= ctx);
                assert!(s.win + p.len == n || s.win + p.len - (s.core + s.core_len) >= ctx);
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn reflect_padding_mirrors_rows_and_columns() {
        let img = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 3 × 2
        let p = pad_reflect(&img, 3, 2, 5, 3);
        assert_eq!(
            p,
            vec![1.0, 2.0, 3.0, 3.0, 2.0, 4.0, 5.0, 6.0, 6.0, 5.0, 4.0, 5.0, 6.0, 6.0, 5.0]
        );
    }
}

//! Patch grid along one axis, with the edge rule of docs/DATA.md.
//!
//! Starts are `0, stride, 2·stride, …` while the patch fits; if that leaves pixels uncovered at the far edge, one
//! more patch is placed flush with the far edge (start `len − patch`), so every pixel is in at least one patch and
//! no patch reaches outside the image (no padding is ever invented). Patches are taken row-major: for each
//! y-start, every x-start.

/// Patch starts along an axis of `len` pixels; `None` when the patch does not fit (`patch > len`) or a size is 0.
pub fn starts(len: usize, patch: usize, stride: usize) -> Option<Vec<usize>> {
    if patch == 0 || stride == 0 || patch > len {
        return None;
    }
    let mut v: Vec<usize> = (0..=len - patch).step_by(stride).collect();
    if v.last().is_some_and(|&s| s + patch < len) {
        v.push(len - patch);
    }
    Some(v)
}

/// Copies the `patch × patch` window at `(x0, y0)` of an image of width `w` into `out` (row-major).
pub fn extract(img: &[f32], w: usize, x0: usize, y0: usize, patch: usize, out: &mut [f32]) {
    for (r, dst) in out.chunks_exact_mut(patch).enumerate() {
        let s = (y0 + r) * w + x0;
        dst.copy_from_slice(&img[s..s + patch]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_rule() {
        assert_eq!(starts(10, 4, 4), Some(vec![0, 4, 6]));
        assert_eq!(starts(8, 4, 4), Some(vec![0, 4]));
        assert_eq!(starts(4, 4, 4), Some(vec![0]));
        assert_eq!(starts(10, 4, 3), Some(vec![0, 3, 6]));
        assert_eq!(starts(11, 4, 3), Some(vec![0, 3, 6, 7]));
        assert_eq!(starts(3, 4, 4), None);
        assert_eq!(starts(10, 4, 0), None);
        // Every pixel covered, every patch inside.
        for len in 1..40 {
            for p in 1..=len {
                for s in 1..=p + 2 {
                    let v = starts(len, p, s).unwrap();
                    let mut cov = vec![false; len];
                    for &a in &v {
                        assert!(a + p <= len);
                        cov[a..a + p].iter_mut().for_each(|c| *c = true);
                    }
                    if s <= p {
                        assert!(
                            cov.iter().all(|&c| c),
                            "len {len} patch {p} stride {s}: {v:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn extract_window() {
        let img: Vec<f32> = (0..20).map(|i| i as f32).collect(); // 5 wide, 4 high
        let mut out = vec![0.0; 4];
        extract(&img, 5, 3, 2, 2, &mut out);
        assert_eq!(out, vec![13.0, 14.0, 18.0, 19.0]);
    }
}

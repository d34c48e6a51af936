//! A register-tiled AVX-512 kernel for the GEMM of a convolution with few output channels.
//!
//! `gemm` 0.19 maps our NHWC product `y[P × cout] = col[P × K] · Wᵀ` onto microkernels whose vector dimension is
//! `cout`; with 16 or 32 output channels it uses its 16×6 / 32×6 tiles, which keep only 6–12 accumulators live and
//! run at about half the rate of wide layers. This kernel instead holds `R` pixels × `cout` channels (14 × 16 or
//! 12 × 32 floats, 14 or 24 zmm accumulators), broadcasting one im2col value per pixel and loading one row of
//! `Wᵀ` per k. It needs no packing: `Wᵀ` (`K × cout`, a few hundred KiB at most) stays in L2 and the im2col block
//! is read row by row.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this CPU runs the kernel (AVX-512F), detected once.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAIL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAIL.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output-channel counts the kernel handles.
pub(crate) fn handles(cout: usize) -> bool {
    (cout == 16 || cout == 32) && available()
}

/// `c[r·ldc + j] (+)= Σ_k a[r·a_rs + k·a_ks] · b[k·b_ks + j]` for `r < m`, `j < cout` (`cout` ∈ {16, 32}).
///
/// Forward uses `a` = im2col rows (`a_ks = 1`) and `b` = `Wᵀ` (`b_ks = cout`); backward-filter uses `a` = the
/// im2col block read transposed (`a_rs = 1`, `a_ks = K`), `b` = `dy` rows and `c` = `dWᵀ`.
///
/// # Safety
/// [`handles`]`(cout)` must be true; every pointer must address the described strided matrix inside a live
/// allocation, and `c` must not be accessed by other threads.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_narrow(
    m: usize,
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_ks: usize,
    b: *const f32,
    b_ks: usize,
    cout: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    match cout {
        // 16-row tiles when they divide m exactly (dWᵀ blocks of 3·cin rows), else 14 (15 of 32 registers).
        16 if m.is_multiple_of(16) => {
            run::<1, 16>(m, k, a, a_rs, a_ks, b, b_ks, c, ldc, accumulate)
        }
        16 => run::<1, 14>(m, k, a, a_rs, a_ks, b, b_ks, c, ldc, accumulate),
        32 => run::<2, 12>(m, k, a, a_rs, a_ks, b, b_ks, c, ldc, accumulate),
        _ => unreachable!("gemm_narrow called with cout {cout}"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("gemm_narrow without x86_64: {m} {k} {a:?} {a_rs} {a_ks} {b:?} {b_ks} {cout} {c:?} {ldc} {accumulate}")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn run<const V: usize, const R: usize>(
    m: usize,
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_ks: usize,
    b: *const f32,
    b_ks: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut r0 = 0;
    while r0 + R <= m {
        tile::<V, R>(
            k,
            a.add(r0 * a_rs),
            a_rs,
            a_ks,
            b,
            b_ks,
            c.add(r0 * ldc),
            ldc,
            accumulate,
        );
        r0 += R;
    }
    while r0 < m {
        tile::<V, 1>(
            k,
            a.add(r0 * a_rs),
            a_rs,
            a_ks,
            b,
            b_ks,
            c.add(r0 * ldc),
            ldc,
            accumulate,
        );
        r0 += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const V: usize, const R: usize>(
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_ks: usize,
    b: *const f32,
    b_ks: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for kk in 0..k {
        let mut bv = [_mm512_setzero_ps(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(b.add(kk * b_ks + 16 * v));
        }
        let ak = a.add(kk * a_ks);
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ak.add(r * a_rs));
            for v in 0..V {
                accr[v] = _mm512_fmadd_ps(av, bv[v], accr[v]);
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        for (v, &s) in accr.iter().enumerate() {
            let p = c.add(r * ldc + 16 * v);
            let s = if accumulate {
                _mm512_add_ps(_mm512_loadu_ps(p), s)
            } else {
                s
            };
            _mm512_storeu_ps(p, s);
        }
    }
}

/// One term of an implicit GEMM: `k` columns of `a` starting at `a`, multiplied by `k` rows of `b`.
#[derive(Clone, Copy)]
pub(crate) struct Seg {
    pub a: *const f32,
    pub b: *const f32,
    pub k: usize,
}

/// `c[r·ldc + j] (+)= Σ_s Σ_k s.a[r·a_rs + k] · s.b[k·cout + j]`: the same register tile as [`gemm_narrow`], summed
/// over up to 3 segments (the kernel rows of a 3×3 conv read straight from the NHWC input, no im2col).
///
/// # Safety
/// As [`gemm_narrow`], for every segment.
pub(crate) unsafe fn gemm_narrow_segs(
    m: usize,
    segs: &[Seg],
    a_rs: usize,
    cout: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    match cout {
        16 => run_segs::<1, 14>(m, segs, a_rs, c, ldc, accumulate),
        32 => run_segs::<2, 12>(m, segs, a_rs, c, ldc, accumulate),
        _ => unreachable!("gemm_narrow_segs called with cout {cout}"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "gemm_narrow_segs without x86_64: {m} {} {a_rs} {cout} {c:?} {ldc} {accumulate}",
        segs.len()
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_segs<const V: usize, const R: usize>(
    m: usize,
    segs: &[Seg],
    a_rs: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut r0 = 0;
    while r0 + R <= m {
        tile_segs::<V, R>(segs, r0 * a_rs, a_rs, c.add(r0 * ldc), ldc, accumulate);
        r0 += R;
    }
    while r0 < m {
        tile_segs::<V, 1>(segs, r0 * a_rs, a_rs, c.add(r0 * ldc), ldc, accumulate);
        r0 += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_segs<const V: usize, const R: usize>(
    segs: &[Seg],
    a_off: usize,
    a_rs: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for s in segs {
        let a = s.a.add(a_off);
        for kk in 0..s.k {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(s.b.add(kk * 16 * V + 16 * v));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * a_rs + kk));
                for v in 0..V {
                    accr[v] = _mm512_fmadd_ps(av, bv[v], accr[v]);
                }
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        for (v, &s) in accr.iter().enumerate() {
            let p = c.add(r * ldc + 16 * v);
            let s = if accumulate {
                _mm512_add_ps(_mm512_loadu_ps(p), s)
            } else {
                s
            };
            _mm512_storeu_ps(p, s);
        }
    }
}

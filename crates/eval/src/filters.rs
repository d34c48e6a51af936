//! Smoothing filters: scipy's Gaussian filter (used by SSIM and by the Gaussian-blur baseline) and a Fourier
//! low-pass (the low-pass baseline).

use crate::fourier::{inverse_real_2d, real_fft_2d};
use rayon::prelude::*;

/// Normalised Gaussian taps `exp(−x²/2σ²)` for `x = −r..=r`, `r = int(truncate·σ + 0.5)`, as
/// `scipy.ndimage.gaussian_filter1d` builds them.
pub fn gaussian_taps(sigma: f64, truncate: f64) -> Vec<f64> {
    let r = (truncate * sigma + 0.5) as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}

/// scipy's `mode='reflect'` (half-sample symmetric, `d c b a | a b c d | d c b a`), for any offset.
#[inline]
fn reflect(mut i: i64, n: i64) -> usize {
    let period = 2 * n;
    i = i.rem_euclid(period);
    if i >= n {
        i = period - 1 - i;
    }
    i as usize
}

fn correlate_rows(src: &[f64], dst: &mut [f64], nx: usize, taps: &[f64]) {
    let r = (taps.len() / 2) as i64;
    dst.par_chunks_mut(nx)
        .zip(src.par_chunks(nx))
        .for_each(|(out, row)| {
            for (i, o) in out.iter_mut().enumerate() {
                let i = i as i64;
                let mut acc = 0.0;
                if i >= r && i + r < nx as i64 {
                    let start = (i - r) as usize;
                    for (w, v) in taps.iter().zip(&row[start..start + taps.len()]) {
                        acc += w * v;
                    }
                } else {
                    for (k, w) in taps.iter().enumerate() {
                        acc += w * row[reflect(i + k as i64 - r, nx as i64)];
                    }
                }
                *o = acc;
            }
        });
}

fn correlate_cols(src: &[f64], dst: &mut [f64], nx: usize, ny: usize, taps: &[f64]) {
    let r = (taps.len() / 2) as i64;
    dst.par_chunks_mut(nx).enumerate().for_each(|(j, out)| {
        out.fill(0.0);
        for (k, w) in taps.iter().enumerate() {
            let jj = reflect(j as i64 + k as i64 - r, ny as i64);
            for (o, v) in out.iter_mut().zip(&src[jj * nx..(jj + 1) * nx]) {
                *o += w * v;
            }
        }
    });
}

/// `scipy.ndimage.gaussian_filter(img, sigma, truncate=truncate, mode='reflect')` on a row-major `nx × ny`
/// image, in f64: along y (axis 0) first, then x, as scipy does.
pub fn gaussian_filter_f64(
    img: &[f64],
    nx: usize,
    ny: usize,
    sigma: f64,
    truncate: f64,
) -> Vec<f64> {
    let taps = gaussian_taps(sigma, truncate);
    let mut tmp = vec![0.0; nx * ny];
    correlate_cols(img, &mut tmp, nx, ny, &taps);
    let mut out = vec![0.0; nx * ny];
    correlate_rows(&tmp, &mut out, nx, &taps);
    out
}

/// The Gaussian-blur baseline: σ in pixels, truncated at 4 σ (scipy's default), reflecting borders.
pub fn gaussian_blur(img: &[f32], nx: usize, ny: usize, sigma: f64) -> Vec<f32> {
    let x: Vec<f64> = img.iter().map(|&v| v as f64).collect();
    gaussian_filter_f64(&x, nx, ny, sigma, 4.0)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// Order of the Butterworth low-pass: steep enough to differ from a Gaussian blur, smooth enough not to ring
/// much.
pub const BUTTERWORTH_ORDER: i32 = 8;

/// The low-pass baseline: a Butterworth filter `1 / sqrt(1 + (f/cutoff)^(2·8))` applied in Fourier space, with
/// `f` the spatial frequency in cycles per pixel (Nyquist = 0.5). The image is mirrored to twice its size first
/// so the periodic FFT sees no jump at the borders.
pub fn lowpass(img: &[f32], nx: usize, ny: usize, cutoff: f64) -> Vec<f32> {
    let (mx, my) = (2 * nx, 2 * ny);
    let mut mirrored = vec![0.0f64; mx * my];
    for j in 0..my {
        let sj = if j < ny { j } else { 2 * ny - 1 - j };
        for i in 0..mx {
            let si = if i < nx { i } else { 2 * nx - 1 - i };
            mirrored[j * mx + i] = img[sj * nx + si] as f64;
        }
    }
    let mut spec = real_fft_2d(&mirrored, mx, my);
    let ncol = spec.ncol;
    for (ky, row) in spec.data.chunks_mut(ncol).enumerate() {
        let fy = signed_freq(ky, my) as f64 / my as f64;
        for (kx, c) in row.iter_mut().enumerate() {
            let fx = kx as f64 / mx as f64;
            let f = (fx * fx + fy * fy).sqrt();
            let h = 1.0 / (1.0 + (f / cutoff).powi(2 * BUTTERWORTH_ORDER)).sqrt();
            *c *= h;
        }
    }
    let full = inverse_real_2d(spec);
    let mut out = Vec::with_capacity(nx * ny);
    for j in 0..ny {
        out.extend(full[j * mx..j * mx + nx].iter().map(|&v| v as f32));
    }
    out
}

/// FFT index `k` of an axis of length `n` as a signed frequency index in `(−n/2, n/2]`.
#[inline]
pub fn signed_freq(k: usize, n: usize) -> i64 {
    if k <= n / 2 {
        k as i64
    } else {
        k as i64 - n as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_is_half_sample_symmetric() {
        let got: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
    }

    #[test]
    fn gaussian_blur_keeps_constants() {
        let img = vec![3.25f32; 37 * 23];
        let out = gaussian_blur(&img, 37, 23, 2.0);
        assert!(out.iter().all(|v| (v - 3.25).abs() < 1e-6));
    }

    #[test]
    fn lowpass_keeps_constants_and_low_frequencies_and_removes_high_ones() {
        let (nx, ny) = (64usize, 48usize);
        // A wave at 1/32 cycles/px (well below the 0.1 cutoff) plus one at 0.4 cycles/px (far above it).
        let low = |i: usize| (2.0 * std::f64::consts::PI * i as f64 / 32.0).sin();
        let high = |i: usize| (2.0 * std::f64::consts::PI * i as f64 * 0.4).cos();
        let img: Vec<f32> = (0..nx * ny)
            .map(|k| (1.0 + low(k % nx) + high(k % nx)) as f32)
            .collect();
        let out = lowpass(&img, nx, ny, 0.1);
        // Away from the borders (mirroring bends the waves there) only the constant and the low wave remain.
        for j in 0..ny {
            for i in 8..nx - 8 {
                let want = 1.0 + low(i);
                let got = out[j * nx + i] as f64;
                assert!((got - want).abs() < 0.05, "({i},{j}): {got} vs {want}");
            }
        }
    }
}

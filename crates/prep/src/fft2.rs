//! 2-D real FFT of one image size, planned once and reused for every frame of a movie.
//!
//! Rows are transformed with `realfft` (w real → w/2+1 complex), then the half spectrum is transposed and its
//! columns transformed with `rustfft`. The spectrum is therefore stored transposed, `spec[kx * h + ky]`
//! (shape `(w/2+1, h)`), which is all the alignment code needs: it only multiplies spectra element-wise and
//! applies phase ramps, for which [`Fft2::freq`] gives the signed frequency of each element.

use rayon::prelude::*;
use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::{Fft, FftPlanner};
use std::sync::Arc;

pub struct Fft2 {
    pub w: usize,
    pub h: usize,
    /// Complex columns of the half spectrum: w/2 + 1.
    pub wc: usize,
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
}

impl Fft2 {
    pub fn new(w: usize, h: usize) -> Fft2 {
        let mut rp = RealFftPlanner::<f32>::new();
        let mut cp = FftPlanner::<f32>::new();
        Fft2 {
            w,
            h,
            wc: w / 2 + 1,
            r2c: rp.plan_fft_forward(w),
            c2r: rp.plan_fft_inverse(w),
            col_fwd: cp.plan_fft_forward(h),
            col_inv: cp.plan_fft_inverse(h),
        }
    }

    /// Length of a spectrum buffer: (w/2+1) * h.
    pub fn spec_len(&self) -> usize {
        self.wc * self.h
    }

    /// Signed frequency (cycles per pixel) of spectrum element `(kx, ky)` in x and y.
    #[inline]
    pub fn freq(&self, kx: usize, ky: usize) -> (f32, f32) {
        let fy = if ky <= self.h / 2 {
            ky as f32
        } else {
            ky as f32 - self.h as f32
        };
        (kx as f32 / self.w as f32, fy / self.h as f32)
    }

    /// Forward transform of `img` (h rows of w, x fastest) into `spec` (transposed half spectrum, unnormalised).
    /// `rows` is a scratch buffer of `spec_len()` elements.
    pub fn forward(&self, img: &[f32], rows: &mut [Complex32], spec: &mut [Complex32]) {
        let (w, h, wc) = (self.w, self.h, self.wc);
        assert_eq!(img.len(), w * h);
        assert_eq!(rows.len(), wc * h);
        assert_eq!(spec.len(), wc * h);
        // rows: (h, wc)
        rows.par_chunks_mut(wc)
            .zip(img.par_chunks(w))
            .for_each_init(
                || (vec![0f32; w], self.r2c.make_scratch_vec()),
                |(buf, scratch), (out, row)| {
                    buf.copy_from_slice(row);
                    // Lengths match by construction, so process cannot fail.
                    let _ = self.r2c.process_with_scratch(buf, out, scratch);
                },
            );
        transpose(rows, spec, h, wc);
        // spec: (wc, h); transform each column of the image (a row here) in place.
        spec.par_chunks_mut(h).for_each_init(
            || vec![Complex32::new(0.0, 0.0); self.col_fwd.get_inplace_scratch_len()],
            |scratch, col| self.col_fwd.process_with_scratch(col, scratch),
        );
    }

    /// Inverse transform of `spec` (consumed as scratch) into `img`, normalised so that
    /// `inverse(forward(x)) == x`. `rows` is a scratch buffer of `spec_len()` elements.
    pub fn inverse(&self, spec: &mut [Complex32], rows: &mut [Complex32], img: &mut [f32]) {
        let (w, h, wc) = (self.w, self.h, self.wc);
        assert_eq!(img.len(), w * h);
        spec.par_chunks_mut(h).for_each_init(
            || vec![Complex32::new(0.0, 0.0); self.col_inv.get_inplace_scratch_len()],
            |scratch, col| self.col_inv.process_with_scratch(col, scratch),
        );
        transpose(spec, rows, wc, h);
        let norm = 1.0 / (w * h) as f32;
        img.par_chunks_mut(w)
            .zip(rows.par_chunks_mut(wc))
            .for_each_init(
                || self.c2r.make_scratch_vec(),
                |scratch, (out, row)| {
                    // A real image has real DC and Nyquist bins; phase ramps at non-integer shifts leave a small
                    // imaginary part there, which the real transform must drop (it is the real part that is kept).
                    row[0].im = 0.0;
                    if w % 2 == 0 {
                        row[wc - 1].im = 0.0;
                    }
                    let _ = self.c2r.process_with_scratch(row, out, scratch);
                    for v in out.iter_mut() {
                        *v *= norm;
                    }
                },
            );
    }
}

/// `dst[c * rows + r] = src[r * cols + c]`, blocked for cache locality.
fn transpose(src: &[Complex32], dst: &mut [Complex32], rows: usize, cols: usize) {
    const B: usize = 32;
    // Parallel over blocks of destination rows (= source columns), each a disjoint slice of dst.
    dst.par_chunks_mut(rows * B)
        .enumerate()
        .for_each(|(bi, chunk)| {
            let c0 = bi * B;
            let nc = chunk.len() / rows;
            for r0 in (0..rows).step_by(B) {
                let r1 = (r0 + B).min(rows);
                for dc in 0..nc {
                    let c = c0 + dc;
                    for r in r0..r1 {
                        chunk[dc * rows + r] = src[r * cols + c];
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_dc_odd_sizes() {
        for &(w, h) in &[(8usize, 6usize), (7, 5), (64, 33)] {
            let f = Fft2::new(w, h);
            let img: Vec<f32> = (0..w * h).map(|i| ((i * 37 % 11) as f32) - 3.0).collect();
            let mut rows = vec![Complex32::new(0.0, 0.0); f.spec_len()];
            let mut spec = rows.clone();
            f.forward(&img, &mut rows, &mut spec);
            let sum: f32 = img.iter().sum();
            // DC = sum of pixels (tolerance: f32 rounding of a few hundred terms).
            assert!(
                (spec[0].re - sum).abs() < 1e-3,
                "{w}x{h}: DC {} vs {sum}",
                spec[0].re
            );
            let mut back = vec![0f32; w * h];
            f.inverse(&mut spec, &mut rows, &mut back);
            for (a, b) in img.iter().zip(&back) {
                assert!((a - b).abs() < 1e-4, "{w}x{h}: {a} vs {b}");
            }
        }
    }
}

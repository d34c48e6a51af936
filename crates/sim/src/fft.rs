//! 2-D real FFT of a row-major `ny × nx` image with realfft (rows) and rustfft (columns), parallel over rows.
//!
//! The half spectrum is kept transposed, `[kx][ky]` with kx in 0..=nx/2 and ky in 0..ny, because only pointwise
//! products happen in frequency space and the transposed layout makes the column transforms contiguous.
//! Every row transform is independent, so results do not depend on the number of threads.

use rayon::prelude::*;
use realfft::RealFftPlanner;
use rustfft::num_complex::Complex;
use rustfft::FftPlanner;

pub type C32 = Complex<f32>;

/// Plans for one image size.
pub struct Fft2 {
    pub nx: usize,
    pub ny: usize,
    r2c: std::sync::Arc<dyn realfft::RealToComplex<f32>>,
    c2r: std::sync::Arc<dyn realfft::ComplexToReal<f32>>,
    fwd: std::sync::Arc<dyn rustfft::Fft<f32>>,
    inv: std::sync::Arc<dyn rustfft::Fft<f32>>,
}

/// A half spectrum, transposed: `data[kx * ny + ky]`.
pub struct Spectrum {
    pub nkx: usize,
    pub ny: usize,
    pub data: Vec<C32>,
}

impl Fft2 {
    pub fn new(nx: usize, ny: usize) -> Fft2 {
        let mut rp = RealFftPlanner::<f32>::new();
        let mut cp = FftPlanner::<f32>::new();
        Fft2 {
            nx,
            ny,
            r2c: rp.plan_fft_forward(nx),
            c2r: rp.plan_fft_inverse(nx),
            fwd: cp.plan_fft_forward(ny),
            inv: cp.plan_fft_inverse(ny),
        }
    }

    pub fn nkx(&self) -> usize {
        self.nx / 2 + 1
    }

    /// Frequency of column index `kx` and row index `ky` in cycles per pixel (ky wraps to negative above ny/2).
    pub fn freq(&self, kx: usize, ky: usize) -> (f64, f64) {
        let fy = if ky <= self.ny / 2 {
            ky as f64
        } else {
            ky as f64 - self.ny as f64
        };
        (kx as f64 / self.nx as f64, fy / self.ny as f64)
    }

    /// Unnormalised forward transform.
    pub fn forward(&self, img: &[f32]) -> Spectrum {
        let (nx, ny, nkx) = (self.nx, self.ny, self.nkx());
        assert_eq!(img.len(), nx * ny);
        // Rows: ny × nkx.
        let mut rows = vec![C32::default(); ny * nkx];
        rows.par_chunks_mut(nkx)
            .zip(img.par_chunks(nx))
            .for_each_init(
                || (self.r2c.make_input_vec(), self.r2c.make_scratch_vec()),
                |(inp, scratch), (out, src)| {
                    inp.copy_from_slice(src);
                    self.r2c
                        .process_with_scratch(inp, out, scratch)
                        .expect("buffer sizes come from the plan");
                },
            );
        let mut data = transpose(&rows, ny, nkx);
        data.par_chunks_mut(ny).for_each_init(
            || vec![C32::default(); self.fwd.get_inplace_scratch_len()],
            |scratch, col| self.fwd.process_with_scratch(col, scratch),
        );
        Spectrum { nkx, ny, data }
    }

    /// Inverse transform normalised by 1/(nx·ny), so `inverse(forward(x)) == x`.
    pub fn inverse(&self, spec: &Spectrum) -> Vec<f32> {
        let (nx, ny, nkx) = (self.nx, self.ny, self.nkx());
        let mut cols = spec.data.clone();
        cols.par_chunks_mut(ny).for_each_init(
            || vec![C32::default(); self.inv.get_inplace_scratch_len()],
            |scratch, col| self.inv.process_with_scratch(col, scratch),
        );
        let rows = transpose(&cols, nkx, ny);
        let scale = 1.0 / (nx * ny) as f32;
        let mut out = vec![0f32; nx * ny];
        out.par_chunks_mut(nx)
            .zip(rows.par_chunks(nkx))
            .for_each_init(
                || (self.c2r.make_input_vec(), self.c2r.make_scratch_vec()),
                |(inp, scratch), (dst, src)| {
                    inp.copy_from_slice(src);
                    // A real signal's DC (and Nyquist, for even nx) bins are real; drop rounding residue.
                    inp[0].im = 0.0;
                    if nx % 2 == 0 {
                        inp[nkx - 1].im = 0.0;
                    }
                    self.c2r
                        .process_with_scratch(inp, dst, scratch)
                        .expect("buffer sizes come from the plan");
                    dst.iter_mut().for_each(|v| *v *= scale);
                },
            );
        out
    }
}

/// Transpose a `rows × cols` matrix in cache-friendly blocks.
fn transpose(src: &[C32], rows: usize, cols: usize) -> Vec<C32> {
    const B: usize = 32;
    let mut dst = vec![C32::default(); rows * cols];
    // Parallel over blocks of destination rows (= source columns).
    dst.par_chunks_mut(B * rows)
        .enumerate()
        .for_each(|(bi, chunk)| {
            let c0 = bi * B;
            let nc = chunk.len() / rows;
            for r0 in (0..rows).step_by(B) {
                for r in r0..(r0 + B).min(rows) {
                    let srow = &src[r * cols..];
                    for c in 0..nc {
                        chunk[c * rows + r] = srow[c0 + c];
                    }
                }
            }
        });
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_dc() {
        for (nx, ny) in [(8, 8), (30, 17), (64, 33)] {
            let img: Vec<f32> = (0..nx * ny)
                .map(|i| ((i * 7919) % 101) as f32 * 0.1 - 3.0)
                .collect();
            let f = Fft2::new(nx, ny);
            let s = f.forward(&img);
            let sum: f32 = img.iter().sum();
            assert!((s.data[0].re - sum).abs() < 1e-3 * sum.abs().max(1.0));
            let back = f.inverse(&s);
            let err = img
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-4, "{nx}x{ny}: {err}");
        }
    }

    #[test]
    fn matches_a_direct_dft() {
        let (nx, ny) = (6, 5);
        let img: Vec<f32> = (0..nx * ny).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = Fft2::new(nx, ny).forward(&img);
        for kx in 0..=nx / 2 {
            for ky in 0..ny {
                let mut acc = Complex::<f64>::default();
                for y in 0..ny {
                    for x in 0..nx {
                        let ph = -2.0
                            * std::f64::consts::PI
                            * ((kx * x) as f64 / nx as f64 + (ky * y) as f64 / ny as f64);
                        acc += Complex::from_polar(img[y * nx + x] as f64, ph);
                    }
                }
                let got = s.data[kx * ny + ky];
                assert!(
                    (got.re as f64 - acc.re).abs() < 1e-4 && (got.im as f64 - acc.im).abs() < 1e-4
                );
            }
        }
    }
}

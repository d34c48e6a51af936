//! Global drift correction of a movie, one frame at a time (the frames are streamed, never all in memory).
//!
//! Frame 0 is the reference. Each later frame `i` is cross-correlated with the running sum of the frames already
//! aligned (`0..i`), in Fourier space with a Gaussian low-pass (a B-factor, as MotionCor2 does, because single
//! frames hold ~1 count per pixel); the correlation peak, searched within `max_shift` pixels and refined to
//! sub-pixel precision by fitting a Gaussian (a parabola through the logarithms; a plain parabola when a value is
//! not positive) through the peak and its two neighbours in x and in y, is the frame's drift `d_i`:
//! `frame_i(x) ≈ frame_0(x - d_i)`. The frame is then shifted by `-d_i` with a Fourier phase ramp (exact for
//! band-limited images; periodic at the borders, so the `|d|`-pixel rim wraps around) and added, in Fourier space,
//! to the even or odd half sum. Both halves are therefore corrected by the same per-frame shifts, and summing in
//! Fourier space costs one forward FFT per frame plus one inverse FFT per frame for the correlation.

use crate::fft2::Fft2;
use rayon::prelude::*;
use realfft::num_complex::Complex32;
use std::f32::consts::PI;

/// Settings of the alignment (they change the result, so they are recorded in the per-movie shifts JSON).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlignParams {
    /// Largest drift searched, in pixels, from the reference (frame 0).
    pub max_shift: f32,
    /// B-factor of the Gaussian low-pass applied to the cross-correlation, in pixels²: weight
    /// `exp(-bfactor * s² / 4)` at spatial frequency `s` cycles/pixel (100–500 px² is usual; larger = smoother).
    pub bfactor: f32,
    /// Refinement passes after the running-sum pass: each frame re-aligned against the sum of all the others
    /// (the frames are read again, one at a time).
    pub refine_passes: u32,
}

impl Default for AlignParams {
    fn default() -> Self {
        AlignParams {
            max_shift: 40.0,
            bfactor: 150.0,
            refine_passes: 0,
        }
    }
}

pub struct Aligner {
    fft: Fft2,
    params: AlignParams,
    even: Vec<Complex32>,
    odd: Vec<Complex32>,
    frame: Vec<Complex32>,
    /// Spectrum of the edge-tapered frame, used only for the correlation.
    tapered: Vec<Complex32>,
    /// Real-space scratch for the tapered frame.
    tbuf: Vec<f32>,
    /// Separable edge taper: tx[x] * ty[y].
    tx: Vec<f32>,
    ty: Vec<f32>,
    prod: Vec<Complex32>,
    rows: Vec<Complex32>,
    cc: Vec<f32>,
    /// Separable low-pass weights: gx[kx] * gy[ky].
    gx: Vec<f32>,
    gy: Vec<f32>,
    n: usize,
}

impl Aligner {
    pub fn new(w: usize, h: usize, params: AlignParams) -> Aligner {
        let fft = Fft2::new(w, h);
        let z = Complex32::new(0.0, 0.0);
        let len = fft.spec_len();
        let gx = (0..fft.wc)
            .map(|kx| {
                let (fx, _) = fft.freq(kx, 0);
                (-params.bfactor * fx * fx / 4.0).exp()
            })
            .collect();
        let gy = (0..h)
            .map(|ky| {
                let (_, fy) = fft.freq(0, ky);
                (-params.bfactor * fy * fy / 4.0).exp()
            })
            .collect();
        Aligner {
            params,
            even: vec![z; len],
            odd: vec![z; len],
            frame: vec![z; len],
            tapered: vec![z; len],
            tbuf: vec![0.0; w * h],
            tx: taper(w),
            ty: taper(h),
            prod: vec![z; len],
            rows: vec![z; len],
            cc: vec![0.0; w * h],
            gx,
            gy,
            fft,
            n: 0,
        }
    }

    /// Aligns `frame` (h rows of w) to the running sum, adds it to the even (`to_even`) or odd half sum, and
    /// returns its drift `[dx, dy]` in pixels (the first frame returns `[0, 0]`).
    pub fn push(&mut self, frame: &[f32], to_even: bool) -> [f32; 2] {
        self.fft.forward(frame, &mut self.rows, &mut self.frame);
        let d = if self.n == 0 {
            [0.0, 0.0]
        } else {
            self.find_shift(frame)
        };
        self.add_shifted(d, to_even);
        d
    }

    /// Adds `frame` shifted by `-d` (a known drift) to a half sum, without estimating anything.
    pub fn push_known(&mut self, frame: &[f32], to_even: bool, d: [f32; 2]) {
        self.fft.forward(frame, &mut self.rows, &mut self.frame);
        self.add_shifted(d, to_even);
    }

    /// Refinement: removes `frame`'s contribution (added with drift `old`) from its half, re-estimates its drift
    /// against the sum of all the other frames, adds it back with the new drift, and returns the new drift.
    pub fn refine(&mut self, frame: &[f32], to_even: bool, old: [f32; 2]) -> [f32; 2] {
        self.fft.forward(frame, &mut self.rows, &mut self.frame);
        self.add_scaled(old, to_even, -1.0);
        let d = self.find_shift(frame);
        self.add_scaled(d, to_even, 1.0);
        d
    }

    /// Moves both half sums by `+d0` (undoing a common shift `-d0`), so that a frame with drift `d0` becomes the
    /// reference position. Used after refinement, which lets frame 0 move too.
    pub fn recenter(&mut self, d0: [f32; 2]) {
        let h = self.fft.h;
        let px: Vec<Complex32> = (0..self.fft.wc)
            .map(|kx| Complex32::from_polar(1.0, -2.0 * PI * self.fft.freq(kx, 0).0 * d0[0]))
            .collect();
        let py: Vec<Complex32> = (0..h)
            .map(|ky| Complex32::from_polar(1.0, -2.0 * PI * self.fft.freq(0, ky).1 * d0[1]))
            .collect();
        for half in [&mut self.even, &mut self.odd] {
            half.par_chunks_mut(h)
                .zip(px.par_iter())
                .for_each(|(col, &pxk)| {
                    for (o, &pyk) in col.iter_mut().zip(&py) {
                        *o *= pxk * pyk;
                    }
                });
        }
    }

    /// Adds the spectrum in `self.frame`, shifted by `-d`, to the even or odd half.
    fn add_shifted(&mut self, d: [f32; 2], to_even: bool) {
        self.add_scaled(d, to_even, 1.0);
        self.n += 1;
    }

    /// Adds `sign` × the spectrum in `self.frame` shifted by `-d` to a half (the same ramp both ways, so a removal
    /// cancels an earlier addition up to rounding).
    fn add_scaled(&mut self, d: [f32; 2], to_even: bool, sign: f32) {
        let h = self.fft.h;
        // Phase ramp exp(+2πi (fx dx + fy dy)) moves the frame by -d.
        let px: Vec<Complex32> = (0..self.fft.wc)
            .map(|kx| Complex32::from_polar(1.0, 2.0 * PI * self.fft.freq(kx, 0).0 * d[0]))
            .collect();
        let py: Vec<Complex32> = (0..h)
            .map(|ky| Complex32::from_polar(1.0, 2.0 * PI * self.fft.freq(0, ky).1 * d[1]))
            .collect();
        let dst = if to_even {
            &mut self.even
        } else {
            &mut self.odd
        };
        dst.par_chunks_mut(h)
            .zip(self.frame.par_chunks(h))
            .zip(px.par_iter())
            .for_each(|((dcol, fcol), &pxk)| {
                for ((o, &f), &pyk) in dcol.iter_mut().zip(fcol).zip(&py) {
                    *o += f * pxk * pyk * sign;
                }
            });
    }

    fn find_shift(&mut self, frame: &[f32]) -> [f32; 2] {
        let (w, h) = (self.fft.w, self.fft.h);
        // The frame's edges are not periodic: untreated, their discontinuity correlates with itself at zero
        // shift and pulls the peak towards 0. Mean-subtract and taper the edges (for the correlation only).
        let mean = frame.iter().map(|&v| v as f64).sum::<f64>() as f32 / frame.len() as f32;
        let (tx, ty) = (&self.tx, &self.ty);
        self.tbuf
            .par_chunks_mut(w)
            .zip(frame.par_chunks(w))
            .zip(ty.par_iter())
            .for_each(|((o, f), &tyk)| {
                for ((o, &v), &txk) in o.iter_mut().zip(f).zip(tx) {
                    *o = (v - mean) * txk * tyk;
                }
            });
        self.fft
            .forward(&self.tbuf, &mut self.rows, &mut self.tapered);
        // Coarse: the whole correlation map by inverse FFT, its best pixel (+ a 3-point fit).
        self.correlation_spectrum();
        self.fft
            .inverse(&mut self.prod, &mut self.rows, &mut self.cc);
        let mut d = peak(&self.cc, w, h, self.params.max_shift);
        // Fine: re-centre the 3-point fit on the estimate, evaluating the (band-limited) correlation at
        // arbitrary positions by direct Fourier sums. A 3-point fit is biased off-centre ("pixel locking"), but
        // a symmetric peak sampled symmetrically about its top gives offset 0, so the fixed point is the peak.
        self.correlation_spectrum();
        for _ in 0..4 {
            let c = self.cc_at(d[0], d[1]);
            let dx = subpixel(
                self.cc_at(d[0] - 1.0, d[1]),
                c,
                self.cc_at(d[0] + 1.0, d[1]),
            );
            let dy = subpixel(
                self.cc_at(d[0], d[1] - 1.0),
                c,
                self.cc_at(d[0], d[1] + 1.0),
            );
            d = [d[0] + dx, d[1] + dy];
            if dx.abs().max(dy.abs()) < 1e-3 {
                break;
            }
        }
        d
    }

    /// `prod` = F(tapered frame) · conj(F(even + odd)) · low-pass, without the mean (DC) term.
    fn correlation_spectrum(&mut self) {
        let h = self.fft.h;
        let (gx, gy) = (&self.gx, &self.gy);
        self.prod
            .par_chunks_mut(h)
            .zip(self.tapered.par_chunks(h))
            .zip(self.even.par_chunks(h).zip(self.odd.par_chunks(h)))
            .zip(gx.par_iter())
            .for_each(|(((p, f), (e, o)), &gxk)| {
                for ky in 0..h {
                    p[ky] = f[ky] * (e[ky] + o[ky]).conj() * (gxk * gy[ky]);
                }
            });
        // The images' means say nothing about their relative position.
        self.prod[0] = Complex32::new(0.0, 0.0);
    }

    /// The correlation at real-valued position `(x, y)`: `Re Σ_k m(kx) prod[k] exp(2πi (fx x + fy y))`, with
    /// `m = 2` for the columns whose conjugates the half spectrum omits (the scale does not matter to the fit).
    fn cc_at(&self, x: f32, y: f32) -> f32 {
        let (h, wc, w) = (self.fft.h, self.fft.wc, self.fft.w);
        let py: Vec<Complex32> = (0..h)
            .map(|ky| Complex32::from_polar(1.0, 2.0 * PI * self.fft.freq(0, ky).1 * y))
            .collect();
        self.prod
            .par_chunks(h)
            .enumerate()
            .map(|(kx, col)| {
                let m = if kx == 0 || (w % 2 == 0 && kx == wc - 1) {
                    1.0
                } else {
                    2.0
                };
                let px = Complex32::from_polar(1.0, 2.0 * PI * self.fft.freq(kx, 0).0 * x);
                let s: Complex32 = col.iter().zip(&py).map(|(&p, &e)| p * e).sum();
                (m * (s * px).re) as f64
            })
            .sum::<f64>() as f32
    }

    /// Number of frames pushed so far.
    pub fn frames(&self) -> usize {
        self.n
    }

    /// The aligned even and odd half sums (h rows of w).
    pub fn finish(mut self) -> (Vec<f32>, Vec<f32>) {
        let n = self.fft.w * self.fft.h;
        let mut even = vec![0f32; n];
        let mut odd = vec![0f32; n];
        self.fft.inverse(&mut self.even, &mut self.rows, &mut even);
        self.fft.inverse(&mut self.odd, &mut self.rows, &mut odd);
        (even, odd)
    }
}

/// Edge taper of an axis of `n` pixels (a Tukey window): 1 in the middle half, a raised cosine over each outer
/// quarter down to 0 at the border. A narrower rim (1/16, 1/8 of the axis) left 2–4× larger errors on simulated
/// 256² and 512² frames: a steep window makes the windowed correlation of one specimen asymmetric.
fn taper(n: usize) -> Vec<f32> {
    let m = (n / 4).max(2).min(n / 2);
    (0..n)
        .map(|i| {
            let d = i.min(n - 1 - i);
            if d >= m {
                1.0
            } else {
                0.5 - 0.5 * (PI * (d as f32 + 0.5) / m as f32).cos()
            }
        })
        .collect()
}

/// Sub-pixel position of the maximum of a periodic correlation map within `max_shift` of the origin.
fn peak(cc: &[f32], w: usize, h: usize, max_shift: f32) -> [f32; 2] {
    let r = max_shift.max(1.0) as i64;
    let (wi, hi) = (w as i64, h as i64);
    let at = |x: i64, y: i64| cc[(y.rem_euclid(hi) * wi + x.rem_euclid(wi)) as usize];
    let (rx, ry) = (r.min(wi / 2), r.min(hi / 2));
    let mut best = (f32::NEG_INFINITY, 0i64, 0i64);
    for y in -ry..=ry {
        for x in -rx..=rx {
            let v = at(x, y);
            if v > best.0 {
                best = (v, x, y);
            }
        }
    }
    let (c, x, y) = best;
    let dx = subpixel(at(x - 1, y), c, at(x + 1, y));
    let dy = subpixel(at(x, y - 1), c, at(x, y + 1));
    [x as f32 + dx, y as f32 + dy]
}

/// Offset in [-0.5, 0.5] of the vertex of the curve through (-1, l), (0, c), (1, r): a Gaussian when all three are
/// positive (exact for the Gaussian-filtered correlation peak), a parabola otherwise.
fn subpixel(l: f32, c: f32, r: f32) -> f32 {
    let (l, c, r) = if l > 0.0 && c > 0.0 && r > 0.0 {
        (l.ln(), c.ln(), r.ln())
    } else {
        (l, c, r)
    };
    let den = l - 2.0 * c + r;
    if den >= 0.0 || !den.is_finite() {
        return 0.0;
    }
    (0.5 * (l - r) / den).clamp(-0.5, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Poisson};

    /// A random "specimen" of Gaussian blobs on a flat background, rendered at any sub-pixel offset: pixel
    /// `(x, y)` of the returned image shows the specimen at `(x - dx, y - dy)`.
    struct Specimen {
        blobs: Vec<(f32, f32, f32, f32)>,
    }

    impl Specimen {
        fn new(seed: u64, n_blobs: usize, extent: f32) -> Specimen {
            use rand::Rng;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let blobs = (0..n_blobs)
                .map(|_| {
                    (
                        rng.random_range(-8.0..extent + 8.0),
                        rng.random_range(-8.0..extent + 8.0),
                        rng.random_range(1.5..4.0),
                        rng.random_range(0.5..2.0),
                    )
                })
                .collect();
            Specimen { blobs }
        }
        fn render(&self, w: usize, h: usize, dx: f32, dy: f32) -> Vec<f32> {
            let mut img = vec![1.0f32; w * h];
            for &(bx, by, s, a) in &self.blobs {
                let (cx, cy) = (bx + dx, by + dy);
                let r = (4.0 * s).ceil() as i64;
                for y in (cy as i64 - r).max(0)..(cy as i64 + r + 1).min(h as i64) {
                    for x in (cx as i64 - r).max(0)..(cx as i64 + r + 1).min(w as i64) {
                        let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                        img[y as usize * w + x as usize] += a * (-d2 / (2.0 * s * s)).exp();
                    }
                }
            }
            img
        }
    }

    #[test]
    fn recovers_known_subpixel_shifts() {
        // 512² frames, 20 counts/pixel/frame on the background: bright enough that the noise-limited precision of
        // one frame against another (measured: ~0.01 px rms here, ~0.04 px at 2 counts/pixel) is well below the
        // tolerance, so the test checks the estimator (sub-pixel fit, edge handling, running sum), not the noise., Poisson noise, a specimen that
        // runs out of the frame on every side (non-periodic edges), a smooth sub-pixel drift path.
        let (w, h) = (512usize, 512usize);
        let sp = Specimen::new(7, 1200, 512.0);
        let truth: Vec<[f32; 2]> = (0..12)
            .map(|i| {
                let t = i as f32;
                [
                    0.37 * t + 0.11 * (t * 0.9).sin(),
                    -0.23 * t + 0.05 * t * t / 9.0,
                ]
            })
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut al = Aligner::new(w, h, AlignParams::default());
        let mut found = vec![];
        for d in &truth {
            let frame: Vec<f32> = sp
                .render(w, h, d[0], d[1])
                .iter()
                .map(|&v| Poisson::new(20.0 * v as f64).unwrap().sample(&mut rng) as f32)
                .collect();
            found.push(al.push(&frame, found.len() % 2 == 0));
        }
        let err = truth
            .iter()
            .zip(&found)
            .map(|(t, f)| (t[0] - f[0]).hypot(t[1] - f[1]))
            .fold(0f32, f32::max);
        eprintln!(
            "largest alignment error over {} frames: {err:.4} px",
            truth.len()
        );
        // Tolerance 0.05 px on the largest error over 12 frames.
        assert!(
            err < 0.05,
            "max error {err} px; true {truth:?}, found {found:?}"
        );
    }

    #[test]
    fn integer_roll_is_undone_exactly() {
        // The phase ramp puts back a frame rolled periodically by an integer drift exactly.
        let (w, h) = (48usize, 40usize);
        let base: Vec<f32> = Specimen::new(3, 80, 48.0)
            .render(w, h, 0.0, 0.0)
            .iter()
            .map(|v| 50.0 * v)
            .collect();
        let rolled: Vec<f32> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                base[((y + h - 2) % h) * w + (x + w - 3) % w]
            })
            .collect();
        let mut al = Aligner::new(w, h, AlignParams::default());
        al.push_known(&base, true, [0.0, 0.0]);
        al.push_known(&rolled, false, [3.0, 2.0]);
        let (even, odd) = al.finish();
        // Tolerance: f32 FFT rounding, 1e-4 of the largest value.
        let max = base.iter().fold(0f32, |m, &v| m.max(v));
        for (i, (&e, &o)) in even.iter().zip(&odd).enumerate() {
            assert!(
                (e - base[i]).abs() < 1e-4 * max,
                "even {i}: {e} vs {}",
                base[i]
            );
            assert!(
                (o - base[i]).abs() < 1e-4 * max,
                "odd {i}: {o} vs {}",
                base[i]
            );
        }
    }
}

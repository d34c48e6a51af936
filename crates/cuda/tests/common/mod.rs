//! Helpers shared by the GPU tests and the op bench: a seeded RNG, CPU references of every op (f64 accumulation),
//! and the relative L2 error.
#![allow(dead_code)]

/// xorshift64*: reproducible inputs without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// ‖got − want‖₂ / ‖want‖₂; NaN anywhere gives infinity, so it never passes.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

/// Conv geometry as plain numbers (mirrors cryoden_cuda::ConvGeom).
#[derive(Clone, Copy, Debug)]
pub struct G {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub pad: usize,
    pub stride: usize,
}

impl G {
    pub fn out(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.k) / self.stride + 1,
            (self.w + 2 * self.pad - self.k) / self.stride + 1,
        )
    }
}

/// Calls f(n, oh, ow, a, b, ih, iw) for every output position and kernel tap that lands inside the input.
fn taps(g: &G, mut f: impl FnMut(usize, usize, usize, usize, usize, usize, usize)) {
    let (oh, ow) = g.out();
    for n in 0..g.n {
        for i in 0..oh {
            for j in 0..ow {
                for a in 0..g.k {
                    let ih = (i * g.stride + a) as isize - g.pad as isize;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    for b in 0..g.k {
                        let iw = (j * g.stride + b) as isize - g.pad as isize;
                        if iw < 0 || iw >= g.w as isize {
                            continue;
                        }
                        f(n, i, j, a, b, ih as usize, iw as usize);
                    }
                }
            }
        }
    }
}

/// y = conv(x, w): x NHWC, w KRSC, y NHWC.
pub fn conv_fwd(g: &G, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (oh, ow) = g.out();
    let mut y = vec![0f64; g.n * oh * ow * g.cout];
    taps(g, |n, i, j, a, b, ih, iw| {
        let xo = ((n * g.h + ih) * g.w + iw) * g.cin;
        let yo = ((n * oh + i) * ow + j) * g.cout;
        for co in 0..g.cout {
            let wo = ((co * g.k + a) * g.k + b) * g.cin;
            let mut s = 0f64;
            for ci in 0..g.cin {
                s += x[xo + ci] as f64 * w[wo + ci] as f64;
            }
            y[yo + co] += s;
        }
    });
    y.into_iter().map(|v| v as f32).collect()
}

/// dx of the conv.
pub fn conv_bwd_data(g: &G, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (oh, ow) = g.out();
    let mut dx = vec![0f64; g.n * g.h * g.w * g.cin];
    taps(g, |n, i, j, a, b, ih, iw| {
        let xo = ((n * g.h + ih) * g.w + iw) * g.cin;
        let yo = ((n * oh + i) * ow + j) * g.cout;
        for co in 0..g.cout {
            let wo = ((co * g.k + a) * g.k + b) * g.cin;
            let d = dy[yo + co] as f64;
            for ci in 0..g.cin {
                dx[xo + ci] += d * w[wo + ci] as f64;
            }
        }
    });
    dx.into_iter().map(|v| v as f32).collect()
}

/// dw of the conv (KRSC).
pub fn conv_bwd_filter(g: &G, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (oh, ow) = g.out();
    let mut dw = vec![0f64; g.cout * g.k * g.k * g.cin];
    taps(g, |n, i, j, a, b, ih, iw| {
        let xo = ((n * g.h + ih) * g.w + iw) * g.cin;
        let yo = ((n * oh + i) * ow + j) * g.cout;
        for co in 0..g.cout {
            let wo = ((co * g.k + a) * g.k + b) * g.cin;
            let d = dy[yo + co] as f64;
            for ci in 0..g.cin {
                dw[wo + ci] += d * x[xo + ci] as f64;
            }
        }
    });
    dw.into_iter().map(|v| v as f32).collect()
}

/// PyTorch ConvTranspose2d(cin, cout, 2, stride 2) without bias. x [n,h,w,cin], w [cin,2,2,cout] -> [n,2h,2w,cout].
pub fn convt_fwd(
    n: usize,
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    x: &[f32],
    wt: &[f32],
) -> Vec<f32> {
    let mut y = vec![0f64; n * 4 * h * w * cout];
    for b in 0..n {
        for i in 0..h {
            for j in 0..w {
                for ci in 0..cin {
                    let xv = x[((b * h + i) * w + j) * cin + ci] as f64;
                    for a in 0..2 {
                        for c in 0..2 {
                            let yo = ((b * 2 * h + 2 * i + a) * 2 * w + 2 * j + c) * cout;
                            let wo = ((ci * 2 + a) * 2 + c) * cout;
                            for co in 0..cout {
                                y[yo + co] += xv * wt[wo + co] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    y.into_iter().map(|v| v as f32).collect()
}

pub fn act(v: f32, slope: f32) -> f32 {
    if v > 0.0 {
        v
    } else {
        v * slope
    }
}

/// 2x2 max-pool (floor), and its gradient routed to the first maximum of each window.
pub fn maxpool(n: usize, h: usize, w: usize, c: usize, x: &[f32]) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    let mut y = vec![0f32; n * ho * wo * c];
    for b in 0..n {
        for i in 0..ho {
            for j in 0..wo {
                for k in 0..c {
                    let at = |a: usize, d: usize| x[((b * h + 2 * i + a) * w + 2 * j + d) * c + k];
                    y[((b * ho + i) * wo + j) * c + k] =
                        at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                }
            }
        }
    }
    y
}

pub fn maxpool_bwd(n: usize, h: usize, w: usize, c: usize, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    let mut dx = vec![0f32; n * h * w * c];
    for b in 0..n {
        for i in 0..ho {
            for j in 0..wo {
                for k in 0..c {
                    let idx = |a: usize, d: usize| ((b * h + 2 * i + a) * w + 2 * j + d) * c + k;
                    let cands = [idx(0, 0), idx(0, 1), idx(1, 0), idx(1, 1)];
                    let mut best = cands[0];
                    for &q in &cands[1..] {
                        if x[q] > x[best] {
                            best = q;
                        }
                    }
                    dx[best] = dy[((b * ho + i) * wo + j) * c + k];
                }
            }
        }
    }
    dx
}

/// PyTorch legacy nearest: src = min(floor(dst * (in / out)), in - 1), scale in f32.
pub fn nearest_src(dst: usize, inn: usize, out: usize) -> usize {
    let s = ((dst as f32) * (inn as f32 / out as f32)).floor() as usize;
    s.min(inn - 1)
}

pub fn upsample(
    n: usize,
    hi: usize,
    wi: usize,
    ho: usize,
    wo: usize,
    c: usize,
    x: &[f32],
) -> Vec<f32> {
    let mut y = vec![0f32; n * ho * wo * c];
    for b in 0..n {
        for i in 0..ho {
            for j in 0..wo {
                let (si, sj) = (nearest_src(i, hi, ho), nearest_src(j, wi, wo));
                for k in 0..c {
                    y[((b * ho + i) * wo + j) * c + k] = x[((b * hi + si) * wi + sj) * c + k];
                }
            }
        }
    }
    y
}

pub fn upsample_bwd(
    n: usize,
    hi: usize,
    wi: usize,
    ho: usize,
    wo: usize,
    c: usize,
    dy: &[f32],
) -> Vec<f32> {
    let mut dx = vec![0f64; n * hi * wi * c];
    for b in 0..n {
        for i in 0..ho {
            for j in 0..wo {
                let (si, sj) = (nearest_src(i, hi, ho), nearest_src(j, wi, wo));
                for k in 0..c {
                    dx[((b * hi + si) * wi + sj) * c + k] +=
                        dy[((b * ho + i) * wo + j) * c + k] as f64;
                }
            }
        }
    }
    dx.into_iter().map(|v| v as f32).collect()
}

/// Rounds to bf16 and back (round to nearest even), as the GPU stores it.
pub fn bf16_round(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

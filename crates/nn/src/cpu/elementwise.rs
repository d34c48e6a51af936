//! Pointwise ops on the CPU: channel copies, bias + activation (forward and backward), losses, Adam.

use super::{split_range, SyncPtr};
use crate::backend::{Activation, AdamParams, LossKind};
use crate::shape::View;

#[allow(clippy::too_many_arguments)]
pub(super) fn copy_channels(
    threads: usize,
    pixels: usize,
    c: usize,
    src: &[f32],
    sv: View,
    dst: &mut [f32],
    dv: View,
    accumulate: bool,
) {
    use rayon::prelude::*;
    let dp = SyncPtr(dst.as_mut_ptr());
    (0..threads).into_par_iter().for_each(|t| {
        for p in split_range(pixels, threads, t) {
            let s = &src[p * sv.stride + sv.offset..][..c];
            // SAFETY: pixel ranges of threads are disjoint.
            let d = unsafe {
                std::slice::from_raw_parts_mut(dp.get().add(p * dv.stride + dv.offset), c)
            };
            if accumulate {
                d.iter_mut().zip(s).for_each(|(d, &s)| *d += s);
            } else {
                d.copy_from_slice(s);
            }
        }
    });
}

pub(super) fn bias_act_forward(
    threads: usize,
    pixels: usize,
    c: usize,
    act: Activation,
    b: Option<&[f32]>,
    y: &mut [f32],
    yv: View,
) {
    use rayon::prelude::*;
    let yp = SyncPtr(y.as_mut_ptr());
    (0..threads).into_par_iter().for_each(|t| {
        for p in split_range(pixels, threads, t) {
            // SAFETY: pixel ranges of threads are disjoint.
            let row = unsafe {
                std::slice::from_raw_parts_mut(yp.get().add(p * yv.stride + yv.offset), c)
            };
            match b {
                Some(b) => row
                    .iter_mut()
                    .zip(b)
                    .for_each(|(v, &b)| *v = act.apply(*v + b)),
                None => row.iter_mut().for_each(|v| *v = act.apply(*v)),
            }
        }
    });
}

/// Channels per pass of the bias-gradient reduction (partial sums live on the stack).
const BLOCK: usize = 64;

#[allow(clippy::too_many_arguments)]
pub(super) fn bias_act_backward(
    threads: usize,
    pixels: usize,
    c: usize,
    act: Activation,
    y: &[f32],
    yv: View,
    dy: &mut [f32],
    dyv: View,
    db: Option<&mut [f32]>,
) {
    use rayon::prelude::*;
    let dp = SyncPtr(dy.as_mut_ptr());
    let want_db = db.is_some();
    if act == Activation::Identity && !want_db {
        return;
    }
    let mut sums = [0.0f64; BLOCK];
    let mut db = db;
    for c0 in (0..c).step_by(BLOCK) {
        let cb = BLOCK.min(c - c0);
        let block = (0..threads)
            .into_par_iter()
            .map(|t| {
                let mut acc = [0.0f64; BLOCK];
                // f32 partial sums per row of pixels, folded into f64: accurate and vectorisable.
                let mut accf = [0.0f32; BLOCK];
                for (k, p) in split_range(pixels, threads, t).enumerate() {
                    // SAFETY: pixel ranges of threads are disjoint.
                    let d = unsafe {
                        std::slice::from_raw_parts_mut(
                            dp.get().add(p * dyv.stride + dyv.offset + c0),
                            cb,
                        )
                    };
                    if act != Activation::Identity {
                        let yy = &y[p * yv.stride + yv.offset + c0..][..cb];
                        d.iter_mut()
                            .zip(yy)
                            .for_each(|(d, &y)| *d *= act.grad_from_output(y));
                    }
                    if want_db {
                        accf.iter_mut().zip(d.iter()).for_each(|(a, &d)| *a += d);
                        if k % 256 == 255 {
                            acc.iter_mut().zip(accf.iter_mut()).for_each(|(a, f)| {
                                *a += f64::from(*f);
                                *f = 0.0;
                            });
                        }
                    }
                }
                acc.iter_mut()
                    .zip(accf)
                    .for_each(|(a, f)| *a += f64::from(f));
                acc
            })
            .reduce(
                || [0.0f64; BLOCK],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        sums[..cb].copy_from_slice(&block[..cb]);
        if let Some(db) = db.as_deref_mut() {
            db[c0..c0 + cb]
                .iter_mut()
                .zip(&sums[..cb])
                .for_each(|(d, &s)| *d += s as f32);
        }
    }
}

/// Mean loss (f64) and `dpred` = d loss / d pred, as PyTorch's `mse_loss` / `l1_loss` with `reduction="mean"`.
pub(super) fn loss(
    threads: usize,
    kind: LossKind,
    pred: &[f32],
    target: &[f32],
    dpred: &mut [f32],
) -> f64 {
    use rayon::prelude::*;
    let n = pred.len();
    if n == 0 {
        return 0.0;
    }
    let chunk = n.div_ceil(threads).max(1);
    let sum: f64 = dpred
        .par_chunks_mut(chunk)
        .zip(pred.par_chunks(chunk))
        .zip(target.par_chunks(chunk))
        .map(|((d, p), t)| {
            let mut s = 0.0f64;
            match kind {
                LossKind::Mse => {
                    // torch: grad = (2 / N) · (p − t)
                    let norm = (2.0 / n as f64) as f32;
                    for ((d, &p), &t) in d.iter_mut().zip(p).zip(t) {
                        let e = p - t;
                        s += f64::from(e) * f64::from(e);
                        *d = norm * e;
                    }
                }
                LossKind::L1 => {
                    // torch: grad = sign(p − t) / N, sign(0) = 0
                    let inv = (1.0 / n as f64) as f32;
                    for ((d, &p), &t) in d.iter_mut().zip(p).zip(t) {
                        let e = p - t;
                        s += f64::from(e.abs());
                        let sg = if e > 0.0 {
                            1.0
                        } else if e < 0.0 {
                            -1.0
                        } else {
                            0.0
                        };
                        *d = sg * inv;
                    }
                }
            }
            s
        })
        .sum();
    sum / n as f64
}

/// `torch.optim.Adam` (single-tensor path, amsgrad off, maximize off), operation for operation:
/// `m.lerp_(g, 1−β1)`, `v.mul_(β2).addcmul_(g, g, 1−β2)`, `denom = sqrt(v) / sqrt(1−β2^t) + eps`,
/// `p.addcdiv_(m, denom, −lr / (1−β1^t))`. Scalars are computed in f64 and used as f32, as torch does.
pub(super) fn adam(
    hp: &AdamParams,
    step: u64,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    use rayon::prelude::*;
    let t = step as f64;
    let bc1 = 1.0 - hp.beta1.powf(t);
    let bc2 = 1.0 - hp.beta2.powf(t);
    let step_size = -(hp.lr / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let w1 = (1.0 - hp.beta1) as f32;
    let b2 = hp.beta2 as f32;
    let w2 = (1.0 - hp.beta2) as f32;
    let eps = hp.eps as f32;
    let wd = hp.weight_decay as f32;
    let chunk = 1 << 14;
    params
        .par_chunks_mut(chunk)
        .zip(grads.par_chunks(chunk))
        .zip(m.par_chunks_mut(chunk))
        .zip(v.par_chunks_mut(chunk))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                let mut gi = g[i];
                if wd != 0.0 {
                    gi += wd * p[i];
                }
                // lerp with weight < 0.5: self + w · (end − self)
                m[i] += w1 * (gi - m[i]);
                v[i] = v[i] * b2 + w2 * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] += step_size * m[i] / denom;
            }
        });
}

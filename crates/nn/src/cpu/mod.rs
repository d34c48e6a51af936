//! The CPU reference backend: `Vec<f32>` buffers, im2col + `gemm` convolutions, `rayon` across pixel ranges.
//!
//! Parallelism: each op splits its pixels into one contiguous range per thread of the backend's own rayon pool;
//! each thread owns a slab of the scratch buffer, so nothing is allocated in the hot path. GEMMs inside a thread
//! run single-threaded (`gemm::Parallelism::None`).

mod conv;
mod convt;
mod elementwise;
mod kernel;
mod pool;
mod upsample;

use crate::backend::{Activation, AdamParams, Backend, LossKind};
use crate::shape::{ConvGeom, ConvTGeom, PoolGeom, UpsampleGeom, View};
use crate::{NnError, Result};

/// CPU backend with its own thread pool.
pub struct Cpu {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl Cpu {
    /// A backend using `threads` threads (0 = one per logical CPU).
    pub fn new(threads: usize) -> Result<Cpu> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("cryoden-cpu-{i}"))
            .build()
            .map_err(|e| NnError::Backend {
                backend: "cpu".into(),
                msg: e.to_string(),
            })?;
        Ok(Cpu { pool, threads })
    }
    pub fn threads(&self) -> usize {
        self.threads
    }
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// A raw pointer shared by threads that write provably disjoint elements (each op documents why).
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut f32);
// SAFETY: only used for disjoint writes from parallel tasks, see each use.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the raw field).
    #[inline(always)]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `[0, total)` split into `parts` near-equal contiguous ranges (some may be empty).
pub(crate) fn split_range(total: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let base = total / parts;
    let rem = total % parts;
    let start = i * base + i.min(rem);
    let len = base + usize::from(i < rem);
    start..start + len
}

fn check_range(op: &'static str, buf: &[f32], off: usize, len: usize) -> Result<()> {
    if off + len > buf.len() {
        return Err(NnError::Shape {
            op,
            msg: format!("range {off}..{} exceeds buffer of {}", off + len, buf.len()),
        });
    }
    Ok(())
}

impl Backend for Cpu {
    type Buf = Vec<f32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }
    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn upload(&self, src: &[f32], dst: &mut Vec<f32>, offset: usize) -> Result<()> {
        check_range("upload", dst, offset, src.len())?;
        dst[offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }
    fn download(&self, src: &Vec<f32>, offset: usize, dst: &mut [f32]) -> Result<()> {
        check_range("download", src, offset, dst.len())?;
        dst.copy_from_slice(&src[offset..offset + dst.len()]);
        Ok(())
    }
    fn fill(&self, buf: &mut Vec<f32>, offset: usize, len: usize, value: f32) -> Result<()> {
        check_range("fill", buf, offset, len)?;
        use rayon::prelude::*;
        self.run(|| {
            buf[offset..offset + len]
                .par_chunks_mut(1 << 16)
                .for_each(|c| c.fill(value))
        });
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn copy_channels(
        &self,
        pixels: usize,
        c: usize,
        src: &Vec<f32>,
        sv: View,
        dst: &mut Vec<f32>,
        dv: View,
        accumulate: bool,
    ) -> Result<()> {
        sv.check("copy_channels", c, pixels, src.len())?;
        dv.check("copy_channels", c, pixels, dst.len())?;
        self.run(|| {
            elementwise::copy_channels(self.threads, pixels, c, src, sv, dst, dv, accumulate)
        });
        Ok(())
    }

    fn conv_workspace_len(&self, g: &ConvGeom) -> usize {
        conv::workspace_len(g, self.threads)
    }
    fn conv2d_forward(
        &self,
        g: &ConvGeom,
        x: &Vec<f32>,
        xv: View,
        params: &Vec<f32>,
        w_off: usize,
        bias: Option<usize>,
        act: Activation,
        y: &mut Vec<f32>,
        yv: View,
        ws: &mut Vec<f32>,
    ) -> Result<()> {
        conv::check(
            g,
            "conv2d_forward",
            x,
            xv,
            y,
            yv,
            params,
            w_off,
            ws,
            self.threads,
        )?;
        let w = &params[w_off..w_off + g.weight_len()];
        let b = match bias {
            Some(o) => {
                check_range("conv2d_forward bias", params, o, g.cout)?;
                Some(&params[o..o + g.cout])
            }
            None => None,
        };
        self.run(|| conv::forward(g, x, xv, w, b, act, y, yv, false, ws, self.threads));
        Ok(())
    }
    fn conv2d_backward_data(
        &self,
        g: &ConvGeom,
        dy: &Vec<f32>,
        dyv: View,
        params: &Vec<f32>,
        w_off: usize,
        dx: &mut Vec<f32>,
        dxv: View,
        accumulate: bool,
        ws: &mut Vec<f32>,
    ) -> Result<()> {
        conv::check(
            g,
            "conv2d_backward_data",
            dx,
            dxv,
            dy,
            dyv,
            params,
            w_off,
            ws,
            self.threads,
        )?;
        let w = &params[w_off..w_off + g.weight_len()];
        self.run(|| conv::backward_data(g, dy, dyv, w, dx, dxv, accumulate, ws, self.threads));
        Ok(())
    }
    fn conv2d_backward_filter(
        &self,
        g: &ConvGeom,
        x: &Vec<f32>,
        xv: View,
        dy: &Vec<f32>,
        dyv: View,
        grads: &mut Vec<f32>,
        dw_off: usize,
        ws: &mut Vec<f32>,
    ) -> Result<()> {
        conv::check(
            g,
            "conv2d_backward_filter",
            x,
            xv,
            dy,
            dyv,
            grads,
            dw_off,
            ws,
            self.threads,
        )?;
        let dw = &mut grads[dw_off..dw_off + g.weight_len()];
        self.run(|| conv::backward_filter(g, x, xv, dy, dyv, dw, ws, self.threads));
        Ok(())
    }

    fn bias_act_forward(
        &self,
        pixels: usize,
        c: usize,
        act: Activation,
        params: &Vec<f32>,
        b_off: Option<usize>,
        y: &mut Vec<f32>,
        yv: View,
    ) -> Result<()> {
        yv.check("bias_act_forward", c, pixels, y.len())?;
        let b = match b_off {
            Some(o) => {
                check_range("bias_act_forward bias", params, o, c)?;
                Some(&params[o..o + c])
            }
            None => None,
        };
        self.run(|| elementwise::bias_act_forward(self.threads, pixels, c, act, b, y, yv));
        Ok(())
    }
    fn bias_act_backward(
        &self,
        pixels: usize,
        c: usize,
        act: Activation,
        y: &Vec<f32>,
        yv: View,
        dy: &mut Vec<f32>,
        dyv: View,
        grads: &mut Vec<f32>,
        db_off: Option<usize>,
    ) -> Result<()> {
        if act != Activation::Identity {
            yv.check("bias_act_backward", c, pixels, y.len())?;
        }
        dyv.check("bias_act_backward", c, pixels, dy.len())?;
        let db = match db_off {
            Some(o) => {
                check_range("bias_act_backward bias", grads, o, c)?;
                Some(&mut grads[o..o + c])
            }
            None => None,
        };
        self.run(|| {
            elementwise::bias_act_backward(self.threads, pixels, c, act, y, yv, dy, dyv, db)
        });
        Ok(())
    }

    fn maxpool2_forward(
        &self,
        g: &PoolGeom,
        x: &Vec<f32>,
        xv: View,
        y: &mut Vec<f32>,
        yv: View,
    ) -> Result<()> {
        xv.check("maxpool2_forward", g.c, g.dims.pixels(), x.len())?;
        yv.check("maxpool2_forward", g.c, g.out_dims().pixels(), y.len())?;
        self.run(|| pool::forward(g, x, xv, y, yv));
        Ok(())
    }
    fn maxpool2_backward(
        &self,
        g: &PoolGeom,
        x: &Vec<f32>,
        xv: View,
        y: &Vec<f32>,
        yv: View,
        dy: &Vec<f32>,
        dyv: View,
        dx: &mut Vec<f32>,
        dxv: View,
        accumulate: bool,
    ) -> Result<()> {
        xv.check("maxpool2_backward", g.c, g.dims.pixels(), x.len())?;
        dxv.check("maxpool2_backward", g.c, g.dims.pixels(), dx.len())?;
        yv.check("maxpool2_backward", g.c, g.out_dims().pixels(), y.len())?;
        dyv.check("maxpool2_backward", g.c, g.out_dims().pixels(), dy.len())?;
        self.run(|| pool::backward(g, x, xv, y, yv, dy, dyv, dx, dxv, accumulate));
        Ok(())
    }

    fn upsample_nearest_forward(
        &self,
        g: &UpsampleGeom,
        x: &Vec<f32>,
        xv: View,
        y: &mut Vec<f32>,
        yv: View,
    ) -> Result<()> {
        xv.check("upsample_nearest_forward", g.c, g.dims.pixels(), x.len())?;
        yv.check(
            "upsample_nearest_forward",
            g.c,
            g.out_dims().pixels(),
            y.len(),
        )?;
        self.run(|| upsample::forward(g, x, xv, y, yv));
        Ok(())
    }
    fn upsample_nearest_backward(
        &self,
        g: &UpsampleGeom,
        dy: &Vec<f32>,
        dyv: View,
        dx: &mut Vec<f32>,
        dxv: View,
        accumulate: bool,
    ) -> Result<()> {
        dxv.check("upsample_nearest_backward", g.c, g.dims.pixels(), dx.len())?;
        dyv.check(
            "upsample_nearest_backward",
            g.c,
            g.out_dims().pixels(),
            dy.len(),
        )?;
        self.run(|| upsample::backward(g, dy, dyv, dx, dxv, accumulate));
        Ok(())
    }

    fn convt_workspace_len(&self, g: &ConvTGeom) -> usize {
        convt::workspace_len(g, self.threads)
    }
    fn convt2x2_forward(
        &self,
        g: &ConvTGeom,
        x: &Vec<f32>,
        xv: View,
        params: &Vec<f32>,
        w_off: usize,
        bias: Option<usize>,
        act: Activation,
        y: &mut Vec<f32>,
        yv: View,
        _ws: &mut Vec<f32>,
    ) -> Result<()> {
        convt::check(g, "convt2x2_forward", x, xv, y, yv, params, w_off)?;
        let w = &params[w_off..w_off + g.weight_len()];
        let b = match bias {
            Some(o) => {
                check_range("convt2x2_forward bias", params, o, g.cout)?;
                Some(&params[o..o + g.cout])
            }
            None => None,
        };
        self.run(|| convt::forward(g, x, xv, w, b, act, y, yv));
        Ok(())
    }
    fn convt2x2_backward_data(
        &self,
        g: &ConvTGeom,
        dy: &Vec<f32>,
        dyv: View,
        params: &Vec<f32>,
        w_off: usize,
        dx: &mut Vec<f32>,
        dxv: View,
        accumulate: bool,
        _ws: &mut Vec<f32>,
    ) -> Result<()> {
        convt::check(g, "convt2x2_backward_data", dx, dxv, dy, dyv, params, w_off)?;
        let w = &params[w_off..w_off + g.weight_len()];
        self.run(|| convt::backward_data(g, dy, dyv, w, dx, dxv, accumulate));
        Ok(())
    }
    fn convt2x2_backward_filter(
        &self,
        g: &ConvTGeom,
        x: &Vec<f32>,
        xv: View,
        dy: &Vec<f32>,
        dyv: View,
        grads: &mut Vec<f32>,
        dw_off: usize,
        ws: &mut Vec<f32>,
    ) -> Result<()> {
        convt::check(g, "convt2x2_backward_filter", x, xv, dy, dyv, grads, dw_off)?;
        if ws.len() < convt::workspace_len(g, self.threads) {
            return Err(NnError::Shape {
                op: "convt2x2_backward_filter",
                msg: "workspace too small".into(),
            });
        }
        let dw = &mut grads[dw_off..dw_off + g.weight_len()];
        self.run(|| convt::backward_filter(g, x, xv, dy, dyv, dw, ws, self.threads));
        Ok(())
    }

    fn loss_forward_backward(
        &self,
        kind: LossKind,
        len: usize,
        pred: &Vec<f32>,
        target: &Vec<f32>,
        dpred: &mut Vec<f32>,
        loss: &mut Vec<f32>,
    ) -> Result<()> {
        for (what, l) in [
            ("pred", pred.len()),
            ("target", target.len()),
            ("dpred", dpred.len()),
        ] {
            if l < len {
                return Err(NnError::Length {
                    what: format!("loss {what}"),
                    expected: len,
                    got: l,
                });
            }
        }
        if loss.is_empty() {
            return Err(NnError::Length {
                what: "loss output".into(),
                expected: 1,
                got: 0,
            });
        }
        let l = self.run(|| {
            elementwise::loss(
                self.threads,
                kind,
                &pred[..len],
                &target[..len],
                &mut dpred[..len],
            )
        });
        loss[0] = l as f32;
        Ok(())
    }

    fn adam_step(
        &self,
        hp: &AdamParams,
        step: u64,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<()> {
        let n = params.len();
        for (what, l) in [
            ("grads", grads.len()),
            ("adam m", m.len()),
            ("adam v", v.len()),
        ] {
            if l != n {
                return Err(NnError::Length {
                    what: what.into(),
                    expected: n,
                    got: l,
                });
            }
        }
        self.run(|| elementwise::adam(hp, step, params, grads, m, v));
        Ok(())
    }
    fn sum_squares(&self, buf: &Vec<f32>) -> Result<f64> {
        use rayon::prelude::*;
        Ok(self.run(|| {
            buf.par_chunks(1 << 16)
                .map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>())
                .sum()
        }))
    }
    fn scale(&self, buf: &mut Vec<f32>, s: f32) -> Result<()> {
        use rayon::prelude::*;
        self.run(|| {
            buf.par_chunks_mut(1 << 16)
                .for_each(|c| c.iter_mut().for_each(|v| *v *= s))
        });
        Ok(())
    }
}

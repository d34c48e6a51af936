//! f32 convolutions as three TF32 tensor-core passes ("3xTF32", CUTLASS's name): x = x_big + x_small with x_big
//! the TF32 rounding of x and x_small = x − x_big (exact in f32), the same for w, and
//! conv(x, w) ≈ conv(x_big, w_big) + conv(x_small, w_big) + conv(x_big, w_small).
//! Products of TF32 values are exact and cuDNN sums them in f32; the dropped x_small·w_small and the TF32
//! rounding of the small parts are ~2^-22 of each product, so each product keeps nearly f32 accuracy, while cuDNN's TF32
//! kernels run 5–7× faster than its FMA ones on the 3×3 convs that dominate the f32 step
//! (docs/perf/cudnn-engines.md: 32→32 @1024² forward 1.22 vs 6.68 ms, backward-data 1.23 vs 8.17 ms).
//! Measured distances grow with the reduction length: 5e-7–1.5e-6 for 9 × 32–64 inputs, 2.5e-6–6.3e-6 for
//! 9 × 128–256 (H200).
//!
//! Nothing is taken on trust: the first call of each (shape, direction) runs both paths on its own data and keeps
//! the three passes only when their output is within [`SPLIT_BOUND`] of cuDNN's FMA result (relative L2 on the
//! first 2^20 outputs) and, in `auto`, at least 20 % faster (a wide margin, so that timing noise cannot flip the
//! choice between runs and change their results). Weight gradients stay FMA: cuDNN's TF32 backward-filter is barely
//! faster than its FMA one, so three of them would be slower.
//!
//! **Off by default.** Per op the three passes stay within 5e-6 of FMA, and a whole model's gradient within 1e-6 of
//! the CPU's, but single small gradient tensors whose sums cancel do not: with every conv split (`force`), the
//! U-Net's `enc2.conv1.bias` gradient at 64² is 2.6e-3 from the CPU's and Topaz's worst tensors 1.1e-5–1.9e-5,
//! against f32's 1e-5 (`model_tests`, H200, docs/PERFORMANCE.md "Session 6"). The tensor cores' f32 accumulation
//! is not rounded to nearest like an FMA, so its error does not average out. f32 mode exists for parity, so it
//! keeps cuDNN's FMA kernels; `CRYODEN_F32_SPLIT=auto` (or `Gpu::f32_split`) opts in (the f32 training step
//! 256.7 → 191.5 ms on the H200), `force` takes the three passes wherever accurate enough, fast or not (tests).

use crate::conv::rel_l2;
use crate::device::Gpu;
use crate::engine::Direction;
use crate::error::{drv, Result};
use crate::precision::{DType, Precision};
use crate::ConvGeom;

/// Largest relative L2 distance from the FMA result that the three passes may show: half the f32 parity bound
/// (1e-5), the margin the engine tuner leaves in tf32 and bf16.
pub const SPLIT_BOUND: f64 = 5e-6;

/// Staging slots of the split operands (`Gpu::staging`; the backend uses 0–3, the transposed conv 8).
const S_BIG: usize = 4;
const S_SMALL: usize = 5;
const S_WEIGHTS: usize = 6;

/// The first-call verdict for one (shape, direction).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SplitChoice {
    pub geom: ConvGeom,
    pub direction: Direction,
    /// Relative L2 distance of the three passes from the FMA result on the call's data (first 2^20 outputs).
    pub distance: f64,
    pub fma_ms: f32,
    pub split_ms: f32,
    /// Whether the three passes run from now on.
    pub used: bool,
}

/// Where f32 convs may run as three TF32 passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SplitMode {
    /// Never: cuDNN's FMA kernels only (the default).
    Off,
    /// Where the first call shows them accurate enough and faster.
    Auto,
    /// Where the first call shows them accurate enough.
    Force,
}

/// `CRYODEN_F32_SPLIT`: `off` (default), `auto`, `force`; anything else is `off`.
pub fn split_from_env() -> SplitMode {
    match std::env::var("CRYODEN_F32_SPLIT").as_deref() {
        Ok("auto") => SplitMode::Auto,
        Ok("force") => SplitMode::Force,
        _ => SplitMode::Off,
    }
}

impl Gpu {
    /// Runs an f32 conv as three TF32 passes if this (shape, direction) qualifies (deciding on its first call, see
    /// the module documentation); returns false, having done nothing, when the caller should run it on FMA.
    pub(crate) fn split_conv(
        &mut self,
        g: &ConvGeom,
        dir: Direction,
        ptrs: [u64; 3],
        beta: f32,
    ) -> Result<bool> {
        if self.f32_split == SplitMode::Off || dir == Direction::BackwardFilter {
            return Ok(false);
        }
        let key = (*g, dir);
        match self.split_choices.get(&key) {
            Some(c) if !c.used => return Ok(false),
            Some(_) => {}
            // Inside a graph capture nothing may be timed: an undecided shape stays on FMA.
            None if self.capturing => return Ok(false),
            None => self.split_decide(g, dir, ptrs)?,
        }
        if !self.split_choices[&key].used {
            return Ok(false);
        }
        self.split_run(g, dir, ptrs, beta)?;
        Ok(true)
    }

    /// The decisions so far (for bench output and docs).
    pub fn split_choices(&self) -> Vec<SplitChoice> {
        let mut v: Vec<SplitChoice> = self.split_choices.values().copied().collect();
        v.sort_by_key(|c| (c.geom.h, c.geom.cin, c.geom.cout, c.direction as u8));
        v
    }

    /// The three passes: splits the input side (x forward, dy backward-data) and the weights into staging, then
    /// big·big (with the call's beta), small·big and big·small added on.
    fn split_run(&mut self, g: &ConvGeom, dir: Direction, ptrs: [u64; 3], beta: f32) -> Result<()> {
        let src = split_source(dir);
        let n = side_len(g, src);
        let wl = g.weight_len();
        let big = self.staging(S_BIG, n, DType::F32)?;
        let small = self.staging(S_SMALL, n, DType::F32)?;
        let w_big = self.staging(S_WEIGHTS, 2 * wl, DType::F32)?;
        let w_small = w_big + 4 * wl as u64;
        self.tf32_split(ptrs[src], big, small, n)?;
        self.tf32_split(ptrs[1], w_big, w_small, wl)?;
        let with = |s: u64, w: u64| {
            let mut p = ptrs;
            p[src] = s;
            p[1] = w;
            p
        };
        self.conv_run_direct(Precision::Tf32, g, dir, with(big, w_big), beta)?;
        self.conv_run_direct(Precision::Tf32, g, dir, with(small, w_big), 1.0)?;
        self.conv_run_direct(Precision::Tf32, g, dir, with(big, w_small), 1.0)
    }

    /// First call of a (shape, direction): FMA and the three passes on the call's own tensors (beta 0, the
    /// output saved and restored around the trial), compared and timed.
    fn split_decide(&mut self, g: &ConvGeom, dir: Direction, ptrs: [u64; 3]) -> Result<()> {
        let out = 2 - split_source(dir);
        let len = side_len(g, out);
        let saved = self.alloc(len, DType::F32)?;
        let copy = |gpu: &Gpu, from: u64, to: u64| {
            // SAFETY: both hold `len` f32 (the conv's output and the temporary above).
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(to, from, len * 4, gpu.stream.cu_stream())
            }
            .map_err(drv("cuMemcpyDtoDAsync"))
        };
        copy(self, ptrs[out], saved.ptr())?;
        let sample = len.min(1 << 20);
        self.conv_run_direct(Precision::F32, g, dir, ptrs, 0.0)?;
        let want = self.read_back(ptrs[out], DType::F32, sample)?;
        self.split_run(g, dir, ptrs, 0.0)?;
        let got = self.read_back(ptrs[out], DType::F32, sample)?;
        let distance = rel_l2(&got, &want);
        let fma_ms = self.time_ms(f32::INFINITY, |gpu| {
            gpu.conv_run_direct(Precision::F32, g, dir, ptrs, 0.0)
        })?;
        let split_ms = self.time_ms(f32::INFINITY, |gpu| gpu.split_run(g, dir, ptrs, 0.0))?;
        copy(self, saved.ptr(), ptrs[out])?;
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))?;
        drop(saved);
        let used = distance <= SPLIT_BOUND
            && (self.f32_split == SplitMode::Force || split_ms < 0.8 * fma_ms);
        self.split_choices.insert(
            (*g, dir),
            SplitChoice {
                geom: *g,
                direction: dir,
                distance,
                fma_ms,
                split_ms,
                used,
            },
        );
        Ok(())
    }
}

/// Which of (x-side, w-side, y-side) the split input is: x forward, dy backward-data.
fn split_source(dir: Direction) -> usize {
    match dir {
        Direction::BackwardData => 2,
        _ => 0,
    }
}

/// Elements of the x-side (0) or y-side (2) tensor.
fn side_len(g: &ConvGeom, side: usize) -> usize {
    if side == 0 {
        g.in_shape().len()
    } else {
        g.out_shape().len()
    }
}

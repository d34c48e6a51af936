//! f32 3×3 convolutions as three TF32 tensor-core products with rounded accumulation (kernels/conv_x3.cu): the f32
//! mode's convolutions at f32 accuracy without cuDNN's FMA kernels. Launched through device/mma.rs's entry points
//! (`mma_conv_forward` etc. dispatch on the views' dtype), which also pick between these and cuDNN per shape.
//!
//! As in mma.rs, the tables are the single source of the tile sizes: the CUDA instantiations and the launch sizes
//! both come from them.

use super::mma::{load, tiles, Kernel, Shape, Slots};
use super::{Gpu, View};
use crate::conv::ConvGeom;
use crate::error::{drv, CudaError, Result};
use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use std::sync::Arc;

pub const CONV_X3_CU: &str = include_str!("../kernels/conv_x3.cu");

/// Forward (and backward-data) variants per cin: (tile rows TH, tile rows per warp WM, halo buffers NBUF); any cout
/// that is a multiple of 32 (blocks own 32 output channels each). Backward-data of cin → cout runs the forward of
/// cout → cin, so it needs cout here. Shared memory: 32 × 9 cin weights plus the halo buffers, so cin ≤ 128.
type FwdVariant = (usize, usize, usize);
const FWD: [(usize, &[FwdVariant]); 3] = [
    (32, &[(16, 4, 2), (16, 2, 2), (8, 2, 2), (32, 4, 1)]),
    (64, &[(8, 2, 2), (16, 2, 1), (16, 4, 1)]),
    (128, &[(4, 1, 1), (4, 2, 1)]),
];
/// Weight-gradient variants: (input channels per block CIW, tile rows TH, buffers NBUF); any cin that is a
/// multiple of CIW and cout a multiple of 32. Nine warps per block, one per tap.
type WgradVariant = (usize, usize, usize);
const WGRAD: [WgradVariant; 4] = [(32, 8, 2), (32, 16, 2), (64, 8, 2), (64, 8, 1)];

const TW: usize = 16;

fn fwd_threads(th: usize, wm: usize) -> usize {
    th / wm * 32
}
fn fwd_smem(ci: usize, th: usize, nbuf: usize) -> usize {
    4 * (32 * (9 * ci + 4) + nbuf * (th + 2) * (TW + 2) * (ci + 4))
}
fn wgrad_smem(ciw: usize, th: usize, nbuf: usize) -> usize {
    4 * nbuf * ((th + 2) * (TW + 2) * (ciw + 8) + th * TW * (32 + 8))
}
fn fwd_name(ci: usize, v: usize) -> String {
    format!("conv3_fwd_x3_{ci}_v{v}")
}
fn wgrad_name(v: usize) -> String {
    format!("conv3_wgrad_x3_v{v}")
}

/// conv_x3.cu with its instantiations (appended to conv_mma.cu's source, whose helpers it uses).
pub(super) fn source() -> String {
    let mut s = CONV_X3_CU.to_string();
    for (ci, vs) in FWD {
        for (v, (th, wm, nbuf)) in vs.iter().enumerate() {
            let name = fwd_name(ci, v);
            s.push_str(&format!("CONV3_FWD_X3({name}, {ci}, {th}, {wm}, {nbuf})\n"));
        }
    }
    for (v, (ciw, th, nbuf)) in WGRAD.iter().enumerate() {
        let name = wgrad_name(v);
        s.push_str(&format!("CONV3_WGRAD_X3({name}, {ciw}, {th}, {nbuf})\n"));
    }
    s
}

/// How many forward variants the table has for `cin` (0: none).
#[cfg(test)]
pub(super) fn fwd_variants(cin: usize) -> usize {
    FWD.iter().find(|f| f.0 == cin).map_or(0, |f| f.1.len())
}

/// Whether weight-gradient variant `v` exists and can run `cin` input channels.
pub(super) fn wgrad_runs(v: usize, cin: usize) -> bool {
    WGRAD.get(v).is_some_and(|w| cin.is_multiple_of(w.0))
}

#[derive(Debug)]
pub(crate) struct X3Kernels {
    /// Per cin (keyed (cin, 0)), one slot per `FWD` variant.
    fwd: Vec<(Shape, Slots)>,
    /// One slot per `WGRAD` variant.
    wgrad: Slots,
    flip: CudaFunction,
}

impl X3Kernels {
    pub(super) fn open(module: &Arc<CudaModule>, fit: (u32, usize)) -> Result<X3Kernels> {
        let mut fwd = Vec::new();
        for (ci, vs) in FWD {
            let mut ks = Vec::new();
            for (v, &(th, wm, nbuf)) in vs.iter().enumerate() {
                let (threads, smem) = (fwd_threads(th, wm), fwd_smem(ci, th, nbuf));
                ks.push(load(
                    module,
                    &fwd_name(ci, v),
                    threads,
                    smem,
                    fit,
                    (th, TW),
                )?);
            }
            fwd.push(((ci, 0), ks));
        }
        let mut wgrad = Vec::new();
        for (v, &(ciw, th, nbuf)) in WGRAD.iter().enumerate() {
            wgrad.push(load(
                module,
                &wgrad_name(v),
                9 * 32,
                wgrad_smem(ciw, th, nbuf),
                fit,
                (th, TW),
            )?);
        }
        let flip = module
            .load_function("conv3_flip_weights_f32")
            .map_err(drv("cuModuleGetFunction"))?;
        Ok(X3Kernels { fwd, wgrad, flip })
    }

    /// The forward variant slots for `cin` input channels.
    pub(super) fn fwd(&self, cin: usize) -> Option<&[Option<Kernel>]> {
        self.fwd
            .iter()
            .find(|(k, _)| k.0 == cin)
            .map(|(_, k)| k.as_slice())
    }

    /// Which weight-gradient slots can run cin input channels on this GPU.
    pub(super) fn wgrad_avail(&self, cin: usize) -> Vec<bool> {
        self.wgrad
            .iter()
            .enumerate()
            .map(|(v, k)| k.is_some() && wgrad_runs(v, cin))
            .collect()
    }

    pub(super) fn flip(&self) -> &CudaFunction {
        &self.flip
    }
}

/// Whether the x3 kernels cover all three directions of `g` (shape only; the caller checks the views).
pub(super) fn covers(k: &X3Kernels, g: &ConvGeom) -> bool {
    g.cin.is_multiple_of(32)
        && g.cout.is_multiple_of(32)
        && k.fwd(g.cin).is_some_and(|s| s.iter().any(Option::is_some))
        && k.fwd(g.cout).is_some_and(|s| s.iter().any(Option::is_some))
        && k.wgrad_avail(g.cin).contains(&true)
}

impl Gpu {
    fn x3(&self) -> Result<&X3Kernels> {
        self.mma
            .as_ref()
            .and_then(|m| m.x3.as_ref())
            .ok_or_else(|| CudaError::Shape("internal: the f32 x3 kernels are not loaded".into()))
    }

    /// Forward variant `v` of cin = g.cin (any cout multiple of 32); views already checked.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn x3_launch_fwd(
        &self,
        g: &ConvGeom,
        v: usize,
        x: View,
        w: u64,
        bias: Option<u64>,
        y: View,
        slope: f32,
        accumulate: bool,
    ) -> Result<()> {
        let ks = self.x3()?.fwd(g.cin).unwrap_or(&[]);
        let k = ks.get(v).and_then(Option::as_ref).ok_or_else(|| {
            CudaError::Shape(format!(
                "internal: x3 forward variant {v} of {g} is not loaded"
            ))
        })?;
        let groups = g.cout / 32;
        // Blocks come in whole sets of cout / 32 (one per group of 32 output channels), each set looping over tiles.
        let sets = k.grid(
            self.mma_max_blocks,
            tiles(g.n, g.h, g.w, k.th, k.tw) * groups,
        ) / groups;
        let blocks = sets.max(1) * groups;
        let (xp, xcs, bp, yp, ycs) = (x.ptr, x.cs as i32, bias.unwrap_or(0), y.ptr, y.cs as i32);
        let (co, n, h, wd, acc) = (
            g.cout as i32,
            g.n as i32,
            g.h as i32,
            g.w as i32,
            accumulate as i32,
        );
        let cfg = k.config(blocks);
        let mut b = self.stream.launch_builder(&k.f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&w)
            .arg(&bp)
            .arg(&yp)
            .arg(&ycs)
            .arg(&co)
            .arg(&n)
            .arg(&h)
            .arg(&wd)
            .arg(&slope)
            .arg(&acc);
        // SAFETY: matches conv3_fwd_x3_*; views checked by mma_check (shapes, f32, 16-byte alignment, channel
        // strides of whole 4-float groups); w holds the KRSC f32 weights; the grid is a multiple of cout / 32.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv3_fwd_x3)"))?;
        Ok(())
    }

    /// Weight-gradient variant `v`: per-block partial sums, added into dw (`Some`) in a fixed order.
    pub(super) fn x3_launch_wgrad(
        &mut self,
        g: &ConvGeom,
        v: usize,
        x: View,
        dy: View,
        dw: Option<u64>,
    ) -> Result<()> {
        let ciw = WGRAD.get(v).map_or(0, |w| w.0);
        let (f, smem, parts, groups) = {
            let k = self.x3()?.wgrad.get(v).and_then(Option::as_ref);
            let k = match k {
                Some(k) if ciw > 0 && g.cin.is_multiple_of(ciw) => k,
                _ => {
                    return Err(CudaError::Shape(format!(
                        "internal: x3 weight-gradient variant {v} cannot run {g}"
                    )))
                }
            };
            let groups = g.cout / 32 * (g.cin / ciw);
            let resident = (k.blocks as usize / groups).max(1) as u32;
            let parts = (resident.min(self.mma_max_blocks.unwrap_or(u32::MAX)) as usize)
                .min(tiles(g.n, g.h, g.w, k.th, k.tw))
                .max(1);
            (k.f.clone(), k.smem, parts, groups)
        };
        let len = g.weight_len();
        let partial = self.scratch(parts * len)?;
        let (xp, xcs, dyp, dycs) = (x.ptr, x.cs as i32, dy.ptr, dy.cs as i32);
        let (ci, co, n, h, wd) = (
            g.cin as i32,
            g.cout as i32,
            g.n as i32,
            g.h as i32,
            g.w as i32,
        );
        let cfg = LaunchConfig {
            grid_dim: ((parts * groups) as u32, 1, 1),
            block_dim: (9 * 32, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&dyp)
            .arg(&dycs)
            .arg(&partial)
            .arg(&ci)
            .arg(&co)
            .arg(&n)
            .arg(&h)
            .arg(&wd);
        // SAFETY: matches conv3_wgrad_x3_*; views checked by mma_check; partial holds parts * len floats and the
        // grid is parts whole sets of the (cout / 32) x (cin / CIW) channel groups.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv3_wgrad_x3)"))?;
        match dw {
            Some(dw) => self.sum_parts_into(partial, parts, len, dw),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant fits the H100/H200's 227 KiB of shared memory per block and the kernels' assumptions.
    #[test]
    fn configurations_fit() {
        for (ci, vs) in FWD {
            assert!(ci % 8 == 0);
            for &(th, wm, nbuf) in vs {
                assert!(
                    th % wm == 0 && (1..=2).contains(&nbuf),
                    "{ci}: {th} {wm} {nbuf}"
                );
                assert!(fwd_threads(th, wm) <= 1024);
                assert!(
                    fwd_smem(ci, th, nbuf) <= 227 << 10,
                    "x3 fwd {ci} TH {th}: too much shared memory"
                );
            }
        }
        for (ciw, th, nbuf) in WGRAD {
            assert!(ciw % 8 == 0 && (1..=2).contains(&nbuf));
            assert!(
                wgrad_smem(ciw, th, nbuf) <= 227 << 10,
                "x3 wgrad {ciw} TH {th}"
            );
        }
    }

    #[test]
    fn source_holds_every_instantiation() {
        let s = source();
        assert!(s.contains("CONV3_FWD_X3(conv3_fwd_x3_32_v0, 32, 16, 4, 2)"));
        assert!(s.contains("CONV3_FWD_X3(conv3_fwd_x3_128_v1, 128, 4, 2, 1)"));
        assert!(s.contains("CONV3_WGRAD_X3(conv3_wgrad_x3_v3, 64, 8, 1)"));
        assert_eq!(s.matches("\nCONV3_FWD_X3(").count(), 9);
    }
}

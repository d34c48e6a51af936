//! cryoden's own bf16 3×3 convolutions on the tensor cores (kernels/conv_mma.cu): forward with bias + activation
//! fused, backward-data (the forward of the flipped weights) and weight gradient, for 32 or 64 channels in and out
//! — the plan's U-Net's 1024² and 512² layers, which cuDNN runs far from the GPU's peak (docs/perf/conv-mma.md).
//! The entry points (`mma_conv_ok`, `mma_conv_forward`, …) also take f32 views, which go to the 3×TF32 kernels of
//! x3.rs; tuning, `auto`'s fixed choices and the variant switches work the same for both.
//!
//! The table below is the single source of the kernels' tile sizes: the CUDA instantiations are generated from it,
//! and the launch sizes (threads, shared memory, resident blocks) are computed from it.

use super::x3::{self, X3Kernels};
use super::{ActGrad, Gpu, Nhwc, View};
use crate::conv::ConvGeom;
use crate::engine::Direction;
use crate::error::{drv, CudaError, Result};
use crate::nvrtc::Compiler;
use crate::precision::{DType, Precision};
use cudarc::driver::sys::CUfunction_attribute_enum as Attr;
use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use std::sync::Arc;

pub const CONV_MMA_CU: &str = include_str!("../kernels/conv_mma.cu");

/// Forward (and backward-data) kernel variants per (cin, cout): (tile rows TH, tile rows per warp WM, minimum
/// resident blocks MINB, which caps the registers, tap-loop unrolling TU, k-loop version PIPE, halo buffers NBUF).
/// PIPE 0 loads each fragment right before its MMAs, 1 loads the next k step's fragments during the current one's
/// MMAs, 2 loads each halo row's fragment once for the three kernel rows that use it. NBUF 2 fetches the next tile
/// during this one's MMAs, 1 during its epilogue (less shared memory, so more resident blocks). Warps split the
/// TH × 16 tile by rows; each keeps WM × cout / 8 MMA accumulators. `force` runs the first variant when a call
/// cannot be tuned.
type FwdVariant = (usize, usize, usize, usize, usize, usize);
const FWD: [((usize, usize), &[FwdVariant]); 4] = [
    (
        (32, 32),
        &[
            (16, 4, 1, 1, 2, 2),
            (16, 4, 1, 1, 0, 2),
            (16, 4, 4, 1, 2, 1),
            (16, 2, 2, 1, 2, 1),
            (32, 4, 2, 1, 2, 1),
            (8, 2, 4, 1, 1, 2),
        ],
    ),
    (
        (64, 32),
        &[
            (8, 2, 1, 9, 0, 2),
            (8, 1, 1, 1, 0, 2),
            (16, 2, 1, 1, 1, 2),
            (16, 4, 2, 1, 2, 1),
            (16, 2, 2, 1, 2, 1),
        ],
    ),
    (
        (32, 64),
        &[
            (8, 2, 3, 1, 0, 2),
            (16, 2, 1, 1, 1, 2),
            (16, 4, 1, 1, 2, 2),
            (16, 4, 2, 1, 2, 1),
            (16, 2, 2, 1, 2, 1),
        ],
    ),
    (
        (64, 64),
        &[
            (16, 2, 1, 1, 1, 2),
            (16, 4, 1, 1, 2, 2),
            (16, 4, 1, 1, 2, 1),
            (16, 2, 1, 1, 2, 1),
        ],
    ),
];
/// Forward shapes (cin, cout) whose variants are also built fused with the previous layer's activation backward
/// (`CONV3_FWD_ACT`), for backward-data passes whose output gradient goes on through a bias + ReLU: the plan's
/// U-Net's 32 → 32 layers at 1024², where that saves a whole pass over a 512 MiB tensor (docs/perf/conv-mma.md).
const ACT_FUSED: [(usize, usize); 1] = [(32, 32)];
/// First-layer (one input channel) 3×3 forward variants per cout: tile rows TH (4 warps, TH / 4 rows each; one
/// tile per block). The first runs by default: 1 → 32 @ 8 × 1024² on the H200 (`cudabench ops`, 14:28 UTC): TH 32
/// 0.161 ms, TH 16 0.189, TH 8 0.215 (elementwise.cu's direct kernel: 0.594).
const CONV_IN3: [(usize, &[usize]); 2] = [(32, &[32, 16, 8]), (64, &[16, 8])];
/// Its weight gradient, per cout: tile rows TH (persistent blocks of 4 warps). 1 → 32: TH 16 0.201 ms, TH 8 0.216
/// (direct kernel: 0.534).
const CONV_IN3_WGRAD: [(usize, &[usize]); 2] = [(32, &[16, 8]), (64, &[8, 16])];
/// 2×2 stride-2 transposed-conv forward variants per (cin, cout): warps along the 4·cout outputs (WN; 4 warps
/// along a tile's 64 input pixels). 64 → 32 from 8 × 512² into the 1024² concatenation (H200, 14:28 UTC): 0.410 /
/// 0.434 / 0.405 ms against 0.726 for the GEMM + shuffle path. The weights (cin × 4 cout bf16) sit in shared memory, so the U-Net's two upper
/// levels are covered; the deeper, smaller ones keep the GEMM + shuffle path.
const CONVT: [((usize, usize), &[usize]); 2] = [((64, 32), &[2, 4, 1]), ((128, 64), &[4, 2])];
const CONVT_TM: usize = 64;
/// Hopper (sm_90a) forward variants per (cin, cout): (tile rows TH, halo buffers NBUF). One warpgroup per block,
/// 64-pixel tile rows, `wgmma` with both operands from shared memory. They follow the `FWD` variants in the variant
/// numbering, and exist only on compute capability 9.0.
type WgVariant = (usize, usize);
const FWD_WG: [((usize, usize), &[WgVariant]); 4] = [
    ((32, 32), &[(4, 2), (2, 2), (4, 1)]),
    ((64, 32), &[(4, 2), (2, 2)]),
    ((32, 64), &[(4, 2), (2, 2)]),
    ((64, 64), &[(2, 2), (2, 1)]),
];
const WG_TW: usize = 64;

/// Weight-gradient variants per (cin, cout): (tile rows TH, MINB, taps per warp TPW (1, or 3 sharing the dy
/// fragments), input channels per warp CIW, COL: 1 for the three taps of a kernel column, which share the x
/// fragments as well); (9 / TPW) × (cin / CIW) × (cout / 32) warps.
type WgradVariant = (usize, usize, usize, usize, usize);
const WGRAD: [((usize, usize), &[WgradVariant]); 4] = [
    (
        (32, 32),
        &[
            (8, 1, 3, 32, 0),
            (8, 1, 1, 32, 0),
            (16, 1, 1, 32, 0),
            (16, 1, 3, 32, 0),
            (8, 3, 1, 32, 0),
            (8, 1, 3, 32, 1),
            (16, 1, 3, 32, 1),
        ],
    ),
    (
        (64, 32),
        &[
            (8, 1, 3, 32, 0),
            (8, 1, 1, 64, 0),
            (16, 1, 1, 64, 0),
            (16, 1, 3, 32, 0),
            (8, 1, 3, 32, 1),
            (16, 1, 3, 32, 1),
        ],
    ),
    (
        (32, 64),
        &[
            (8, 1, 3, 32, 0),
            (8, 1, 1, 32, 0),
            (16, 1, 1, 32, 0),
            (8, 1, 3, 32, 1),
            (16, 1, 3, 32, 1),
        ],
    ),
    (
        (64, 64),
        &[
            (8, 1, 3, 32, 0),
            (8, 1, 1, 64, 0),
            (4, 1, 1, 64, 0),
            (16, 1, 3, 32, 1),
        ],
    ),
];

const PAD: usize = 8;
const TW: usize = 16;

fn fwd_threads(th: usize, wm: usize) -> usize {
    th / wm * 32
}
fn wg_smem(ci: usize, co: usize, th: usize, nbuf: usize) -> usize {
    2 * (9 * ci * co + nbuf * (th + 2) * (WG_TW + 2) * ci)
}
fn wg_name(ci: usize, co: usize, v: usize) -> String {
    format!("conv3_fwd_{ci}_{co}_wg{v}")
}
fn fwd_smem(ci: usize, co: usize, th: usize, wm: usize, nbuf: usize) -> usize {
    // weights, halo buffers, each warp's epilogue staging rows
    2 * (co * (9 * ci + PAD) + nbuf * (th + 2) * (TW + 2) * (ci + PAD) + th / wm * 16 * (co + PAD))
}
fn wgrad_threads(ci: usize, co: usize, tpw: usize, ciw: usize) -> usize {
    9 / tpw * (ci / ciw) * (co / 32) * 32
}
fn wgrad_smem(ci: usize, co: usize, th: usize) -> usize {
    2 * 2 * ((th + 2) * (TW + 2) * (ci + PAD) + th * TW * (co + PAD))
}
fn fwd_name(ci: usize, co: usize, v: usize) -> String {
    format!("conv3_fwd_{ci}_{co}_v{v}")
}
fn act_name(ci: usize, co: usize, v: usize) -> String {
    format!("conv3_fwd_{ci}_{co}_v{v}_act")
}
fn conv_in3_name(co: usize, v: usize) -> String {
    format!("conv_in3_mma_{co}_v{v}")
}
fn conv_in3_wgrad_name(co: usize, v: usize) -> String {
    format!("conv_in3_mma_wgrad_{co}_v{v}")
}
fn convt_name(ci: usize, co: usize, v: usize) -> String {
    format!("convt2_fwd_{ci}_{co}_v{v}")
}
fn convt_smem(ci: usize, co: usize, wn: usize) -> usize {
    // weights, the x tile, and each warp's 16-pixel output staging
    2 * (ci * (4 * co + PAD) + CONVT_TM * (ci + PAD) + 4 * wn * 16 * (co + PAD))
}
fn wgrad_name(ci: usize, co: usize, v: usize) -> String {
    format!("conv3_wgrad_{ci}_{co}_v{v}")
}

/// The CUDA source with its instantiations (`wgmma`: with the Hopper kernels, compiled for sm_90a), then the f32
/// 3×TF32 kernels (x3.rs), which use its helpers.
pub fn source(wgmma: bool) -> String {
    let mut s = CONV_MMA_CU.to_string();
    s.push_str(&x3::source());
    if wgmma {
        for ((ci, co), vs) in CONVT {
            assert!(ci % 16 == 0 && co % 8 == 0 && !vs.is_empty());
            for &wn in vs {
                assert!(
                    (4 * co) % (16 * wn) == 0,
                    "convT {ci}->{co}: {wn} warps along 4 cout"
                );
                assert!(convt_smem(ci, co, wn) <= 227 << 10 && 4 * wn * 32 <= 1024);
                assert!(
                    (4 * co / wn) % co == 0,
                    "convT {ci}->{co}: a warp's outputs are whole sub-pixels"
                );
            }
        }
        for ((ci, co), vs) in FWD_WG {
            for (v, (th, nbuf)) in vs.iter().enumerate() {
                let name = wg_name(ci, co, v);
                s.push_str(&format!("CONV3_FWD_WG({name}, {ci}, {co}, {th}, {nbuf})\n"));
            }
        }
    }
    for ((ci, co), vs) in FWD {
        for (v, (th, wm, minb, tu, pipe, nbuf)) in vs.iter().enumerate() {
            let name = fwd_name(ci, co, v);
            s.push_str(&format!(
                "CONV3_FWD({name}, {ci}, {co}, {th}, {wm}, {minb}, {tu}, {pipe}, {nbuf})\n"
            ));
            if ACT_FUSED.contains(&(ci, co)) {
                let name = act_name(ci, co, v);
                s.push_str(&format!(
                    "CONV3_FWD_ACT({name}, {ci}, {co}, {th}, {wm}, {minb}, {tu}, {pipe}, {nbuf})\n"
                ));
            }
        }
    }
    for ((ci, co), vs) in CONVT {
        for (v, wn) in vs.iter().enumerate() {
            let name = convt_name(ci, co, v);
            s.push_str(&format!("CONVT2_FWD({name}, {ci}, {co}, {wn})\n"));
        }
    }
    for (co, vs) in CONV_IN3 {
        for (v, th) in vs.iter().enumerate() {
            let name = conv_in3_name(co, v);
            s.push_str(&format!("CONV_IN3_MMA({name}, {co}, {th})\n"));
        }
    }
    for (co, vs) in CONV_IN3_WGRAD {
        for (v, th) in vs.iter().enumerate() {
            let name = conv_in3_wgrad_name(co, v);
            s.push_str(&format!("CONV_IN3_MMA_WGRAD({name}, {co}, {th})\n"));
        }
    }
    for ((ci, co), vs) in WGRAD {
        for (v, (th, minb, tpw, ciw, col)) in vs.iter().enumerate() {
            let name = wgrad_name(ci, co, v);
            s.push_str(&format!(
                "CONV3_WGRAD({name}, {ci}, {co}, {th}, {minb}, {tpw}, {ciw}, {col})\n"
            ));
        }
    }
    s
}

/// Where cryoden's own convolutions run (`CRYODEN_MMA_CONV`):
/// - `auto` (default): the fixed choices of [`AUTO`] (measured on an H200), so a training run is bit-reproducible
///   from its seed on the same GPU model — run-time timing could pick differently from one run to the next (the
///   weight gradient's partial count follows the GPU's SM count, so another model sums in another order);
/// - `tune`: per call shape, our variants and cuDNN are timed on the first call and the fastest kept (for
///   benchmarks and other GPUs; not reproducible across runs);
/// - `force`: ours wherever they apply, the fastest variant where the call can be timed, else the first (tests and
///   benchmarks);
/// - `off`: cuDNN everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmaMode {
    Off,
    Auto,
    Tune,
    Force,
}

pub fn mode_from_env() -> MmaMode {
    parse_mode(std::env::var("CRYODEN_MMA_CONV").ok().as_deref())
}

fn parse_mode(v: Option<&str>) -> MmaMode {
    match v {
        Some("off") | Some("0") | Some("false") => MmaMode::Off,
        Some("tune") => MmaMode::Tune,
        Some("force") => MmaMode::Force,
        _ => MmaMode::Auto,
    }
}

/// `auto`'s choice per layer (cin, cout): our variant for [forward, backward-data, weight gradient], or None for
/// cuDNN. Backward-data runs the forward kernels of (cout, cin), so its index is into that list. From `CRYODEN_MMA_CONV=tune`
/// on the H200, 8 × 1024² / 8 × 512² (docs/perf/conv-mma.md): ours where it was faster, cuDNN where not.
type AutoChoice = ((usize, usize), [Option<usize>; 3]);
const AUTO: [AutoChoice; 4] = [
    ((32, 32), [Some(4), Some(4), Some(6)]),
    ((64, 32), [Some(4), None, None]),
    ((32, 64), [None, Some(4), Some(2)]),
    ((64, 64), [None, None, None]),
];

/// `auto`'s backward-data variant when the pass is fused with the previous layer's activation backward (the
/// `ACT_FUSED` kernels), per layer (cin, cout): the epilogue then also reads that activation, which favours other
/// tiles (32 → 32 @ 8 × 1024², H200, `cudabench ops`: variant 2 0.715 ms, variant 4 0.764 ms).
const AUTO_ACT: [((usize, usize), usize); 1] = [((32, 32), 2)];

/// `auto`'s choice for f32 layers (the 3×TF32 kernels of x3.rs), as `AUTO`: from `CRYODEN_MMA_CONV=tune cudabench
/// train --precision f32` on the H200 (2026-11-21, docs/PERFORMANCE.md "Session 7"), ours where faster than cuDNN's
/// tuned FMA engine on the packed call. Backward-data indexes the forward variants of cout (x3.rs `FWD`); cuDNN
/// keeps the deep weight gradients (its `eng17` is 1.4-1.9× faster than ours there) and two forwards within 10 %.
const AUTO_X3: [AutoChoice; 7] = [
    ((32, 32), [Some(3), Some(3), Some(1)]),
    ((64, 32), [Some(1), Some(3), Some(2)]),
    ((32, 64), [Some(3), Some(1), Some(1)]),
    ((64, 64), [Some(1), Some(1), Some(2)]),
    ((128, 64), [None, Some(1), None]),
    ((64, 128), [Some(1), Some(0), None]),
    ((128, 128), [None, Some(0), None]),
];

fn auto_pick(g: &ConvGeom, dir: Direction, f32: bool) -> MmaPick {
    let d = match dir {
        Direction::Forward => 0,
        Direction::BackwardData => 1,
        Direction::BackwardFilter => 2,
    };
    let table: &[AutoChoice] = if f32 { &AUTO_X3 } else { &AUTO };
    table
        .iter()
        .find(|(k, _)| *k == (g.cin, g.cout))
        .and_then(|(_, c)| c[d])
        .map_or(MmaPick::Cudnn, MmaPick::Ours)
}

/// One loaded kernel with its launch shape.
#[derive(Debug)]
pub(super) struct Kernel {
    pub(super) f: CudaFunction,
    pub(super) threads: u32,
    pub(super) smem: u32,
    /// Grid size: every block resident at once (the blocks loop over tiles).
    pub(super) blocks: u32,
    pub(super) th: usize,
    /// Tile width in pixels (16, or 64 for the wgmma kernels).
    pub(super) tw: usize,
}

/// (cin, cout) of a kernel list, and its variant slots.
pub(super) type Shape = (usize, usize);
pub(super) type Slots = Vec<Option<Kernel>>;

#[derive(Debug)]
pub(crate) struct MmaKernels {
    _module: Arc<CudaModule>,
    /// Per shape, one slot per table variant: None where the variant does not fit this GPU (shared memory).
    fwd: Vec<(Shape, Slots)>,
    /// The `ACT_FUSED` shapes' forward variants fused with an activation backward (same slots as `fwd`).
    fwd_act: Vec<(Shape, Slots)>,
    wgrad: Vec<(Shape, Slots)>,
    /// Transposed-conv forward (`CONVT`).
    convt: Vec<(Shape, Slots)>,
    /// First-layer forward (`CONV_IN3`), keyed (1, cout).
    conv_in3: Vec<(Shape, Slots)>,
    /// Its weight gradient (`CONV_IN3_WGRAD`), keyed (1, cout).
    conv_in3_wgrad: Vec<(Shape, Slots)>,
    flip: CudaFunction,
    /// The f32 3×TF32 kernels (device/x3.rs).
    pub(super) x3: Option<X3Kernels>,
}

pub(super) fn load(
    module: &Arc<CudaModule>,
    name: &str,
    threads: usize,
    smem: usize,
    (sms, max_smem): (u32, usize),
    (th, tw): (usize, usize),
) -> Result<Option<Kernel>> {
    // A variant needing more shared memory than this GPU gives a block (A100: 163 KiB, consumer cards: 99 KiB)
    // is left out; its slot stays, so variant numbers mean the same on every GPU.
    if smem > max_smem {
        return Ok(None);
    }
    let f = module
        .load_function(name)
        .map_err(drv("cuModuleGetFunction"))?;
    f.set_attribute(
        Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        smem as i32,
    )
    .map_err(drv("cuFuncSetAttribute"))?;
    let per_sm = f
        .occupancy_max_active_blocks_per_multiprocessor(threads as u32, smem, None)
        .map_err(drv("cuOccupancyMaxActiveBlocksPerMultiprocessor"))?;
    if per_sm == 0 {
        return Ok(None);
    }
    Ok(Some(Kernel {
        f,
        threads: threads as u32,
        smem: smem as u32,
        blocks: per_sm * sms,
        th,
        tw,
    }))
}

impl MmaKernels {
    /// Compiles (or loads from the kernel cache) and loads the kernels; `None` before compute capability 8.0
    /// (no bf16 MMA).
    pub(crate) fn open(gpu: &Gpu) -> Result<Option<MmaKernels>> {
        if gpu.info.compute_capability.0 < 8 {
            return Ok(None);
        }
        // wgmma needs the architecture-specific target sm_90a (Hopper only).
        let wgmma = gpu.info.compute_capability == (9, 0);
        let compiled = if wgmma {
            let c = Compiler {
                arch: "sm_90a".into(),
                ..gpu.compiler.clone()
            };
            c.compile("conv_mma.cu", &source(true), &["-DCRYODEN_SM90A"])?
        } else {
            gpu.compiler.compile("conv_mma.cu", &source(false), &[])?
        };
        let module = gpu
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin))
            .map_err(drv("cuModuleLoadData"))?;
        let sms = gpu.info.multiprocessors.max(1) as u32;
        let fit = (sms, gpu.info.max_shared_per_block_optin.max(0) as usize);
        let mut fwd = Vec::new();
        let mut fwd_act = Vec::new();
        for ((ci, co), vs) in FWD {
            let mut ks = Vec::new();
            let mut ka = Vec::new();
            for (v, &(th, wm, _, _, _, nbuf)) in vs.iter().enumerate() {
                let (threads, smem) = (fwd_threads(th, wm), fwd_smem(ci, co, th, wm, nbuf));
                ks.push(load(
                    &module,
                    &fwd_name(ci, co, v),
                    threads,
                    smem,
                    fit,
                    (th, TW),
                )?);
                if ACT_FUSED.contains(&(ci, co)) {
                    ka.push(load(
                        &module,
                        &act_name(ci, co, v),
                        threads,
                        smem,
                        fit,
                        (th, TW),
                    )?);
                }
            }
            if !ka.is_empty() {
                fwd_act.push(((ci, co), ka));
            }
            if wgmma {
                let wg = FWD_WG
                    .iter()
                    .find(|w| w.0 == (ci, co))
                    .map_or(&[][..], |w| w.1);
                for (v, &(th, nbuf)) in wg.iter().enumerate() {
                    let smem = wg_smem(ci, co, th, nbuf);
                    ks.push(load(
                        &module,
                        &wg_name(ci, co, v),
                        128,
                        smem,
                        fit,
                        (th, WG_TW),
                    )?);
                }
            }
            fwd.push(((ci, co), ks));
        }
        let mut wgrad = Vec::new();
        for ((ci, co), vs) in WGRAD {
            let mut ks = Vec::new();
            for (v, &(th, _, tpw, ciw, _)) in vs.iter().enumerate() {
                let (threads, smem) = (wgrad_threads(ci, co, tpw, ciw), wgrad_smem(ci, co, th));
                ks.push(load(
                    &module,
                    &wgrad_name(ci, co, v),
                    threads,
                    smem,
                    fit,
                    (th, TW),
                )?);
            }
            wgrad.push(((ci, co), ks));
        }
        let mut convt = Vec::new();
        for ((ci, co), vs) in CONVT {
            let mut ks = Vec::new();
            for (v, &wn) in vs.iter().enumerate() {
                let smem = convt_smem(ci, co, wn);
                ks.push(load(
                    &module,
                    &convt_name(ci, co, v),
                    4 * wn * 32,
                    smem,
                    fit,
                    (CONVT_TM, 1),
                )?);
            }
            convt.push(((ci, co), ks));
        }
        let mut conv_in3 = Vec::new();
        for (co, vs) in CONV_IN3 {
            let mut ks = Vec::new();
            for (v, &th) in vs.iter().enumerate() {
                ks.push(load(&module, &conv_in3_name(co, v), 128, 0, fit, (th, TW))?);
            }
            conv_in3.push(((1, co), ks));
        }
        let mut conv_in3_wgrad = Vec::new();
        for (co, vs) in CONV_IN3_WGRAD {
            let mut ks = Vec::new();
            for (v, &th) in vs.iter().enumerate() {
                ks.push(load(
                    &module,
                    &conv_in3_wgrad_name(co, v),
                    128,
                    0,
                    fit,
                    (th, TW),
                )?);
            }
            conv_in3_wgrad.push(((1, co), ks));
        }
        let flip = module
            .load_function("conv3_flip_weights_bf16")
            .map_err(drv("cuModuleGetFunction"))?;
        let x3 = Some(X3Kernels::open(&module, fit)?);
        Ok(Some(MmaKernels {
            _module: module,
            fwd,
            fwd_act,
            wgrad,
            convt,
            conv_in3,
            conv_in3_wgrad,
            flip,
            x3,
        }))
    }

    fn fwd(&self, ci: usize, co: usize) -> Option<&[Option<Kernel>]> {
        find(&self.fwd, (ci, co))
    }
    fn fwd_act(&self, ci: usize, co: usize) -> Option<&[Option<Kernel>]> {
        find(&self.fwd_act, (ci, co))
    }
    fn wgrad(&self, ci: usize, co: usize) -> Option<&[Option<Kernel>]> {
        find(&self.wgrad, (ci, co))
    }
}

/// The variant slots of `key` in one of `MmaKernels`' lists.
fn find(list: &[(Shape, Slots)], key: Shape) -> Option<&[Option<Kernel>]> {
    list.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, k)| k.as_slice())
}

impl Kernel {
    /// Grid size of a persistent launch over `tiles` tiles: every block resident at once (at most `cap`), no more
    /// blocks than tiles.
    /// Launch shape of `blocks` blocks of this kernel.
    pub(super) fn config(&self, blocks: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (self.threads, 1, 1),
            shared_mem_bytes: self.smem,
        }
    }

    pub(super) fn grid(&self, cap: Option<u32>, tiles: usize) -> usize {
        (self.blocks.min(cap.unwrap_or(u32::MAX)) as usize)
            .min(tiles)
            .max(1)
    }
}

/// The kernels copy the weights in 16-byte pieces and read the bias as floats.
fn check_weights(op: &str, w: u64, bias: Option<u64>) -> Result<()> {
    if !w.is_multiple_of(16) || bias.is_some_and(|b| !b.is_multiple_of(4)) {
        return Err(CudaError::Shape(format!(
            "{op}: the weights must be 16-byte aligned and the bias 4-byte aligned (weights at {w:#x}, bias {bias:?})"
        )));
    }
    Ok(())
}

/// Which variant slots hold a kernel on this GPU.
fn avail(ks: Option<&[Option<Kernel>]>) -> Vec<bool> {
    ks.map_or(vec![], |ks| ks.iter().map(Option::is_some).collect())
}

pub(super) fn tiles(n: usize, h: usize, w: usize, th: usize, tw: usize) -> usize {
    n * h.div_ceil(th) * w.div_ceil(tw)
}

/// What tuning picked for one call shape: one of our variants, or cuDNN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmaPick {
    Ours(usize),
    Cudnn,
}

/// The tuning key: geometry, direction and channel strides (a strided view cannot go to cuDNN directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MmaKey {
    geom: ConvGeom,
    dir: Direction,
    cs: [usize; 2],
    /// f32 views (the 3×TF32 kernels) rather than bf16.
    f32: bool,
}

/// The precision whose cuDNN call our kernels for `dt` are timed against: bf16, or f32 with TF32 off.
fn own_precision(dt: DType) -> Precision {
    if dt == DType::F32 {
        Precision::F32
    } else {
        Precision::Bf16
    }
}

/// One tuning decision, for bench output and docs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MmaChoice {
    pub geom: ConvGeom,
    pub direction: Direction,
    /// Milliseconds of each of our variants, in table order.
    pub ours_ms: Vec<f32>,
    /// cuDNN's time on the same tensors (plain call, packed tensors only; None when the views are strided).
    pub cudnn_ms: Option<f32>,
    /// Our variant kept, or None when cuDNN was faster.
    pub picked: Option<usize>,
}

impl Gpu {
    /// Whether cryoden's own kernels can run this 3×3 conv (all three directions), stride 1, padding 1:
    /// - bf16 views: 32 or 64 channels in and out, channel strides of whole 8-channel groups;
    /// - f32 views: the 3×TF32 kernels (x3.rs), cin in 32, 64, 128 and cout in 32, 64, 128 (backward-data runs
    ///   the forward of cout → cin), channel strides of whole 4-float groups. They keep f32 accuracy, so they are
    ///   for f32 mode; tf32 mode's callers should leave its convs to cuDNN's faster TF32 kernels.
    ///
    /// `x` and `y` (or dx and dy) 16-byte aligned. Whether they do run depends on [`MmaMode`]
    /// (`mma_conv_forward` etc. return false when cuDNN is to run instead).
    pub fn mma_conv_ok(&self, g: &ConvGeom, x: &View, y: &View) -> bool {
        let Some(k) = self.mma.as_ref() else {
            return false;
        };
        let dt = x.dtype;
        let covered = match dt {
            DType::Bf16 => {
                avail(k.fwd(g.cin, g.cout)).contains(&true)
                    && avail(k.fwd(g.cout, g.cin)).contains(&true)
                    && avail(k.wgrad(g.cin, g.cout)).contains(&true)
            }
            DType::F32 => k.x3.as_ref().is_some_and(|k3| x3::covers(k3, g)),
        };
        let group = if dt == DType::F32 { 4 } else { 8 };
        self.mma_conv != MmaMode::Off
            && g.k == 3
            && g.pad == 1
            && g.stride == 1
            && covered
            && x.shape == g.in_shape()
            && y.shape == g.out_shape()
            && [x, y]
                .iter()
                .all(|v| v.dtype == dt && v.ptr.is_multiple_of(16) && v.cs.is_multiple_of(group))
            && x.shape.pixels() < i32::MAX as usize
    }

    /// Which forward variant slots (cin → cout, `dt`'s kernels) hold a kernel on this GPU.
    fn fwd_avail(&self, cin: usize, cout: usize, dt: DType) -> Vec<bool> {
        let Some(k) = self.mma.as_ref() else {
            return vec![];
        };
        match dt {
            DType::F32 => avail(k.x3.as_ref().and_then(|k3| k3.fwd(cin))),
            _ => avail(k.fwd(cin, cout)),
        }
    }

    /// Which weight-gradient variant slots can run `g` with `dt`'s kernels on this GPU.
    fn wgrad_avail(&self, g: &ConvGeom, dt: DType) -> Vec<bool> {
        let Some(k) = self.mma.as_ref() else {
            return vec![];
        };
        match dt {
            DType::F32 => k.x3.as_ref().map_or(vec![], |k3| k3.wgrad_avail(g.cin)),
            _ => avail(k.wgrad(g.cin, g.cout)),
        }
    }

    fn mma_check(&self, op: &str, g: &ConvGeom, x: &View, y: &View) -> Result<()> {
        if !self.mma_conv_ok(g, x, y) {
            return Err(CudaError::Shape(format!(
                "{op}: {g} on {} (cs {}) -> {} (cs {}) is not supported by the MMA kernels",
                x.shape, x.cs, y.shape, y.cs
            )));
        }
        Ok(())
    }

    /// How many variants of our kernels each direction of `g` has for `dt` (forward, backward-data, weight
    /// gradient); zeros when none apply.
    pub fn mma_variants(&self, g: &ConvGeom, dt: DType) -> [usize; 3] {
        let Some(k) = self.mma.as_ref() else {
            return [0; 3];
        };
        if dt == DType::F32 {
            return [
                self.fwd_avail(g.cin, g.cout, dt).len(),
                self.fwd_avail(g.cout, g.cin, dt).len(),
                self.wgrad_avail(g, dt).len(),
            ];
        }
        [
            k.fwd(g.cin, g.cout).map_or(0, <[Option<Kernel>]>::len),
            k.fwd(g.cout, g.cin).map_or(0, <[Option<Kernel>]>::len),
            k.wgrad(g.cin, g.cout).map_or(0, <[Option<Kernel>]>::len),
        ]
    }

    /// Every tuning decision so far (for `cudabench` and docs).
    pub fn mma_choices(&self) -> Vec<MmaChoice> {
        let mut v: Vec<MmaChoice> = self.mma_tuned.values().cloned().collect();
        v.sort_by_key(|c| (c.geom.h, c.geom.cin, c.geom.cout, c.direction as u8));
        v
    }

    /// The pick for `key`: the forced variant (or the next one that exists on this GPU), `auto`'s fixed choice,
    /// an earlier decision, or (`tune` and `force`, outside graph capture, when `tune` can run the candidates on
    /// the call's own tensors) a new one. Otherwise `force` runs its first available variant and `tune` cuDNN.
    /// `avail`: which of our variant slots exist here; `tune` times candidate `Some(v)` (ours) or `None` (cuDNN),
    /// returning None for a candidate that cannot run here.
    fn mma_pick(
        &mut self,
        key: MmaKey,
        avail: &[bool],
        can_tune: bool,
        mut tune: impl FnMut(&mut Gpu, Option<usize>) -> Result<Option<f32>>,
    ) -> Result<MmaPick> {
        let first = avail.iter().position(|&a| a).unwrap_or(0);
        if let Some(v) = self.mma_variant {
            let v = v.min(avail.len().saturating_sub(1));
            return Ok(MmaPick::Ours(if avail[v] { v } else { first }));
        }
        match self.mma_conv {
            MmaMode::Off => return Ok(MmaPick::Cudnn),
            MmaMode::Auto => {
                // A variant this GPU lacks (a Hopper-only one, or one too large for its shared memory): cuDNN.
                return Ok(match auto_pick(&key.geom, key.dir, key.f32) {
                    MmaPick::Ours(v) if avail.get(v) == Some(&true) => MmaPick::Ours(v),
                    _ => MmaPick::Cudnn,
                });
            }
            MmaMode::Tune | MmaMode::Force => {}
        }
        if let Some(c) = self.mma_tuned.get(&key) {
            return Ok(c.picked.map_or(MmaPick::Cudnn, MmaPick::Ours));
        }
        let only_one = avail.iter().filter(|&&a| a).count() == 1;
        if !can_tune || self.capturing || (self.mma_conv == MmaMode::Force && only_one) {
            return Ok(if self.mma_conv == MmaMode::Force {
                MmaPick::Ours(first)
            } else {
                MmaPick::Cudnn
            });
        }
        let mut ours_ms = Vec::new();
        for (v, &a) in avail.iter().enumerate() {
            ours_ms.push(if a {
                tune(self, Some(v))?.unwrap_or(f32::INFINITY)
            } else {
                f32::INFINITY
            });
        }
        let cudnn_ms = if self.mma_conv == MmaMode::Tune {
            tune(self, None)?
        } else {
            None
        };
        let (best, best_ms) =
            ours_ms
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f32::INFINITY),
                    |a, (i, t)| if t < a.1 { (i, t) } else { a },
                );
        let picked = match cudnn_ms {
            Some(c) if c <= best_ms => None,
            _ => Some(best),
        };
        self.mma_tuned.insert(
            key,
            MmaChoice {
                geom: key.geom,
                direction: key.dir,
                ours_ms,
                cudnn_ms,
                picked,
            },
        );
        Ok(picked.map_or(MmaPick::Cudnn, MmaPick::Ours))
    }

    /// y = act(conv3x3(x, w) + bias) (+ y when `accumulate`), `mma_conv_ok` must hold. w: KRSC, the views' dtype;
    /// bias: cout floats; slope as in elementwise.cu (0 ReLU, 1 identity). Returns false, having done nothing, when
    /// tuning found cuDNN faster for this call shape.
    #[allow(clippy::too_many_arguments)]
    pub fn mma_conv_forward(
        &mut self,
        g: &ConvGeom,
        x: View,
        w: u64,
        bias: Option<u64>,
        y: View,
        slope: f32,
        accumulate: bool,
    ) -> Result<bool> {
        self.mma_check("mma_conv_forward", g, &x, &y)?;
        check_weights("mma_conv_forward", w, bias)?;
        let dt = x.dtype;
        let av = self.fwd_avail(g.cin, g.cout, dt);
        let key = MmaKey {
            geom: *g,
            dir: Direction::Forward,
            cs: [x.cs, y.cs],
            f32: dt == DType::F32,
        };
        // Tuning writes y, so it runs only when the call overwrites y anyway.
        let packed = x.is_packed() && y.is_packed();
        let pick = self.mma_pick(key, &av, !accumulate, |gpu, cand| match cand {
            Some(v) => gpu
                .time_ms(f32::INFINITY, |gpu| {
                    gpu.launch_fwd(g, v, x, w, bias, y, slope, false)
                })
                .map(Some),
            None if packed => gpu
                .time_ms(f32::INFINITY, |gpu| {
                    gpu.conv_forward(own_precision(dt), g, x, w, y, 0.0)
                })
                .map(Some),
            None => Ok(None),
        })?;
        match pick {
            MmaPick::Ours(v) => self.launch_fwd(g, v, x, w, bias, y, slope, accumulate)?,
            MmaPick::Cudnn => return Ok(false),
        }
        Ok(true)
    }

    /// dx (+)= backward-data of the 3×3 conv `g` (`mma_conv_ok(g, dx, dy)` must hold): the forward conv cout → cin
    /// of the flipped weights, which are written to a scratch buffer first. With `act` (dx overwritten), then the
    /// backward of the bias + activation that produced the conv's input: fused into the kernel's epilogue where the
    /// shape has `ACT_FUSED` kernels, else as a second pass. Returns false, having done nothing, when tuning found
    /// cuDNN faster.
    pub fn mma_conv_backward_data(
        &mut self,
        g: &ConvGeom,
        dy: View,
        w: u64,
        dx: View,
        accumulate: bool,
        act: Option<ActGrad>,
    ) -> Result<bool> {
        self.mma_check("mma_conv_backward_data", g, &dx, &dy)?;
        if act.is_some() && accumulate {
            return Err(CudaError::Shape(
                "mma_conv_backward_data: an activation backward needs dx overwritten, not accumulated".into(),
            ));
        }
        check_weights("mma_conv_backward_data", w, None)?;
        let back = ConvGeom {
            cin: g.cout,
            cout: g.cin,
            ..*g
        };
        let dt = dx.dtype;
        let av = self.fwd_avail(g.cout, g.cin, dt);
        let key = MmaKey {
            geom: *g,
            dir: Direction::BackwardData,
            cs: [dx.cs, dy.cs],
            f32: dt == DType::F32,
        };
        let packed = dx.is_packed() && dy.is_packed();
        let pick = self.mma_pick(key, &av, !accumulate, |gpu, cand| match cand {
            Some(v) => {
                let wt = gpu.mma_flip(g, w, dt)?;
                gpu.time_ms(f32::INFINITY, |gpu| {
                    gpu.launch_fwd(&back, v, dy, wt, None, dx, 1.0, false)
                })
                .map(Some)
            }
            None if packed => gpu
                .time_ms(f32::INFINITY, |gpu| {
                    gpu.conv_backward_data(own_precision(dt), g, dy, w, dx, 0.0)
                })
                .map(Some),
            None => Ok(None),
        })?;
        let MmaPick::Ours(mut v) = pick else {
            return Ok(false);
        };
        if dt == DType::Bf16
            && act.is_some()
            && self.mma_conv == MmaMode::Auto
            && self.mma_variant.is_none()
        {
            if let Some((_, va)) = AUTO_ACT.iter().find(|(k, _)| *k == (g.cin, g.cout)) {
                v = *va;
            }
        }
        let wt = self.mma_flip(g, w, dt)?;
        let fused = match dt {
            DType::Bf16 => self.mma.as_ref().unwrap().fwd_act(g.cout, g.cin),
            _ => None,
        };
        match act {
            Some(a) if fused.is_some_and(|ks| ks.get(v).is_some_and(Option::is_some)) => {
                self.mma_launch_fwd_act(&back, v, dy, wt, dx, a)?;
            }
            Some(a) => {
                self.launch_fwd(&back, v, dy, wt, None, dx, 1.0, false)?;
                self.act_backward(
                    dx,
                    Some(a.y),
                    dx,
                    a.slope,
                    a.db.map(|d| (d, DType::F32)),
                    true,
                )?;
            }
            None => self.launch_fwd(&back, v, dy, wt, None, dx, 1.0, accumulate)?,
        }
        Ok(true)
    }

    /// dw += weight gradient of the 3×3 conv `g` (`mma_conv_ok` must hold); dw: KRSC f32. Per-block partial sums
    /// added up in a fixed order, so the result is bit-reproducible. Returns false, having done nothing, when
    /// tuning found cuDNN faster.
    pub fn mma_conv_backward_filter(
        &mut self,
        g: &ConvGeom,
        x: View,
        dy: View,
        dw: u64,
    ) -> Result<bool> {
        self.mma_check("mma_conv_backward_filter", g, &x, &dy)?;
        let dt = x.dtype;
        let av = self.wgrad_avail(g, dt);
        let key = MmaKey {
            geom: *g,
            dir: Direction::BackwardFilter,
            cs: [x.cs, dy.cs],
            f32: dt == DType::F32,
        };
        let packed = x.is_packed() && dy.is_packed();
        // Candidates write partial sums (ours) or a temporary (cuDNN), never dw.
        let pick = self.mma_pick(key, &av, true, |gpu, cand| match cand {
            Some(v) => gpu
                .time_ms(f32::INFINITY, |gpu| {
                    gpu.launch_wgrad(g, v, x, dy, None).map(|_| ())
                })
                .map(Some),
            None if packed => {
                let tmp = gpu.alloc(g.weight_len(), dt)?;
                gpu.time_ms(f32::INFINITY, |gpu| {
                    gpu.conv_backward_filter(own_precision(dt), g, x, dy, tmp.ptr(), 0.0)
                })
                .map(Some)
            }
            None => Ok(None),
        })?;
        match pick {
            MmaPick::Ours(v) => {
                self.launch_wgrad(g, v, x, dy, Some(dw))?;
                Ok(true)
            }
            MmaPick::Cudnn => Ok(false),
        }
    }

    /// The flipped weights of the backward-data pass (conv3_flip_weights) in a scratch buffer; returns its pointer.
    fn mma_flip(&mut self, g: &ConvGeom, w: u64, dt: DType) -> Result<u64> {
        let len = g.weight_len();
        // Sized in f32 elements, so one buffer serves both dtypes.
        if self.mma_wt.as_ref().is_none_or(|b| b.len < len) {
            self.not_capturing("MMA weight scratch reallocation")?;
            self.realloc_epoch += 1;
            self.mma_wt = None;
            self.mma_wt = Some(self.alloc(len, DType::F32)?);
        }
        let wt = self.mma_wt.as_ref().unwrap().ptr;
        let k = self.mma.as_ref().unwrap();
        let flip = match (dt, k.x3.as_ref()) {
            (DType::F32, Some(k3)) => k3.flip(),
            _ => &k.flip,
        };
        let (ci, co) = (g.cin as i32, g.cout as i32);
        let cfg = LaunchConfig {
            grid_dim: (len.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(flip);
        b.arg(&w).arg(&wt).arg(&ci).arg(&co);
        // SAFETY: matches conv3_flip_weights_bf16 / _f32; w and wt hold cout * 9 * cin elements of dt.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv3_flip_weights)"))?;
        Ok(wt)
    }

    /// Forward variant `v` of the views' dtype's kernels (bf16: conv_mma.cu, f32: the 3×TF32 ones).
    #[allow(clippy::too_many_arguments)]
    fn launch_fwd(
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
        if x.dtype == DType::F32 {
            self.x3_launch_fwd(g, v, x, w, bias, y, slope, accumulate)
        } else {
            self.mma_launch_fwd(g, v, x, w, bias, y, slope, accumulate)
        }
    }

    /// Weight-gradient variant `v` of the views' dtype's kernels.
    fn launch_wgrad(
        &mut self,
        g: &ConvGeom,
        v: usize,
        x: View,
        dy: View,
        dw: Option<u64>,
    ) -> Result<()> {
        if x.dtype == DType::F32 {
            self.x3_launch_wgrad(g, v, x, dy, dw)
        } else {
            self.mma_launch_wgrad(g, v, x, dy, dw)
        }
    }

    /// Forward variant `v` of (g.cin, g.cout); views already checked.
    #[allow(clippy::too_many_arguments)]
    fn mma_launch_fwd(
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
        let ks = self.mma.as_ref().unwrap().fwd(g.cin, g.cout).unwrap();
        let k = ks.get(v).and_then(Option::as_ref).ok_or_else(|| {
            CudaError::Shape(format!(
                "internal: MMA forward variant {v} of {g} is not loaded"
            ))
        })?;
        let blocks = k.grid(self.mma_max_blocks, tiles(g.n, g.h, g.w, k.th, k.tw));
        let (xp, xcs, bp, yp, ycs) = (x.ptr, x.cs as i32, bias.unwrap_or(0), y.ptr, y.cs as i32);
        let (n, h, wd, acc) = (g.n as i32, g.h as i32, g.w as i32, accumulate as i32);
        let cfg = k.config(blocks);
        let mut b = self.stream.launch_builder(&k.f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&w)
            .arg(&bp)
            .arg(&yp)
            .arg(&ycs)
            .arg(&n)
            .arg(&h)
            .arg(&wd)
            .arg(&slope)
            .arg(&acc);
        // SAFETY: matches conv3_fwd_*; views checked by mma_check (shapes, alignment, bf16); w holds the KRSC
        // weights.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv3_fwd)"))?;
        Ok(())
    }

    /// Fused forward variant `v` of (g.cin, g.cout) (`CONV3_FWD_ACT`, no bias, identity): y = conv, then the
    /// activation backward `act` over y with its bias-gradient partial sums, one per block, added into `act.db`.
    fn mma_launch_fwd_act(
        &mut self,
        g: &ConvGeom,
        v: usize,
        x: View,
        w: u64,
        y: View,
        act: ActGrad,
    ) -> Result<()> {
        if act.y.shape != y.shape
            || act.y.dtype != DType::Bf16
            || !act.y.ptr.is_multiple_of(16)
            || !act.y.cs.is_multiple_of(8)
        {
            return Err(CudaError::Shape(format!(
                "mma_conv_backward_data: the activation output {} (cs {}) does not match dx {}",
                act.y.shape, act.y.cs, y.shape
            )));
        }
        let (f, threads, smem, blocks) = {
            let ks = self.mma.as_ref().unwrap().fwd_act(g.cin, g.cout);
            let k = ks
                .and_then(|ks| ks.get(v))
                .and_then(Option::as_ref)
                .ok_or_else(|| {
                    CudaError::Shape(format!(
                        "internal: fused MMA variant {v} of {g} is not loaded"
                    ))
                })?;
            let blocks = k.grid(self.mma_max_blocks, tiles(g.n, g.h, g.w, k.th, k.tw));
            (k.f.clone(), k.threads, k.smem, blocks)
        };
        let partial = self.scratch(blocks * g.cout)?;
        let (xp, xcs, bp, yp, ycs) = (x.ptr, x.cs as i32, 0u64, y.ptr, y.cs as i32);
        let (n, h, wd, slope) = (g.n as i32, g.h as i32, g.w as i32, 1.0f32);
        let (ap, acs) = (act.y.ptr, act.y.cs as i32);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&w)
            .arg(&bp)
            .arg(&yp)
            .arg(&ycs)
            .arg(&n)
            .arg(&h)
            .arg(&wd)
            .arg(&slope)
            .arg(&ap)
            .arg(&acs)
            .arg(&act.slope)
            .arg(&partial);
        // SAFETY: matches CONV3_FWD_ACT; views checked by mma_check and above; partial holds blocks * cout floats.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv3_fwd_act)"))?;
        match act.db {
            Some(db) => self.sum_parts(partial, blocks, g.cout, db, DType::F32, true),
            None => Ok(()),
        }
    }

    /// The variant of `list`'s `key` that `mma_variant` names (else the first), when `ok` and it exists here.
    fn chosen(
        &self,
        list: impl Fn(&MmaKernels) -> &[(Shape, Slots)],
        key: Shape,
        ok: bool,
    ) -> Option<&Kernel> {
        let ks = find(list(self.mma.as_ref()?), key)?;
        let v = self
            .mma_variant
            .unwrap_or(0)
            .min(ks.len().saturating_sub(1));
        ks.get(v)?
            .as_ref()
            .filter(|_| ok && self.mma_conv != MmaMode::Off)
    }

    /// How many variants `list` has for `key` here (0: none).
    fn count(&self, list: impl Fn(&MmaKernels) -> &[(Shape, Slots)], key: Shape) -> usize {
        self.mma
            .as_ref()
            .and_then(|k| find(list(k), key))
            .map_or(0, <[Option<Kernel>]>::len)
    }

    /// How many first-layer forward variants cout has here (0: none; elementwise.cu's direct kernel runs).
    pub fn mma_conv_in3_variants(&self, cout: usize) -> usize {
        self.count(|k| &k.conv_in3, (1, cout))
    }

    /// y = act(conv3x3(x, w) + bias) for one input channel on the tensor cores (`CONV_IN3`); w: `[cout, 3, 3]`
    /// bf16. Returns false, having done nothing, where it does not apply (not bf16, a cout without a kernel,
    /// misaligned y, `CRYODEN_MMA_CONV=off`): the caller runs the direct kernel. `mma_variant` picks the variant.
    pub fn mma_conv_in3_forward(
        &mut self,
        x: View,
        w: u64,
        bias: Option<u64>,
        y: View,
        slope: f32,
    ) -> Result<bool> {
        let ys = y.shape;
        let ok = x.dtype == DType::Bf16
            && y.dtype == DType::Bf16
            && x.shape == Nhwc { c: 1, ..ys }
            && y.ptr.is_multiple_of(16)
            && y.cs.is_multiple_of(8)
            && w.is_multiple_of(2)
            && bias.is_none_or(|b| b.is_multiple_of(4))
            && ys.pixels() < i32::MAX as usize;
        let Some(k) = self.chosen(|k| &k.conv_in3, (1, ys.c), ok) else {
            return Ok(false);
        };
        let blocks = tiles(ys.n, ys.h, ys.w, k.th, k.tw);
        let (xp, xcs, bp, yp, ycs) = (x.ptr, x.cs as i32, bias.unwrap_or(0), y.ptr, y.cs as i32);
        let (n, h, wd) = (ys.n as i32, ys.h as i32, ys.w as i32);
        let cfg = k.config(blocks); // loaded with no dynamic shared memory
        let mut b = self.stream.launch_builder(&k.f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&w)
            .arg(&bp)
            .arg(&yp)
            .arg(&ycs)
            .arg(&n)
            .arg(&h)
            .arg(&wd)
            .arg(&slope);
        // SAFETY: matches CONV_IN3_MMA; shapes and alignment checked above; w holds cout * 9 bf16, bias cout f32.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv_in3_mma)"))?;
        Ok(true)
    }

    /// How many first-layer weight-gradient variants cout has here (0: none; elementwise.cu's kernel runs).
    pub fn mma_conv_in3_wgrad_variants(&self, cout: usize) -> usize {
        self.count(|k| &k.conv_in3_wgrad, (1, cout))
    }

    /// dw += the first layer's weight gradient on the tensor cores (`CONV_IN3_WGRAD`); dw: `[cout, 3, 3]` f32, the
    /// per-block partial sums added in a fixed order. Returns false, having done nothing, where it does not apply
    /// (the caller runs elementwise.cu's kernel). `mma_variant` picks the variant.
    pub fn mma_conv_in3_backward_filter(&mut self, x: View, dy: View, dw: u64) -> Result<bool> {
        let ds = dy.shape;
        let ok = x.dtype == DType::Bf16
            && dy.dtype == DType::Bf16
            && x.shape == Nhwc { c: 1, ..ds }
            && dy.ptr.is_multiple_of(16)
            && dy.cs.is_multiple_of(8)
            && ds.pixels() < i32::MAX as usize;
        let Some(k) = self.chosen(|k| &k.conv_in3_wgrad, (1, ds.c), ok) else {
            return Ok(false);
        };
        let (f, threads) = (k.f.clone(), k.threads);
        let parts = k.grid(self.mma_max_blocks, tiles(ds.n, ds.h, ds.w, k.th, k.tw));
        let len = 9 * ds.c;
        let partial = self.scratch(parts * len)?;
        let (xp, xcs, dyp, dycs) = (x.ptr, x.cs as i32, dy.ptr, dy.cs as i32);
        let (n, h, wd) = (ds.n as i32, ds.h as i32, ds.w as i32);
        let cfg = LaunchConfig {
            grid_dim: (parts as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&dyp)
            .arg(&dycs)
            .arg(&partial)
            .arg(&n)
            .arg(&h)
            .arg(&wd);
        // SAFETY: matches CONV_IN3_MMA_WGRAD; shapes and alignment checked above; partial holds parts * 9 * cout.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv_in3_mma_wgrad)"))?;
        self.sum_parts_into(partial, parts, len, dw)?;
        Ok(true)
    }

    /// How many transposed-conv forward variants (cin, cout) has here (0: none; the GEMM + shuffle path runs).
    pub fn mma_convt_variants(&self, cin: usize, cout: usize) -> usize {
        self.count(|k| &k.convt, (cin, cout))
    }

    /// y = act(conv_transpose2x2(x, w) + bias) written into y's channel window by our kernel (`CONVT`); w:
    /// `[cin, 2, 2, cout]` bf16. Returns false, having done nothing, where it does not apply (not bf16, a shape
    /// without a kernel, misaligned views, `CRYODEN_MMA_CONV=off`): the caller runs the GEMM + shuffle path.
    /// `mma_variant` picks the variant (benchmarks); else the first in the table.
    pub fn mma_convt_forward(
        &mut self,
        x: View,
        w: u64,
        bias: Option<u64>,
        y: View,
        slope: f32,
    ) -> Result<bool> {
        let (xs, ys) = (x.shape, y.shape);
        let ok = x.dtype == DType::Bf16
            && y.dtype == DType::Bf16
            && ys.n == xs.n
            && ys.h == 2 * xs.h
            && ys.w == 2 * xs.w
            && x.ptr.is_multiple_of(16)
            && x.cs.is_multiple_of(8)
            && y.ptr.is_multiple_of(16)
            && y.cs.is_multiple_of(8)
            && w.is_multiple_of(16)
            && bias.is_none_or(|b| b.is_multiple_of(4))
            && ys.pixels() < i32::MAX as usize;
        let Some(k) = self.chosen(|k| &k.convt, (xs.c, ys.c), ok) else {
            return Ok(false);
        };
        let blocks = k.grid(self.mma_max_blocks, xs.pixels().div_ceil(CONVT_TM));
        let (xp, xcs, bp, yp, ycs) = (x.ptr, x.cs as i32, bias.unwrap_or(0), y.ptr, y.cs as i32);
        let (n, h, wd) = (xs.n as i32, xs.h as i32, xs.w as i32);
        let cfg = k.config(blocks);
        let mut b = self.stream.launch_builder(&k.f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&w)
            .arg(&bp)
            .arg(&yp)
            .arg(&ycs)
            .arg(&n)
            .arg(&h)
            .arg(&wd)
            .arg(&slope);
        // SAFETY: matches CONVT2_FWD; shapes and alignment checked above; w holds cin * 4 * cout bf16.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(convt2_fwd)"))?;
        Ok(true)
    }

    /// Weight-gradient variant `v`: partial sums into the scratch buffer, then (when `dw` is given) their
    /// fixed-order sum added into dw.
    fn mma_launch_wgrad(
        &mut self,
        g: &ConvGeom,
        v: usize,
        x: View,
        dy: View,
        dw: Option<u64>,
    ) -> Result<()> {
        let (f, threads, smem, parts) = {
            let ks = self.mma.as_ref().unwrap().wgrad(g.cin, g.cout).unwrap();
            let k = ks.get(v).and_then(Option::as_ref).ok_or_else(|| {
                CudaError::Shape(format!(
                    "internal: MMA weight-gradient variant {v} of {g} is not loaded"
                ))
            })?;
            let parts = k.grid(self.mma_max_blocks, tiles(g.n, g.h, g.w, k.th, k.tw));
            (k.f.clone(), k.threads, k.smem, parts)
        };
        let len = g.weight_len();
        let partial = self.scratch(parts * len)?;
        let (xp, xcs, dyp, dycs) = (x.ptr, x.cs as i32, dy.ptr, dy.cs as i32);
        let (n, h, wd) = (g.n as i32, g.h as i32, g.w as i32);
        let cfg = LaunchConfig {
            grid_dim: (parts as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&dyp)
            .arg(&dycs)
            .arg(&partial)
            .arg(&n)
            .arg(&h)
            .arg(&wd);
        // SAFETY: matches conv3_wgrad_*; views checked by mma_check; partial holds parts * len floats.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv3_wgrad)"))?;
        match dw {
            Some(dw) => self.sum_parts_into(partial, parts, len, dw),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tile sizes must fit the kernels' assumptions and the H100/H200's 227 KiB of shared memory per block.
    #[test]
    fn configurations_fit() {
        for ((ci, co), vs) in FWD {
            assert!(ci % 16 == 0 && co % 16 == 0 && !vs.is_empty());
            for &(th, wm, minb, tu, pipe, nbuf) in vs {
                assert!(pipe <= 2 && (nbuf == 1 || nbuf == 2));
                assert!(th % wm == 0 && minb >= 1, "fwd {ci}->{co} {th}/{wm}");
                assert!(tu == 1 || tu == 3 || tu == 9, "fwd {ci}->{co}: unroll {tu}");
                assert!(
                    fwd_smem(ci, co, th, wm, nbuf) <= 227 << 10,
                    "fwd {ci}->{co} {th}"
                );
                // A register cap for more resident blocks than the shared memory allows buys nothing.
                assert!(
                    minb * (fwd_smem(ci, co, th, wm, nbuf) + 1024) <= 228 << 10,
                    "fwd {ci}->{co} {th}/{wm}: {minb} blocks do not fit"
                );
                assert!(fwd_threads(th, wm) <= 1024);
            }
        }
        for ((ci, co), vs) in WGRAD {
            assert!(ci % 16 == 0 && co % 32 == 0 && !vs.is_empty());
            for &(th, _, tpw, ciw, col) in vs {
                assert!(wgrad_smem(ci, co, th) <= 227 << 10, "wgrad {ci}->{co} {th}");
                assert!(col == 0 || tpw == 3, "column taps come in threes");
                assert!((tpw == 1 || tpw == 3) && ci % ciw == 0 && ciw % 16 == 0);
                assert!(wgrad_threads(ci, co, tpw, ciw) <= 1024);
            }
        }
        for (co, vs) in CONV_IN3.iter().chain(CONV_IN3_WGRAD.iter()) {
            assert!(co % 16 == 0 && !vs.is_empty());
            assert!(
                vs.iter().all(|th| th % 4 == 0),
                "conv_in3 {co}: 4 warps split the rows"
            );
        }
        for ((ci, co), vs) in FWD_WG {
            assert!(FWD.iter().any(|f| f.0 == (ci, co)) && (co == 32 || co == 64));
            for &(th, nbuf) in vs {
                assert!(
                    wg_smem(ci, co, th, nbuf) <= 227 << 10,
                    "wgmma {ci}->{co} {th}"
                );
            }
        }
        // Backward-data of every forward shape runs the swapped one.
        for ((ci, co), _) in FWD {
            assert!(FWD.iter().any(|c| c.0 == (co, ci)));
        }
    }

    #[test]
    fn source_holds_every_instantiation() {
        let s = source(true);
        assert!(s.contains("#define CONV3_FWD(") && s.contains("#define CONV3_WGRAD("));
        assert!(s.contains("CONV3_FWD(conv3_fwd_64_32_v1, 64, 32, 8, 1, 1, 1, 0, 2)"));
        assert!(s.contains("CONV3_WGRAD(conv3_wgrad_32_32_v4, 32, 32, 8, 3, 1, 32, 0)"));
        let n = FWD.iter().map(|v| v.1.len()).sum::<usize>()
            + WGRAD.iter().map(|v| v.1.len()).sum::<usize>();
        let wg = FWD_WG.iter().map(|v| v.1.len()).sum::<usize>();
        let act = FWD
            .iter()
            .filter(|v| ACT_FUSED.contains(&v.0))
            .map(|v| v.1.len())
            .sum::<usize>();
        assert!(
            act > 0
                && s.contains("CONV3_FWD_ACT(conv3_fwd_32_32_v4_act, 32, 32, 32, 4, 2, 1, 2, 1)")
        );
        let x3 = s.matches("\nCONV3_FWD_X3(").count() + s.matches("\nCONV3_WGRAD_X3(").count();
        assert_eq!(s.matches("\nCONV3_").count() - x3, n + wg + act);
        let convt = CONVT.iter().map(|v| v.1.len()).sum::<usize>();
        assert_eq!(s.matches("\nCONVT2_FWD(").count(), convt);
        assert!(s.contains("CONVT2_FWD(convt2_fwd_64_32_v0, 64, 32, 2)"));
        let in3 = CONV_IN3.iter().map(|v| v.1.len()).sum::<usize>();
        assert_eq!(s.matches("\nCONV_IN3_MMA(").count(), in3);
        let in3w = CONV_IN3_WGRAD.iter().map(|v| v.1.len()).sum::<usize>();
        assert_eq!(s.matches("\nCONV_IN3_MMA_WGRAD(").count(), in3w);
        assert_eq!(source(false).matches("\nCONV3_FWD_WG(").count(), 0);
    }

    #[test]
    fn mode_parses() {
        assert_eq!(parse_mode(None), MmaMode::Auto);
        assert_eq!(parse_mode(Some("auto")), MmaMode::Auto);
        assert_eq!(parse_mode(Some("off")), MmaMode::Off);
        assert_eq!(parse_mode(Some("0")), MmaMode::Off);
        assert_eq!(parse_mode(Some("force")), MmaMode::Force);
        assert_eq!(parse_mode(Some("tune")), MmaMode::Tune);
    }

    /// f32's fixed choices name 3×TF32 variants that exist and can run the shape.
    #[test]
    fn auto_x3_choices_exist() {
        for ((ci, co), [f, d, w]) in AUTO_X3 {
            assert!(
                f.is_none_or(|v| v < x3::fwd_variants(ci)),
                "{ci}->{co} forward {f:?}"
            );
            assert!(
                d.is_none_or(|v| v < x3::fwd_variants(co)),
                "{ci}->{co} backward-data {d:?}"
            );
            assert!(
                w.is_none_or(|v| x3::wgrad_runs(v, ci)),
                "{ci}->{co} weight gradient {w:?}"
            );
        }
        let g = ConvGeom {
            n: 1,
            h: 8,
            w: 8,
            cin: 64,
            cout: 32,
            k: 3,
            pad: 1,
            stride: 1,
        };
        assert_eq!(
            auto_pick(&g, Direction::BackwardData, true),
            MmaPick::Ours(3)
        );
        assert_eq!(
            auto_pick(&g, Direction::BackwardData, false),
            MmaPick::Cudnn
        );
    }

    /// `auto`'s fixed choices name variants that exist, for shapes that have kernels; other shapes go to cuDNN.
    #[test]
    fn auto_choices_exist() {
        let count = |ci: usize, co: usize, d: usize| -> usize {
            match d {
                0 => FWD.iter().find(|f| f.0 == (ci, co)).unwrap().1.len(),
                1 => FWD.iter().find(|f| f.0 == (co, ci)).unwrap().1.len(),
                _ => WGRAD.iter().find(|f| f.0 == (ci, co)).unwrap().1.len(),
            }
        };
        for ((ci, co), picks) in AUTO {
            for (d, p) in picks.iter().enumerate() {
                if let Some(v) = p {
                    assert!(
                        *v < count(ci, co, d),
                        "{ci}->{co} direction {d}: variant {v}"
                    );
                }
            }
        }
        let g = ConvGeom {
            n: 1,
            h: 8,
            w: 8,
            cin: 128,
            cout: 64,
            k: 3,
            pad: 1,
            stride: 1,
        };
        assert_eq!(auto_pick(&g, Direction::Forward, false), MmaPick::Cudnn);
        let g = ConvGeom {
            cin: 32,
            cout: 32,
            ..g
        };
        assert_eq!(
            auto_pick(&g, Direction::BackwardFilter, false),
            MmaPick::Ours(6)
        );
        for ((ci, co), v) in AUTO_ACT {
            assert!(
                ACT_FUSED.contains(&(co, ci)),
                "{ci}->{co}: no fused kernels"
            );
            assert!(v < count(ci, co, 1), "{ci}->{co}: fused variant {v}");
        }
    }
}

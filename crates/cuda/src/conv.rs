//! cuDNN convolutions in NHWC (weights KRSC: `[out, kh, kw, in]`), forward / backward-data / backward-filter, with
//! the algorithm for each direction found once per shape and precision (`cudnnFind*`, which times every candidate)
//! and cached for the life of the `Gpu`.
//!
//! A 2x2 stride-2 transposed convolution is the backward-data pass of the matching strided convolution, so it runs
//! on the same cuDNN kernels (see `conv_transpose_*`).

use crate::device::{Buf, Gpu, Nhwc, View};
use crate::engine::{self, Direction, EngineInfo, EngineMode, EnginePlan};
use crate::error::{dnn, drv, CudaError, Result};
use crate::precision::{DType, Precision};
use cudarc::cudnn::{result as cr, sys};
use std::collections::HashMap;
use std::ffi::c_void;

/// Geometry of a square-kernel 2-D convolution (cross-correlation, as PyTorch's Conv2d), input `[n, h, w, cin]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ConvGeom {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub pad: usize,
    pub stride: usize,
}

impl ConvGeom {
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.k) / self.stride + 1,
            (self.w + 2 * self.pad - self.k) / self.stride + 1,
        )
    }
    pub fn in_shape(&self) -> Nhwc {
        Nhwc::new(self.n, self.h, self.w, self.cin)
    }
    pub fn out_shape(&self) -> Nhwc {
        let (oh, ow) = self.out_hw();
        Nhwc::new(self.n, oh, ow, self.cout)
    }
    /// Elements of the KRSC weight tensor.
    pub fn weight_len(&self) -> usize {
        self.cout * self.k * self.k * self.cin
    }
    /// Multiply-adds of one direction (forward, backward-data and backward-filter each cost this much).
    pub fn macs(&self) -> u64 {
        let o = self.out_shape();
        (o.len() as u64) * (self.k * self.k * self.cin) as u64
    }
    fn check(&self) -> Result<()> {
        if self.k == 0
            || self.stride == 0
            || self.h + 2 * self.pad < self.k
            || self.w + 2 * self.pad < self.k
        {
            return Err(CudaError::Shape(format!(
                "conv: kernel {} does not fit input {}",
                self.k,
                self.in_shape()
            )));
        }
        // cuDNN's legacy descriptors index with 32-bit integers: larger tensors fail deep inside cuDNN with
        // NOT_SUPPORTED, so say here what is too large and what to change.
        let o = self.out_shape();
        let largest = (self.n * self.cin * self.h * self.w).max(o.n * o.c * o.h * o.w);
        if largest > i32::MAX as usize {
            return Err(CudaError::Shape(format!(
                "{self}: a tensor of {largest} elements exceeds cuDNN's limit of 2^31 - 1; lower --batch or --tile"
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for ConvGeom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "conv{}x{} {}->{} on {}x{}x{} (pad {}, stride {})",
            self.k, self.k, self.cin, self.cout, self.n, self.h, self.w, self.pad, self.stride
        )
    }
}

/// Staging slot (see `Gpu::staging`) for the transposed conv's GEMM output; slots 0-3 belong to the backend.
const STAGE_CONVT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConvKey {
    geom: ConvGeom,
    precision: Precision,
}

struct TensorDesc(sys::cudnnTensorDescriptor_t);
impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created in ConvPlan::new, destroyed once here.
        let _ = unsafe { cr::destroy_tensor_descriptor(self.0) };
    }
}
struct FilterDesc(sys::cudnnFilterDescriptor_t);
impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: as above.
        let _ = unsafe { cr::destroy_filter_descriptor(self.0) };
    }
}
struct ConvDesc(sys::cudnnConvolutionDescriptor_t);
impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: as above.
        let _ = unsafe { cr::destroy_convolution_descriptor(self.0) };
    }
}

/// A chosen algorithm: its number, workspace bytes, the time cudnnFind measured (ms) and its math type.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Choice {
    pub algo: u32,
    pub workspace: usize,
    pub find_ms: f32,
    pub tensor_ops: bool,
}

/// Descriptors and chosen algorithms of one shape and precision.
pub(crate) struct ConvPlan {
    x: TensorDesc,
    y: TensorDesc,
    w: FilterDesc,
    // One conv descriptor per direction: each gets the math type of the algorithm found for it.
    conv: [ConvDesc; 3],
    pub(crate) fwd: Option<(sys::cudnnConvolutionFwdAlgo_t, Choice)>,
    pub(crate) bwd_data: Option<(sys::cudnnConvolutionBwdDataAlgo_t, Choice)>,
    pub(crate) bwd_filter: Option<(sys::cudnnConvolutionBwdFilterAlgo_t, Choice)>,
    /// Whether cudnnConvolutionBiasActivationForward ran for this shape, and with which bias dtype.
    pub(crate) fused: Fused,
    /// Backend-API autotuning results (engine.rs), per direction, beta, pointer alignment and mode.
    tuned: HashMap<TuneKey, Tuned>,
}

/// What a backend-API decision depends on besides the shape and precision: the graph bakes in beta and the
/// tensors' byte alignment; a forced decision (tests) is kept apart from an automatic one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TuneKey {
    pub(crate) dir: Direction,
    pub(crate) beta_bits: u32,
    /// Byte alignment (at most 16) of the x-side, w-side and y-side pointers.
    pub(crate) align: [u8; 3],
    pub(crate) force: bool,
}

impl TuneKey {
    pub(crate) fn new(dir: Direction, beta: f32, ptrs: [u64; 3], mode: EngineMode) -> TuneKey {
        TuneKey {
            dir,
            beta_bits: beta.to_bits(),
            align: ptrs.map(engine::alignment),
            force: mode == EngineMode::Force,
        }
    }
}

/// Outcome of timing the engines of one [`TuneKey`] against the legacy pick.
struct Tuned {
    legacy_ms: f32,
    /// Fastest acceptable engine and its time.
    best: Option<(EngineInfo, f32)>,
    /// The plan to run, when the engine is used (faster, or forced).
    engine: Option<EnginePlan>,
    timed: usize,
    refused: usize,
    /// What failed (finalize, run, or the accuracy check against the legacy result), per config.
    failures: Vec<String>,
    /// Relative L2 distance of the chosen/best engine's output from the legacy pick's (sampled).
    distance: Option<f64>,
}

/// One backend-API decision (for bench output and docs): the legacy pick's time against the fastest engine's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineChoice {
    pub geom: ConvGeom,
    pub precision: Precision,
    pub direction: Direction,
    pub beta: f32,
    /// Byte alignment of the x-side, w-side and y-side pointers the decision was made for.
    pub align: [u8; 3],
    pub legacy_algo: u32,
    pub legacy_ms: f32,
    pub engine: Option<EngineInfo>,
    pub engine_ms: Option<f32>,
    /// Whether the engine runs instead of the legacy pick.
    pub uses_engine: bool,
    /// Plans timed, configs refused by the filter, configs that failed to finalize or run or were too far
    /// from the legacy result, with the first few reasons.
    pub timed: usize,
    pub refused: usize,
    pub failed: usize,
    pub failures: Vec<String>,
    /// Relative L2 distance of the best engine's output from the legacy pick's on the tuning data (the first
    /// 2^20 output elements).
    pub distance: Option<f64>,
}

/// State of the fused conv + bias + ReLU forward for one plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fused {
    Untried,
    /// Ran with the bias in this dtype.
    Works(DType),
    /// cuDNN refused every bias dtype: use conv + the bias/activation kernel.
    Unsupported,
}

struct ActDesc(sys::cudnnActivationDescriptor_t);
impl Drop for ActDesc {
    fn drop(&mut self) {
        // SAFETY: created in conv_forward_bias_relu, destroyed once here.
        let _ = unsafe { sys::cudnnDestroyActivationDescriptor(self.0) };
    }
}

// SAFETY: cuDNN descriptors are host-side structs without thread affinity; a plan is only used through `&mut Gpu`.
unsafe impl Send for ConvPlan {}

impl ConvPlan {
    fn new(g: &ConvGeom, p: Precision) -> Result<ConvPlan> {
        g.check()?;
        let dt = p.dtype().cudnn();
        let o = g.out_shape();
        let nhwc = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
        let x =
            TensorDesc(cr::create_tensor_descriptor().map_err(dnn("cudnnCreateTensorDescriptor"))?);
        let y =
            TensorDesc(cr::create_tensor_descriptor().map_err(dnn("cudnnCreateTensorDescriptor"))?);
        let w =
            FilterDesc(cr::create_filter_descriptor().map_err(dnn("cudnnCreateFilterDescriptor"))?);
        let i = |v: usize| v as i32;
        // SAFETY: fresh descriptors; dims are positive (checked above).
        unsafe {
            cr::set_tensor4d_descriptor(x.0, nhwc, dt, [i(g.n), i(g.cin), i(g.h), i(g.w)])
                .map_err(dnn("cudnnSetTensor4dDescriptor"))?;
            cr::set_tensor4d_descriptor(y.0, nhwc, dt, [i(o.n), i(o.c), i(o.h), i(o.w)])
                .map_err(dnn("cudnnSetTensor4dDescriptor"))?;
            cr::set_filter4d_descriptor(w.0, dt, nhwc, [i(g.cout), i(g.cin), i(g.k), i(g.k)])
                .map_err(dnn("cudnnSetFilter4dDescriptor"))?;
        }
        let mk = || -> Result<ConvDesc> {
            let c = ConvDesc(
                cr::create_convolution_descriptor()
                    .map_err(dnn("cudnnCreateConvolutionDescriptor"))?,
            );
            // SAFETY: fresh descriptor. Compute type is f32 in every mode (bf16 data: PSEUDO_BFLOAT16 config).
            unsafe {
                cr::set_convolution2d_descriptor(
                    c.0,
                    i(g.pad),
                    i(g.pad),
                    i(g.stride),
                    i(g.stride),
                    1,
                    1,
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                )
                .map_err(dnn("cudnnSetConvolution2dDescriptor"))?;
                cr::set_convolution_math_type(c.0, p.math())
                    .map_err(dnn("cudnnSetConvolutionMathType"))?;
            }
            Ok(c)
        };
        Ok(ConvPlan {
            x,
            y,
            w,
            conv: [mk()?, mk()?, mk()?],
            fwd: None,
            bwd_data: None,
            bwd_filter: None,
            fused: Fused::Untried,
            tuned: HashMap::new(),
        })
    }
}

fn is_tensor_op(m: sys::cudnnMathType_t) -> bool {
    !matches!(m, sys::cudnnMathType_t::CUDNN_FMA_MATH)
}

/// Whether a found algorithm is acceptable: it ran, fits the workspace limit, and in f32 mode uses no tensor cores
/// (cuDNN reports DEFAULT_MATH for plain FMA kernels too; only TENSOR_OP* are refused).
/// With `deterministic`, only algorithms cuDNN reports as bit-reproducible (no atomics) are acceptable.
fn acceptable(
    p: Precision,
    status: sys::cudnnStatus_t,
    memory: usize,
    math: sys::cudnnMathType_t,
    limit: usize,
    determinism: sys::cudnnDeterminism_t,
    deterministic: bool,
) -> bool {
    status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
        && memory <= limit
        && (!deterministic || determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC)
        && !(p == Precision::F32
            && matches!(
                math,
                sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
                    | sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
            ))
}

/// The fields the three `cudnnConvolution*AlgoPerf_t` result structs share, as [`pick`] needs them.
struct Found {
    algo: u32,
    status: sys::cudnnStatus_t,
    memory: usize,
    math: sys::cudnnMathType_t,
    determinism: sys::cudnnDeterminism_t,
    time: f32,
}

/// The first acceptable result of a `cudnnFind*` call (results come sorted fastest first), as its index and the
/// [`Choice`]. cuDNN's advice is to run an algorithm with the math type it was timed with, so `conv` gets that math
/// type — except in f32 mode, whose descriptor keeps FMA_MATH (DEFAULT_MATH would allow TF32).
fn pick(
    p: Precision,
    found: impl Iterator<Item = Found>,
    limit: usize,
    deterministic: bool,
    conv: sys::cudnnConvolutionDescriptor_t,
) -> Result<Option<(usize, Choice)>> {
    let Some((i, r)) = found.enumerate().find(|(_, r)| {
        acceptable(
            p,
            r.status,
            r.memory,
            r.math,
            limit,
            r.determinism,
            deterministic,
        )
    }) else {
        return Ok(None);
    };
    if p != Precision::F32 {
        // SAFETY: live descriptor.
        unsafe { cr::set_convolution_math_type(conv, r.math) }
            .map_err(dnn("cudnnSetConvolutionMathType"))?;
    }
    let c = Choice {
        algo: r.algo,
        workspace: r.memory,
        find_ms: r.time,
        tensor_ops: is_tensor_op(r.math),
    };
    Ok(Some((i, c)))
}

/// [`Found`] from any of the three result structs (they differ only in the type of `algo`).
macro_rules! found {
    ($r:expr) => {
        Found {
            algo: $r.algo as u32,
            status: $r.status,
            memory: $r.memory,
            math: $r.mathType,
            determinism: $r.determinism,
            time: $r.time,
        }
    };
}

impl Gpu {
    fn plan(&mut self, g: &ConvGeom, p: Precision, dir: Direction) -> Result<&ConvPlan> {
        let key = ConvKey {
            geom: *g,
            precision: p,
        };
        if let std::collections::hash_map::Entry::Vacant(e) = self.conv_plans.entry(key) {
            e.insert(ConvPlan::new(g, p)?);
        }
        let limit = self.workspace_limit;
        let det = self.deterministic;
        let handle = self.cudnn.0;
        let plan = self.conv_plans.get_mut(&key).unwrap();
        let shape = g.to_string();
        let none = |what| CudaError::NoConvAlgorithm {
            what,
            shape: shape.clone(),
            precision: p.name(),
        };
        let mut count = 0i32;
        match dir {
            Direction::Forward if plan.fwd.is_none() => {
                let mut res =
                    [unsafe { std::mem::zeroed::<sys::cudnnConvolutionFwdAlgoPerf_t>() }; 8];
                // SAFETY: live handle and descriptors; `res` has room for the 8 results requested.
                unsafe {
                    sys::cudnnFindConvolutionForwardAlgorithm(
                        handle,
                        plan.x.0,
                        plan.w.0,
                        plan.conv[0].0,
                        plan.y.0,
                        8,
                        &mut count,
                        res.as_mut_ptr(),
                    )
                }
                .result()
                .map_err(dnn("cudnnFindConvolutionForwardAlgorithm"))?;
                let found = res[..count as usize].iter().map(|r| found!(r));
                let (i, c) =
                    pick(p, found, limit, det, plan.conv[0].0)?.ok_or_else(|| none("forward"))?;
                plan.fwd = Some((res[i].algo, c));
            }
            Direction::BackwardData if plan.bwd_data.is_none() => {
                let mut res =
                    [unsafe { std::mem::zeroed::<sys::cudnnConvolutionBwdDataAlgoPerf_t>() }; 6];
                // SAFETY: as above, 6 results.
                unsafe {
                    sys::cudnnFindConvolutionBackwardDataAlgorithm(
                        handle,
                        plan.w.0,
                        plan.y.0,
                        plan.conv[1].0,
                        plan.x.0,
                        6,
                        &mut count,
                        res.as_mut_ptr(),
                    )
                }
                .result()
                .map_err(dnn("cudnnFindConvolutionBackwardDataAlgorithm"))?;
                let found = res[..count as usize].iter().map(|r| found!(r));
                let (i, c) = pick(p, found, limit, det, plan.conv[1].0)?
                    .ok_or_else(|| none("backward-data"))?;
                plan.bwd_data = Some((res[i].algo, c));
            }
            Direction::BackwardFilter if plan.bwd_filter.is_none() => {
                let mut res =
                    [unsafe { std::mem::zeroed::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>() }; 7];
                // SAFETY: as above, 7 results.
                unsafe {
                    sys::cudnnFindConvolutionBackwardFilterAlgorithm(
                        handle,
                        plan.x.0,
                        plan.y.0,
                        plan.conv[2].0,
                        plan.w.0,
                        7,
                        &mut count,
                        res.as_mut_ptr(),
                    )
                }
                .result()
                .map_err(dnn("cudnnFindConvolutionBackwardFilterAlgorithm"))?;
                let found = res[..count as usize].iter().map(|r| found!(r));
                let (i, c) = pick(p, found, limit, det, plan.conv[2].0)?
                    .ok_or_else(|| none("backward-filter"))?;
                plan.bwd_filter = Some((res[i].algo, c));
            }
            _ => {}
        }
        Ok(self.conv_plans.get(&key).unwrap())
    }

    /// Finds (if not yet done) the algorithms of all three directions for this shape, so that a later graph capture
    /// sees no allocation. Returns the choices (forward, backward-data, backward-filter).
    pub fn conv_prepare(&mut self, g: &ConvGeom, p: Precision) -> Result<[Choice; 3]> {
        self.plan(g, p, Direction::Forward)?;
        self.plan(g, p, Direction::BackwardData)?;
        let plan = self.plan(g, p, Direction::BackwardFilter)?;
        let c = [
            plan.fwd.unwrap().1,
            plan.bwd_data.unwrap().1,
            plan.bwd_filter.unwrap().1,
        ];
        let ws = c.iter().map(|c| c.workspace).max().unwrap_or(0);
        self.workspace(ws)?;
        let mode = engine::engine_mode_for(p);
        if mode != EngineMode::Off {
            // Autotune the backend-API engines too (beta 0, 16-byte aligned tensors, as fresh buffers are), on
            // temporary tensors; calls with other betas or alignments are tuned on their first eager call.
            for dir in [
                Direction::Forward,
                Direction::BackwardData,
                Direction::BackwardFilter,
            ] {
                let tk = TuneKey::new(dir, 0.0, [0; 3], mode);
                self.tune(g, p, tk, None)?;
            }
        }
        Ok(c)
    }

    /// Runs one conv direction: in f32, as three TF32 passes where that proved as accurate and faster
    /// (crate::split); else [`Gpu::conv_run_direct`].
    fn conv_run(
        &mut self,
        p: Precision,
        g: &ConvGeom,
        dir: Direction,
        ptrs: [u64; 3],
        beta: f32,
    ) -> Result<()> {
        if p == Precision::F32 && self.split_conv(g, dir, ptrs, beta)? {
            return Ok(());
        }
        self.conv_run_direct(p, g, dir, ptrs, beta)
    }

    /// Runs one conv direction: the backend-API engine when autotuning chose one for this call's key, else the
    /// legacy pick. `ptrs` = (x-side, w-side, y-side): (x, w, y), (dx, w, dy) or (x, dw, dy).
    pub(crate) fn conv_run_direct(
        &mut self,
        p: Precision,
        g: &ConvGeom,
        dir: Direction,
        ptrs: [u64; 3],
        beta: f32,
    ) -> Result<()> {
        self.plan(g, p, dir)?;
        let key = ConvKey {
            geom: *g,
            precision: p,
        };
        let mode = engine::engine_mode_for(p);
        if mode != EngineMode::Off {
            let tk = TuneKey::new(dir, beta, ptrs, mode);
            // Inside a graph capture nothing may be allocated or timed: an untuned key runs the legacy pick.
            if !self.capturing {
                if let Err(e) = self.tune(g, p, tk, Some(ptrs)) {
                    if tk.force {
                        return Err(e);
                    }
                    // Tuning itself failed (e.g. no memory for its temporaries on a smaller GPU): remember it and
                    // keep the legacy pick for this key rather than failing the conv.
                    self.stream
                        .synchronize()
                        .map_err(drv("cuStreamSynchronize"))?;
                    self.conv_plans.get_mut(&key).unwrap().tuned.insert(
                        tk,
                        Tuned {
                            legacy_ms: f32::NAN,
                            best: None,
                            engine: None,
                            timed: 0,
                            refused: 0,
                            failures: vec![format!("tuning: {e}")],
                            distance: None,
                        },
                    );
                }
            }
            let engine_ws = self.conv_plans[&key]
                .tuned
                .get(&tk)
                .and_then(|t| t.engine.as_ref())
                .map(|e| e.info.workspace);
            if let Some(ws) = engine_ws {
                let (wsp, _) = self.workspace(ws)?;
                let handle = self.cudnn.0;
                let e = self
                    .conv_plans
                    .get_mut(&key)
                    .unwrap()
                    .tuned
                    .get_mut(&tk)
                    .unwrap();
                return e.engine.as_mut().unwrap().execute(handle, ptrs, wsp);
            }
        }
        let ws = self.legacy_choice(&key, dir).workspace;
        let (wsp, wss) = self.workspace(ws)?;
        self.legacy(&key, dir, ptrs, beta, wsp, wss)
    }

    /// The legacy pick of a planned direction.
    fn legacy_choice(&self, key: &ConvKey, dir: Direction) -> Choice {
        let plan = &self.conv_plans[key];
        match dir {
            Direction::Forward => plan.fwd.unwrap().1,
            Direction::BackwardData => plan.bwd_data.unwrap().1,
            Direction::BackwardFilter => plan.bwd_filter.unwrap().1,
        }
    }

    /// One legacy-API call (the direction must be planned; the workspace as large as its pick asked).
    fn legacy(
        &self,
        key: &ConvKey,
        dir: Direction,
        ptrs: [u64; 3],
        beta: f32,
        wsp: u64,
        wss: usize,
    ) -> Result<()> {
        let plan = &self.conv_plans[key];
        let alpha = 1.0f32;
        let (a, b) = (
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
        );
        let h = self.cudnn.0;
        let ws = wsp as *mut c_void;
        // SAFETY: descriptors match the views the callers checked (or the tuner's buffers of the same shapes);
        // the workspace holds what the algorithm asked for.
        unsafe {
            match dir {
                Direction::Forward => cr::convolution_forward(
                    h,
                    a,
                    plan.x.0,
                    ptrs[0] as *const c_void,
                    plan.w.0,
                    ptrs[1] as *const c_void,
                    plan.conv[0].0,
                    plan.fwd.unwrap().0,
                    ws,
                    wss,
                    b,
                    plan.y.0,
                    ptrs[2] as *mut c_void,
                )
                .map_err(dnn("cudnnConvolutionForward")),
                Direction::BackwardData => cr::convolution_backward_data(
                    h,
                    a,
                    plan.w.0,
                    ptrs[1] as *const c_void,
                    plan.y.0,
                    ptrs[2] as *const c_void,
                    plan.conv[1].0,
                    plan.bwd_data.unwrap().0,
                    ws,
                    wss,
                    b,
                    plan.x.0,
                    ptrs[0] as *mut c_void,
                )
                .map_err(dnn("cudnnConvolutionBackwardData")),
                Direction::BackwardFilter => cr::convolution_backward_filter(
                    h,
                    a,
                    plan.x.0,
                    ptrs[0] as *const c_void,
                    plan.y.0,
                    ptrs[2] as *const c_void,
                    plan.conv[2].0,
                    plan.bwd_filter.unwrap().0,
                    ws,
                    wss,
                    b,
                    plan.w.0,
                    ptrs[1] as *mut c_void,
                )
                .map_err(dnn("cudnnConvolutionBackwardFilter")),
            }
        }
    }

    /// Mean milliseconds of `f` on the stream (CUDA events): one untimed run, then enough runs for about 2 ms,
    /// at least 3. Returns the first run's error. Stops early (returning the one run's time) when that run alone
    /// took over `give_up` ms, so a hopeless candidate costs one run.
    pub(crate) fn time_ms(
        &mut self,
        give_up: f32,
        mut f: impl FnMut(&mut Gpu) -> Result<()>,
    ) -> Result<f32> {
        let ev = |gpu: &Gpu| {
            gpu.ctx
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(drv("cuEventCreate"))
        };
        let (a, b) = (ev(self)?, ev(self)?);
        a.record(&self.stream).map_err(drv("cuEventRecord"))?;
        f(self)?;
        b.record(&self.stream).map_err(drv("cuEventRecord"))?;
        let first = a.elapsed_ms(&b).map_err(drv("cuEventElapsedTime"))?;
        if first > give_up {
            return Ok(first);
        }
        let reps = ((2.0 / first.max(1e-3)).ceil() as usize).clamp(3, 50);
        a.record(&self.stream).map_err(drv("cuEventRecord"))?;
        for _ in 0..reps {
            f(self)?;
        }
        b.record(&self.stream).map_err(drv("cuEventRecord"))?;
        Ok(a.elapsed_ms(&b).map_err(drv("cuEventElapsedTime"))? / reps as f32)
    }

    /// Autotunes one [`TuneKey`] (if not done yet): builds the acceptable engine plans (engine.rs), times each and
    /// the legacy pick on the same tensors, checks each engine's output against the legacy pick's (relative L2 on
    /// the first 2^20 output elements ≤ the precision's parity tolerance in f32, half of it in tf32/bf16: an engine
    /// that accumulates in lower precision than it claims is refused), and keeps an engine only when it is faster (2 % margin against timing
    /// noise) or forced. `ptrs`: the call's tensors; the output is redirected to a temporary (holding a copy of the
    /// call's output when beta ≠ 0) so the call's own output is untouched. None: temporaries with a random pattern.
    fn tune(
        &mut self,
        g: &ConvGeom,
        p: Precision,
        tk: TuneKey,
        ptrs: Option<[u64; 3]>,
    ) -> Result<()> {
        let key = ConvKey {
            geom: *g,
            precision: p,
        };
        self.plan(g, p, tk.dir)?;
        if self.conv_plans[&key].tuned.contains_key(&tk) {
            return Ok(());
        }
        let dt = p.dtype();
        let lens = [g.in_shape().len(), g.weight_len(), g.out_shape().len()];
        let out = match tk.dir {
            Direction::Forward => 2,
            Direction::BackwardData => 0,
            Direction::BackwardFilter => 1,
        };
        let beta = f32::from_bits(tk.beta_bits);
        let stream = self.stream.cu_stream();
        let mut temps = Vec::new();
        let given = ptrs.unwrap_or_default();
        let mut ptrs = given;
        // Random pattern for made-up inputs, tiled from one 2^20-element chunk.
        let chunk_len = 1usize << 20;
        let mut chunk: Option<Buf> = None;
        for (i, len) in lens.into_iter().enumerate() {
            if i == out || ptrs[i] == 0 {
                let t = self.alloc(len, dt)?;
                ptrs[i] = t.ptr();
                temps.push(t);
            }
        }
        // The output's starting content (beta ≠ 0 reads it): the call's own output, else zeros.
        let init = self.alloc(lens[out], dt)?;
        let bytes = |n: usize| n * dt.size();
        // SAFETY: all buffers hold at least the lengths copied; stream-ordered.
        unsafe {
            if given[out] != 0 && beta != 0.0 {
                cudarc::driver::result::memcpy_dtod_async(
                    init.ptr(),
                    given[out],
                    bytes(lens[out]),
                    stream,
                )
            } else {
                cudarc::driver::result::memset_d8_async(init.ptr(), 0, bytes(lens[out]), stream)
            }
        }
        .map_err(drv("cuMemcpyDtoDAsync"))?;
        for (i, len) in lens.into_iter().enumerate() {
            if i != out && given[i] == 0 {
                if chunk.is_none() {
                    let mut s = 0x9E37_79B9_7F4A_7C15u64;
                    let host: Vec<f32> = (0..chunk_len)
                        .map(|_| {
                            s ^= s << 13;
                            s ^= s >> 7;
                            s ^= s << 17;
                            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
                        })
                        .collect();
                    chunk = Some(self.upload(&host, dt)?);
                }
                let c = chunk.as_ref().unwrap().ptr();
                let mut at = 0;
                while at < len {
                    let n = chunk_len.min(len - at);
                    // SAFETY: in bounds of both buffers.
                    unsafe {
                        cudarc::driver::result::memcpy_dtod_async(
                            ptrs[i] + bytes(at) as u64,
                            c,
                            bytes(n),
                            stream,
                        )
                    }
                    .map_err(drv("cuMemcpyDtoDAsync"))?;
                    at += n;
                }
            }
        }
        let sample = lens[out].min(1 << 20);
        // Resets the output to `init`, runs `f` once, and returns the first `sample` output elements as f32.
        let probe =
            |gpu: &mut Gpu, f: &mut dyn FnMut(&mut Gpu) -> Result<()>| -> Result<Vec<f32>> {
                // SAFETY: same lengths as above.
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(
                        ptrs[out],
                        init.ptr(),
                        bytes(lens[out]),
                        gpu.stream.cu_stream(),
                    )
                }
                .map_err(drv("cuMemcpyDtoDAsync"))?;
                f(gpu)?;
                gpu.read_back(ptrs[out], dt, sample)
            };
        let legacy = self.legacy_choice(&key, tk.dir);
        let built = engine::candidates(
            self.cudnn.0,
            g,
            p,
            tk.dir,
            beta,
            tk.align,
            // Auto takes only bit-reproducible engines: a run must repeat from its seed (session 3: with
            // non-deterministic engines allowed, two identical bf16 training runs ended 1.6e-3 apart).
            self.deterministic || !tk.force,
            self.workspace_limit,
        );
        let mut c = match built {
            Ok(c) => c,
            Err(e) if tk.force => return Err(e),
            // The backend API refused the graph itself: the legacy pick stays.
            Err(e) => engine::Candidates {
                plans: Vec::new(),
                refused: Vec::new(),
                failed: vec![("graph".into(), e.to_string())],
            },
        };
        let ws = c
            .plans
            .iter()
            .map(|e| e.info.workspace)
            .chain([legacy.workspace])
            .max()
            .unwrap_or(0);
        // A temporary workspace for the timing runs: growing the persistent one to the largest candidate's size
        // would keep that memory for good even when a smaller plan wins.
        let tws = self.alloc(ws.div_ceil(2), DType::Bf16)?;
        let (wsp, wss) = (tws.ptr(), ws);
        let reference = probe(self, &mut |gpu: &mut Gpu| {
            gpu.legacy(&key, tk.dir, ptrs, beta, wsp, wss)
        })?;
        let legacy_ms = self.time_ms(f32::INFINITY, |gpu| {
            gpu.legacy(&key, tk.dir, ptrs, beta, wsp, wss)
        })?;
        let handle = self.cudnn.0;
        // In f32 both paths differ only in summation order (independent errors), so the distance may reach the
        // parity bound itself; in tf32/bf16 the input rounding, the larger error, is common to both paths.
        let tol = match p {
            Precision::F32 => p.parity_tolerance(),
            _ => 0.5 * p.parity_tolerance(),
        };
        let mut best: Option<(usize, f32, f64)> = None;
        let mut failures: Vec<String> = c.failed.iter().map(|(n, e)| format!("{n}: {e}")).collect();
        for (i, e) in c.plans.iter_mut().enumerate() {
            let got = probe(self, &mut |_: &mut Gpu| e.execute(handle, ptrs, wsp));
            let d = match got {
                Ok(v) => rel_l2(&v, &reference),
                Err(err) => {
                    failures.push(format!("{}: {err}", e.info.name()));
                    continue;
                }
            };
            if d.is_nan() || d > tol {
                failures.push(format!(
                    "{}: output {d:.2e} from the legacy result (bound {tol:.0e})",
                    e.info.name()
                ));
                continue;
            }
            let give_up = 3.0 * best.map_or(legacy_ms, |b| b.1.min(legacy_ms));
            match self.time_ms(give_up, |_| e.execute(handle, ptrs, wsp)) {
                Ok(ms) if best.is_none_or(|b| ms < b.1) => best = Some((i, ms, d)),
                Ok(_) => {}
                Err(err) => failures.push(format!("{}: {err}", e.info.name())),
            }
        }
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))?;
        drop(temps);
        drop(tws);
        drop(init);
        drop(chunk);
        let use_it = best.is_some_and(|(_, ms, _)| tk.force || ms < 0.98 * legacy_ms);
        if tk.force && best.is_none() {
            return Err(CudaError::NoEngine {
                what: tk.dir.name(),
                shape: g.to_string(),
                precision: p.name(),
                why: format!(
                    "refused: {}; failed: {}",
                    c.refused
                        .iter()
                        .map(|(n, w)| format!("{n}: {w}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                    failures.join("; ")
                ),
            });
        }
        let timed = c.plans.len();
        let best_info = best.map(|(i, ms, _)| (c.plans[i].info.clone(), ms));
        let distance = best.map(|b| b.2);
        let engine = match best {
            Some((i, _, _)) if use_it => Some(c.plans.swap_remove(i)),
            _ => None,
        };
        self.conv_plans.get_mut(&key).unwrap().tuned.insert(
            tk,
            Tuned {
                legacy_ms,
                best: best_info,
                engine,
                timed,
                refused: c.refused.len(),
                failures,
                distance,
            },
        );
        Ok(())
    }

    /// Every backend-API decision made so far (for bench output and docs), sorted by precision, shape, direction.
    pub fn engine_choices(&self) -> Vec<EngineChoice> {
        let mut v = Vec::new();
        for (k, plan) in &self.conv_plans {
            for (tk, t) in &plan.tuned {
                let legacy_algo = match tk.dir {
                    Direction::Forward => plan.fwd.map(|f| f.1.algo),
                    Direction::BackwardData => plan.bwd_data.map(|f| f.1.algo),
                    Direction::BackwardFilter => plan.bwd_filter.map(|f| f.1.algo),
                };
                v.push(EngineChoice {
                    geom: k.geom,
                    precision: k.precision,
                    direction: tk.dir,
                    beta: f32::from_bits(tk.beta_bits),
                    align: tk.align,
                    legacy_algo: legacy_algo.unwrap_or(u32::MAX),
                    legacy_ms: t.legacy_ms,
                    engine: t.best.as_ref().map(|b| b.0.clone()),
                    engine_ms: t.best.as_ref().map(|b| b.1),
                    uses_engine: t.engine.is_some(),
                    timed: t.timed,
                    refused: t.refused,
                    failed: t.failures.len(),
                    failures: t.failures.iter().take(6).cloned().collect(),
                    distance: t.distance,
                });
            }
        }
        v.sort_by_key(|c| {
            (
                c.precision.name(),
                c.geom.n,
                std::cmp::Reverse(c.geom.h),
                c.geom.cin,
                c.geom.cout,
                c.geom.k,
                c.direction as u8,
                c.beta.to_bits(),
                c.align,
            )
        });
        v
    }

    /// All shapes planned so far with their algorithm choices (for bench output and docs).
    pub fn conv_choices(&self) -> Vec<(ConvGeom, Precision, [Option<Choice>; 3])> {
        let mut v: Vec<_> = self
            .conv_plans
            .iter()
            .map(|(k, p)| {
                (
                    k.geom,
                    k.precision,
                    [
                        p.fwd.map(|f| f.1),
                        p.bwd_data.map(|f| f.1),
                        p.bwd_filter.map(|f| f.1),
                    ],
                )
            })
            .collect();
        v.sort_by_key(|(g, p, _)| (p.name(), g.n, std::cmp::Reverse(g.h), g.cin, g.cout, g.k));
        v
    }

    fn check_views(&self, what: &str, p: Precision, views: &[(View, Nhwc)]) -> Result<()> {
        for (v, want) in views {
            if v.shape != *want || !v.is_packed() || v.dtype != p.dtype() {
                return Err(CudaError::Shape(format!(
                    "{what}: expected a packed {:?} tensor {want}, got {:?} {} (channel stride {})",
                    p.dtype(),
                    v.dtype,
                    v.shape,
                    v.cs
                )));
            }
        }
        Ok(())
    }

    /// y = beta * y + conv(x, w). x `[n, h, w, cin]`, w KRSC, y `[n, oh, ow, cout]`, all packed, of `p.dtype()`.
    pub fn conv_forward(
        &mut self,
        p: Precision,
        g: &ConvGeom,
        x: View,
        w: u64,
        y: View,
        beta: f32,
    ) -> Result<()> {
        self.check_views("conv_forward", p, &[(x, g.in_shape()), (y, g.out_shape())])?;
        self.conv_run(p, g, Direction::Forward, [x.ptr, w, y.ptr], beta)
    }

    /// y = relu(conv(x, w) + bias) in one cuDNN call (cudnnConvolutionBiasActivationForward, the forward algorithm
    /// found for the plain conv), saving the separate bias/activation pass over y. `bias_f32`: the bias in f32;
    /// `bias_lp`: the same bias in the storage dtype (the bf16 weight copy), if there is one. cuDNN's accepted bias
    /// dtype is found on the first call per shape (storage dtype first, then f32). Returns false, having done
    /// nothing, when cuDNN refuses (the caller then runs conv_forward and the bias/activation kernel) or when
    /// `fused_conv_bias_act` is off.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_forward_bias_relu(
        &mut self,
        p: Precision,
        g: &ConvGeom,
        x: View,
        w: u64,
        bias_f32: u64,
        bias_lp: Option<u64>,
        y: View,
    ) -> Result<bool> {
        if !self.fused_conv_bias_act {
            return Ok(false);
        }
        self.check_views(
            "conv_forward_bias_relu",
            p,
            &[(x, g.in_shape()), (y, g.out_shape())],
        )?;
        let (algo, ws) = {
            let plan = self.plan(g, p, Direction::Forward)?;
            let (a, c) = plan.fwd.unwrap();
            (a, c.workspace)
        };
        let (wsp, wss) = self.workspace(ws)?;
        let handle = self.cudnn.0;
        let key = ConvKey {
            geom: *g,
            precision: p,
        };
        let plan = self.conv_plans.get_mut(&key).unwrap();
        let mut candidates = match plan.fused {
            Fused::Unsupported => return Ok(false),
            Fused::Works(dt) => vec![dt],
            Fused::Untried => vec![],
        };
        for dt in [p.dtype(), DType::F32] {
            if !candidates.contains(&dt) {
                candidates.push(dt);
            }
        }
        let mut act = std::ptr::null_mut();
        // SAFETY: fresh descriptor, destroyed by ActDesc.
        unsafe { sys::cudnnCreateActivationDescriptor(&mut act) }
            .result()
            .map_err(dnn("cudnnCreateActivationDescriptor"))?;
        let act = ActDesc(act);
        // PROPAGATE_NAN: a NaN pre-activation stays NaN, as in our kernel (NaN > 0 is false, NaN * 0 is NaN).
        unsafe {
            sys::cudnnSetActivationDescriptor(
                act.0,
                sys::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
                sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                0.0,
            )
        }
        .result()
        .map_err(dnn("cudnnSetActivationDescriptor"))?;
        let (alpha1, alpha2) = (1.0f32, 0.0f32);
        for dt in candidates {
            let bias = match dt {
                DType::F32 => bias_f32,
                DType::Bf16 => match bias_lp {
                    Some(b) => b,
                    None => continue,
                },
            };
            let bd = TensorDesc(
                cr::create_tensor_descriptor().map_err(dnn("cudnnCreateTensorDescriptor"))?,
            );
            // SAFETY: fresh descriptor.
            unsafe {
                cr::set_tensor4d_descriptor(
                    bd.0,
                    sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
                    dt.cudnn(),
                    [1, g.cout as i32, 1, 1],
                )
            }
            .map_err(dnn("cudnnSetTensor4dDescriptor"))?;
            // SAFETY: descriptors match the checked views; z = y with alpha2 = 0 (not read); bias holds cout
            // elements of `dt`; workspace holds what the algorithm asked for.
            let status = unsafe {
                sys::cudnnConvolutionBiasActivationForward(
                    handle,
                    &alpha1 as *const f32 as *const c_void,
                    plan.x.0,
                    x.ptr as *const c_void,
                    plan.w.0,
                    w as *const c_void,
                    plan.conv[0].0,
                    algo,
                    wsp as *mut c_void,
                    wss,
                    &alpha2 as *const f32 as *const c_void,
                    plan.y.0,
                    y.ptr as *const c_void,
                    bd.0,
                    bias as *const c_void,
                    act.0,
                    plan.y.0,
                    y.ptr as *mut c_void,
                )
            };
            if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
                plan.fused = Fused::Works(dt);
                return Ok(true);
            }
        }
        if plan.fused == Fused::Untried {
            plan.fused = Fused::Unsupported;
        }
        Ok(false)
    }

    /// Which shapes run the fused conv + bias + ReLU (for bench output): (shape, precision, bias dtype or None).
    pub fn fused_choices(&self) -> Vec<(ConvGeom, Precision, Option<DType>)> {
        self.conv_plans
            .iter()
            .filter(|(_, p)| p.fused != Fused::Untried)
            .map(|(k, p)| {
                (
                    k.geom,
                    k.precision,
                    match p.fused {
                        Fused::Works(d) => Some(d),
                        _ => None,
                    },
                )
            })
            .collect()
    }

    /// dx = beta * dx + conv_backward_data(dy, w).
    pub fn conv_backward_data(
        &mut self,
        p: Precision,
        g: &ConvGeom,
        dy: View,
        w: u64,
        dx: View,
        beta: f32,
    ) -> Result<()> {
        self.check_views(
            "conv_backward_data",
            p,
            &[(dx, g.in_shape()), (dy, g.out_shape())],
        )?;
        if g.k == 1 && g.cout == 1 && g.pad == 0 && g.stride == 1 && (beta == 0.0 || beta == 1.0) {
            // The output layer: one memory pass instead of a slow cuDNN kernel (see elementwise.cu).
            return self.conv1x1_to1_backward_data(dy, w, dx, beta == 1.0);
        }
        self.conv_run(p, g, Direction::BackwardData, [dx.ptr, w, dy.ptr], beta)
    }

    /// dw = beta * dw + conv_backward_filter(x, dy). dw is KRSC of `p.dtype()`.
    pub fn conv_backward_filter(
        &mut self,
        p: Precision,
        g: &ConvGeom,
        x: View,
        dy: View,
        dw: u64,
        beta: f32,
    ) -> Result<()> {
        self.check_views(
            "conv_backward_filter",
            p,
            &[(x, g.in_shape()), (dy, g.out_shape())],
        )?;
        self.conv_run(p, g, Direction::BackwardFilter, [x.ptr, dw, dy.ptr], beta)
    }

    /// 2x2 stride-2 transposed convolution (PyTorch ConvTranspose2d(cin, cout, 2, stride=2)), no bias:
    /// x `[n, h, w, cin]` -> y `[n, 2h, 2w, cout]`; weight `[cin, 2, 2, cout]` (PyTorch's `[cin, cout, 2, 2]` with the
    /// channel axis last). It is the backward-data pass of a 2x2 stride-2 conv cout -> cin on the output.
    pub fn conv_transpose_forward(
        &mut self,
        p: Precision,
        x: View,
        w: u64,
        y: View,
        beta: f32,
    ) -> Result<()> {
        if p == Precision::F32 && beta == 0.0 {
            // In FMA math cuDNN's stride-2 backward-data runs at < 1 TFLOP/s (124 ms at 8 x 512^2 x 64 -> 32). As a
            // GEMM it is fast: Y' [n, h, w, 4 cout] = x . W, i.e. the backward-data of the 1x1 conv 4 cout -> cin
            // whose KRSC filter is exactly W ([cin][(a, b, cout)]), then a 2x2 pixel shuffle into y.
            let g1 = ConvGeom {
                n: x.shape.n,
                h: x.shape.h,
                w: x.shape.w,
                cin: 4 * y.shape.c,
                cout: x.shape.c,
                k: 1,
                pad: 0,
                stride: 1,
            };
            let len = g1.in_shape().len();
            let tmp = self.staging(STAGE_CONVT, len, p.dtype())?;
            let yp = View {
                ptr: tmp,
                dtype: p.dtype(),
                shape: g1.in_shape(),
                cs: g1.cin,
            };
            self.conv_backward_data(p, &g1, x, w, yp, 0.0)?;
            return self.pixel_shuffle2(yp, y);
        }
        let g = transpose_geom(x.shape, y.shape.c);
        self.conv_backward_data(p, &g, x, w, y, beta)
    }

    /// y = act(conv_transpose(x, w) + bias) with y any channel window (version 2 of the transposed-conv forward):
    /// the GEMM `x · W` (cuDNN backward-data of the 1x1 conv 4 cout -> cin) into staging, then one pass that
    /// shuffles the 2x2 sub-pixels into y with the bias and activation fused. Returns false, having done nothing,
    /// when the 16-byte shuffle does not apply to y (or `convt_gemm_fused` is off): the caller then uses
    /// `conv_transpose_forward` and a bias pass.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_transpose_forward_bias_act(
        &mut self,
        p: Precision,
        x: View,
        w: u64,
        bias: Option<u64>,
        y: View,
        slope: f32,
    ) -> Result<bool> {
        // bf16 on the U-Net's upper levels: cryoden's own kernel, output written once (device/mma.rs).
        if p == Precision::Bf16 && self.mma_convt_forward(x, w, bias, y, slope)? {
            return Ok(true);
        }
        let v = p.dtype().vec_len();
        let aligned = y.cs.is_multiple_of(v) && y.ptr.is_multiple_of(16);
        if !self.convt_gemm_fused
            || y.dtype != p.dtype()
            || !y.shape.c.is_multiple_of(v)
            || !aligned
            || y.shape.pixels() >= i32::MAX as usize
        {
            return Ok(false);
        }
        let g1 = ConvGeom {
            n: x.shape.n,
            h: x.shape.h,
            w: x.shape.w,
            cin: 4 * y.shape.c,
            cout: x.shape.c,
            k: 1,
            pad: 0,
            stride: 1,
        };
        let len = g1.in_shape().len();
        let tmp = self.staging(STAGE_CONVT, len, p.dtype())?;
        let yp = View {
            ptr: tmp,
            dtype: p.dtype(),
            shape: g1.in_shape(),
            cs: g1.cin,
        };
        self.conv_backward_data(p, &g1, x, w, yp, 0.0)?;
        self.pixel_shuffle2_bias_act(yp, y, bias, slope)?;
        Ok(true)
    }

    /// Gradient of the transposed convolution with respect to its input.
    pub fn conv_transpose_backward_data(
        &mut self,
        p: Precision,
        dy: View,
        w: u64,
        dx: View,
        beta: f32,
    ) -> Result<()> {
        let g = transpose_geom(dx.shape, dy.shape.c);
        self.conv_forward(p, &g, dy, w, dx, beta)
    }

    /// Gradient of the transposed convolution with respect to its weight.
    pub fn conv_transpose_backward_filter(
        &mut self,
        p: Precision,
        x: View,
        dy: View,
        dw: u64,
        beta: f32,
    ) -> Result<()> {
        let g = transpose_geom(x.shape, dy.shape.c);
        self.conv_backward_filter(p, &g, dy, x, dw, beta)
    }
}

/// Relative L2 distance of `got` from `want` (0 when both are zero; NaN anywhere gives NaN).
pub(crate) fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in got.iter().zip(want) {
        let d = *a as f64 - *b as f64;
        num += d * d;
        den += (*b as f64) * (*b as f64);
    }
    if num == 0.0 {
        0.0
    } else {
        (num / den.max(f64::MIN_POSITIVE)).sqrt()
    }
}

/// The strided conv whose backward-data is the 2x2 stride-2 transposed conv of `x` (`[n, h, w, cin]`) to `cout`
/// channels: input `[n, 2h, 2w, cout]`, `cout -> cin`, kernel 2, stride 2.
pub fn transpose_geom(x: Nhwc, cout: usize) -> ConvGeom {
    ConvGeom {
        n: x.n,
        h: 2 * x.h,
        w: 2 * x.w,
        cin: cout,
        cout: x.c,
        k: 2,
        pad: 0,
        stride: 2,
    }
}

/// Storage dtype check used by callers that hold weights: conv weights are stored in the compute dtype.
pub fn weight_dtype(p: Precision) -> DType {
    p.dtype()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        let g = ConvGeom {
            n: 8,
            h: 1024,
            w: 1024,
            cin: 1,
            cout: 32,
            k: 3,
            pad: 1,
            stride: 1,
        };
        assert_eq!(g.out_shape(), Nhwc::new(8, 1024, 1024, 32));
        assert_eq!(g.weight_len(), 32 * 9);
        assert_eq!(g.macs(), 8 * 1024 * 1024 * 32 * 9);
        let t = transpose_geom(Nhwc::new(2, 16, 16, 64), 32);
        assert_eq!(t.in_shape(), Nhwc::new(2, 32, 32, 32));
        assert_eq!(t.out_shape(), Nhwc::new(2, 16, 16, 64));
        assert_eq!(t.weight_len(), 64 * 4 * 32);
        let bad = ConvGeom {
            n: 1,
            h: 2,
            w: 2,
            cin: 1,
            cout: 1,
            k: 5,
            pad: 1,
            stride: 1,
        };
        assert!(bad.check().is_err());
        // Topaz's 5x5 conv over 97 channels on 4 tiles of 2432² (--tile 2048 --batch 4): 2.3e9 elements.
        let huge = ConvGeom {
            n: 4,
            h: 2432,
            w: 2432,
            cin: 97,
            cout: 48,
            k: 5,
            pad: 2,
            stride: 1,
        };
        let e = huge.check().unwrap_err().to_string();
        assert!(
            e.contains("2^31") && e.contains("lower --batch or --tile"),
            "{e}"
        );
        assert!(ConvGeom { n: 1, ..huge }.check().is_ok());
    }

    #[test]
    fn f32_mode_refuses_tensor_core_algorithms() {
        use sys::cudnnDeterminism_t::*;
        use sys::cudnnMathType_t::*;
        let ok = sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
        let d = CUDNN_DETERMINISTIC;
        assert!(acceptable(
            Precision::F32,
            ok,
            0,
            CUDNN_FMA_MATH,
            0,
            d,
            false
        ));
        assert!(acceptable(
            Precision::F32,
            ok,
            0,
            CUDNN_DEFAULT_MATH,
            0,
            d,
            false
        ));
        assert!(!acceptable(
            Precision::F32,
            ok,
            0,
            CUDNN_TENSOR_OP_MATH,
            0,
            d,
            false
        ));
        assert!(acceptable(
            Precision::Bf16,
            ok,
            0,
            CUDNN_TENSOR_OP_MATH,
            0,
            d,
            false
        ));
        assert!(
            !acceptable(Precision::Tf32, ok, 10, CUDNN_DEFAULT_MATH, 5, d, false),
            "workspace over the limit"
        );
        assert!(!acceptable(
            Precision::Tf32,
            sys::cudnnStatus_t::CUDNN_STATUS_NOT_SUPPORTED,
            0,
            CUDNN_DEFAULT_MATH,
            0,
            d,
            false
        ));
    }

    #[test]
    fn engine_tune_keys_separate_what_the_graph_bakes_in() {
        let ptrs = [0x7f00_0000_0000u64, 0x7f00_0000_1000, 0x7f00_0000_2000];
        let k = |dir, beta, ptrs, mode| TuneKey::new(dir, beta, ptrs, mode);
        let base = k(Direction::BackwardData, 0.0, ptrs, EngineMode::Auto);
        assert_eq!(
            base,
            k(Direction::BackwardData, 0.0, ptrs, EngineMode::Auto)
        );
        assert_eq!(base.align, [16, 16, 16]);
        // beta is an attribute of the operation, alignment of the tensors: each needs its own plan.
        assert_ne!(
            base,
            k(Direction::BackwardData, 1.0, ptrs, EngineMode::Auto)
        );
        let odd = [ptrs[0], ptrs[1] + 4, ptrs[2]];
        assert_eq!(
            k(Direction::BackwardData, 0.0, odd, EngineMode::Auto).align,
            [16, 4, 16]
        );
        assert_ne!(base, k(Direction::BackwardData, 0.0, odd, EngineMode::Auto));
        assert_ne!(base, k(Direction::Forward, 0.0, ptrs, EngineMode::Auto));
        // A forced decision (tests) never reuses an automatic one, which may have kept the legacy pick.
        assert_ne!(
            base,
            k(Direction::BackwardData, 0.0, ptrs, EngineMode::Force)
        );
        assert_eq!(
            TuneKey::new(Direction::Forward, 0.0, [0; 3], EngineMode::Auto).align,
            [16; 3],
            "conv_prepare's key (no pointers) assumes fresh 16-byte aligned buffers"
        );
    }

    #[test]
    fn rel_l2_distance() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert_eq!(rel_l2(&[0.0; 3], &[0.0; 3]), 0.0);
        assert!((rel_l2(&[3.0, 4.0], &[0.0, 5.0]) - (10f64).sqrt() / 5.0).abs() < 1e-12);
        assert!(
            rel_l2(&[f32::NAN], &[1.0]).is_nan(),
            "a NaN output must not pass the check"
        );
    }

    #[test]
    fn deterministic_mode_refuses_non_deterministic_algorithms() {
        use sys::cudnnDeterminism_t::*;
        use sys::cudnnMathType_t::*;
        let ok = sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
        let m = CUDNN_TENSOR_OP_MATH;
        assert!(acceptable(
            Precision::Bf16,
            ok,
            0,
            m,
            0,
            CUDNN_NON_DETERMINISTIC,
            false
        ));
        assert!(!acceptable(
            Precision::Bf16,
            ok,
            0,
            m,
            0,
            CUDNN_NON_DETERMINISTIC,
            true
        ));
        assert!(acceptable(
            Precision::Bf16,
            ok,
            0,
            m,
            0,
            CUDNN_DETERMINISTIC,
            true
        ));
    }
}

//! cuDNN's backend (graph) API for one convolution: operation graph → engine heuristics (modes A and FALLBACK) →
//! filtered engine configs → execution plans, each run with a variant pack of device pointers.
//!
//! The legacy API (`cudnnFind*`, conv.rs) only reaches the kernels cuDNN still exposes as legacy algorithms; the
//! engines of the backend API include the newer ones PyTorch runs through cudnn-frontend. `conv.rs` times the
//! candidates built here against the legacy pick (`Gpu::conv_*`, before any graph capture) and keeps whichever is
//! faster, per shape, precision, direction, beta and pointer alignment.
//!
//! Tensor layout: dims in NCHW order with NHWC strides (filters: KCRS dims, KRSC strides), as cudnn-frontend
//! describes channels-last tensors. Data and compute dtypes are the legacy path's: f32/f32 for f32 and tf32, bf16
//! data with f32 compute for bf16.

use crate::conv::ConvGeom;
use crate::error::{CudaError, Result};
use crate::precision::Precision;
use cudarc::cudnn::sys;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, Ordering};

use sys::cudnnBackendAttributeName_t as A;
use sys::cudnnBackendAttributeType_t as T;
use sys::cudnnBackendDescriptorType_t as D;

/// Direction of a convolution call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Direction {
    /// y = conv(x, w)
    Forward,
    /// dx = conv_backward_data(dy, w)
    BackwardData,
    /// dw = conv_backward_filter(x, dy)
    BackwardFilter,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::BackwardData => "backward-data",
            Direction::BackwardFilter => "backward-filter",
        }
    }
}

/// Whether the backend-API engines are used (process-wide; the initial value comes from the environment variable
/// `CRYODEN_CUDNN_ENGINES=off|auto|force`, default `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineMode {
    /// Legacy API only (`cudnnFind*` picks).
    Off,
    /// Time the acceptable engines against the legacy pick and use an engine only when it is faster.
    Auto,
    /// Always use the fastest acceptable engine; a shape with none is an error (for tests).
    Force,
}

static MODE: AtomicU8 = AtomicU8::new(u8::MAX);

/// Sets the engine mode for every `Gpu` of the process from the next conv call on (decisions are cached per mode).
pub fn set_engine_mode(m: EngineMode) {
    MODE.store(m as u8, Ordering::Relaxed);
}

/// The engine mode for convolutions in precision `p`. `Auto` uses the engines in f32 only: there they took the
/// training step from 320 to 258 ms (docs/perf/cudnn-engines.md), while in tf32 and bf16 they gained 0.4–2.5 % and
/// cost seconds of tuning at start-up; `Force` applies to every precision (tests).
pub fn engine_mode_for(p: Precision) -> EngineMode {
    match engine_mode() {
        EngineMode::Auto if p != Precision::F32 => EngineMode::Off,
        m => m,
    }
}

/// The current engine mode (see [`EngineMode`]).
pub fn engine_mode() -> EngineMode {
    let v = MODE.load(Ordering::Relaxed);
    let m = if v == u8::MAX {
        let m = match std::env::var("CRYODEN_CUDNN_ENGINES").as_deref() {
            Ok("off") => EngineMode::Off,
            Ok("force") => EngineMode::Force,
            _ => EngineMode::Auto,
        };
        MODE.store(m as u8, Ordering::Relaxed);
        m as u8
    } else {
        v
    };
    match m {
        0 => EngineMode::Off,
        2 => EngineMode::Force,
        _ => EngineMode::Auto,
    }
}

/// What an engine config is: its engine's global index, knob choices, notes and workspace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineInfo {
    pub index: i64,
    /// (CUDNN_KNOB_TYPE_* value, choice)
    pub knobs: Vec<(u32, i64)>,
    /// CUDNN_NUMERICAL_NOTE_* values.
    pub numerical: Vec<u32>,
    /// CUDNN_BEHAVIOR_NOTE_* values.
    pub behavior: Vec<u32>,
    /// Workspace bytes of the finalized plan.
    pub workspace: usize,
}

const KNOB_NAMES: [&str; 44] = [
    "split_k",
    "swizzle",
    "tile_size",
    "use_tex",
    "edge",
    "kblock",
    "ldga",
    "ldgb",
    "chunk_k",
    "split_h",
    "wino_tile",
    "multiply",
    "split_k_buf",
    "tilek",
    "stages",
    "reduction_mode",
    "cta_split_k_mode",
    "split_k_slc",
    "idx_mode",
    "sliced",
    "split_rs",
    "singlebuffer",
    "ldgc",
    "specfilt",
    "kernel_cfg",
    "workspace",
    "tile_cga",
    "tile_cga_m",
    "tile_cga_n",
    "block_size",
    "occupancy",
    "array_size_per_thread",
    "num_c_per_block",
    "split_cols",
    "tile_rows",
    "tile_cols",
    "load_size",
    "cta_count",
    "stream_k",
    "split_p_slc",
    "tile_m",
    "tile_n",
    "warp_spec_cfg",
    "swap_ab",
];

const NOTE_NAMES: [&str; 10] = [
    "tensor_core",
    "down_convert_inputs",
    "reduced_precision_reduction",
    "fft",
    "nondeterministic",
    "winograd",
    "winograd_4x4",
    "winograd_6x6",
    "winograd_13x13",
    "strict_nan_prop",
];

impl EngineInfo {
    /// cudnn-frontend's style of tag: `eng<index>` then `_<knob>=<value>` per knob, e.g. `eng28_tile_size=5_stages=3`,
    /// then the numerical notes in brackets.
    pub fn name(&self) -> String {
        let mut s = format!("eng{}", self.index);
        for (k, v) in &self.knobs {
            match KNOB_NAMES.get(*k as usize) {
                Some(n) => s.push_str(&format!("_{n}={v}")),
                None => s.push_str(&format!("_k{k}={v}")),
            }
        }
        let notes: Vec<&str> = self
            .numerical
            .iter()
            .map(|n| NOTE_NAMES.get(*n as usize).copied().unwrap_or("?"))
            .collect();
        if !notes.is_empty() {
            s.push_str(&format!(" [{}]", notes.join(",")));
        }
        s
    }
}

const NOTE_TENSOR_CORE: u32 =
    sys::cudnnBackendNumericalNote_t::CUDNN_NUMERICAL_NOTE_TENSOR_CORE as u32;
const NOTE_DOWN_CONVERT: u32 =
    sys::cudnnBackendNumericalNote_t::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS as u32;
const NOTE_REDUCED_REDUCTION: u32 =
    sys::cudnnBackendNumericalNote_t::CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION as u32;
const NOTE_NONDETERMINISTIC: u32 =
    sys::cudnnBackendNumericalNote_t::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC as u32;

/// Why an engine config is refused, or None when it is acceptable. As PyTorch's Conv_v8.cpp filter: inputs
/// down-converted (e.g. f32 → f16/bf16) never; tensor cores not in f32 mode (TF32 off: FMA only, and no reduced
/// precision reduction either); non-deterministic engines not in deterministic mode; workspace over the limit.
pub fn refusal(
    p: Precision,
    numerical: &[u32],
    workspace: usize,
    limit: usize,
    deterministic: bool,
) -> Option<&'static str> {
    if numerical.contains(&NOTE_DOWN_CONVERT) {
        return Some("down-converts its inputs");
    }
    if p == Precision::F32 && numerical.contains(&NOTE_TENSOR_CORE) {
        return Some("uses tensor cores (TF32) in f32 mode");
    }
    if p == Precision::F32 && numerical.contains(&NOTE_REDUCED_REDUCTION) {
        return Some("reduces in reduced precision in f32 mode");
    }
    if deterministic && numerical.contains(&NOTE_NONDETERMINISTIC) {
        return Some("non-deterministic");
    }
    if workspace > limit {
        return Some("workspace over the limit");
    }
    None
}

/// Largest power-of-two byte alignment (at most 16) of a device address, as the tensor's BYTE_ALIGNMENT.
pub fn alignment(ptr: u64) -> u8 {
    if ptr == 0 {
        return 16;
    }
    (1u64 << ptr.trailing_zeros().min(4)) as u8
}

/// Owned backend descriptor.
pub(crate) struct Desc(sys::cudnnBackendDescriptor_t);

// SAFETY: host-side cuDNN objects without thread affinity, used only through `&mut Gpu`.
unsafe impl Send for Desc {}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnBackendCreateDescriptor, destroyed once here.
        let _ = unsafe { sys::cudnnBackendDestroyDescriptor(self.0) };
    }
}

fn be(what: &'static str) -> impl FnOnce(cudarc::cudnn::CudnnError) -> CudaError {
    move |source| CudaError::CudnnEngine { what, source }
}

impl Desc {
    fn new(t: D) -> Result<Desc> {
        let mut d = std::ptr::null_mut();
        // SAFETY: out-pointer to a fresh descriptor.
        unsafe { sys::cudnnBackendCreateDescriptor(t, &mut d) }
            .result()
            .map_err(be("cudnnBackendCreateDescriptor"))?;
        Ok(Desc(d))
    }
    /// Sets an attribute to `vals` (typed as `ty`; the caller matches Rust type and cuDNN type).
    fn set<V>(&self, name: A, ty: T, vals: &[V]) -> Result<()> {
        // SAFETY: `vals` holds `len` elements of the type cuDNN expects for `ty`.
        unsafe {
            sys::cudnnBackendSetAttribute(
                self.0,
                name,
                ty,
                vals.len() as i64,
                vals.as_ptr() as *const c_void,
            )
        }
        .result()
        .map_err(be("cudnnBackendSetAttribute"))
    }
    fn set_desc(&self, name: A, ds: &[&Desc]) -> Result<()> {
        let raw: Vec<sys::cudnnBackendDescriptor_t> = ds.iter().map(|d| d.0).collect();
        self.set(name, T::CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw)
    }
    fn finalize(&self, what: &'static str) -> Result<()> {
        // SAFETY: live descriptor.
        unsafe { sys::cudnnBackendFinalize(self.0) }
            .result()
            .map_err(be(what))
    }
    fn get_i64(&self, name: A) -> Result<i64> {
        let (mut v, mut n) = (0i64, 0i64);
        // SAFETY: room for one i64.
        unsafe {
            sys::cudnnBackendGetAttribute(
                self.0,
                name,
                T::CUDNN_TYPE_INT64,
                1,
                &mut n,
                &mut v as *mut i64 as *mut c_void,
            )
        }
        .result()
        .map_err(be("cudnnBackendGetAttribute"))?;
        Ok(v)
    }
    /// An enum-valued array attribute read as raw u32 (cuDNN may return values newer than our bindings know).
    /// `max` elements at most (1 for a scalar attribute: cuDNN refuses a larger request there).
    fn get_u32s(&self, name: A, ty: T, max: usize) -> Result<Vec<u32>> {
        let mut v = [0u32; 16];
        let mut n = 0i64;
        // SAFETY: room for 16 four-byte enum values; at most `max` ≤ 16 requested.
        unsafe {
            sys::cudnnBackendGetAttribute(
                self.0,
                name,
                ty,
                max.min(16) as i64,
                &mut n,
                v.as_mut_ptr() as *mut c_void,
            )
        }
        .result()
        .map_err(be("cudnnBackendGetAttribute"))?;
        Ok(v[..(n.clamp(0, 16) as usize)].to_vec())
    }
    /// Descriptor-array attribute: `make` fresh descriptors of type `t` are filled in by cuDNN.
    fn get_descs(&self, name: A, t: D, make: usize) -> Result<Vec<Desc>> {
        let ds: Vec<Desc> = (0..make).map(|_| Desc::new(t)).collect::<Result<_>>()?;
        let mut raw: Vec<sys::cudnnBackendDescriptor_t> = ds.iter().map(|d| d.0).collect();
        let mut n = 0i64;
        // SAFETY: `raw` holds `make` live descriptors of the type cuDNN fills for this attribute.
        unsafe {
            sys::cudnnBackendGetAttribute(
                self.0,
                name,
                T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
                make as i64,
                &mut n,
                raw.as_mut_ptr() as *mut c_void,
            )
        }
        .result()
        .map_err(be("cudnnBackendGetAttribute"))?;
        let mut ds = ds;
        ds.truncate(n.clamp(0, make as i64) as usize);
        Ok(ds)
    }
    /// Number of elements of a descriptor-array attribute.
    fn count(&self, name: A) -> Result<usize> {
        let mut n = 0i64;
        // SAFETY: a count query (no elements requested).
        unsafe {
            sys::cudnnBackendGetAttribute(
                self.0,
                name,
                T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
                0,
                &mut n,
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(be("cudnnBackendGetAttribute"))?;
        Ok(n.max(0) as usize)
    }
}

/// Unique ids of the three tensors in every graph and variant pack: x-side (x or dx), w-side (w or dw), y-side.
const UIDS: [i64; 3] = [1, 2, 3];

fn tensor(
    uid: i64,
    dt: sys::cudnnDataType_t,
    dims: [i64; 4],
    strides: [i64; 4],
    align: u8,
) -> Result<Desc> {
    let t = Desc::new(D::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
    t.set(
        A::CUDNN_ATTR_TENSOR_DATA_TYPE,
        T::CUDNN_TYPE_DATA_TYPE,
        &[dt],
    )?;
    t.set(A::CUDNN_ATTR_TENSOR_DIMENSIONS, T::CUDNN_TYPE_INT64, &dims)?;
    t.set(A::CUDNN_ATTR_TENSOR_STRIDES, T::CUDNN_TYPE_INT64, &strides)?;
    t.set(A::CUDNN_ATTR_TENSOR_UNIQUE_ID, T::CUDNN_TYPE_INT64, &[uid])?;
    t.set(
        A::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT,
        T::CUDNN_TYPE_INT64,
        &[align as i64],
    )?;
    t.finalize("cudnnBackendFinalize(tensor)")?;
    Ok(t)
}

/// NCHW-ordered dims with NHWC strides of a packed `[n, h, w, c]` tensor.
fn nhwc(n: usize, c: usize, h: usize, w: usize) -> ([i64; 4], [i64; 4]) {
    let (n, c, h, w) = (n as i64, c as i64, h as i64, w as i64);
    ([n, c, h, w], [h * w * c, 1, w * c, c])
}

/// The operation graph of one conv (handle, graph and the descriptors it refers to, kept alive together).
struct Graph {
    graph: Desc,
    _parts: Vec<Desc>,
}

fn graph(
    handle: sys::cudnnHandle_t,
    g: &ConvGeom,
    p: Precision,
    dir: Direction,
    beta: f32,
    align: [u8; 3],
) -> Result<Graph> {
    let dt = p.dtype().cudnn();
    let o = g.out_shape();
    let (xd, xs) = nhwc(g.n, g.cin, g.h, g.w);
    let (wd, ws) = nhwc(g.cout, g.cin, g.k, g.k);
    let (yd, ys) = nhwc(o.n, o.c, o.h, o.w);
    let x = tensor(UIDS[0], dt, xd, xs, align[0])?;
    let w = tensor(UIDS[1], dt, wd, ws, align[1])?;
    let y = tensor(UIDS[2], dt, yd, ys, align[2])?;
    let conv = Desc::new(D::CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR)?;
    let f32t = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_COMP_TYPE,
        T::CUDNN_TYPE_DATA_TYPE,
        &[f32t],
    )?;
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_CONV_MODE,
        T::CUDNN_TYPE_CONVOLUTION_MODE,
        &[sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION],
    )?;
    let (pad, stride) = (g.pad as i64, g.stride as i64);
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS,
        T::CUDNN_TYPE_INT64,
        &[2i64],
    )?;
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_DILATIONS,
        T::CUDNN_TYPE_INT64,
        &[1i64, 1],
    )?;
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES,
        T::CUDNN_TYPE_INT64,
        &[stride, stride],
    )?;
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS,
        T::CUDNN_TYPE_INT64,
        &[pad, pad],
    )?;
    // Post-padding as the legacy API implies it: whatever the output size leaves over (pad for our shapes).
    conv.set(
        A::CUDNN_ATTR_CONVOLUTION_POST_PADDINGS,
        T::CUDNN_TYPE_INT64,
        &[pad, pad],
    )?;
    conv.finalize("cudnnBackendFinalize(convolution)")?;
    let (alpha, beta) = (1.0f32, beta);
    let (ty, names) = match dir {
        Direction::Forward => (
            D::CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
            [
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA,
            ],
        ),
        Direction::BackwardData => (
            D::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
            [
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA,
            ],
        ),
        Direction::BackwardFilter => (
            D::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
            [
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
                A::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA,
            ],
        ),
    };
    let op = Desc::new(ty)?;
    op.set_desc(names[0], &[&x])?;
    op.set_desc(names[1], &[&w])?;
    op.set_desc(names[2], &[&y])?;
    op.set_desc(names[3], &[&conv])?;
    op.set(names[4], T::CUDNN_TYPE_FLOAT, &[alpha])?;
    op.set(names[5], T::CUDNN_TYPE_FLOAT, &[beta])?;
    op.finalize("cudnnBackendFinalize(convolution operation)")?;
    let graph = Desc::new(D::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
    graph.set(
        A::CUDNN_ATTR_OPERATIONGRAPH_HANDLE,
        T::CUDNN_TYPE_HANDLE,
        &[handle],
    )?;
    graph.set_desc(A::CUDNN_ATTR_OPERATIONGRAPH_OPS, &[&op])?;
    graph.finalize("cudnnBackendFinalize(operation graph)")?;
    Ok(Graph {
        graph,
        _parts: vec![x, w, y, conv, op],
    })
}

/// A finalized execution plan of one engine config, ready to run.
pub(crate) struct EnginePlan {
    plan: Desc,
    pub(crate) info: EngineInfo,
    /// The variant pack of the last pointers it ran with (x-side, w-side, y-side, workspace), reused while equal.
    pack: Option<([u64; 4], Desc)>,
    /// Keeps the graph's descriptors alive as long as the plan.
    _graph: std::sync::Arc<Graph>,
}

// SAFETY: as Desc.
unsafe impl Send for Graph {}
unsafe impl Sync for Graph {}

/// Engine configs cuDNN's heuristics return for one graph: mode A first, then the fallback list.
const HEUR_MODES: [sys::cudnnBackendHeurMode_t; 2] = [
    sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A,
    sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK,
];

/// At most this many acceptable plans are built and timed per call (heuristics order, so the likeliest first):
/// each costs a finalize (a run-time compile for some engines) and a few timed runs.
pub const MAX_CANDIDATES: usize = 12;

/// Result of building the candidates: the plans, and how many configs each filter refused (for bench output).
pub(crate) struct Candidates {
    pub(crate) plans: Vec<EnginePlan>,
    pub(crate) refused: Vec<(String, &'static str)>,
    /// Configs that could not be described or finalized: (engine name or "?", what failed).
    pub(crate) failed: Vec<(String, String)>,
}

/// Builds the graph for (g, p, dir, beta, alignment), asks the heuristics for engine configs, drops the
/// unacceptable ones (see [`refusal`]) and finalizes an execution plan for each of the rest, deduplicated.
#[allow(clippy::too_many_arguments)]
pub(crate) fn candidates(
    handle: sys::cudnnHandle_t,
    g: &ConvGeom,
    p: Precision,
    dir: Direction,
    beta: f32,
    align: [u8; 3],
    deterministic: bool,
    limit: usize,
) -> Result<Candidates> {
    let gr = std::sync::Arc::new(graph(handle, g, p, dir, beta, align)?);
    let mut out = Candidates {
        plans: Vec::new(),
        refused: Vec::new(),
        failed: Vec::new(),
    };
    let mut seen: Vec<(i64, Vec<(u32, i64)>)> = Vec::new();
    let mut seq = 0i64;
    for mode in HEUR_MODES {
        let heur = Desc::new(D::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
        heur.set_desc(A::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[&gr.graph])?;
        heur.set(
            A::CUDNN_ATTR_ENGINEHEUR_MODE,
            T::CUDNN_TYPE_HEUR_MODE,
            &[mode],
        )?;
        if heur
            .finalize("cudnnBackendFinalize(engine heuristics)")
            .is_err()
        {
            continue;
        }
        let n = heur.count(A::CUDNN_ATTR_ENGINEHEUR_RESULTS)?;
        let cfgs = heur.get_descs(
            A::CUDNN_ATTR_ENGINEHEUR_RESULTS,
            D::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR,
            n,
        )?;
        for cfg in cfgs {
            seq += 1;
            if out.plans.len() >= MAX_CANDIDATES {
                return Ok(out);
            }
            let info = match describe(&cfg, seq) {
                Ok(i) => i,
                Err(e) => {
                    out.failed.push(("?".into(), e.to_string()));
                    continue;
                }
            };
            let key = (info.index, info.knobs.clone());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            // The config's own workspace figure is checked again on the finalized plan below.
            if let Some(why) = refusal(p, &info.numerical, 0, limit, deterministic) {
                out.refused.push((info.name(), why));
                continue;
            }
            let plan = Desc::new(D::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
            plan.set(
                A::CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
                T::CUDNN_TYPE_HANDLE,
                &[handle],
            )?;
            plan.set_desc(A::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[&cfg])?;
            if let Err(e) = plan.finalize("cudnnBackendFinalize(execution plan)") {
                out.failed.push((info.name(), e.to_string()));
                continue;
            }
            let ws = match plan.get_i64(A::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE) {
                Ok(w) => w,
                Err(e) => {
                    out.failed.push((info.name(), e.to_string()));
                    continue;
                }
            };
            let info = EngineInfo {
                workspace: ws.max(0) as usize,
                ..info
            };
            if let Some(why) = refusal(p, &info.numerical, info.workspace, limit, deterministic) {
                out.refused.push((info.name(), why));
                continue;
            }
            out.plans.push(EnginePlan {
                plan,
                info,
                pack: None,
                _graph: gr.clone(),
            });
        }
    }
    Ok(out)
}

/// Knob type recorded when a config's knobs could not be read (its value is the config's position in the
/// heuristics list, so that such configs are not taken for duplicates of each other).
const UNREADABLE_KNOBS: u32 = 999;

/// Engine index, knobs and notes of an engine config returned by the heuristics (`seq`: its position).
fn describe(cfg: &Desc, seq: i64) -> Result<EngineInfo> {
    let engine = cfg
        .get_descs(
            A::CUDNN_ATTR_ENGINECFG_ENGINE,
            D::CUDNN_BACKEND_ENGINE_DESCRIPTOR,
            1,
        )?
        .pop()
        .ok_or_else(|| {
            CudaError::Shape("cuDNN returned an engine config without an engine".into())
        })?;
    let index = engine.get_i64(A::CUDNN_ATTR_ENGINE_GLOBAL_INDEX)?;
    let numerical = engine.get_u32s(
        A::CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
        T::CUDNN_TYPE_NUMERICAL_NOTE,
        16,
    )?;
    // Behaviour notes and knobs only name the config: reading them may fail without making it unusable.
    let behavior = engine
        .get_u32s(
            A::CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE,
            T::CUDNN_TYPE_BEHAVIOR_NOTE,
            16,
        )
        .unwrap_or_default();
    let knobs = (|| -> Result<Vec<(u32, i64)>> {
        let choices = cfg.get_descs(
            A::CUDNN_ATTR_ENGINECFG_KNOB_CHOICES,
            D::CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR,
            sys::cudnnBackendKnobType_t::CUDNN_KNOB_TYPE_COUNTS as usize,
        )?;
        let mut knobs = Vec::with_capacity(choices.len());
        for c in &choices {
            let t = c.get_u32s(
                A::CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE,
                T::CUDNN_TYPE_KNOB_TYPE,
                1,
            )?;
            let v = c.get_i64(A::CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE)?;
            if let Some(&t) = t.first() {
                knobs.push((t, v));
            }
        }
        Ok(knobs)
    })()
    .unwrap_or_else(|_| vec![(UNREADABLE_KNOBS, seq)]);
    Ok(EngineInfo {
        index,
        knobs,
        numerical,
        behavior,
        workspace: 0,
    })
}

impl EnginePlan {
    /// Runs the plan on the handle's stream: `ptrs` = (x-side, w-side, y-side) device addresses, `ws` the workspace
    /// (at least `info.workspace` bytes). Works inside stream capture (no allocation; the variant pack is host-side).
    pub(crate) fn execute(
        &mut self,
        handle: sys::cudnnHandle_t,
        ptrs: [u64; 3],
        ws: u64,
    ) -> Result<()> {
        let key = [ptrs[0], ptrs[1], ptrs[2], ws];
        if self.pack.as_ref().is_none_or(|(k, _)| *k != key) {
            let vp = Desc::new(D::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
            let data: [*mut c_void; 3] = ptrs.map(|p| p as *mut c_void);
            vp.set(
                A::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
                T::CUDNN_TYPE_INT64,
                &UIDS,
            )?;
            vp.set(
                A::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                T::CUDNN_TYPE_VOID_PTR,
                &data,
            )?;
            vp.set(
                A::CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
                T::CUDNN_TYPE_VOID_PTR,
                &[ws as *mut c_void],
            )?;
            vp.finalize("cudnnBackendFinalize(variant pack)")?;
            self.pack = Some((key, vp));
        }
        let vp = &self.pack.as_ref().unwrap().1;
        // SAFETY: finalized plan and variant pack; the pointers are live device buffers of the graph's shapes
        // (checked by the caller) and the workspace is as large as the plan asked.
        unsafe { sys::cudnnBackendExecute(handle, self.plan.0, vp.0) }
            .result()
            .map_err(be("cudnnBackendExecute"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_mode_refuses_tensor_core_and_down_converting_engines() {
        let tc = [NOTE_TENSOR_CORE];
        assert_eq!(refusal(Precision::F32, &[], 0, 0, false), None);
        assert!(refusal(Precision::F32, &tc, 0, 0, false).is_some());
        assert_eq!(refusal(Precision::Tf32, &tc, 0, 0, false), None);
        assert_eq!(refusal(Precision::Bf16, &tc, 0, 0, false), None);
        for p in [Precision::F32, Precision::Tf32, Precision::Bf16] {
            assert!(refusal(p, &[NOTE_TENSOR_CORE, NOTE_DOWN_CONVERT], 0, 0, false).is_some());
        }
        assert!(refusal(Precision::F32, &[NOTE_REDUCED_REDUCTION], 0, 0, false).is_some());
        // Winograd / FFT notes alone are no reason to refuse (the legacy path uses them too).
        assert_eq!(refusal(Precision::F32, &[3, 5], 0, 0, false), None);
    }

    #[test]
    fn deterministic_mode_and_workspace_limit() {
        let nd = [NOTE_NONDETERMINISTIC];
        assert_eq!(refusal(Precision::Bf16, &nd, 0, 0, false), None);
        assert!(refusal(Precision::Bf16, &nd, 0, 0, true).is_some());
        assert_eq!(refusal(Precision::Bf16, &[], 100, 100, true), None);
        assert!(refusal(Precision::Bf16, &[], 101, 100, false).is_some());
    }

    #[test]
    fn note_values_match_cudnn() {
        // The filter compares raw values: they must be cuDNN's (cudnn_backend.h).
        assert_eq!(
            (
                NOTE_TENSOR_CORE,
                NOTE_DOWN_CONVERT,
                NOTE_REDUCED_REDUCTION,
                NOTE_NONDETERMINISTIC
            ),
            (0, 1, 2, 4)
        );
        assert_eq!(
            KNOB_NAMES.len(),
            sys::cudnnBackendKnobType_t::CUDNN_KNOB_TYPE_COUNTS as usize
        );
    }

    #[test]
    fn names_and_alignment() {
        let e = EngineInfo {
            index: 28,
            knobs: vec![(2, 5), (14, 3), (99, 1)],
            numerical: vec![0, 4],
            behavior: vec![],
            workspace: 0,
        };
        assert_eq!(
            e.name(),
            "eng28_tile_size=5_stages=3_k99=1 [tensor_core,nondeterministic]"
        );
        assert_eq!(alignment(0x7f00_0000_0100), 16);
        assert_eq!(alignment(0x7f00_0000_0104), 4);
        assert_eq!(alignment(0x7f00_0000_0102), 2);
        assert_eq!(alignment(0x7f00_0000_0108), 8);
    }

    #[test]
    fn engine_mode_round_trip() {
        let before = engine_mode();
        for m in [EngineMode::Off, EngineMode::Force, EngineMode::Auto] {
            set_engine_mode(m);
            assert_eq!(engine_mode(), m);
            // Auto means engines in f32 only; Off and Force hold for every precision.
            for p in Precision::ALL {
                let want = if m == EngineMode::Auto && p != Precision::F32 {
                    EngineMode::Off
                } else {
                    m
                };
                assert_eq!(engine_mode_for(p), want, "{m:?} {p}");
            }
        }
        set_engine_mode(before);
    }
}

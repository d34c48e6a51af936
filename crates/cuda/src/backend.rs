//! `cryoden_nn::Backend` on one GPU.
//!
//! Buffers hold f32, as the trait specifies. Precision decides what the convolutions compute with:
//! - `f32`: cuDNN in f32 with TF32 off; dense views go to cuDNN directly, strided ones are staged packed first.
//! - `tf32`: the same, with tensor cores allowed to round conv inputs to TF32.
//! - `bf16`: conv inputs are converted to bf16 on the way into cuDNN (weights through a bf16 copy of the
//!   parameter buffer, refreshed by the Adam kernel itself), outputs converted back to f32 in the bias/activation
//!   epilogue. Master weights, moments, loss and every elementwise op stay f32. This is "autocast at the op
//!   boundary": correct to the bf16 tolerance, but it moves more bytes than bf16 storage of activations would (see
//!   docs/CUDA.md for the plan: buffer kinds in the trait).
//!
//! The backend allocates lazily, outside the trait's `ws` buffers: cuDNN plans and workspace on the first call per
//! shape, staging buffers on first need; after the first step nothing is allocated (`*_workspace_len` return 0).

mod transfer;

use crate::conv::{transpose_geom, ConvGeom as CGeom};
use crate::device::{ActGrad, Buf, Gpu, LossKind as GLoss, Nhwc, View as GView};
use crate::error::CudaError;
use crate::precision::{DType, Precision};
use cryoden_nn::{
    ActBackward, Activation, AdamParams, Backend, BufKind, ConvGeom, ConvTGeom, LossKind, NnError,
    PoolGeom, UpsampleGeom, View,
};
use cudarc::driver::CudaEvent;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A flat f32 buffer on the GPU, with a bf16 copy made on demand (bf16 precision reads parameters through it).
pub struct CudaBuf {
    buf: Buf,
    /// Bumped by every op that writes the buffer, so a stale bf16 copy is detected.
    version: AtomicU64,
    /// bf16 copy and the version it was made from.
    shadow: Mutex<Option<(Buf, u64)>>,
}

impl CudaBuf {
    fn ptr(&self) -> u64 {
        self.buf.ptr()
    }
    fn touched(&mut self) {
        *self.version.get_mut() += 1;
    }
}

/// The CUDA backend: one GPU and one precision.
pub struct CudaBackend {
    gpu: Mutex<Gpu>,
    precision: Precision,
    name: String,
    /// Storage type of buffers allocated from now on (see [`CudaBackend::set_alloc_dtype`]).
    alloc_bf16: std::sync::atomic::AtomicBool,
    /// When on, every op records a pair of events (see [`CudaBackend::profile`]).
    profiling: std::sync::atomic::AtomicBool,
    events: Mutex<Vec<(&'static str, CudaEvent, CudaEvent)>>,
    // The stream and context outside the mutex, so op timers never lock the GPU (a timer drops while an op's
    // MutexGuard temporary may still be alive).
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
    ctx: std::sync::Arc<cudarc::driver::CudaContext>,
    /// What the ops of the current `run_step` pass do (see [`CudaBackend::run_step`]).
    pass: Mutex<Pass>,
    /// The captured training step, if any.
    graphs: Mutex<StepGraphs>,
    /// Pinned host copy of a captured step's Adam bias corrections and its device twin (see `run_step`).
    step_hp: Mutex<Option<(PinnedHp, Buf)>>,
    /// Copy stream and staging of `download_host` (created on first use).
    downloads: Mutex<Option<transfer::Downloads>>,
    /// The arena slab reserved by `Backend::reserve` until `end_reserve`.
    reservation: Mutex<Option<crate::device::Reservation>>,
}

/// How ops behave inside `run_step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PassMode {
    /// Not inside `run_step`: run.
    Off,
    /// Run, and add the op to the step's signature.
    Eager,
    /// Add the op to the signature, do the host-side bookkeeping, launch nothing.
    Record,
    /// Run on the capturing stream (the launches become graph nodes), and add the op to the signature.
    Capture,
}

struct Pass {
    mode: PassMode,
    sig: DefaultHasher,
    /// An op that cannot be part of a graph (upload, download, synchronize, sum_squares) was called.
    ungraphable: Option<&'static str>,
}

/// A captured graph; CudaGraph holds raw driver handles, used only under the backend's mutex.
struct SendGraph(cudarc::driver::CudaGraph);
// SAFETY: the graph is only touched (launched, dropped) while `CudaBackend::graphs` is locked.
unsafe impl Send for SendGraph {}

/// Two f32 in page-locked host memory: the Adam bias corrections of the step being replayed.
struct PinnedHp(*mut f32);
// SAFETY: written only by the thread holding `CudaBackend::graphs` (inside run_step), after the previous replay that
// reads it has finished (run_step waits for it).
unsafe impl Send for PinnedHp {}

impl Drop for PinnedHp {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc in `run_step`; no queued copy reads it once the backend is dropped
        // (run_step waits for every replay it launched before returning the next time, and the stream is synchronised
        // by cudarc when the context goes).
        let _ = unsafe { cudarc::driver::result::free_host(self.0 as _) };
    }
}

#[derive(Default)]
struct StepGraphs {
    /// Signature of the captured step and its graph.
    graph: Option<(u64, SendGraph)>,
    /// Signature of the last step run eagerly: the next step with the same signature is captured.
    last_eager: Option<u64>,
    /// Graphs given up: turned off, profiling, or a step that cannot be captured.
    disabled: bool,
    /// Set once a replay is queued, cleared when it is known to be done.
    replay_done: Option<CudaEvent>,
    captures: u64,
    replays: u64,
}

/// Records the end event of one op when dropped (profiling only).
struct OpTimer<'a> {
    be: &'a CudaBackend,
    name: &'static str,
    start: Option<CudaEvent>,
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        if let Some(start) = self.start.take() {
            if let Ok(end) = self
                .be
                .ctx
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            {
                if end.record(&self.be.stream).is_ok() {
                    self.be
                        .events
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((self.name, start, end));
                }
            }
        }
    }
}

/// Buffers of at most this many elements stay f32 under `set_alloc_dtype(Bf16)`: the one-float loss. (A larger bound
/// breaks deep nets: topaz-unet's 1×1×48 bottom map on a 64² input must stay bf16 like its neighbours.)
const SMALL_STAYS_F32: usize = 1;

/// Staging slots (see `Gpu::staging`).
const S_X: usize = 0;
const S_Y: usize = 1;
const S_W: usize = 2;
const S_LOSS: usize = 3;

fn be_err(e: CudaError) -> NnError {
    NnError::Backend {
        backend: "cuda".into(),
        msg: e.to_string(),
    }
}

fn slope(a: Activation) -> f32 {
    match a {
        Activation::Identity => 1.0,
        Activation::Relu => 0.0,
        Activation::LeakyRelu(s) => s,
    }
}

/// Adds an op and its arguments to the step signature (see `CudaBackend::note`); evaluates to true when the op must
/// launch nothing (record pass).
macro_rules! sig {
    ($be:expr, $($v:expr),+ $(,)?) => {
        $be.note(|h| {
            $(Hash::hash(&$v, h);)+
        })
    };
}

fn shape_err(op: &'static str, msg: String) -> NnError {
    NnError::Shape { op, msg }
}

impl CudaBackend {
    /// [`Backend::upload`], each value through `norm.normalize` on the device if given.
    fn upload_mapped(
        &self,
        src: &[f32],
        dst: &mut CudaBuf,
        offset: usize,
        norm: Option<cryoden_nn::ImageNorm>,
    ) -> cryoden_nn::Result<()> {
        self.graph_barrier("upload")?;
        if offset + src.len() > dst.buf.len {
            return Err(shape_err(
                "upload",
                format!(
                    "range {offset}..{} exceeds buffer of {}",
                    offset + src.len(),
                    dst.buf.len
                ),
            ));
        }
        dst.touched();
        if src.is_empty() {
            return Ok(());
        }
        // Copy stream + device staging; the destination is written in stream order (Gpu::upload_async).
        let dt = dst.buf.dtype;
        self.gpu()
            .upload_async(src, dst.buf.ptr_at(offset), dt, norm)
            .map_err(be_err)
    }

    /// Opens GPU `ordinal` for `precision`. Fails with a clear message (no panic) when the driver, NVRTC, cuDNN or
    /// the GPU is missing. This is what `--device cuda[:N] --precision P` should call.
    pub fn new(ordinal: usize, precision: Precision) -> crate::Result<CudaBackend> {
        let gpu = Gpu::open(ordinal)?;
        let name = format!(
            "cuda:{ordinal} {} (sm_{}{}, {precision})",
            gpu.info.name, gpu.info.compute_capability.0, gpu.info.compute_capability.1
        );
        Ok(CudaBackend {
            stream: gpu.stream.clone(),
            ctx: gpu.ctx.clone(),
            gpu: Mutex::new(gpu),
            precision,
            name,
            alloc_bf16: std::sync::atomic::AtomicBool::new(false),
            profiling: std::sync::atomic::AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            pass: Mutex::new(Pass {
                mode: PassMode::Off,
                sig: DefaultHasher::new(),
                ungraphable: None,
            }),
            graphs: Mutex::new(StepGraphs {
                disabled: std::env::var("CRYODEN_CUDA_GRAPHS").is_ok_and(|v| v == "0"),
                ..StepGraphs::default()
            }),
            step_hp: Mutex::new(None),
            downloads: Mutex::new(None),
            reservation: Mutex::new(None),
        })
    }

    /// Storage type of `alloc(len)`. Small buffers (the loss) stay f32 even under set_alloc_dtype(Bf16): a loss
    /// rounded to bf16 loses 3 digits.
    fn plain_dtype(&self, len: usize) -> DType {
        if self.alloc_bf16.load(Ordering::Relaxed) && len > SMALL_STAYS_F32 {
            DType::Bf16
        } else {
            DType::F32
        }
    }

    /// Storage type of `alloc_kind(len, kind)`: bf16 mode stores activations (and their gradients, inputs,
    /// targets) in bf16, as autocast does; parameters, moments and the loss stay f32 (f32 master weights).
    fn kind_dtype(&self, len: usize, kind: BufKind) -> DType {
        match kind {
            BufKind::Activation if self.precision == Precision::Bf16 && len > SMALL_STAYS_F32 => {
                DType::Bf16
            }
            _ => self.plain_dtype(len),
        }
    }

    /// A zero-filled buffer of `len` elements stored as `dt`.
    fn alloc_dtype(&self, len: usize, dt: DType) -> cryoden_nn::Result<CudaBuf> {
        self.graph_barrier("alloc")?;
        let mut gpu = self.gpu();
        let buf = gpu.alloc(len, dt).map_err(be_err)?;
        if len > 0 {
            gpu.fill(&buf, 0.0).map_err(be_err)?;
        }
        Ok(CudaBuf {
            buf,
            version: AtomicU64::new(0),
            shadow: Mutex::new(None),
        })
    }

    /// Storage type of the buffers `alloc` returns from now on (default f32). With bf16 precision, allocating the
    /// model's activations (`Model::activations`) under `DType::Bf16` stores activations and their gradients in
    /// bf16, halving their memory traffic; parameters, gradients, Adam moments must stay f32 (Adam refuses bf16).
    /// `upload`/`download` convert. One-element buffers (the loss) stay f32. This is a stop-gap until the
    /// `Backend` trait can say what a buffer is for.
    pub fn set_alloc_dtype(&self, dtype: DType) {
        self.alloc_bf16
            .store(dtype == DType::Bf16, Ordering::Relaxed);
    }

    /// Turns per-op GPU timing on or off (off by default: it adds two event records per op).
    pub fn set_profiling(&self, on: bool) {
        self.profiling.store(on, Ordering::Relaxed);
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// GPU milliseconds per op name since profiling was turned on (waits for the GPU), largest first, with the
    /// number of calls; clears the record.
    pub fn profile(&self) -> crate::Result<Vec<(&'static str, f64, usize)>> {
        self.gpu().sync()?;
        let events = std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()));
        let mut acc: Vec<(&'static str, f64, usize)> = Vec::new();
        for (name, a, b) in events {
            let ms = a
                .elapsed_ms(&b)
                .map_err(crate::error::drv("cuEventElapsedTime"))? as f64;
            match acc.iter_mut().find(|(n, _, _)| *n == name) {
                Some(e) => {
                    e.1 += ms;
                    e.2 += 1;
                }
                None => acc.push((name, ms, 1)),
            }
        }
        acc.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(acc)
    }

    fn timer(&self, name: &'static str) -> OpTimer<'_> {
        let mut start = None;
        if self.profiling.load(Ordering::Relaxed) {
            if let Ok(e) = self
                .ctx
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            {
                if e.record(&self.stream).is_ok() {
                    start = Some(e);
                }
            }
        }
        OpTimer {
            be: self,
            name,
            start,
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Direct access to the GPU (benchmarks, algorithm reports).
    pub fn gpu(&self) -> MutexGuard<'_, Gpu> {
        self.gpu.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tensor view of `c` channels of `pixels` pixels inside `b` at the trait's view `v`.
    fn view(
        &self,
        op: &'static str,
        b: &CudaBuf,
        v: View,
        pixels: usize,
        c: usize,
        dims: Nhwc,
    ) -> Result<GView, NnError> {
        if v.offset + c > v.stride || b.buf.len < pixels * v.stride {
            return Err(shape_err(
                op,
                format!("view (stride {}, offset {}) of {c} channels × {pixels} pixels in a buffer of {}", v.stride, v.offset, b.buf.len),
            ));
        }
        Ok(GView {
            ptr: b.buf.ptr_at(v.offset),
            dtype: b.buf.dtype,
            shape: Nhwc { c, ..dims },
            cs: v.stride,
        })
    }

    /// A 2×2 max-pool's tensors as device views: `(x or dx, y or dy)` sized by `g`'s input and output.
    fn pool_view(
        &self,
        op: &'static str,
        g: &PoolGeom,
        b: &CudaBuf,
        v: View,
        output: bool,
    ) -> Result<GView, NnError> {
        let d = if output { g.out_dims() } else { g.dims };
        self.view(op, b, v, d.pixels(), g.c, Nhwc::new(d.n, d.h, d.w, g.c))
    }

    /// A transposed conv's tensors as device views: its input side (x, dx: cin channels) or its output side (y,
    /// dy: cout channels at twice the size).
    fn convt_view(
        &self,
        op: &'static str,
        g: &ConvTGeom,
        b: &CudaBuf,
        v: View,
        output: bool,
    ) -> Result<GView, NnError> {
        let (d, c) = if output {
            (g.out_dims(), g.cout)
        } else {
            (g.dims, g.cin)
        };
        self.view(op, b, v, d.pixels(), c, Nhwc::new(d.n, d.h, d.w, c))
    }

    /// `v` as a packed tensor of the compute dtype: itself if it already is one, else converted into staging `slot`.
    fn packed_in(&self, gpu: &mut Gpu, v: GView, slot: usize) -> Result<GView, NnError> {
        let dt = self.precision.dtype();
        if v.dtype == dt && v.is_packed() {
            return Ok(v);
        }
        let p = gpu.staging(slot, v.shape.len(), dt).map_err(be_err)?;
        let out = GView {
            ptr: p,
            dtype: dt,
            shape: v.shape,
            cs: v.shape.c,
        };
        gpu.bias_act(v, None, out, 1.0).map_err(be_err)?;
        Ok(out)
    }

    /// Where cuDNN should write an output destined for `v`: `v` itself if packed and of the compute dtype, else
    /// staging `slot` (then moved with `finish_out`).
    fn packed_out(&self, gpu: &mut Gpu, v: GView, slot: usize) -> Result<GView, NnError> {
        let dt = self.precision.dtype();
        if v.dtype == dt && v.is_packed() {
            return Ok(v);
        }
        let p = gpu.staging(slot, v.shape.len(), dt).map_err(be_err)?;
        Ok(GView {
            ptr: p,
            dtype: dt,
            shape: v.shape,
            cs: v.shape.c,
        })
    }

    /// Pointer to the weights at `w_off` in the compute dtype (the bf16 copy of `params` for bf16).
    fn weights(&self, gpu: &mut Gpu, params: &CudaBuf, w_off: usize) -> Result<u64, NnError> {
        if self.precision.dtype() == DType::F32 {
            return Ok(params.buf.ptr_at(w_off));
        }
        let version = params.version.load(Ordering::Relaxed);
        let mut sh = params.shadow.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = matches!(&*sh, Some((_, v)) if *v == version);
        if !fresh {
            let copy = match sh.take() {
                Some((b, _)) => b,
                None => gpu.alloc(params.buf.len, DType::Bf16).map_err(be_err)?,
            };
            let s = Nhwc::new(1, 1, params.buf.len.max(1), 1);
            if params.buf.len > 0 {
                gpu.bias_act(params.buf.view(s), None, copy.view(s), 1.0)
                    .map_err(be_err)?;
            }
            *sh = Some((copy, version));
        }
        Ok(sh.as_ref().unwrap().0.ptr_at(w_off))
    }

    /// Turns the CUDA graph of the training step on (the default; `CRYODEN_CUDA_GRAPHS=0` turns it off) or off.
    pub fn set_step_graphs(&self, on: bool) {
        let mut g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        g.disabled = !on;
        if !on {
            g.graph = None;
        }
    }

    /// Restricts cuDNN to bit-reproducible algorithms (on) or lets `cudnnFind` pick the fastest (off, the default).
    /// Forgets the algorithms found so far and any captured step, so it takes effect from the next op.
    pub fn set_deterministic(&self, on: bool) {
        let mut g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        g.graph = None;
        g.last_eager = None;
        let mut gpu = self.gpu();
        gpu.deterministic = on;
        gpu.conv_plans.clear();
    }

    /// (graphs captured, steps replayed from a graph) so far.
    pub fn step_graph_stats(&self) -> (u64, u64) {
        let g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        (g.captures, g.replays)
    }

    fn pass(&self) -> MutexGuard<'_, Pass> {
        self.pass.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an op to the signature of the step being run (inside `run_step`); true when the op must launch nothing
    /// (record pass).
    fn note(&self, f: impl FnOnce(&mut DefaultHasher)) -> bool {
        let mut p = self.pass();
        match p.mode {
            PassMode::Off => false,
            PassMode::Eager | PassMode::Capture => {
                f(&mut p.sig);
                false
            }
            PassMode::Record => {
                f(&mut p.sig);
                true
            }
        }
    }

    /// For ops that cannot be part of a graph: inside `run_step` they make the step ungraphable; in a record or
    /// capture pass they fail (run_step then runs the step eagerly, and keeps doing so).
    fn graph_barrier(&self, op: &'static str) -> cryoden_nn::Result<()> {
        let mut p = self.pass();
        if p.mode == PassMode::Off {
            return Ok(());
        }
        p.ungraphable.get_or_insert(op);
        if p.mode == PassMode::Eager {
            return Ok(());
        }
        Err(shape_err(
            op,
            "not allowed inside a captured training step (run_step)".into(),
        ))
    }

    fn begin_pass(&self, mode: PassMode) {
        let mut p = self.pass();
        p.mode = mode;
        p.sig = DefaultHasher::new();
        p.ungraphable = None;
    }

    /// Ends a pass: (signature, the op that made it ungraphable).
    fn end_pass(&self) -> (u64, Option<&'static str>) {
        let epoch = self.gpu().realloc_epoch;
        let mut p = self.pass();
        p.mode = PassMode::Off;
        epoch.hash(&mut p.sig);
        (p.sig.finish(), p.ungraphable.take())
    }

    fn run_pass(
        &self,
        mode: PassMode,
        f: &mut dyn FnMut() -> cryoden_nn::Result<()>,
    ) -> (cryoden_nn::Result<()>, u64, Option<&'static str>) {
        self.begin_pass(mode);
        let r = f();
        let (sig, bad) = self.end_pass();
        (r, sig, bad)
    }

    /// Whether the bf16 copy of `params` is current (part of a step's signature: a captured step never converts).
    fn weights_fresh(&self, params: &CudaBuf) -> bool {
        if self.precision.dtype() == DType::F32 {
            return true;
        }
        let version = params.version.load(Ordering::Relaxed);
        let sh = params.shadow.lock().unwrap_or_else(|p| p.into_inner());
        matches!(&*sh, Some((_, v)) if *v == version)
    }

    /// Adam over the flat buffers; with `loss`, skipped on the device when `loss[0]` is not finite. In a captured
    /// step the bias corrections come from device memory that a copy node refreshes from pinned host memory, which
    /// the record pass of every replay rewrites for the new `step`.
    #[allow(clippy::too_many_arguments)]
    fn adam(
        &self,
        hp: &AdamParams,
        step: u64,
        loss: Option<&CudaBuf>,
        params: &mut CudaBuf,
        grads: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("adam_step");
        let n = params.buf.len;
        if grads.buf.len != n || m.buf.len != n || v.buf.len != n {
            return Err(shape_err(
                "adam_step",
                "params, grads, m and v must have the same length".into(),
            ));
        }
        if [&params.buf, &grads.buf, &m.buf, &v.buf]
            .iter()
            .any(|b| b.dtype != DType::F32)
            || loss.is_some_and(|l| l.buf.dtype != DType::F32 || l.buf.len < 1)
        {
            return Err(shape_err(
                "adam_step",
                "parameters, gradients, moments and the loss must be f32 buffers (allocate them outside set_alloc_dtype(Bf16))".into(),
            ));
        }
        params.touched();
        m.touched();
        v.touched();
        let h = crate::device::AdamStep {
            lr: hp.lr as f32,
            beta1: hp.beta1 as f32,
            beta2: hp.beta2 as f32,
            eps: hp.eps as f32,
            weight_decay: hp.weight_decay as f32,
            step,
            grad_scale: 1.0,
        };
        // The step is not part of the signature: a replay takes it from the pinned copy written here.
        let mode = self.pass().mode;
        sig!(
            self,
            "adam_step",
            h.lr.to_bits(),
            h.beta1.to_bits(),
            h.beta2.to_bits(),
            h.eps.to_bits(),
            h.weight_decay.to_bits(),
            params.ptr(),
            grads.ptr(),
            m.ptr(),
            v.ptr(),
            loss.map(|l| l.ptr())
        );
        // The bf16 copy (if one exists) is refreshed by the Adam kernel itself: no extra pass.
        let version = *params.version.get_mut();
        let sh = params.shadow.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut bc_dev = 0;
        if matches!(mode, PassMode::Record | PassMode::Capture) {
            let hp_slot = self.step_hp.lock().unwrap_or_else(|p| p.into_inner());
            let Some((pinned, dev)) = hp_slot.as_ref() else {
                return Err(shape_err(
                    "adam_step",
                    "internal: no pinned buffer for the captured step".into(),
                ));
            };
            let (bc1, bc2) = h.bias_corrections();
            // SAFETY: two f32 of pinned memory; run_step waited for the last replay that reads them.
            unsafe {
                *pinned.0 = bc1;
                *pinned.0.add(1) = bc2;
            }
            if mode == PassMode::Record {
                if let Some((_, ver)) = sh {
                    *ver = version;
                }
                return Ok(());
            }
            // SAFETY: pinned host memory (captured as a copy node that reads it at each replay), 2 f32 on the device.
            unsafe {
                let src = std::slice::from_raw_parts(pinned.0 as *const f32, 2);
                cudarc::driver::result::memcpy_htod_async(dev.ptr(), src, self.stream.cu_stream())
            }
            .map_err(|e| {
                be_err(CudaError::Driver {
                    call: "cuMemcpyHtoDAsync",
                    source: e,
                })
            })?;
            bc_dev = dev.ptr();
        }
        let lp = loss.map(|l| l.ptr()).unwrap_or(0);
        let mut gpu = self.gpu();
        match sh {
            Some((copy, ver)) => {
                gpu.adam_ex(
                    &params.buf,
                    Some(copy),
                    &grads.buf,
                    &m.buf,
                    &v.buf,
                    &h,
                    bc_dev,
                    lp,
                )
                .map_err(be_err)?;
                *ver = version;
            }
            None => gpu
                .adam_ex(
                    &params.buf,
                    None,
                    &grads.buf,
                    &m.buf,
                    &v.buf,
                    &h,
                    bc_dev,
                    lp,
                )
                .map_err(be_err)?,
        }
        Ok(())
    }

    /// One training step's device work `f`, as a CUDA graph where possible. Every call first runs `f` as a
    /// *record* pass: the ops only hash their arguments (buffers, views, shapes, flags; not Adam's step) into a
    /// signature and do their host-side bookkeeping, launching nothing (a few µs per op). Then:
    /// - the signature equals the captured graph's: replay the graph (Adam's bias corrections for the new step
    ///   were written to pinned memory by the record pass and are copied in by the graph's first node before Adam);
    /// - it equals the last eager step's: capture `f` on the stream, instantiate, launch (the eager step found
    ///   every cuDNN algorithm and allocated every buffer, so nothing is allocated during capture);
    /// - otherwise run `f` eagerly and remember its signature.
    ///
    /// A step that calls upload, download, synchronize, alloc or sum_squares, or whose capture fails, turns graphs
    /// off for this backend (it then runs every step eagerly). Profiling runs eagerly too.
    pub fn run_step(
        &self,
        f: &mut dyn FnMut() -> cryoden_nn::Result<()>,
    ) -> cryoden_nn::Result<()> {
        let mut g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        if g.disabled || self.profiling.load(Ordering::Relaxed) {
            return f();
        }
        let drv_err = |call: &'static str| move |e| be_err(CudaError::Driver { call, source: e });
        // The record pass rewrites the pinned Adam values: the last replay must have read them.
        if let Some(ev) = g.replay_done.take() {
            ev.synchronize().map_err(drv_err("cuEventSynchronize"))?;
        }
        {
            let mut hp = self.step_hp.lock().unwrap_or_else(|p| p.into_inner());
            if hp.is_none() {
                // SAFETY: 8 bytes of page-locked host memory, freed by PinnedHp's Drop.
                let host = unsafe { cudarc::driver::result::malloc_host(8, 0) }
                    .map_err(drv_err("cuMemHostAlloc"))?;
                let dev = self.gpu().alloc(2, DType::F32).map_err(be_err)?;
                *hp = Some((PinnedHp(host as *mut f32), dev));
            }
        }
        let (r, sig, bad) = self.run_pass(PassMode::Record, f);
        if bad.is_some() {
            g.disabled = true;
            g.graph = None;
            return f();
        }
        r?;
        let launch = |g: &mut StepGraphs, graph: &cudarc::driver::CudaGraph| {
            graph.launch().map_err(drv_err("cuGraphLaunch"))?;
            let ev = self
                .ctx
                .new_event(Some(
                    cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING,
                ))
                .map_err(drv_err("cuEventCreate"))?;
            ev.record(&self.stream).map_err(drv_err("cuEventRecord"))?;
            g.replay_done = Some(ev);
            Ok::<(), NnError>(())
        };
        if let Some((s, graph)) = g.graph.take() {
            if s == sig {
                let res = launch(&mut g, &graph.0);
                g.graph = Some((s, graph));
                g.replays += 1;
                return res;
            }
            g.graph = Some((s, graph));
        }
        if g.last_eager == Some(sig) {
            self.gpu().sync().map_err(be_err)?;
            self.gpu().capturing = true;
            let begun = self.stream.begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            );
            let (r, sig2, bad) = if begun.is_ok() {
                self.run_pass(PassMode::Capture, f)
            } else {
                (Ok(()), 0, Some("cuStreamBeginCapture"))
            };
            let captured = if begun.is_ok() {
                self.stream
                    .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            } else {
                Ok(None)
            };
            self.gpu().capturing = false;
            if let (Ok(()), None, Ok(Some(graph))) = (&r, bad, captured) {
                if sig2 == sig {
                    let res = launch(&mut g, &graph);
                    g.graph = Some((sig, SendGraph(graph)));
                    g.captures += 1;
                    return res;
                }
            }
            // Nothing ran during the failed capture: give graphs up and run this step eagerly.
            g.disabled = true;
            g.graph = None;
            return f();
        }
        let (r, sig, bad) = self.run_pass(PassMode::Eager, f);
        if bad.is_some() {
            g.disabled = true;
        } else if r.is_ok() {
            g.last_eager = Some(sig);
        }
        r
    }

    /// Whether this precision's 3×3 convs may run on our own kernels (device/mma.rs): bf16's, and f32's 3×TF32
    /// ones, which keep f32 accuracy; tf32 mode stays on cuDNN's TF32 kernels, which are faster than three passes.
    fn own_convs(&self) -> bool {
        self.precision != Precision::Tf32
    }

    /// Backward-data of a conv into dx (+ dx when `accumulate`), then `act`'s backward over dx where given: our
    /// MMA kernels or the output layer's direct kernel fuse it, cuDNN's path runs it as a second pass.
    #[allow(clippy::too_many_arguments)]
    fn backward_data_run(
        &self,
        cg: &CGeom,
        dyg: GView,
        params: &CudaBuf,
        w_off: usize,
        dxg: GView,
        accumulate: bool,
        act: Option<ActGrad>,
    ) -> cryoden_nn::Result<()> {
        let mut gpu = self.gpu();
        if self.own_convs() && gpu.mma_conv_ok(cg, &dxg, &dyg) {
            let w = self.weights(&mut gpu, params, w_off)?;
            if gpu
                .mma_conv_backward_data(cg, dyg, w, dxg, accumulate, act)
                .map_err(be_err)?
            {
                return Ok(());
            }
        }
        if let Some(a) = act {
            let dt = self.precision.dtype();
            let direct = cg.k == 1 && cg.cout == 1 && cg.pad == 0 && cg.stride == 1;
            // The output layer's direct kernel, as conv_backward_data would run it (packed, compute dtype).
            if direct
                && [&dyg, &dxg].iter().all(|v| v.is_packed() && v.dtype == dt)
                && a.y.dtype == dt
            {
                let w = self.weights(&mut gpu, params, w_off)?;
                return gpu
                    .conv1x1_to1_backward_data_act(dyg, w, dxg, a)
                    .map_err(be_err);
            }
        }
        let dyin = self.packed_in(&mut gpu, dyg, S_X)?;
        let w = self.weights(&mut gpu, params, w_off)?;
        let out = self.packed_out(&mut gpu, dxg, S_Y)?;
        let direct = out == dxg;
        let beta = if direct && accumulate { 1.0 } else { 0.0 };
        gpu.conv_backward_data(self.precision, cg, dyin, w, out, beta)
            .map_err(be_err)?;
        if !direct {
            gpu.bias_act_acc(out, None, dxg, 1.0, accumulate)
                .map_err(be_err)?;
        }
        if let Some(a) = act {
            let db = a.db.map(|d| (d, DType::F32));
            gpu.act_backward(dxg, Some(a.y), dxg, a.slope, db, true)
                .map_err(be_err)?;
        }
        Ok(())
    }

    /// dx (+)= the transposed conv's backward-data from a packed dy of the compute dtype.
    fn convt_backward_data_run(
        &self,
        gpu: &mut Gpu,
        dyin: GView,
        params: &CudaBuf,
        w_off: usize,
        dxg: GView,
        accumulate: bool,
    ) -> cryoden_nn::Result<()> {
        let w = self.weights(gpu, params, w_off)?;
        let out = self.packed_out(gpu, dxg, S_Y)?;
        let direct = out == dxg;
        let beta = if direct && accumulate { 1.0 } else { 0.0 };
        gpu.conv_transpose_backward_data(self.precision, dyin, w, out, beta)
            .map_err(be_err)?;
        if !direct {
            gpu.bias_act_acc(out, None, dxg, 1.0, accumulate)
                .map_err(be_err)?;
        }
        Ok(())
    }

    /// dw += the transposed conv's weight gradient from packed x and dy of the compute dtype (reduced precisions
    /// through a temporary, added into the f32 gradient).
    fn convt_backward_filter_run(
        &self,
        gpu: &mut Gpu,
        xin: GView,
        dyin: GView,
        grads: &CudaBuf,
        dw_off: usize,
        g: &ConvTGeom,
    ) -> cryoden_nn::Result<()> {
        if self.precision.dtype() == DType::F32 {
            gpu.conv_transpose_backward_filter(
                self.precision,
                xin,
                dyin,
                grads.buf.ptr_at(dw_off),
                1.0,
            )
            .map_err(be_err)
        } else {
            let tmp = gpu
                .staging(S_W, g.weight_len(), self.precision.dtype())
                .map_err(be_err)?;
            gpu.conv_transpose_backward_filter(self.precision, xin, dyin, tmp, 0.0)
                .map_err(be_err)?;
            self.add_into(gpu, tmp, grads.buf.ptr_at(dw_off), g.weight_len())
        }
    }

    fn geom(g: &ConvGeom) -> CGeom {
        CGeom {
            n: g.dims.n,
            h: g.dims.h,
            w: g.dims.w,
            cin: g.cin,
            cout: g.cout,
            k: g.k,
            pad: g.k / 2,
            stride: 1,
        }
    }

    /// Parameter gradient `dw += staged` (bf16 path: cuDNN wrote the gradient into staging in bf16).
    fn add_into(&self, gpu: &mut Gpu, src: u64, dst: u64, len: usize) -> Result<(), NnError> {
        let s = Nhwc::new(1, 1, len, 1);
        let from = GView {
            ptr: src,
            dtype: self.precision.dtype(),
            shape: s,
            cs: 1,
        };
        let to = GView {
            ptr: dst,
            dtype: DType::F32,
            shape: s,
            cs: 1,
        };
        gpu.bias_act_acc(from, None, to, 1.0, true).map_err(be_err)
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, len: usize) -> cryoden_nn::Result<CudaBuf> {
        self.alloc_dtype(len, self.plain_dtype(len))
    }

    fn alloc_kind(&self, len: usize, kind: BufKind) -> cryoden_nn::Result<CudaBuf> {
        self.alloc_dtype(len, self.kind_dtype(len, kind))
    }

    fn reserve(&self, bufs: &[(usize, BufKind)]) -> cryoden_nn::Result<()> {
        self.graph_barrier("reserve")?;
        if self.gpu().arena_slab_bytes() == 0 {
            // One device allocation per buffer was asked for (CRYODEN_CUDA_SLAB_MIB=0): the layout before the arena.
            return Ok(());
        }
        let bytes = bufs
            .iter()
            .map(|&(len, kind)| crate::device::arena_size(len, self.kind_dtype(len, kind)))
            .sum();
        let r = self.gpu().reserve(bytes).map_err(be_err)?;
        *self.reservation.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        Ok(())
    }

    fn end_reserve(&self) {
        // The buffers keep the slab alive; the reservation only kept other buffers out of the rest of it.
        self.reservation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.buf.len
    }

    fn upload(&self, src: &[f32], dst: &mut CudaBuf, offset: usize) -> cryoden_nn::Result<()> {
        self.upload_mapped(src, dst, offset, None)
    }

    fn download(&self, src: &CudaBuf, offset: usize, dst: &mut [f32]) -> cryoden_nn::Result<()> {
        self.graph_barrier("download")?;
        if offset + dst.len() > src.buf.len {
            return Err(shape_err(
                "download",
                format!(
                    "range {offset}..{} exceeds buffer of {}",
                    offset + dst.len(),
                    src.buf.len
                ),
            ));
        }
        if dst.is_empty() {
            return Ok(());
        }
        if src.buf.dtype != DType::F32 {
            let mut gpu = self.gpu();
            let tmp = gpu.alloc(dst.len(), DType::F32).map_err(be_err)?;
            let s = Nhwc::new(1, 1, dst.len(), 1);
            let from = GView {
                ptr: src.buf.ptr_at(offset),
                dtype: src.buf.dtype,
                shape: s,
                cs: 1,
            };
            gpu.bias_act(from, None, tmp.view(s), 1.0).map_err(be_err)?;
            // SAFETY: `tmp` holds dst.len() floats; synchronised before `dst` is read.
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(dst, tmp.ptr(), gpu.stream.cu_stream())
            }
            .map_err(|e| {
                be_err(CudaError::Driver {
                    call: "cuMemcpyDtoHAsync",
                    source: e,
                })
            })?;
            return gpu.sync().map_err(be_err);
        }
        let gpu = self.gpu();
        // SAFETY: source range checked above; synchronised before `dst` is read.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(
                dst,
                src.buf.ptr_at(offset),
                gpu.stream.cu_stream(),
            )
        }
        .map_err(|e| {
            be_err(CudaError::Driver {
                call: "cuMemcpyDtoHAsync",
                source: e,
            })
        })?;
        gpu.sync().map_err(be_err)
    }

    fn fill(
        &self,
        buf: &mut CudaBuf,
        offset: usize,
        len: usize,
        value: f32,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("fill");
        if offset + len > buf.buf.len {
            return Err(shape_err(
                "fill",
                format!(
                    "range {offset}..{} exceeds buffer of {}",
                    offset + len,
                    buf.buf.len
                ),
            ));
        }
        buf.touched();
        if len == 0 || sig!(self, "fill", buf.ptr(), offset, len, value.to_bits()) {
            return Ok(());
        }
        self.gpu()
            .fill_raw(buf.buf.ptr_at(offset), len, buf.buf.dtype, value)
            .map_err(be_err)
    }

    fn synchronize(&self) -> cryoden_nn::Result<()> {
        self.graph_barrier("synchronize")?;
        self.gpu().sync().map_err(be_err)
    }

    fn alloc_host(&self, len: usize) -> cryoden_nn::Result<cryoden_nn::HostBuf> {
        (self.host_allocator())(len)
    }

    fn host_allocator(&self) -> cryoden_nn::HostAllocator {
        let ctx = self.ctx.clone();
        Arc::new(move |len| {
            let mem = transfer::PinnedHost::new(&ctx, len).map_err(be_err)?;
            Ok(cryoden_nn::HostBuf::new(Box::new(mem)))
        })
    }

    fn maps_on_device(&self) -> bool {
        true
    }

    fn upload_host(
        &self,
        src: &cryoden_nn::HostBuf,
        len: usize,
        dst: &mut CudaBuf,
        offset: usize,
        norm: Option<cryoden_nn::ImageNorm>,
    ) -> cryoden_nn::Result<()> {
        let Some(pinned) = src.memory().as_any().downcast_ref::<transfer::PinnedHost>() else {
            // Pageable memory (not from alloc_host): the driver stages it on this thread.
            return self.upload_mapped(&src[..len], dst, offset, norm);
        };
        self.graph_barrier("upload")?;
        if offset + len > dst.buf.len || len > src.len() {
            return Err(shape_err(
                "upload",
                format!(
                    "{len} of {} host floats into {offset}.. of a buffer of {}",
                    src.len(),
                    dst.buf.len
                ),
            ));
        }
        dst.touched();
        if len == 0 {
            return Ok(());
        }
        let dt = dst.buf.dtype;
        transfer::upload_pinned(
            &mut self.gpu(),
            pinned,
            len,
            dst.buf.ptr_at(offset),
            dt,
            norm,
        )
        .map_err(be_err)
    }

    fn download_host(
        &self,
        src: &CudaBuf,
        offset: usize,
        len: usize,
        dst: &mut cryoden_nn::HostBuf,
        norm: Option<cryoden_nn::ImageNorm>,
    ) -> cryoden_nn::Result<()> {
        let dst_len = dst.len();
        let Some(pinned) = dst
            .memory_mut()
            .as_any_mut()
            .downcast_mut::<transfer::PinnedHost>()
        else {
            // Pageable memory (not from alloc_host): a synchronous copy, restored on the host.
            let out = &mut dst[..len];
            self.download(src, offset, out)?;
            if let Some(n) = norm {
                out.iter_mut().for_each(|v| *v = n.restore(*v));
            }
            return Ok(());
        };
        self.graph_barrier("download")?;
        if offset + len > src.buf.len || len > dst_len {
            return Err(shape_err(
                "download",
                format!(
                    "{offset}..{} of a buffer of {} into {dst_len} host floats",
                    offset + len,
                    src.buf.len
                ),
            ));
        }
        if len == 0 {
            return Ok(());
        }
        let mut gpu = self.gpu();
        let mut downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        if downloads.is_none() {
            *downloads = Some(transfer::Downloads::new(&gpu).map_err(be_err)?);
        }
        let d = downloads.as_mut().expect("created above");
        d.start(
            &mut gpu,
            src.buf.ptr_at(offset),
            src.buf.dtype,
            len,
            pinned,
            norm,
        )
        .map_err(be_err)
    }

    fn wait_host(&self) -> cryoden_nn::Result<()> {
        let downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        match downloads.as_ref() {
            Some(d) => d.wait().map_err(be_err),
            None => Ok(()),
        }
    }

    fn copy_channels(
        &self,
        pixels: usize,
        c: usize,
        src: &CudaBuf,
        sv: View,
        dst: &mut CudaBuf,
        dv: View,
        accumulate: bool,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("copy_channels");
        let d = Nhwc::new(1, 1, pixels, c);
        let s = self.view("copy_channels", src, sv, pixels, c, d)?;
        let t = self.view("copy_channels", dst, dv, pixels, c, d)?;
        dst.touched();
        if sig!(
            self,
            "copy_channels",
            src.ptr(),
            sv,
            dst.ptr(),
            dv,
            pixels,
            c,
            accumulate
        ) {
            return Ok(());
        }
        self.gpu()
            .bias_act_acc(s, None, t, 1.0, accumulate)
            .map_err(be_err)
    }

    fn conv_workspace_len(&self, _g: &ConvGeom) -> usize {
        0
    }

    fn conv2d_forward(
        &self,
        g: &ConvGeom,
        x: &CudaBuf,
        xv: View,
        params: &CudaBuf,
        w_off: usize,
        bias: Option<usize>,
        act: Activation,
        y: &mut CudaBuf,
        yv: View,
        _ws: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("conv2d_forward");
        let cg = Self::geom(g);
        let (d, px) = (cg.in_shape(), g.dims.pixels());
        let xg = self.view("conv2d_forward", x, xv, px, g.cin, d)?;
        let yg = self.view("conv2d_forward", y, yv, px, g.cout, d)?;
        check_param(
            "conv2d_forward",
            params,
            w_off,
            g.weight_len(),
            bias,
            g.cout,
        )?;
        y.touched();
        if sig!(
            self,
            "conv2d_forward",
            *g,
            x.ptr(),
            xv,
            params.ptr(),
            w_off,
            bias,
            slope(act).to_bits(),
            y.ptr(),
            yv,
            self.weights_fresh(params)
        ) {
            return Ok(());
        }
        let mut gpu = self.gpu();
        let dt = self.precision.dtype();
        if cg.k == 3 && cg.cin == 1 && gpu.conv_in3_ok(cg.cout, dt, &xg, &yg) {
            // The one-channel input layer: a direct kernel with the bias and activation fused.
            let w = self.weights(&mut gpu, params, w_off)?;
            let b = bias.map(|o| params.buf.ptr_at(o));
            return gpu
                .conv_in3_forward(xg, w, b, yg, slope(act))
                .map_err(be_err);
        }
        if cg.k == 1 && cg.cout == 1 && gpu.conv1x1_to1_ok(dt, &xg, &yg) {
            // The one-channel output layer: one pass over x, bias and activation fused.
            let w = self.weights(&mut gpu, params, w_off)?;
            let b = bias.map(|o| params.buf.ptr_at(o));
            return gpu
                .conv1x1_to1_forward(xg, w, b, yg, slope(act))
                .map_err(be_err);
        }
        if self.own_convs() && gpu.mma_conv_ok(&cg, &xg, &yg) {
            // 3x3, bf16 with 32/64 channels or f32 with 32-128: our tensor-core kernels (bias and activation fused,
            // channel slices read and written in place) where the mode picks them over cuDNN for this shape
            // (device/mma.rs, device/x3.rs).
            let w = self.weights(&mut gpu, params, w_off)?;
            let b = bias.map(|o| params.buf.ptr_at(o));
            if gpu
                .mma_conv_forward(&cg, xg, w, b, yg, slope(act), false)
                .map_err(be_err)?
            {
                return Ok(());
            }
        }
        let xin = self.packed_in(&mut gpu, xg, S_X)?;
        let w = self.weights(&mut gpu, params, w_off)?;
        let yout = self.packed_out(&mut gpu, yg, S_Y)?;
        // Written in place: let cuDNN add the bias and apply the ReLU in its epilogue (no pass over y). Not in f32
        // mode: cuDNN's FMA kernels run the fused call 0-1 % slower than conv + our epilogue (call 10).
        let fuse = dt != DType::F32 && yout == yg;
        if let (Some(o), Activation::Relu, true) = (bias, act, fuse) {
            let b32 = params.buf.ptr_at(o);
            let blp = if dt == DType::F32 {
                None
            } else {
                Some(self.weights(&mut gpu, params, o)?)
            };
            if gpu
                .conv_forward_bias_relu(self.precision, &cg, xin, w, b32, blp, yout)
                .map_err(be_err)?
            {
                return Ok(());
            }
        }
        gpu.conv_forward(self.precision, &cg, xin, w, yout, 0.0)
            .map_err(be_err)?;
        let b = bias.map(|o| params.buf.ptr_at(o));
        if b.is_some() || act != Activation::Identity || yout != yg {
            gpu.bias_act(yout, b, yg, slope(act)).map_err(be_err)?;
        }
        Ok(())
    }

    fn conv2d_backward_data(
        &self,
        g: &ConvGeom,
        dy: &CudaBuf,
        dyv: View,
        params: &CudaBuf,
        w_off: usize,
        dx: &mut CudaBuf,
        dxv: View,
        accumulate: bool,
        _ws: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("conv2d_backward_data");
        let cg = Self::geom(g);
        let (d, px) = (cg.in_shape(), g.dims.pixels());
        let dyg = self.view("conv2d_backward_data", dy, dyv, px, g.cout, d)?;
        let dxg = self.view("conv2d_backward_data", dx, dxv, px, g.cin, d)?;
        check_param(
            "conv2d_backward_data",
            params,
            w_off,
            g.weight_len(),
            None,
            0,
        )?;
        dx.touched();
        if sig!(
            self,
            "conv2d_backward_data",
            *g,
            dy.ptr(),
            dyv,
            params.ptr(),
            w_off,
            dx.ptr(),
            dxv,
            accumulate,
            self.weights_fresh(params)
        ) {
            return Ok(());
        }
        self.backward_data_run(&cg, dyg, params, w_off, dxg, accumulate, None)
    }

    fn conv2d_backward_data_act(
        &self,
        g: &ConvGeom,
        dy: &CudaBuf,
        dyv: View,
        params: &CudaBuf,
        w_off: usize,
        x: &CudaBuf,
        xv: View,
        dx: &mut CudaBuf,
        dxv: View,
        act: ActBackward,
        grads: &mut CudaBuf,
        _ws: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        let op = "conv2d_backward_data_act";
        let _t = self.timer(op);
        let cg = Self::geom(g);
        let (d, px) = (cg.in_shape(), g.dims.pixels());
        let dyg = self.view(op, dy, dyv, px, g.cout, d)?;
        let dxg = self.view(op, dx, dxv, px, g.cin, d)?;
        let xg = self.view(op, x, xv, px, g.cin, d)?;
        check_param(op, params, w_off, g.weight_len(), None, 0)?;
        check_param(op, grads, 0, 0, act.db_off, g.cin)?;
        dx.touched();
        grads.touched();
        if sig!(
            self,
            op,
            *g,
            dy.ptr(),
            dyv,
            params.ptr(),
            w_off,
            x.ptr(),
            xv,
            dx.ptr(),
            dxv,
            slope(act.act).to_bits(),
            grads.ptr(),
            act.db_off,
            self.weights_fresh(params)
        ) {
            return Ok(());
        }
        let a = ActGrad {
            y: xg,
            slope: slope(act.act),
            db: act.db_off.map(|o| grads.buf.ptr_at(o)),
        };
        self.backward_data_run(&cg, dyg, params, w_off, dxg, false, Some(a))
    }

    fn conv2d_backward_filter(
        &self,
        g: &ConvGeom,
        x: &CudaBuf,
        xv: View,
        dy: &CudaBuf,
        dyv: View,
        grads: &mut CudaBuf,
        dw_off: usize,
        _ws: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("conv2d_backward_filter");
        let cg = Self::geom(g);
        let (d, px) = (cg.in_shape(), g.dims.pixels());
        let xg = self.view("conv2d_backward_filter", x, xv, px, g.cin, d)?;
        let dyg = self.view("conv2d_backward_filter", dy, dyv, px, g.cout, d)?;
        check_param(
            "conv2d_backward_filter",
            grads,
            dw_off,
            g.weight_len(),
            None,
            0,
        )?;
        grads.touched();
        if sig!(
            self,
            "conv2d_backward_filter",
            *g,
            x.ptr(),
            xv,
            dy.ptr(),
            dyv,
            grads.ptr(),
            dw_off
        ) {
            return Ok(());
        }
        let mut gpu = self.gpu();
        if cg.k == 3 && cg.cin == 1 && gpu.conv_in3_ok(cg.cout, self.precision.dtype(), &xg, &dyg) {
            return gpu
                .conv_in3_backward_filter(xg, dyg, grads.buf.ptr_at(dw_off))
                .map_err(be_err);
        }
        if cg.k == 1 && cg.cout == 1 && gpu.conv1x1_to1_ok(self.precision.dtype(), &xg, &dyg) {
            return gpu
                .conv1x1_to1_backward_filter(xg, dyg, grads.buf.ptr_at(dw_off))
                .map_err(be_err);
        }
        if self.own_convs()
            && gpu.mma_conv_ok(&cg, &xg, &dyg)
            && gpu
                .mma_conv_backward_filter(&cg, xg, dyg, grads.buf.ptr_at(dw_off))
                .map_err(be_err)?
        {
            return Ok(());
        }
        let xin = self.packed_in(&mut gpu, xg, S_X)?;
        let dyin = self.packed_in(&mut gpu, dyg, S_Y)?;
        if self.precision.dtype() == DType::F32 {
            gpu.conv_backward_filter(
                self.precision,
                &cg,
                xin,
                dyin,
                grads.buf.ptr_at(dw_off),
                1.0,
            )
            .map_err(be_err)
        } else {
            let tmp = gpu
                .staging(S_W, g.weight_len(), self.precision.dtype())
                .map_err(be_err)?;
            gpu.conv_backward_filter(self.precision, &cg, xin, dyin, tmp, 0.0)
                .map_err(be_err)?;
            self.add_into(&mut gpu, tmp, grads.buf.ptr_at(dw_off), g.weight_len())
        }
    }

    fn bias_act_forward(
        &self,
        pixels: usize,
        c: usize,
        act: Activation,
        params: &CudaBuf,
        b_off: Option<usize>,
        y: &mut CudaBuf,
        yv: View,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("bias_act_forward");
        let d = Nhwc::new(1, 1, pixels, c);
        let yg = self.view("bias_act_forward", y, yv, pixels, c, d)?;
        check_param("bias_act_forward", params, 0, 0, b_off, c)?;
        y.touched();
        if sig!(
            self,
            "bias_act_forward",
            pixels,
            c,
            slope(act).to_bits(),
            params.ptr(),
            b_off,
            y.ptr(),
            yv
        ) {
            return Ok(());
        }
        let b = b_off.map(|o| params.buf.ptr_at(o));
        self.gpu().bias_act(yg, b, yg, slope(act)).map_err(be_err)
    }

    fn bias_act_backward(
        &self,
        pixels: usize,
        c: usize,
        act: Activation,
        y: &CudaBuf,
        yv: View,
        dy: &mut CudaBuf,
        dyv: View,
        grads: &mut CudaBuf,
        db_off: Option<usize>,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("bias_act_backward");
        let d = Nhwc::new(1, 1, pixels, c);
        let yg = self.view("bias_act_backward", y, yv, pixels, c, d)?;
        let dyg = self.view("bias_act_backward", dy, dyv, pixels, c, d)?;
        check_param("bias_act_backward", grads, 0, 0, db_off, c)?;
        dy.touched();
        grads.touched();
        if sig!(
            self,
            "bias_act_backward",
            pixels,
            c,
            slope(act).to_bits(),
            y.ptr(),
            yv,
            dy.ptr(),
            dyv,
            grads.ptr(),
            db_off
        ) {
            return Ok(());
        }
        let ya = if act == Activation::Identity {
            None
        } else {
            Some(yg)
        };
        let db = db_off.map(|o| (grads.buf.ptr_at(o), DType::F32));
        self.gpu()
            .act_backward(dyg, ya, dyg, slope(act), db, true)
            .map_err(be_err)
    }

    fn maxpool2_forward(
        &self,
        g: &PoolGeom,
        x: &CudaBuf,
        xv: View,
        y: &mut CudaBuf,
        yv: View,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("maxpool2_forward");
        let xg = self.pool_view("maxpool2_forward", g, x, xv, false)?;
        let yg = self.pool_view("maxpool2_forward", g, y, yv, true)?;
        y.touched();
        if sig!(self, "maxpool2_forward", *g, x.ptr(), xv, y.ptr(), yv) {
            return Ok(());
        }
        self.gpu().maxpool2_forward(xg, yg).map_err(be_err)
    }

    fn maxpool2_backward(
        &self,
        g: &PoolGeom,
        x: &CudaBuf,
        xv: View,
        _y: &CudaBuf,
        _yv: View,
        dy: &CudaBuf,
        dyv: View,
        dx: &mut CudaBuf,
        dxv: View,
        accumulate: bool,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("maxpool2_backward");
        let op = "maxpool2_backward";
        let xg = self.pool_view(op, g, x, xv, false)?;
        let dyg = self.pool_view(op, g, dy, dyv, true)?;
        let dxg = self.pool_view(op, g, dx, dxv, false)?;
        dx.touched();
        if sig!(
            self,
            op,
            *g,
            x.ptr(),
            xv,
            dy.ptr(),
            dyv,
            dx.ptr(),
            dxv,
            accumulate
        ) {
            return Ok(());
        }
        self.gpu()
            .maxpool2_backward(xg, dyg, dxg, accumulate)
            .map_err(be_err)
    }

    fn maxpool2_backward_act(
        &self,
        g: &PoolGeom,
        x: &CudaBuf,
        xv: View,
        _y: &CudaBuf,
        _yv: View,
        dy: &CudaBuf,
        dyv: View,
        dx: &mut CudaBuf,
        dxv: View,
        accumulate: bool,
        act: ActBackward,
        grads: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        let op = "maxpool2_backward_act";
        let _t = self.timer(op);
        let xg = self.pool_view(op, g, x, xv, false)?;
        let dyg = self.pool_view(op, g, dy, dyv, true)?;
        let dxg = self.pool_view(op, g, dx, dxv, false)?;
        check_param(op, grads, 0, 0, act.db_off, g.c)?;
        dx.touched();
        grads.touched();
        if sig!(
            self,
            op,
            *g,
            x.ptr(),
            xv,
            dy.ptr(),
            dyv,
            dx.ptr(),
            dxv,
            accumulate,
            slope(act.act).to_bits(),
            grads.ptr(),
            act.db_off
        ) {
            return Ok(());
        }
        let db = act.db_off.map(|o| grads.buf.ptr_at(o));
        self.gpu()
            .maxpool2_backward_act(xg, dyg, dxg, accumulate, slope(act.act), db)
            .map_err(be_err)
    }

    fn upsample_nearest_forward(
        &self,
        g: &UpsampleGeom,
        x: &CudaBuf,
        xv: View,
        y: &mut CudaBuf,
        yv: View,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("upsample_nearest_forward");
        let xd = Nhwc::new(g.dims.n, g.dims.h, g.dims.w, g.c);
        let yd = Nhwc::new(g.dims.n, g.oh, g.ow, g.c);
        let xg = self.view("upsample_nearest_forward", x, xv, g.dims.pixels(), g.c, xd)?;
        let yg = self.view(
            "upsample_nearest_forward",
            y,
            yv,
            g.out_dims().pixels(),
            g.c,
            yd,
        )?;
        y.touched();
        if sig!(
            self,
            "upsample_nearest_forward",
            *g,
            x.ptr(),
            xv,
            y.ptr(),
            yv
        ) {
            return Ok(());
        }
        self.gpu().upsample_forward(xg, yg).map_err(be_err)
    }

    fn upsample_nearest_backward(
        &self,
        g: &UpsampleGeom,
        dy: &CudaBuf,
        dyv: View,
        dx: &mut CudaBuf,
        dxv: View,
        accumulate: bool,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("upsample_nearest_backward");
        let xd = Nhwc::new(g.dims.n, g.dims.h, g.dims.w, g.c);
        let yd = Nhwc::new(g.dims.n, g.oh, g.ow, g.c);
        let dyg = self.view(
            "upsample_nearest_backward",
            dy,
            dyv,
            g.out_dims().pixels(),
            g.c,
            yd,
        )?;
        let dxg = self.view(
            "upsample_nearest_backward",
            dx,
            dxv,
            g.dims.pixels(),
            g.c,
            xd,
        )?;
        dx.touched();
        if sig!(
            self,
            "upsample_nearest_backward",
            *g,
            dy.ptr(),
            dyv,
            dx.ptr(),
            dxv,
            accumulate
        ) {
            return Ok(());
        }
        self.gpu()
            .upsample_backward(dyg, dxg, accumulate)
            .map_err(be_err)
    }

    fn convt_workspace_len(&self, _g: &ConvTGeom) -> usize {
        0
    }

    fn convt2x2_forward(
        &self,
        g: &ConvTGeom,
        x: &CudaBuf,
        xv: View,
        params: &CudaBuf,
        w_off: usize,
        bias: Option<usize>,
        act: Activation,
        y: &mut CudaBuf,
        yv: View,
        _ws: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("convt2x2_forward");
        let xg = self.convt_view("convt2x2_forward", g, x, xv, false)?;
        let yg = self.convt_view("convt2x2_forward", g, y, yv, true)?;
        check_param(
            "convt2x2_forward",
            params,
            w_off,
            g.weight_len(),
            bias,
            g.cout,
        )?;
        y.touched();
        if sig!(
            self,
            "convt2x2_forward",
            *g,
            x.ptr(),
            xv,
            params.ptr(),
            w_off,
            bias,
            slope(act).to_bits(),
            y.ptr(),
            yv,
            self.weights_fresh(params)
        ) {
            return Ok(());
        }
        let mut gpu = self.gpu();
        let xin = self.packed_in(&mut gpu, xg, S_X)?;
        let w = self.weights(&mut gpu, params, w_off)?;
        let b = bias.map(|o| params.buf.ptr_at(o));
        // GEMM + a shuffle that adds the bias and writes y's channel window directly (no staging of y, no bias pass).
        if gpu
            .conv_transpose_forward_bias_act(self.precision, xin, w, b, yg, slope(act))
            .map_err(be_err)?
        {
            return Ok(());
        }
        let yout = self.packed_out(&mut gpu, yg, S_Y)?;
        gpu.conv_transpose_forward(self.precision, xin, w, yout, 0.0)
            .map_err(be_err)?;
        if b.is_some() || act != Activation::Identity || yout != yg {
            gpu.bias_act(yout, b, yg, slope(act)).map_err(be_err)?;
        }
        Ok(())
    }

    fn convt2x2_backward_data(
        &self,
        g: &ConvTGeom,
        dy: &CudaBuf,
        dyv: View,
        params: &CudaBuf,
        w_off: usize,
        dx: &mut CudaBuf,
        dxv: View,
        accumulate: bool,
        _ws: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("convt2x2_backward_data");
        let dyg = self.convt_view("convt2x2_backward_data", g, dy, dyv, true)?;
        let dxg = self.convt_view("convt2x2_backward_data", g, dx, dxv, false)?;
        check_param(
            "convt2x2_backward_data",
            params,
            w_off,
            g.weight_len(),
            None,
            0,
        )?;
        dx.touched();
        if sig!(
            self,
            "convt2x2_backward_data",
            *g,
            dy.ptr(),
            dyv,
            params.ptr(),
            w_off,
            dx.ptr(),
            dxv,
            accumulate,
            self.weights_fresh(params)
        ) {
            return Ok(());
        }
        let mut gpu = self.gpu();
        let dyin = self.packed_in(&mut gpu, dyg, S_X)?;
        self.convt_backward_data_run(&mut gpu, dyin, params, w_off, dxg, accumulate)
    }

    fn convt2x2_backward_filter(
        &self,
        g: &ConvTGeom,
        x: &CudaBuf,
        xv: View,
        dy: &CudaBuf,
        dyv: View,
        grads: &mut CudaBuf,
        dw_off: usize,
        _ws: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("convt2x2_backward_filter");
        let xg = self.convt_view("convt2x2_backward_filter", g, x, xv, false)?;
        let dyg = self.convt_view("convt2x2_backward_filter", g, dy, dyv, true)?;
        check_param(
            "convt2x2_backward_filter",
            grads,
            dw_off,
            g.weight_len(),
            None,
            0,
        )?;
        grads.touched();
        debug_assert_eq!(
            transpose_geom(xg.shape, g.cout).weight_len(),
            g.weight_len()
        );
        if sig!(
            self,
            "convt2x2_backward_filter",
            *g,
            x.ptr(),
            xv,
            dy.ptr(),
            dyv,
            grads.ptr(),
            dw_off
        ) {
            return Ok(());
        }
        let mut gpu = self.gpu();
        let xin = self.packed_in(&mut gpu, xg, S_X)?;
        let dyin = self.packed_in(&mut gpu, dyg, S_Y)?;
        self.convt_backward_filter_run(&mut gpu, xin, dyin, grads, dw_off, g)
    }

    fn convt2x2_backward(
        &self,
        g: &ConvTGeom,
        x: &CudaBuf,
        xv: View,
        _y: &CudaBuf,
        _yv: View,
        dy: &mut CudaBuf,
        dyv: View,
        params: &CudaBuf,
        w_off: usize,
        grads: &mut CudaBuf,
        dw_off: usize,
        db_off: Option<usize>,
        dx: &mut CudaBuf,
        dxv: View,
        accumulate: bool,
        _ws: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        let op = "convt2x2_backward";
        let _t = self.timer(op);
        let xg = self.convt_view(op, g, x, xv, false)?;
        let dyg = self.convt_view(op, g, dy, dyv, true)?;
        let dxg = self.convt_view(op, g, dx, dxv, false)?;
        let yd = dyg.shape;
        check_param(op, params, w_off, g.weight_len(), None, 0)?;
        check_param(op, grads, dw_off, g.weight_len(), db_off, g.cout)?;
        grads.touched();
        dx.touched();
        if sig!(
            self,
            op,
            *g,
            x.ptr(),
            xv,
            dy.ptr(),
            dyv,
            params.ptr(),
            w_off,
            grads.ptr(),
            dw_off,
            db_off,
            dx.ptr(),
            dxv,
            accumulate,
            self.weights_fresh(params)
        ) {
            return Ok(());
        }
        let mut gpu = self.gpu();
        // dy packed once (it is a channel slice of the concatenation's gradient), in the same pass as the bias
        // gradient: the identity's act_backward writes its input unchanged to the packed copy.
        let dt = self.precision.dtype();
        let dyin = if dyg.dtype == dt && dyg.is_packed() {
            dyg
        } else {
            let p = gpu.staging(S_X, yd.len(), dt).map_err(be_err)?;
            GView {
                ptr: p,
                dtype: dt,
                shape: yd,
                cs: yd.c,
            }
        };
        let db = db_off.map(|o| (grads.buf.ptr_at(o), DType::F32));
        if db.is_some() || dyin != dyg {
            if dyin.dtype == dyg.dtype {
                gpu.act_backward(dyg, None, dyin, 1.0, db, true)
                    .map_err(be_err)?;
            } else {
                gpu.bias_act(dyg, None, dyin, 1.0).map_err(be_err)?;
                if db.is_some() {
                    gpu.act_backward(dyg, None, dyg, 1.0, db, true)
                        .map_err(be_err)?;
                }
            }
        }
        let xin = self.packed_in(&mut gpu, xg, S_Y)?;
        self.convt_backward_filter_run(&mut gpu, xin, dyin, grads, dw_off, g)?;
        self.convt_backward_data_run(&mut gpu, dyin, params, w_off, dxg, accumulate)
    }

    fn loss_forward_backward(
        &self,
        kind: LossKind,
        len: usize,
        pred: &CudaBuf,
        target: &CudaBuf,
        dpred: &mut CudaBuf,
        loss: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        let _t = self.timer("loss_forward_backward");
        if pred.buf.len < len || target.buf.len < len || dpred.buf.len < len || loss.buf.len < 1 {
            return Err(shape_err(
                "loss_forward_backward",
                format!("buffers shorter than {len} (or no loss slot)"),
            ));
        }
        dpred.touched();
        loss.touched();
        if sig!(
            self,
            "loss_forward_backward",
            kind as u8,
            len,
            pred.ptr(),
            target.ptr(),
            dpred.ptr(),
            loss.ptr()
        ) {
            return Ok(());
        }
        let s = Nhwc::new(1, 1, len, 1);
        let k = match kind {
            LossKind::Mse => GLoss::Mse,
            LossKind::L1 => GLoss::L1,
        };
        let mut gpu = self.gpu();
        if pred.buf.dtype != dpred.buf.dtype {
            return Err(shape_err(
                "loss_forward_backward",
                "prediction and its gradient differ in storage type".into(),
            ));
        }
        // The loss kernel reads an f32 target and writes an f32 loss: convert around it for bf16 storage.
        let t = if target.buf.dtype == DType::F32 {
            target.ptr()
        } else {
            let t = gpu.staging(S_X, len, DType::F32).map_err(be_err)?;
            let to = GView {
                ptr: t,
                dtype: DType::F32,
                shape: s,
                cs: 1,
            };
            gpu.bias_act(target.buf.view_prefix(s), None, to, 1.0)
                .map_err(be_err)?;
            t
        };
        let l = if loss.buf.dtype == DType::F32 {
            loss.ptr()
        } else {
            gpu.staging(S_LOSS, 1, DType::F32).map_err(be_err)?
        };
        gpu.loss(
            k,
            pred.buf.view_prefix(s),
            t,
            Some(dpred.buf.view_prefix(s)),
            l,
        )
        .map_err(be_err)?;
        if l != loss.ptr() {
            let one = Nhwc::new(1, 1, 1, 1);
            let from = GView {
                ptr: l,
                dtype: DType::F32,
                shape: one,
                cs: 1,
            };
            gpu.bias_act(from, None, loss.buf.view_prefix(one), 1.0)
                .map_err(be_err)?;
        }
        Ok(())
    }

    fn adam_step(
        &self,
        hp: &AdamParams,
        step: u64,
        params: &mut CudaBuf,
        grads: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        self.adam(hp, step, None, params, grads, m, v)
    }

    fn adam_step_if_finite(
        &self,
        hp: &AdamParams,
        step: u64,
        loss: &CudaBuf,
        params: &mut CudaBuf,
        grads: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
    ) -> cryoden_nn::Result<()> {
        self.adam(hp, step, Some(loss), params, grads, m, v)
    }

    fn run_step(&self, f: &mut dyn FnMut() -> cryoden_nn::Result<()>) -> cryoden_nn::Result<()> {
        CudaBackend::run_step(self, f)
    }

    fn sum_squares(&self, buf: &CudaBuf) -> cryoden_nn::Result<f64> {
        self.graph_barrier("sum_squares")?;
        if buf.buf.dtype != DType::F32 {
            return Err(shape_err(
                "sum_squares",
                "only f32 buffers (gradients) are supported".into(),
            ));
        }
        let mut gpu = self.gpu();
        let out = gpu.staging(S_LOSS, 1, DType::F32).map_err(be_err)?;
        gpu.sum_squares(buf.ptr(), buf.buf.len, out)
            .map_err(be_err)?;
        let mut h = [0f32];
        // SAFETY: `out` holds one f32; synchronised before reading.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(&mut h[..], out, gpu.stream.cu_stream())
        }
        .map_err(|e| {
            be_err(CudaError::Driver {
                call: "cuMemcpyDtoHAsync",
                source: e,
            })
        })?;
        gpu.sync().map_err(be_err)?;
        Ok(h[0] as f64)
    }

    fn scale(&self, buf: &mut CudaBuf, s: f32) -> cryoden_nn::Result<()> {
        if buf.buf.dtype != DType::F32 {
            return Err(shape_err(
                "scale",
                "only f32 buffers (gradients) are supported".into(),
            ));
        }
        buf.touched();
        if sig!(self, "scale", buf.ptr(), s.to_bits()) {
            return Ok(());
        }
        self.gpu().scale(buf.ptr(), buf.buf.len, s).map_err(be_err)
    }
}

fn check_param(
    op: &'static str,
    p: &CudaBuf,
    w_off: usize,
    w_len: usize,
    b_off: Option<usize>,
    c: usize,
) -> cryoden_nn::Result<()> {
    if w_off + w_len > p.buf.len || b_off.is_some_and(|b| b + c > p.buf.len) {
        return Err(shape_err(
            op,
            format!("parameter range past the end of a buffer of {}", p.buf.len),
        ));
    }
    Ok(())
}

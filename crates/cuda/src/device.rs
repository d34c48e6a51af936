//! One GPU: its context, the (capture-capable) stream everything runs on, the cuDNN handle, the compiled kernels,
//! and device buffers.
//!
//! Buffers are ranges of large device allocations (the arena, below) addressed by raw pointers (`Buf`, `View`), so a
//! channel slice of a concatenation buffer or a slice of the flat parameter buffer is just a pointer and a stride.
//! cudarc's per-buffer event tracking is switched off: all work is ordered on one compute stream (graph capture needs
//! it off anyway), except the host → device transfers of `upload_async`, which run on a copy stream joined by explicit
//! events.

use crate::error::{dnn, drv, CudaError, Result};
use crate::nvrtc::{arch_for, default_cache_dir, Compiler};
use crate::precision::DType;
use crate::probe::{self, GpuInfo};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

mod mma;
mod x3;
pub use mma::{MmaChoice, MmaMode, CONV_MMA_CU};

/// The kernel source, compiled once per GPU architecture (and cached on disk).
pub const ELEMENTWISE_CU: &str = include_str!("kernels/elementwise.cu");

/// Shape of an NHWC tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Nhwc {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Nhwc {
    pub fn new(n: usize, h: usize, w: usize, c: usize) -> Nhwc {
        Nhwc { n, h, w, c }
    }
    pub fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }
    pub fn len(&self) -> usize {
        self.pixels() * self.c
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Nhwc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}, {}, {}]", self.n, self.h, self.w, self.c)
    }
}

/// An owned device buffer of `len` elements of `dtype`: a range of an arena slab, which it keeps alive.
#[derive(Debug)]
pub struct Buf {
    mem: Block,
    ptr: u64,
    pub len: usize,
    pub dtype: DType,
}

impl Buf {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// The arena slab this buffer lives in (an id, unique per `Gpu`).
    pub fn slab_id(&self) -> u64 {
        self.mem.slab.id
    }
    /// Pointer to element `i`.
    pub fn ptr_at(&self, i: usize) -> u64 {
        assert!(i <= self.len, "offset {i} past a buffer of {}", self.len);
        self.ptr + (i * self.dtype.size()) as u64
    }
    /// The whole buffer as a packed tensor of `shape`.
    pub fn view(&self, shape: Nhwc) -> View {
        assert_eq!(
            shape.len(),
            self.len,
            "view {shape} of a buffer of {} elements",
            self.len
        );
        View {
            ptr: self.ptr,
            dtype: self.dtype,
            shape,
            cs: shape.c,
        }
    }
    /// The first `shape.len()` elements as a packed tensor.
    pub fn view_prefix(&self, shape: Nhwc) -> View {
        assert!(
            shape.len() <= self.len,
            "view {shape} of a buffer of {} elements",
            self.len
        );
        View {
            ptr: self.ptr,
            dtype: self.dtype,
            shape,
            cs: shape.c,
        }
    }
    /// Channels `offset..offset + c` of a buffer holding a packed tensor of shape `whole`.
    pub fn channels(&self, whole: Nhwc, offset: usize, c: usize) -> View {
        assert_eq!(whole.len(), self.len);
        assert!(
            offset + c <= whole.c,
            "channels {offset}..{} of {}",
            offset + c,
            whole.c
        );
        View {
            ptr: self.ptr_at(offset),
            dtype: self.dtype,
            shape: Nhwc { c, ..whole },
            cs: whole.c,
        }
    }
}

/// A tensor on the device: pointer to its first channel, its shape, and elements per pixel of the buffer it lives in
/// (`cs == shape.c` when packed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub ptr: u64,
    pub dtype: DType,
    pub shape: Nhwc,
    pub cs: usize,
}

impl View {
    pub fn is_packed(&self) -> bool {
        self.cs == self.shape.c
    }
}

/// The backward of a bias + activation, fused into the op that writes that activation's output gradient `dx`:
/// `dx ← dx · act'(y)` and `db += Σ_pixels dx` (elementwise.cu's act_bwd, without its pass over dx).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActGrad {
    /// The activation's output (same shape as dx; the derivative is taken from it).
    pub y: View,
    /// The activation's negative slope (0 ReLU, 1 identity).
    pub slope: f32,
    /// The f32 bias gradient to add to, if the layer has a bias.
    pub db: Option<u64>,
}

/// A cuDNN handle bound to our stream.
pub(crate) struct CudnnHandle(pub(crate) cudarc::cudnn::sys::cudnnHandle_t);

// SAFETY: a cuDNN handle may be used from any thread as long as calls are not concurrent; `Gpu` takes `&mut self`
// for every cuDNN call and the backend keeps it behind a Mutex.
unsafe impl Send for CudnnHandle {}

impl Drop for CudnnHandle {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate in Gpu::open and destroyed only here.
        let _ = unsafe { cudarc::cudnn::result::destroy_handle(self.0) };
    }
}

/// One GPU, ready to run the ops.
pub struct Gpu {
    pub info: GpuInfo,
    pub ctx: Arc<CudaContext>,
    /// A non-default stream: CUDA graph capture is refused on the legacy default stream.
    pub stream: Arc<CudaStream>,
    pub(crate) cudnn: CudnnHandle,
    pub compiler: Compiler,
    functions: HashMap<String, CudaFunction>,
    /// How the kernel module was obtained (for `doctor` and logs).
    pub kernels_note: String,
    pub(crate) conv_plans: HashMap<crate::conv::ConvKey, crate::conv::ConvPlan>,
    pub(crate) workspace: Option<Buf>,
    /// Largest cuDNN workspace an algorithm may use (bytes).
    pub workspace_limit: usize,
    /// Only bit-reproducible cuDNN algorithms (set before the first conv of a shape; see
    /// `CudaBackend::set_deterministic`). Off by default: cudnnFind's fastest pick may use atomics.
    pub deterministic: bool,
    scratch: Option<Buf>,
    staging: Vec<Option<Buf>>,
    /// cryoden's own bf16 3x3 conv kernels (device/mma.rs); `None` before compute capability 8.0.
    mma: Option<mma::MmaKernels>,
    /// The flipped weights of the MMA backward-data pass.
    mma_wt: Option<Buf>,
    /// Where the MMA kernels run (`CRYODEN_MMA_CONV`: auto (default, a fixed per-shape choice), tune, force, off;
    /// see device/mma.rs).
    pub mma_conv: MmaMode,
    /// Run this variant of the MMA kernels instead of tuning (benchmarks; clamped to the shape's variant count).
    pub mma_variant: Option<usize>,
    /// Cap on the MMA kernels' grid (tests: fewer blocks than tiles exercises the multi-tile paths).
    pub mma_max_blocks: Option<u32>,
    /// Tuning decisions per call shape.
    mma_tuned: HashMap<mma::MmaKey, MmaChoice>,
    /// Copy stream and device staging of `upload_async` (created on the first upload).
    uploader: Option<Uploader>,
    /// Set while a CUDA graph is being captured: internal buffers must not be (re)allocated then (a stream-ordered
    /// allocation or free would become part of the graph).
    pub(crate) capturing: bool,
    /// Bumped whenever the cuDNN workspace, the scratch or a staging buffer is reallocated: a captured graph that
    /// refers to the old one must not be replayed.
    pub(crate) realloc_epoch: u64,
    /// Version of the bias/activation/copy kernel (1: one element per thread; 2: 2-D blocks; 3: 2 plus bf16
    /// channel pairs; 4: 16-byte accesses, the default). Kept switchable so `cudabench ops` times each (llm.c's
    /// dev/cuda habit). Each version falls back to the previous one where its alignment conditions fail.
    pub bias_act_version: u32,
    /// Use the bf16 channel-pair version of the activation backward where it applies (default on).
    pub act_bwd_pairs: bool,
    /// Use the 16-byte version of the activation backward where it applies (default on; before the pair version).
    pub act_bwd_vec: bool,
    /// Use the direct kernels for 3x3 convs with one input channel (forward and weight gradient; default on).
    pub direct_conv_in: bool,
    /// Use the direct kernels for 1x1 convs with one output channel (forward and weight gradient; default on).
    pub direct_conv_out: bool,
    /// Transposed conv forward as GEMM + pixel shuffle with the bias and activation fused, written straight into
    /// the destination (version 2, default on); version 1 is cuDNN's stride-2 backward-data + a bias pass.
    pub convt_gemm_fused: bool,
    /// Fuse bias + ReLU into cuDNN's conv forward (cudnnConvolutionBiasActivationForward) where the output is
    /// written in place and cuDNN accepts it (default on).
    pub fused_conv_bias_act: bool,
    /// Version of the max-pool forward kernel (1: one element per thread; 2: 16-byte accesses, the default).
    pub maxpool_fwd_version: u32,
    /// Version of the max-pool gradient kernel (1: one thread per input; 2: one per window; 3: 2 with 16-byte
    /// accesses, the default).
    pub maxpool_bwd_version: u32,
    /// Run f32 convs (forward, backward-data) as three TF32 passes where that proves as accurate and faster
    /// on first use (crate::split; `CRYODEN_F32_SPLIT=off|auto|force`). Default off: f32 mode is for parity.
    pub f32_split: crate::split::SplitMode,
    /// The split's first-call decisions per (shape, direction).
    pub(crate) split_choices:
        HashMap<(crate::ConvGeom, crate::engine::Direction), crate::split::SplitChoice>,
    /// Where every buffer comes from. Declared last: the buffers above are dropped before it (its Drop reports).
    arena: Arena,
}

const THREADS: u32 = 256;

/// `upload_async` moves host data in chunks of this many f32 (8 MiB) through a ring of `UPLOAD_SLOTS` device
/// staging buffers (at most 64 MiB): a training batch of 8 × 1024² input + target (64 MiB) fits whole, so its
/// transfer never waits for the step in flight; larger uploads still work, their later chunks waiting for the
/// compute stream to consume the earlier ones.
const UPLOAD_CHUNK: usize = 2 << 20;
const UPLOAD_SLOTS: usize = 8;

/// One staging slot: host chunk → (copy stream) → `dev` → (compute stream) → destination.
struct UploadSlot {
    dev: Buf,
    /// Recorded on the copy stream after the transfer into `dev`.
    copied: CudaEvent,
    /// Recorded on the compute stream after the copy out of `dev` into the destination (and after `dev`'s
    /// stream-ordered allocation).
    consumed: CudaEvent,
}

/// The copy stream of `upload_async` and its staging ring.
struct Uploader {
    stream: Arc<CudaStream>,
    slots: Vec<UploadSlot>,
    next: usize,
}

impl Drop for Uploader {
    fn drop(&mut self) {
        // No transfer may still write a staging buffer when it is freed.
        let _ = self.stream.synchronize();
    }
}

impl Gpu {
    /// Opens GPU `ordinal`: checks libraries first (clear errors instead of cudarc's panics), creates the context, a
    /// stream and the cuDNN handle, and compiles (or loads from the cache) the kernels.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        probe::check_all(ordinal)?;
        let info = probe::gpu_info(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(drv("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: from here on every buffer is used on `stream` only (or with explicit synchronisation).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        let handle = cudarc::cudnn::result::create_handle().map_err(dnn("cudnnCreate"))?;
        let cudnn = CudnnHandle(handle);
        // SAFETY: a live handle and a live stream of this context.
        unsafe { cudarc::cudnn::result::set_stream(cudnn.0, stream.cu_stream() as _) }
            .map_err(dnn("cudnnSetStream"))?;
        let compiler = Compiler::new(arch_for(info.compute_capability), default_cache_dir())?;
        let compiled = compiler.compile("elementwise.cu", ELEMENTWISE_CU, &[])?;
        let t = Instant::now();
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin))
            .map_err(drv("cuModuleLoadData"))?;
        let mut functions = HashMap::new();
        for name in kernel_names() {
            let f = module
                .load_function(&name)
                .map_err(drv("cuModuleGetFunction"))?;
            functions.insert(name, f);
        }
        // cuDNN's fastest f32 algorithms (FFT, GEMM-based) can want several GiB of workspace; PyTorch allows what
        // is free. We allow a quarter of the free memory at start, at most 16 GiB.
        let (free, _) = ctx.mem_get_info().map_err(drv("cuMemGetInfo"))?;
        let workspace_limit = (free / 4).min(16 << 30);
        let kernels_note = if compiled.from_cache {
            format!(
                "kernels for {} loaded from the cache in {:.1} ms",
                compiler.arch,
                t.elapsed().as_secs_f64() * 1e3
            )
        } else {
            format!(
                "kernels compiled for {} in {:.0} ms",
                compiler.arch, compiled.compile_ms
            )
        };
        let mut gpu = Gpu {
            info,
            ctx,
            stream,
            cudnn,
            compiler,
            functions,
            kernels_note,
            conv_plans: HashMap::new(),
            workspace: None,
            workspace_limit,
            deterministic: false,
            scratch: None,
            staging: Vec::new(),
            uploader: None,
            capturing: false,
            realloc_epoch: 0,
            bias_act_version: 4,
            maxpool_fwd_version: 2,
            maxpool_bwd_version: 3,
            act_bwd_pairs: true,
            act_bwd_vec: true,
            direct_conv_in: true,
            direct_conv_out: true,
            fused_conv_bias_act: true,
            convt_gemm_fused: true,
            f32_split: crate::split::split_from_env(),
            split_choices: HashMap::new(),
            mma: None,
            mma_wt: None,
            mma_conv: mma::mode_from_env(),
            mma_variant: None,
            mma_max_blocks: None,
            mma_tuned: HashMap::new(),
            arena: Arena::new(ordinal),
        };
        if gpu.mma_conv != MmaMode::Off {
            // Our conv kernels are an optimisation: if they cannot be built or loaded here, cuDNN does every conv.
            match mma::MmaKernels::open(&gpu) {
                Ok(k) => gpu.mma = k,
                Err(e) => {
                    eprintln!("warning: cuda:{ordinal}: cryoden's own conv kernels are unavailable, cuDNN runs every convolution ({e})");
                    gpu.kernels_note
                        .push_str("; own conv kernels unavailable (cuDNN only)");
                }
            }
        }
        Ok(gpu)
    }

    /// `doctor`'s functional check: open, run one conv and one kernel, compare with a CPU computation.
    pub fn selfcheck(ordinal: usize) -> Result<String> {
        let t = Instant::now();
        let mut gpu = Gpu::open(ordinal)?;
        let open_ms = t.elapsed().as_secs_f64() * 1e3;
        // 3x3 conv, 1 -> 2 channels on a 5x5 image, then ReLU: compare with a direct CPU loop.
        let xs = Nhwc::new(1, 5, 5, 1);
        let x: Vec<f32> = (0..25).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
        let w: Vec<f32> = (0..18).map(|i| ((i * 5 % 7) as f32 - 3.0) / 3.0).collect(); // [k=2][3][3][c=1]
        let b = [0.25f32, -0.5];
        let xb = gpu.upload(&x, DType::F32)?;
        let wb = gpu.upload(&w, DType::F32)?;
        let bb = gpu.upload(&b, DType::F32)?;
        let geom = crate::conv::ConvGeom {
            n: 1,
            h: 5,
            w: 5,
            cin: 1,
            cout: 2,
            k: 3,
            pad: 1,
            stride: 1,
        };
        let ys = Nhwc::new(1, 5, 5, 2);
        let yb = gpu.alloc(ys.len(), DType::F32)?;
        gpu.conv_forward(
            crate::precision::Precision::F32,
            &geom,
            xb.view(xs),
            wb.ptr(),
            yb.view(ys),
            0.0,
        )?;
        gpu.bias_act(yb.view(ys), Some(bb.ptr()), yb.view(ys), 0.0)?;
        let got = gpu.download(&yb)?;
        let mut worst = 0f32;
        for i in 0..5i32 {
            for j in 0..5i32 {
                for k in 0..2usize {
                    let mut s = b[k];
                    for a in 0..3i32 {
                        for c in 0..3i32 {
                            let (ii, jj) = (i + a - 1, j + c - 1);
                            if (0..5).contains(&ii) && (0..5).contains(&jj) {
                                s += x[(ii * 5 + jj) as usize] * w[k * 9 + (a * 3 + c) as usize];
                            }
                        }
                    }
                    worst = worst.max((s.max(0.0) - got[((i * 5 + j) as usize) * 2 + k]).abs());
                }
            }
        }
        if worst > 1e-5 {
            return Err(CudaError::Shape(format!(
                "self-check conv + ReLU differs from the CPU by {worst:e}"
            )));
        }
        Ok(format!(
            "ok: context + cuDNN + {} in {open_ms:.0} ms; conv3x3 + bias + ReLU matches the CPU (max |diff| {worst:.1e})",
            gpu.kernels_note
        ))
    }

    fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| {
            CudaError::Shape(format!("internal: kernel {name} is not in elementwise.cu"))
        })
    }

    /// Uninitialised device memory for `len` elements, from the arena (256-byte aligned; a new slab only when no
    /// slab has room). Every device buffer of the backend is made here.
    pub fn alloc(&self, len: usize, dtype: DType) -> Result<Buf> {
        self.not_capturing("allocation")?;
        let mem = self.arena.alloc(&self.stream, len * dtype.size())?;
        let ptr = mem.slab.base + mem.offset as u64;
        Ok(Buf {
            mem,
            ptr,
            len,
            dtype,
        })
    }

    /// Takes one slab of `bytes` (rounded up to `ARENA_ALIGN`) for buffers made from now on: they go into it first,
    /// while it has room, so a caller that knows its total (sum of [`arena_size`] over its buffers) gets them all
    /// from one device allocation. Keep the `Reservation` until those buffers exist; then drop it or keep it (the
    /// buffers keep the slab; the slab goes back to the driver when the last of them and the reservation are gone).
    pub fn reserve(&self, bytes: usize) -> Result<Reservation> {
        self.not_capturing("reservation")?;
        self.arena.reserve(&self.stream, bytes)
    }

    /// Slabs, bytes reserved, bytes in live buffers, largest slab, peaks and allocation counts of the arena.
    pub fn arena_stats(&self) -> ArenaStats {
        self.arena.stats()
    }

    /// Size of new slabs from now on (bytes; 0: one device allocation per buffer). Default `DEFAULT_SLAB_BYTES` or
    /// `CRYODEN_CUDA_SLAB_MIB`.
    pub fn set_arena_slab_bytes(&self, bytes: usize) {
        self.arena.set_slab_bytes(bytes)
    }

    /// Size of new slabs (bytes; 0: one device allocation per buffer).
    pub fn arena_slab_bytes(&self) -> usize {
        self.arena.slab_bytes()
    }

    /// Live buffers in slab `slab` (0 once it is freed).
    pub fn arena_live_in(&self, slab: u64) -> usize {
        self.arena.live_in(slab)
    }

    /// Copies f32 host data to a new buffer of `dtype` (converted on the device for bf16).
    pub fn upload(&mut self, data: &[f32], dtype: DType) -> Result<Buf> {
        let out = self.alloc(data.len(), dtype)?;
        self.upload_into(data, &out)?;
        Ok(out)
    }

    /// Copies f32 host data into an existing buffer (converted for bf16).
    pub fn upload_into(&mut self, data: &[f32], out: &Buf) -> Result<()> {
        assert_eq!(data.len(), out.len);
        let staged = self.alloc(data.len(), DType::F32)?;
        // SAFETY: `staged` holds data.len() f32; the driver has copied the pageable source when this returns.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(staged.ptr(), data, self.stream.cu_stream())
        }
        .map_err(drv("cuMemcpyHtoDAsync"))?;
        let sp = staged.ptr();
        let n = data.len();
        let shape = Nhwc::new(1, 1, n.max(1), 1);
        let src = View {
            ptr: sp,
            dtype: DType::F32,
            shape,
            cs: 1,
        };
        let dst = View {
            ptr: out.ptr,
            dtype: out.dtype,
            shape,
            cs: 1,
        };
        if n > 0 {
            self.bias_act(src, None, dst, 1.0)?;
        }
        // `staged`'s range may be handed out again at once: its next user is ordered after the copy kernel.
        drop(staged);
        Ok(())
    }

    /// Copies f32 host data into `src.len()` elements of `dtype` (f32 or bf16, converted on the device) at device
    /// address `dst`, ordered on the compute stream like any op: work queued before (a training step in flight)
    /// still sees the old contents, work queued after sees the new ones. The host → device transfer runs on a
    /// second (copy) stream into device staging, overlapped with whatever the compute stream is doing; only a short
    /// device-to-device copy (or bf16 conversion) out of the staging lands on the compute stream, after an event
    /// wait for the transfer. Returns once the driver has taken a copy of `src` (pageable memory is staged by the
    /// driver before `cuMemcpyHtoDAsync` returns), so the caller may reuse it at once.
    ///
    /// The host data is read straight from the caller's pageable memory: copying it into page-locked buffers first
    /// (one thread or eight) was slower on the H200's host (docs/PERFORMANCE.md, "Batch upload overlap").
    ///
    /// With `norm`, every value goes through `norm.normalize` on the way out of the staging (in f64, bit for bit the
    /// host's result), so the host need not touch the pixels.
    pub fn upload_async(
        &mut self,
        src: &[f32],
        dst: u64,
        dtype: DType,
        norm: Option<cryoden_nn::ImageNorm>,
    ) -> Result<()> {
        self.not_capturing("upload")?;
        if self.uploader.is_none() {
            let stream = self.ctx.new_stream().map_err(drv("cuStreamCreate"))?;
            self.uploader = Some(Uploader {
                stream,
                slots: Vec::new(),
                next: 0,
            });
        }
        for (i, chunk) in src.chunks(UPLOAD_CHUNK).enumerate() {
            let n = chunk.len();
            let k = self.upload_slot(n)?;
            let u = self.uploader.as_mut().expect("created above");
            let s = &u.slots[k];
            // The device staging is free once the compute stream has copied its previous contents out.
            u.stream
                .wait(&s.consumed)
                .map_err(drv("cuStreamWaitEvent"))?;
            // SAFETY: `dev` holds at least n f32 (upload_slot); the driver stages the pageable source before return.
            unsafe {
                cudarc::driver::result::memcpy_htod_async(s.dev.ptr(), chunk, u.stream.cu_stream())
            }
            .map_err(drv("cuMemcpyHtoDAsync"))?;
            s.copied.record(&u.stream).map_err(drv("cuEventRecord"))?;
            self.stream
                .wait(&s.copied)
                .map_err(drv("cuStreamWaitEvent"))?;
            let staged = s.dev.ptr();
            let to = dst + (i * UPLOAD_CHUNK * dtype.size()) as u64;
            if let Some(m) = norm {
                self.image_norm(staged, DType::F32, to, dtype, n, m.center, m.spread, false)?;
            } else if dtype == DType::F32 {
                // SAFETY: both ranges hold n f32 (the caller checked the destination), ordered on our stream.
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(
                        to,
                        staged,
                        n * 4,
                        self.stream.cu_stream(),
                    )
                }
                .map_err(drv("cuMemcpyDtoDAsync"))?;
            } else {
                let shape = Nhwc::new(1, 1, n, 1);
                let from = View {
                    ptr: staged,
                    dtype: DType::F32,
                    shape,
                    cs: 1,
                };
                let into = View {
                    ptr: to,
                    dtype,
                    shape,
                    cs: 1,
                };
                self.bias_act(from, None, into, 1.0)?;
            }
            let u = self.uploader.as_mut().expect("created above");
            u.slots[k]
                .consumed
                .record(&self.stream)
                .map_err(drv("cuEventRecord"))?;
        }
        Ok(())
    }

    /// The next slot of the upload ring, holding at least `n` f32 (allocated or grown on first need).
    fn upload_slot(&mut self, n: usize) -> Result<usize> {
        let u = self.uploader.as_mut().expect("uploader created first");
        // Slots are created in ring order (min: a slot whose creation failed is created next time).
        let k = u.next.min(u.slots.len());
        u.next = (k + 1) % UPLOAD_SLOTS;
        if k < u.slots.len() && u.slots[k].dev.len >= n {
            return Ok(k);
        }
        // Growing a slot: its old buffer must be idle before it is freed.
        if let Some(old) = u.slots.get(k) {
            old.copied
                .synchronize()
                .map_err(drv("cuEventSynchronize"))?;
            old.consumed
                .synchronize()
                .map_err(drv("cuEventSynchronize"))?;
        }
        let dev = self.alloc(n.max(1 << 10), DType::F32)?;
        let copied = self.ctx.new_event(None).map_err(drv("cuEventCreate"))?;
        let consumed = self.ctx.new_event(None).map_err(drv("cuEventCreate"))?;
        // The copy stream's first transfer into `dev` waits for its stream-ordered allocation.
        consumed
            .record(&self.stream)
            .map_err(drv("cuEventRecord"))?;
        let slot = UploadSlot {
            dev,
            copied,
            consumed,
        };
        let u = self.uploader.as_mut().expect("uploader created first");
        if k < u.slots.len() {
            u.slots[k] = slot;
        } else {
            u.slots.push(slot);
        }
        Ok(k)
    }

    /// Copies a buffer back as f32 (bf16 is converted on the device) and waits for it.
    /// The first `n` elements of `dtype` at `ptr` as f32, after the work queued so far (waits for it).
    pub(crate) fn read_back(&self, ptr: u64, dtype: DType, n: usize) -> Result<Vec<f32>> {
        let mut raw = vec![0u8; n * dtype.size()];
        // SAFETY: the caller passes `n` elements at `ptr`; synchronised before `raw` is read.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(&mut raw[..], ptr, self.stream.cu_stream())
        }
        .map_err(drv("cuMemcpyDtoHAsync"))?;
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))?;
        Ok(match dtype {
            DType::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::Bf16 => raw
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
        })
    }

    pub fn download(&mut self, b: &Buf) -> Result<Vec<f32>> {
        let shape = Nhwc::new(1, 1, b.len.max(1), 1);
        let tmp = self.alloc(b.len.max(1), DType::F32)?;
        let tp = tmp.ptr();
        if b.len > 0 {
            self.bias_act(
                View {
                    ptr: b.ptr,
                    dtype: b.dtype,
                    shape,
                    cs: 1,
                },
                None,
                View {
                    ptr: tp,
                    dtype: DType::F32,
                    shape,
                    cs: 1,
                },
                1.0,
            )?;
        }
        let mut v = vec![0f32; b.len.max(1)];
        // SAFETY: `tmp` holds v.len() f32; synchronised before `v` is read.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut v, tp, self.stream.cu_stream()) }
            .map_err(drv("cuMemcpyDtoHAsync"))?;
        self.sync()?;
        v.truncate(b.len);
        Ok(v)
    }

    /// Downloads a view (packed or a channel slice) as a packed f32 host array.
    pub fn download_view(&mut self, v: View) -> Result<Vec<f32>> {
        let out = self.alloc(v.shape.len(), DType::F32)?;
        self.bias_act(v, None, out.view(v.shape), 1.0)?;
        self.download(&out)
    }

    /// Refuses `what` while a graph is being captured (the capture then fails and the step runs eagerly).
    fn not_capturing(&self, what: &str) -> Result<()> {
        if self.capturing {
            return Err(CudaError::Shape(format!(
                "internal: {what} while capturing a CUDA graph"
            )));
        }
        Ok(())
    }

    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))
    }

    fn grid(&self, n: usize) -> u32 {
        let blocks = n.div_ceil(THREADS as usize).max(1);
        // Grid-stride loops: a few waves of blocks is enough to fill the GPU.
        blocks.min(self.info.multiprocessors.max(1) as usize * 32) as u32
    }

    fn cfg1(&self, n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.grid(n), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// 2-D blocks for the 16-byte kernels: threadIdx.x over `groups` channel groups of a pixel, threadIdx.y over
    /// pixels, 256 threads, grid-stride over pixels.
    fn cfg_groups(&self, pixels: usize, groups: usize) -> LaunchConfig {
        let g = groups.max(1);
        let bx = if g >= 32 { 32 } else { g.next_power_of_two() };
        let by = 256 / bx;
        let blocks = pixels
            .div_ceil(by)
            .clamp(1, self.info.multiprocessors.max(1) as usize * 16);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (bx as u32, by as u32, 1),
            shared_mem_bytes: 0,
        }
    }

    /// A reusable f32 scratch buffer of at least `len` elements (partial sums).
    fn scratch(&mut self, len: usize) -> Result<u64> {
        if self.scratch.as_ref().is_none_or(|s| s.len < len) {
            self.not_capturing("scratch reallocation")?;
            self.realloc_epoch += 1;
            self.scratch = Some(self.alloc(len.max(1 << 16), DType::F32)?);
        }
        Ok(self.scratch.as_ref().unwrap().ptr)
    }

    /// Makes sure the shared cuDNN workspace holds `bytes`; returns (pointer, size).
    pub(crate) fn workspace(&mut self, bytes: usize) -> Result<(u64, usize)> {
        if bytes == 0 {
            return Ok((0, 0));
        }
        // Held as 2-byte elements; only the byte size matters.
        let need = bytes.div_ceil(2);
        if self.workspace.as_ref().is_none_or(|w| w.len < need) {
            self.not_capturing("cuDNN workspace reallocation")?;
            self.realloc_epoch += 1;
            self.workspace = None; // free the old one first (stream-ordered)
            self.workspace = Some(self.alloc(need, DType::Bf16)?);
        }
        let w = self.workspace.as_ref().unwrap();
        Ok((w.ptr, w.len * 2))
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Elementwise ops (elementwise.cu). Shapes are checked here; the kernels trust them.

    /// y = act(x + bias), slope as in elementwise.cu (0 ReLU, 0.1 LeakyReLU, 1 identity). Also copy / cast /
    /// write into a concatenation slice. `x` and `y` may be the same packed view (in place).
    pub fn bias_act(&mut self, x: View, bias: Option<u64>, y: View, slope: f32) -> Result<()> {
        self.bias_act_acc(x, bias, y, slope, false)
    }

    /// [`Gpu::bias_act`] that adds to y instead of overwriting it when `accumulate`.
    pub fn bias_act_acc(
        &mut self,
        x: View,
        bias: Option<u64>,
        y: View,
        slope: f32,
        accumulate: bool,
    ) -> Result<()> {
        same_shape("bias_act", x.shape, y.shape)?;
        // Version 4 (16-byte accesses) where it applies, else 3 (bf16 channel pairs), else 2 (or 1 when asked).
        let vec = self.bias_act_version >= 4 && x.dtype == y.dtype && vec_ok(x.shape.c, &[&x, &y]);
        let aligned = |v: &View| v.cs.is_multiple_of(2) && v.ptr.is_multiple_of(4);
        let pairs = !vec
            && self.bias_act_version >= 3
            && x.dtype == DType::Bf16
            && y.dtype == DType::Bf16
            && x.shape.c.is_multiple_of(2)
            && aligned(&x)
            && aligned(&y);
        let v = if self.bias_act_version == 1 { "" } else { "2" };
        let name = if vec {
            format!("bias_act_vec_{}", x.dtype.suffix())
        } else if pairs {
            "bias_act_pairs_bf16".to_string()
        } else {
            format!("bias_act{v}_{}_{}", x.dtype.suffix(), y.dtype.suffix())
        };
        let (xp, xcs, yp, ycs) = (x.ptr, x.cs as i32, y.ptr, y.cs as i32);
        let bp = bias.unwrap_or(0);
        let lanes = if vec {
            x.shape.c / x.dtype.vec_len()
        } else if pairs {
            x.shape.c / 2
        } else {
            x.shape.c
        };
        let (np, c) = (x.shape.pixels() as i64, lanes as i32);
        let cfg = if self.bias_act_version == 1 {
            self.cfg1(x.shape.len())
        } else {
            // Channels across x (a warp covers 32 consecutive channels of a pixel), pixels across y.
            let cu = lanes.max(1);
            let bx = if cu >= 32 {
                cu.next_multiple_of(32).min(256)
            } else {
                cu.next_power_of_two()
            };
            let by = 256 / bx;
            let blocks = x
                .shape
                .pixels()
                .div_ceil(by)
                .clamp(1, self.info.multiprocessors.max(1) as usize * 16);
            LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (bx as u32, by as u32, 1),
                shared_mem_bytes: 0,
            }
        };
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        let acc = accumulate as i32;
        b.arg(&xp)
            .arg(&xcs)
            .arg(&bp)
            .arg(&yp)
            .arg(&ycs)
            .arg(&np)
            .arg(&c)
            .arg(&slope)
            .arg(&acc);
        // SAFETY: argument list matches bias_act_* in elementwise.cu; views were checked to fit their buffers.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(bias_act)"))?;
        Ok(())
    }

    /// dx = dy * act'(y) (y = the activation's output; `None` for no activation), and, if `dbias` is given, the bias
    /// gradient sum over pixels of dx written (or added, `accumulate`) to `dbias` (C elements of `dbias_dtype`).
    #[allow(clippy::too_many_arguments)]
    pub fn act_backward(
        &mut self,
        dy: View,
        y: Option<View>,
        dx: View,
        slope: f32,
        dbias: Option<(u64, DType)>,
        accumulate: bool,
    ) -> Result<()> {
        same_shape("act_backward", dy.shape, dx.shape)?;
        same_dtype("act_backward", dy.dtype, dx.dtype)?;
        if let Some(y) = y {
            same_shape("act_backward", dy.shape, y.shape)?;
            same_dtype("act_backward", dy.dtype, y.dtype)?;
        }
        let c = dy.shape.c;
        let np = dy.shape.pixels();
        // Block shape as in elementwise.cu's act_bwd (cfg_partials).
        // bf16 with even channels, strides and 4-byte alignment: the channel-pair kernel (4-byte accesses).
        let mut views = vec![&dy, &dx];
        if let Some(y) = y.as_ref() {
            views.push(y);
        }
        let vec = self.act_bwd_vec && vec_ok(c, &views);
        let aligned = |v: &View| v.cs.is_multiple_of(2) && v.ptr.is_multiple_of(4);
        let pairs = !vec
            && self.act_bwd_pairs
            && dy.dtype == DType::Bf16
            && c.is_multiple_of(2)
            && aligned(&dy)
            && aligned(&dx)
            && y.as_ref().is_none_or(aligned);
        // threads along x per pixel
        let lanes = if vec {
            c / dy.dtype.vec_len()
        } else if pairs {
            c / 2
        } else {
            c
        };
        let (cfg, parts) = self.cfg_partials(np, lanes, 4);
        let partial = if dbias.is_some() {
            self.scratch(parts * c)?
        } else {
            0
        };
        let name = if vec {
            format!("act_bwd_vec_{}", dy.dtype.suffix())
        } else if pairs {
            "act_bwd_pairs_bf16".to_string()
        } else {
            format!("act_bwd_{}", dy.dtype.suffix())
        };
        let (dyp, dycs) = (dy.ptr, dy.cs as i32);
        let (yp, ycs) = y.map(|y| (y.ptr, y.cs as i32)).unwrap_or((0, 0));
        let (dxp, dxcs) = (dx.ptr, dx.cs as i32);
        // The pair and 16-byte kernels take the number of channel groups in place of C.
        let (npi, ci) = (np as i64, lanes as i32);
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&dyp)
            .arg(&dycs)
            .arg(&yp)
            .arg(&ycs)
            .arg(&dxp)
            .arg(&dxcs)
            .arg(&npi)
            .arg(&ci)
            .arg(&slope)
            .arg(&partial);
        // SAFETY: matches act_bwd_* ; partial has parts * C floats.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(act_bwd)"))?;
        if let Some((db, dt)) = dbias {
            self.sum_parts(partial, parts, c, db, dt, accumulate)?;
        }
        Ok(())
    }

    /// out[c] (+)= Σ over parts of partial[part, c] (elementwise.cu's sum_parts, fixed order); out holds `c`
    /// elements of `dt`, partial `parts * c` floats.
    fn sum_parts(
        &mut self,
        partial: u64,
        parts: usize,
        c: usize,
        out: u64,
        dt: DType,
        accumulate: bool,
    ) -> Result<()> {
        let name = format!("sum_parts_{}", dt.suffix());
        let (pi, ci, acc) = (parts as i32, c as i32, accumulate as i32);
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(128) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&partial).arg(&pi).arg(&ci).arg(&out).arg(&acc);
        // SAFETY: matches sum_parts_*; the callers size partial as parts * c floats and out as c elements.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(sum_parts)"))?;
        Ok(())
    }

    /// Launch shape of the kernels that keep one channel group per thread and write per-block partial channel
    /// sums (act_bwd_vec and the fused kernels): blocks (bx, by) with bx · by = 256, grid (groups / bx, parts);
    /// enough partial rows to fill the GPU (`per_sm` blocks per SM: as many as are resident at once, so there is
    /// no second wave), few enough that their sum is cheap.
    fn cfg_partials(&self, rows: usize, groups: usize, per_sm: usize) -> (LaunchConfig, usize) {
        let bx = if groups >= 32 {
            32
        } else {
            groups.max(1).next_power_of_two()
        };
        let by = 256 / bx;
        let parts =
            (rows.div_ceil(by * 64)).clamp(1, per_sm * self.info.multiprocessors.max(1) as usize);
        let cfg = LaunchConfig {
            grid_dim: (groups.div_ceil(bx) as u32, parts as u32, 1),
            block_dim: (bx as u32, by as u32, 1),
            shared_mem_bytes: 0,
        };
        (cfg, parts)
    }

    /// 2x2 max-pool, stride 2 (floor).
    pub fn maxpool2_forward(&mut self, x: View, y: View) -> Result<()> {
        let s = x.shape;
        same_shape(
            "maxpool2_forward",
            Nhwc::new(s.n, s.h / 2, s.w / 2, s.c),
            y.shape,
        )?;
        same_dtype("maxpool2_forward", x.dtype, y.dtype)?;
        let vec = self.maxpool_fwd_version >= 2
            && vec_ok(s.c, &[&x, &y])
            && y.shape.pixels() < i32::MAX as usize;
        let name = format!(
            "maxpool2_fwd{}_{}",
            if vec { "_vec" } else { "" },
            x.dtype.suffix()
        );
        let (xp, xcs, yp, ycs) = (x.ptr, x.cs as i32, y.ptr, y.cs as i32);
        let groups = if vec { s.c / x.dtype.vec_len() } else { s.c };
        let (n, h, w, c) = (s.n as i32, s.h as i32, s.w as i32, groups as i32);
        let cfg = if vec {
            self.cfg_groups(y.shape.pixels(), groups)
        } else {
            self.cfg1(y.shape.len())
        };
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&yp)
            .arg(&ycs)
            .arg(&n)
            .arg(&h)
            .arg(&w)
            .arg(&c);
        // SAFETY: matches maxpool2_fwd_*.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(maxpool2_fwd)"))?;
        Ok(())
    }

    /// Whether the max-pool backward's 16-byte kernels (version 3, and the fused one) apply.
    fn maxpool_bwd_vec_ok(&self, x: View, dy: View, dx: View) -> bool {
        self.maxpool_bwd_version >= 3
            && x.shape.h >= 2
            && x.shape.w >= 2
            && vec_ok(x.shape.c, &[&x, &dy, &dx])
            && dy.shape.pixels() < i32::MAX as usize
    }

    /// Gradient of the 2x2 max-pool into dx (overwritten, or added to with `accumulate`).
    pub fn maxpool2_backward(
        &mut self,
        x: View,
        dy: View,
        dx: View,
        accumulate: bool,
    ) -> Result<()> {
        let s = x.shape;
        check_pool_backward("maxpool2_backward", x, dy, dx)?;
        // Version 2 or 3 (one thread per window) unless the pooled map is empty (then every dx is a dropped pixel).
        let v2 = self.maxpool_bwd_version >= 2 && s.h >= 2 && s.w >= 2;
        let vec = self.maxpool_bwd_vec_ok(x, dy, dx);
        let name = format!(
            "maxpool2_bwd{}_{}",
            if vec {
                "_vec"
            } else if v2 {
                "2"
            } else {
                ""
            },
            x.dtype.suffix()
        );
        let groups = if vec { s.c / x.dtype.vec_len() } else { s.c };
        let (xp, xcs, dyp, dycs, dxp, dxcs) = (
            x.ptr,
            x.cs as i32,
            dy.ptr,
            dy.cs as i32,
            dx.ptr,
            dx.cs as i32,
        );
        let (n, h, w, c, acc) = (
            s.n as i32,
            s.h as i32,
            s.w as i32,
            groups as i32,
            accumulate as i32,
        );
        let cfg = if vec {
            self.cfg_groups(dy.shape.pixels(), groups)
        } else {
            self.cfg1(if v2 {
                s.n * (s.h / 2) * (s.w / 2) * s.c
            } else {
                s.len()
            })
        };
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&dyp)
            .arg(&dycs)
            .arg(&dxp)
            .arg(&dxcs)
            .arg(&n)
            .arg(&h)
            .arg(&w)
            .arg(&c)
            .arg(&acc);
        // SAFETY: matches maxpool2_bwd_*.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(maxpool2_bwd)"))?;
        Ok(())
    }

    /// [`Gpu::maxpool2_backward`] fused with the backward of the bias + activation that produced x (the pool's
    /// input): dx ← act'(x) · (routed dy (+ dx)), db += Σ dx, in one pass over dx. Where the 16-byte kernel does not
    /// apply, the two ops in turn.
    pub fn maxpool2_backward_act(
        &mut self,
        x: View,
        dy: View,
        dx: View,
        accumulate: bool,
        slope: f32,
        db: Option<u64>,
    ) -> Result<()> {
        let s = x.shape;
        if !self.maxpool_bwd_vec_ok(x, dy, dx) {
            self.maxpool2_backward(x, dy, dx, accumulate)?;
            return self.act_backward(dx, Some(x), dx, slope, db.map(|d| (d, DType::F32)), true);
        }
        check_pool_backward("maxpool2_backward_act", x, dy, dx)?;
        let groups = s.c / x.dtype.vec_len();
        // 80 registers (elementwise.cu's launch bounds): 3 blocks of 256 threads per SM.
        let (cfg, parts) = self.cfg_partials(dy.shape.pixels(), groups, 3);
        let partial = self.scratch(parts * s.c)?;
        let name = format!("maxpool2_bwd_act_vec_{}", x.dtype.suffix());
        let (xp, xcs, dyp, dycs, dxp, dxcs) = (
            x.ptr,
            x.cs as i32,
            dy.ptr,
            dy.cs as i32,
            dx.ptr,
            dx.cs as i32,
        );
        let (n, h, w, c, acc) = (
            s.n as i32,
            s.h as i32,
            s.w as i32,
            groups as i32,
            accumulate as i32,
        );
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&dyp)
            .arg(&dycs)
            .arg(&dxp)
            .arg(&dxcs)
            .arg(&n)
            .arg(&h)
            .arg(&w)
            .arg(&c)
            .arg(&acc)
            .arg(&slope)
            .arg(&partial);
        // SAFETY: matches maxpool2_bwd_act_vec_*; partial holds parts * C floats.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(maxpool2_bwd_act)"))?;
        match db {
            Some(db) => self.sum_parts(partial, parts, s.c, db, DType::F32, true),
            None => Ok(()),
        }
    }

    /// Nearest upsampling of x to y's height and width (PyTorch's legacy 'nearest').
    pub fn upsample_forward(&mut self, x: View, y: View) -> Result<()> {
        upsample_check(x.shape, y.shape)?;
        same_dtype("upsample_forward", x.dtype, y.dtype)?;
        let name = format!("upsample_fwd_{}", x.dtype.suffix());
        let (xp, xcs, yp, ycs) = (x.ptr, x.cs as i32, y.ptr, y.cs as i32);
        let (n, hi, wi, ho, wo, c) = dims6(x.shape, y.shape);
        let cfg = self.cfg1(y.shape.len());
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&yp)
            .arg(&ycs)
            .arg(&n)
            .arg(&hi)
            .arg(&wi)
            .arg(&ho)
            .arg(&wo)
            .arg(&c);
        // SAFETY: matches upsample_fwd_*.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(upsample_fwd)"))?;
        Ok(())
    }

    /// Gradient of nearest upsampling: dx (input-sized) from dy (output-sized).
    pub fn upsample_backward(&mut self, dy: View, dx: View, accumulate: bool) -> Result<()> {
        upsample_check(dx.shape, dy.shape)?;
        same_dtype("upsample_backward", dy.dtype, dx.dtype)?;
        let name = format!("upsample_bwd_{}", dy.dtype.suffix());
        let (dyp, dycs, dxp, dxcs) = (dy.ptr, dy.cs as i32, dx.ptr, dx.cs as i32);
        let (n, hi, wi, ho, wo, c) = dims6(dx.shape, dy.shape);
        let cfg = self.cfg1(dx.shape.len());
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        let acc = accumulate as i32;
        b.arg(&dyp)
            .arg(&dycs)
            .arg(&dxp)
            .arg(&dxcs)
            .arg(&n)
            .arg(&hi)
            .arg(&wi)
            .arg(&ho)
            .arg(&wo)
            .arg(&c)
            .arg(&acc);
        // SAFETY: matches upsample_bwd_*.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(upsample_bwd)"))?;
        Ok(())
    }

    /// Mean loss (MSE or L1) of packed `pred` against f32 `target`; writes d(loss)/d(pred) into `grad` if given and
    /// the loss (f32, accumulated in f32 per block and in f64 across blocks) into `loss_out` (1 f32 on the device).
    pub fn loss(
        &mut self,
        kind: LossKind,
        pred: View,
        target: u64,
        grad: Option<View>,
        loss_out: u64,
    ) -> Result<()> {
        assert!(pred.is_packed());
        if let Some(g) = grad {
            same_shape("loss", pred.shape, g.shape)?;
            assert!(g.is_packed());
        }
        let n = pred.shape.len();
        let cfg = self.cfg1(n);
        let blocks = cfg.grid_dim.0 as usize;
        let partial = self.scratch(blocks)?;
        let name = format!("loss_{}", pred.dtype.suffix());
        let (pp, gp, ni, kind_i) = (
            pred.ptr,
            grad.map(|g| g.ptr).unwrap_or(0),
            n as i64,
            kind as i32,
        );
        let scale = 1.0f32 / n as f32;
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&pp)
            .arg(&target)
            .arg(&gp)
            .arg(&ni)
            .arg(&kind_i)
            .arg(&scale)
            .arg(&partial);
        // SAFETY: matches loss_*; partial holds one float per block.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(loss)"))?;
        let bi = blocks as i32;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.func("reduce_sum_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&partial).arg(&bi).arg(&scale).arg(&loss_out);
        // SAFETY: matches reduce_sum_f32.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(reduce_sum)"))?;
        Ok(())
    }

    /// One Adam step over flat buffers (see elementwise.cu for the exact update). `copy`: bf16 weight copy to refresh.
    #[allow(clippy::too_many_arguments)]
    pub fn adam(
        &mut self,
        p: &Buf,
        copy: Option<&Buf>,
        g: &Buf,
        m: &Buf,
        v: &Buf,
        h: &AdamStep,
    ) -> Result<()> {
        self.adam_ex(p, copy, g, m, v, h, 0, 0)
    }

    /// [`Gpu::adam`] with the bias corrections read from the device (`bc`: 2 f32, `[bc1, bc2_sqrt]` as
    /// [`AdamStep::bias_corrections`]; 0 = from `h`) and the update skipped when the f32 at `loss` is not finite
    /// (0 = never skipped). For captured training steps.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_ex(
        &mut self,
        p: &Buf,
        copy: Option<&Buf>,
        g: &Buf,
        m: &Buf,
        v: &Buf,
        h: &AdamStep,
        bc: u64,
        loss: u64,
    ) -> Result<()> {
        assert!(p.dtype == DType::F32 && m.dtype == DType::F32 && v.dtype == DType::F32);
        assert!(p.len == g.len && p.len == m.len && p.len == v.len);
        if let Some(c) = copy {
            assert!(c.dtype == DType::Bf16 && c.len == p.len);
        }
        let name = format!("adam_{}", g.dtype.suffix());
        let (bc1, bc2_sqrt) = h.bias_corrections();
        let (pp, cp, gp, mp, vp, n) = (
            p.ptr,
            copy.map(|c| c.ptr).unwrap_or(0),
            g.ptr,
            m.ptr,
            v.ptr,
            p.len as i64,
        );
        let cfg = self.cfg1(p.len);
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&pp).arg(&cp).arg(&gp).arg(&mp).arg(&vp).arg(&n);
        b.arg(&h.lr)
            .arg(&h.beta1)
            .arg(&h.beta2)
            .arg(&h.eps)
            .arg(&h.weight_decay)
            .arg(&bc1)
            .arg(&bc2_sqrt);
        b.arg(&h.grad_scale).arg(&bc).arg(&loss);
        // SAFETY: matches adam_*; all buffers hold n elements; bc (2 f32) and loss (1 f32) are 0 or device memory.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(adam)"))?;
        Ok(())
    }

    /// Σ x² over `n` f32 elements at `x` (f32 per block, f64 across blocks) into the device f32 at `out`.
    pub fn sum_squares(&mut self, x: u64, n: usize, out: u64) -> Result<()> {
        let cfg = self.cfg1(n);
        let blocks = cfg.grid_dim.0 as usize;
        let partial = self.scratch(blocks)?;
        let ni = n as i64;
        let f = self.func("sum_squares_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&x).arg(&ni).arg(&partial);
        // SAFETY: matches sum_squares_f32.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(sum_squares)"))?;
        let (bi, one) = (blocks as i32, 1.0f32);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.func("reduce_sum_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&partial).arg(&bi).arg(&one).arg(&out);
        // SAFETY: matches reduce_sum_f32.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(reduce_sum)"))?;
        Ok(())
    }

    /// x *= s over `n` f32 elements.
    pub fn scale(&mut self, x: u64, n: usize, s: f32) -> Result<()> {
        let cfg = self.cfg1(n);
        let ni = n as i64;
        let f = self.func("scale_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&x).arg(&ni).arg(&s);
        // SAFETY: matches scale_f32.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(scale)"))?;
        Ok(())
    }

    /// Fills `n` elements of `dtype` at `ptr` with `value`.
    /// `n` contiguous values `x` → `y` through an inference image's normalisation, `(v − center) / spread`, or its
    /// inverse with `restore` (`ImageNorm` in cryoden-nn): in f64, each operation rounded as on the host, so the
    /// values are the host's bit for bit.
    #[allow(clippy::too_many_arguments)]
    pub fn image_norm(
        &mut self,
        x: u64,
        x_dtype: DType,
        y: u64,
        y_dtype: DType,
        n: usize,
        center: f64,
        spread: f64,
        restore: bool,
    ) -> Result<()> {
        let name = format!("image_norm_{}_{}", x_dtype.suffix(), y_dtype.suffix());
        let (ni, r) = (n as i64, restore as i32);
        let cfg = self.cfg1(n);
        let f = self.func(&name)?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&x).arg(&y).arg(&ni).arg(&center).arg(&spread).arg(&r);
        // SAFETY: matches image_norm_* in elementwise.cu; the caller passes n values at x and y.
        unsafe { l.launch(cfg) }.map_err(drv("cuLaunchKernel(image_norm)"))?;
        Ok(())
    }

    /// `n` f32 values `x` → `big` (rounded to TF32) and `small` (`x − big`, exact): the operands of the f32
    /// convolutions run as three TF32 passes (split.rs).
    pub fn tf32_split(&mut self, x: u64, big: u64, small: u64, n: usize) -> Result<()> {
        let ni = n as i64;
        let cfg = self.cfg1(n.div_ceil(4));
        let f = self.func("tf32_split_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&x).arg(&big).arg(&small).arg(&ni);
        // SAFETY: matches tf32_split_f32 in elementwise.cu; the caller passes n f32 at each pointer.
        unsafe { l.launch(cfg) }.map_err(drv("cuLaunchKernel(tf32_split)"))?;
        Ok(())
    }

    pub fn fill_raw(&mut self, ptr: u64, n: usize, dtype: DType, value: f32) -> Result<()> {
        let name = format!("fill_{}", dtype.suffix());
        let ni = n as i64;
        let cfg = self.cfg1(n);
        let f = self.func(&name)?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&ptr).arg(&ni).arg(&value);
        // SAFETY: matches fill_*.
        unsafe { l.launch(cfg) }.map_err(drv("cuLaunchKernel(fill)"))?;
        Ok(())
    }

    /// A grow-only scratch buffer per `slot` (used to stage packed or converted tensors for cuDNN); returns its
    /// pointer. The contents are not kept between calls with different needs.
    pub fn staging(&mut self, slot: usize, len: usize, dtype: DType) -> Result<u64> {
        if self.staging.len() <= slot {
            self.staging.resize_with(slot + 1, || None);
        }
        let need = len * dtype.size();
        if self.staging[slot]
            .as_ref()
            .is_none_or(|b: &Buf| b.len * b.dtype.size() < need)
        {
            self.not_capturing("staging reallocation")?;
            self.realloc_epoch += 1;
            self.staging[slot] = None;
            self.staging[slot] = Some(self.alloc(need.div_ceil(4), DType::F32)?);
        }
        Ok(self.staging[slot].as_ref().unwrap().ptr)
    }

    /// dx (+)= dy ⊗ w for a 1x1 conv with one output channel: dy `[n, h, w, 1]`, w `[C]`, dx `[n, h, w, C]`, packed.
    pub fn conv1x1_to1_backward_data(
        &mut self,
        dy: View,
        w: u64,
        dx: View,
        accumulate: bool,
    ) -> Result<()> {
        same_dtype("conv1x1_to1_backward_data", dy.dtype, dx.dtype)?;
        if dy.shape.c != 1
            || !dy.is_packed()
            || !dx.is_packed()
            || dy.shape.pixels() != dx.shape.pixels()
        {
            return Err(CudaError::Shape(format!(
                "conv1x1_to1_backward_data: dy {} and dx {}",
                dy.shape, dx.shape
            )));
        }
        // 16-byte version where channels and alignment allow (the version-1 kernel divides by C per element).
        let vec = self.bias_act_version >= 4 && vec_ok(dx.shape.c, &[&dx]);
        let groups = if vec {
            dx.shape.c / dx.dtype.vec_len()
        } else {
            dx.shape.c
        };
        let name = format!(
            "conv1x1_to1_bwd_data{}_{}",
            if vec { "_vec" } else { "" },
            dy.dtype.suffix()
        );
        let (dyp, dxp, np, c, acc) = (
            dy.ptr,
            dx.ptr,
            dx.shape.pixels() as i64,
            groups as i32,
            accumulate as i32,
        );
        let cfg = if vec {
            self.cfg_groups(dx.shape.pixels(), groups)
        } else {
            self.cfg1(dx.shape.len())
        };
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&dyp).arg(&w).arg(&dxp).arg(&np).arg(&c).arg(&acc);
        // SAFETY: matches conv1x1_to1_bwd_data_*; w holds C elements of dy's dtype.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv1x1_to1_bwd_data)"))?;
        Ok(())
    }

    /// [`Gpu::conv1x1_to1_backward_data`] (dx overwritten) fused with the backward of the bias + activation that
    /// produced the conv's input: one pass over dx instead of two. Where the 16-byte kernel does not apply, the two
    /// ops in turn.
    pub fn conv1x1_to1_backward_data_act(
        &mut self,
        dy: View,
        w: u64,
        dx: View,
        act: ActGrad,
    ) -> Result<()> {
        let fused = self.bias_act_version >= 4
            && vec_ok(dx.shape.c, &[&dx, &act.y])
            && dy.shape.c == 1
            && dy.is_packed()
            && dx.is_packed()
            && dy.dtype == dx.dtype
            && dy.shape.pixels() == dx.shape.pixels();
        let db = act.db.map(|d| (d, DType::F32));
        if !fused {
            self.conv1x1_to1_backward_data(dy, w, dx, false)?;
            return self.act_backward(dx, Some(act.y), dx, act.slope, db, true);
        }
        same_shape("conv1x1_to1_backward_data_act", dx.shape, act.y.shape)?;
        let c = dx.shape.c;
        let groups = c / dx.dtype.vec_len();
        let (cfg, parts) = self.cfg_partials(dx.shape.pixels(), groups, 4);
        let partial = self.scratch(parts * c)?;
        let name = format!("conv1x1_to1_bwd_data_act_vec_{}", dx.dtype.suffix());
        let (dyp, dxp, np, cv) = (dy.ptr, dx.ptr, dx.shape.pixels() as i64, groups as i32);
        let (yp, ycs) = (act.y.ptr, act.y.cs as i32);
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&dyp)
            .arg(&w)
            .arg(&dxp)
            .arg(&np)
            .arg(&cv)
            .arg(&yp)
            .arg(&ycs)
            .arg(&act.slope)
            .arg(&partial);
        // SAFETY: matches conv1x1_to1_bwd_data_act_vec_*; w holds C elements of dy's dtype, partial parts * C.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv1x1_to1_bwd_data_act)"))?;
        match db {
            Some((db, dt)) => self.sum_parts(partial, parts, c, db, dt, true),
            None => Ok(()),
        }
    }

    /// Whether the direct kernels for a 3x3 conv with one input channel apply: `cout` output channels in whole
    /// 16-byte groups (a power of two of them, at most 64 channels), everything in `dt`, `out` (y or dy) 16-byte
    /// aligned with a channel stride of whole groups.
    pub fn conv_in3_ok(&self, cout: usize, dt: DType, x: &View, out: &View) -> bool {
        let v = dt.vec_len();
        let groups = cout / v;
        self.direct_conv_in
            && cout.is_multiple_of(v)
            && cout <= 64
            && groups.is_power_of_two()
            && groups <= 32
            && x.dtype == dt
            && x.shape.c == 1
            && x.shape.pixels() < i32::MAX as usize
            && vec_ok(cout, &[out])
            && out.dtype == dt
    }

    /// Whether the direct kernels for a 1x1 conv with one output channel apply: `x` (`cin` channels) in 16-byte
    /// groups, a power of two of them, at most 32; x and `out` (y or dy, one channel) in `dt`.
    pub fn conv1x1_to1_ok(&self, dt: DType, x: &View, out: &View) -> bool {
        let cin = x.shape.c;
        let groups = cin / dt.vec_len();
        self.direct_conv_out
            && groups.is_power_of_two()
            && groups <= 32
            && vec_ok(cin, &[x])
            && x.dtype == dt
            && out.dtype == dt
            && out.shape.c == 1
            && out.shape.pixels() == x.shape.pixels()
    }

    /// y = act(conv1x1(x, w) + bias) to one channel (`conv1x1_to1_ok` must hold): w `[cin]` in x's dtype.
    pub fn conv1x1_to1_forward(
        &mut self,
        x: View,
        w: u64,
        bias: Option<u64>,
        y: View,
        slope: f32,
    ) -> Result<()> {
        if !self.conv1x1_to1_ok(x.dtype, &x, &y) {
            return Err(CudaError::Shape(format!(
                "conv1x1_to1_forward: {} -> {} not supported",
                x.shape, y.shape
            )));
        }
        let groups = x.shape.c / x.dtype.vec_len();
        let name = format!("conv1x1_to1_fwd_vec_{}", x.dtype.suffix());
        let (xp, xcs, bp, yp, ycs) = (x.ptr, x.cs as i32, bias.unwrap_or(0), y.ptr, y.cs as i32);
        let (np, cv) = (x.shape.pixels() as i64, groups as i32);
        let cfg = self.cfg1(x.shape.pixels());
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&w)
            .arg(&bp)
            .arg(&yp)
            .arg(&ycs)
            .arg(&np)
            .arg(&cv)
            .arg(&slope);
        // SAFETY: matches conv1x1_to1_fwd_vec_*; w holds cin elements, bias one f32.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv1x1_to1_fwd_vec)"))?;
        Ok(())
    }

    /// dw += weight gradient of the 1x1 conv to one channel (`conv1x1_to1_ok` must hold); dw: `[cin]` f32.
    pub fn conv1x1_to1_backward_filter(&mut self, x: View, dy: View, dw: u64) -> Result<()> {
        if !self.conv1x1_to1_ok(x.dtype, &x, &dy) {
            return Err(CudaError::Shape(format!(
                "conv1x1_to1_backward_filter: {} -> {} not supported",
                x.shape, dy.shape
            )));
        }
        let c = x.shape.c;
        let groups = c / x.dtype.vec_len();
        let by = 256 / groups;
        let np = x.shape.pixels();
        let parts = np
            .div_ceil(by)
            .clamp(1, 2 * self.info.multiprocessors.max(1) as usize);
        let partial = self.scratch(parts * c)?;
        let name = format!("conv1x1_to1_bwd_filter_vec_{}", x.dtype.suffix());
        let (xp, xcs, dyp, npi, cv) = (x.ptr, x.cs as i32, dy.ptr, np as i64, groups as i32);
        let cfg = LaunchConfig {
            grid_dim: (parts as u32, 1, 1),
            block_dim: (groups as u32, by as u32, 1),
            shared_mem_bytes: 0,
        };
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&dyp)
            .arg(&npi)
            .arg(&cv)
            .arg(&partial);
        // SAFETY: matches conv1x1_to1_bwd_filter_vec_*; partial holds parts * cin floats.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv1x1_to1_bwd_filter_vec)"))?;
        self.sum_parts_into(partial, parts, c, dw)
    }

    /// y = act(conv3x3(x, w) + bias) for one input channel (`conv_in3_ok` must hold): w `[cout, 3, 3]` in x's dtype.
    pub fn conv_in3_forward(
        &mut self,
        x: View,
        w: u64,
        bias: Option<u64>,
        y: View,
        slope: f32,
    ) -> Result<()> {
        same_shape("conv_in3_forward", Nhwc { c: 1, ..y.shape }, x.shape)?;
        if !self.conv_in3_ok(y.shape.c, x.dtype, &x, &y) {
            return Err(CudaError::Shape(format!(
                "conv_in3_forward: {} -> {} not supported",
                x.shape, y.shape
            )));
        }
        // bf16: on the tensor cores (device/mma.rs), where cout has a kernel.
        if self.mma_conv_in3_forward(x, w, bias, y, slope)? {
            return Ok(());
        }
        let s = y.shape;
        let groups = s.c / x.dtype.vec_len();
        let name = format!("conv_in3_fwd_{}", x.dtype.suffix());
        let (xp, xcs, bp, yp, ycs) = (x.ptr, x.cs as i32, bias.unwrap_or(0), y.ptr, y.cs as i32);
        let (n, h, wd, cv) = (s.n as i32, s.h as i32, s.w as i32, groups as i32);
        let cfg = self.cfg_groups(s.pixels(), groups);
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&w)
            .arg(&bp)
            .arg(&yp)
            .arg(&ycs)
            .arg(&n)
            .arg(&h)
            .arg(&wd)
            .arg(&cv)
            .arg(&slope);
        // SAFETY: matches conv_in3_fwd_*; w holds 9 * cout elements, bias cout f32.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv_in3_fwd)"))?;
        Ok(())
    }

    /// dw += weight gradient of the one-input-channel 3x3 conv (`conv_in3_ok` must hold); dw: `[cout, 3, 3]` f32.
    pub fn conv_in3_backward_filter(&mut self, x: View, dy: View, dw: u64) -> Result<()> {
        same_shape(
            "conv_in3_backward_filter",
            Nhwc { c: 1, ..dy.shape },
            x.shape,
        )?;
        if !self.conv_in3_ok(dy.shape.c, x.dtype, &x, &dy) {
            return Err(CudaError::Shape(format!(
                "conv_in3_backward_filter: {} -> {} not supported",
                x.shape, dy.shape
            )));
        }
        // bf16: on the tensor cores (device/mma.rs), where cout has a kernel.
        if self.mma_conv_in3_backward_filter(x, dy, dw)? {
            return Ok(());
        }
        let s = dy.shape;
        let groups = s.c / x.dtype.vec_len();
        let by = 256 / groups;
        let parts = s
            .pixels()
            .div_ceil(by)
            .clamp(1, 2 * self.info.multiprocessors.max(1) as usize);
        let len = 9 * s.c;
        let partial = self.scratch(parts * len)?;
        let name = format!("conv_in3_bwd_filter_{}", x.dtype.suffix());
        let (xp, xcs, dyp, dycs) = (x.ptr, x.cs as i32, dy.ptr, dy.cs as i32);
        let (n, h, wd, cv) = (s.n as i32, s.h as i32, s.w as i32, groups as i32);
        let cfg = LaunchConfig {
            grid_dim: (parts as u32, 1, 1),
            block_dim: (groups as u32, by as u32, 1),
            shared_mem_bytes: 0,
        };
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&xp)
            .arg(&xcs)
            .arg(&dyp)
            .arg(&dycs)
            .arg(&n)
            .arg(&h)
            .arg(&wd)
            .arg(&cv)
            .arg(&partial);
        // SAFETY: matches conv_in3_bwd_filter_*; partial holds parts * 9 * cout floats.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(conv_in3_bwd_filter)"))?;
        self.sum_parts_into(partial, parts, len, dw)
    }

    /// `out[i] += Σ_p partial[p * len + i]` for `i < len` (f32 `out`, fixed summation order): the second stage of the
    /// direct weight-gradient kernels.
    fn sum_parts_into(&mut self, partial: u64, parts: usize, len: usize, out: u64) -> Result<()> {
        let (pi, li, acc) = (parts as i32, len as i32, 1i32);
        let cfg = LaunchConfig {
            grid_dim: (len.div_ceil(128) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.func("sum_parts_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&partial).arg(&pi).arg(&li).arg(&out).arg(&acc);
        // SAFETY: matches sum_parts_f32; the callers size `partial` as parts * len and `out` as len f32.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(sum_parts)"))?;
        Ok(())
    }

    /// 2x2 pixel shuffle: src packed `[n, h, w, 4c]` (channel `(a*2 + b)*c + k`) -> dst `[n, 2h, 2w, c]`.
    pub fn pixel_shuffle2(&mut self, src: View, dst: View) -> Result<()> {
        same_dtype("pixel_shuffle2", src.dtype, dst.dtype)?;
        let (s, d) = (src.shape, dst.shape);
        if !src.is_packed() || s.c != 4 * d.c || d.h != 2 * s.h || d.w != 2 * s.w || d.n != s.n {
            return Err(CudaError::Shape(format!("pixel_shuffle2: {s} -> {d}")));
        }
        let name = format!("pixel_shuffle2_{}", src.dtype.suffix());
        let (sp, dp, dcs) = (src.ptr, dst.ptr, dst.cs as i32);
        let (n, h, w, c) = (s.n as i32, s.h as i32, s.w as i32, d.c as i32);
        let cfg = self.cfg1(d.len());
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&sp)
            .arg(&dp)
            .arg(&dcs)
            .arg(&n)
            .arg(&h)
            .arg(&w)
            .arg(&c);
        // SAFETY: matches pixel_shuffle2_*; shapes checked above.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(pixel_shuffle2)"))?;
        Ok(())
    }

    /// 2x2 pixel shuffle with bias + activation fused (16-byte version; `vec_ok` for `dst` and the channels): src
    /// packed `[n, h, w, 4c]` -> dst `[n, 2h, 2w, c]` (may be a channel slice), `dst = act(shuffled + bias)`.
    pub fn pixel_shuffle2_bias_act(
        &mut self,
        src: View,
        dst: View,
        bias: Option<u64>,
        slope: f32,
    ) -> Result<()> {
        same_dtype("pixel_shuffle2_bias_act", src.dtype, dst.dtype)?;
        let (s, d) = (src.shape, dst.shape);
        if !src.is_packed()
            || s.c != 4 * d.c
            || d.h != 2 * s.h
            || d.w != 2 * s.w
            || d.n != s.n
            || !vec_ok(d.c, &[&src, &dst])
            || d.pixels() >= i32::MAX as usize
        {
            return Err(CudaError::Shape(format!(
                "pixel_shuffle2_bias_act: {s} -> {d} (channel stride {}) not supported",
                dst.cs
            )));
        }
        let groups = d.c / dst.dtype.vec_len();
        let name = format!("pixel_shuffle2_bias_act_vec_{}", src.dtype.suffix());
        let (sp, dp, dcs, bp) = (src.ptr, dst.ptr, dst.cs as i32, bias.unwrap_or(0));
        let (n, h, w, cv) = (s.n as i32, s.h as i32, s.w as i32, groups as i32);
        let cfg = self.cfg_groups(d.pixels(), groups);
        let f = self.func(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&sp)
            .arg(&dp)
            .arg(&dcs)
            .arg(&bp)
            .arg(&n)
            .arg(&h)
            .arg(&w)
            .arg(&cv)
            .arg(&slope);
        // SAFETY: matches pixel_shuffle2_bias_act_vec_*; shapes and alignment checked above; bias holds c f32.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(pixel_shuffle2_bias_act_vec)"))?;
        Ok(())
    }

    /// Fills a buffer with `value` (tests poison outputs with NaN before an op).
    pub fn fill(&mut self, b: &Buf, value: f32) -> Result<()> {
        let name = format!("fill_{}", b.dtype.suffix());
        let (p, n) = (b.ptr, b.len as i64);
        let cfg = self.cfg1(b.len);
        let f = self.func(&name)?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&p).arg(&n).arg(&value);
        // SAFETY: matches fill_*.
        unsafe { l.launch(cfg) }.map_err(drv("cuLaunchKernel(fill)"))?;
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------------------------------
// The device memory arena.
//
// Device memory is taken from the driver in large slabs (one stream-ordered allocation each); buffers are carved out
// of them at `ARENA_ALIGN`. `Plan` is the bookkeeping alone (no driver calls, unit-tested on the CPU); `Arena` adds
// the slabs themselves. A buffer keeps its slab alive (`Arc<Slab>`); a slab is given back to the driver
// (`cuMemFreeAsync` on the compute stream) when its last buffer and any `Reservation` of it are dropped.
//
// Freed ranges are reused (first fit, lowest offset; neighbours coalesced), so short-lived buffers (the staging of
// `upload_into`, download temporaries) come back instead of piling up; with nothing freed, placement is a plain bump
// pointer. Reuse is safe without events because every kernel, cuDNN call and copy that touches a buffer runs on the
// one compute stream: work queued before a range was freed runs before any work queued after it was handed out
// again. The only other stream, `upload_async`'s copy stream, writes only into its staging slots, which live as
// long as the uploader, and its first transfer into a new slot waits for an event recorded on the compute stream
// after the slot was allocated. A future second stream must keep to the same rule.

/// Alignment of every buffer in the arena (bytes). The driver's own allocations are 256-byte aligned, so buffers keep
/// exactly the alignment they had as separate allocations: cuDNN's tensor-core kernels want 16-byte aligned tensors
/// and our 16-byte kernels check `ptr % 16` (`vec_ok`), and both see the same pointers modulo 256 as before.
pub const ARENA_ALIGN: usize = 256;

/// Default slab size (bytes): a request larger than this gets a slab of its own size. 64 MiB measured best of 0 / 64
/// / 256 / 1024 MiB (docs/perf/arena.md): the plan's U-Net wastes 12 MiB (training 8 × 1024², bf16) and 53 MiB
/// (denoising 4096² tiles) at the peak against 140 / 117 MiB with 256 MiB slabs, and the GPU memory in use is no
/// more than with one allocation per buffer, with about half as many device allocations. `CRYODEN_CUDA_SLAB_MIB`
/// overrides it; 0 gives every buffer its own driver allocation (the layout before the arena; useful under
/// `compute-sanitizer`, which only sees allocation bounds).
pub const DEFAULT_SLAB_BYTES: usize = 64 << 20;

/// Bytes a buffer of `len` elements of `dtype` takes in the arena (rounded up to `ARENA_ALIGN`, at least one unit):
/// the sum over a set of buffers is what [`Gpu::reserve`] needs to hold them in one slab.
pub fn arena_size(len: usize, dtype: DType) -> usize {
    round_up(len * dtype.size())
}

fn round_up(bytes: usize) -> usize {
    bytes.max(1).div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

/// What the arena holds (see [`Gpu::arena_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArenaStats {
    /// Slabs held now (device allocations).
    pub slabs: usize,
    /// Device memory held by those slabs (bytes).
    pub reserved_bytes: usize,
    /// Bytes of the buffers alive now (each rounded up to `ARENA_ALIGN`).
    pub live_bytes: usize,
    /// Buffers alive now.
    pub live_buffers: usize,
    /// Size of the largest slab held now (bytes).
    pub largest_slab: usize,
    /// Largest `reserved_bytes` and `live_bytes` seen so far.
    pub peak_reserved_bytes: usize,
    pub peak_live_bytes: usize,
    /// Device allocations (slabs) made so far, and buffers handed out so far.
    pub slab_allocs: u64,
    pub buffer_allocs: u64,
}

impl std::fmt::Display for ArenaStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        write!(
            f,
            "{} slabs, {:.1} MiB reserved, {:.1} MiB in {} live buffers, largest slab {:.1} MiB; peak {:.1} MiB \
             reserved / {:.1} MiB live; {} device allocations for {} buffers",
            self.slabs,
            mib(self.reserved_bytes),
            mib(self.live_bytes),
            self.live_buffers,
            mib(self.largest_slab),
            mib(self.peak_reserved_bytes),
            mib(self.peak_live_bytes),
            self.slab_allocs,
            self.buffer_allocs
        )
    }
}

/// Where a request goes: into slab `slab` at byte `offset`, or into a new slab of `bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    In { slab: u64, offset: usize },
    NewSlab { bytes: usize },
}

/// Bookkeeping of one slab.
#[derive(Debug)]
struct SlabBook {
    id: u64,
    cap: usize,
    /// Free ranges, offset → length, coalesced (no two touch).
    free: std::collections::BTreeMap<usize, usize>,
    live_bytes: usize,
    live_buffers: usize,
}

/// The arena's arithmetic: placement, freeing, slab sizes, statistics. No driver calls.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Size of a new slab for requests up to this size; 0: one slab per request.
    slab_bytes: usize,
    /// In order of preference: reserved slabs (newest first), then the others in the order they were made.
    slabs: Vec<SlabBook>,
    reserved_count: usize,
    peak_reserved: usize,
    peak_live: usize,
    slab_allocs: u64,
    buffer_allocs: u64,
}

impl Plan {
    pub(crate) fn new(slab_bytes: usize) -> Plan {
        Plan {
            slab_bytes: if slab_bytes == 0 {
                0
            } else {
                round_up(slab_bytes)
            },
            slabs: Vec::new(),
            reserved_count: 0,
            peak_reserved: 0,
            peak_live: 0,
            slab_allocs: 0,
            buffer_allocs: 0,
        }
    }

    /// Where a buffer of `bytes` (any size; rounded here) goes: the first free range that holds it, in slab
    /// preference order and lowest offset first; otherwise a new slab of `max(bytes, slab_bytes)`.
    pub(crate) fn fit(&self, bytes: usize) -> Fit {
        let need = round_up(bytes);
        // With slab_bytes 0 only reserved slabs are shared (the caller asked for them); every other buffer gets its
        // own device allocation.
        let open = if self.slab_bytes == 0 {
            &self.slabs[..self.reserved_count]
        } else {
            &self.slabs[..]
        };
        for s in open {
            if let Some((&offset, _)) = s.free.iter().find(|(_, &len)| len >= need) {
                return Fit::In { slab: s.id, offset };
            }
        }
        Fit::NewSlab {
            bytes: need.max(self.slab_bytes),
        }
    }

    /// Records a new slab of `cap` bytes (a multiple of `ARENA_ALIGN`); a reserved one is preferred over all others.
    pub(crate) fn add_slab(&mut self, id: u64, cap: usize, reserved: bool) {
        let book = SlabBook {
            id,
            cap,
            free: std::iter::once((0, cap)).collect(),
            live_bytes: 0,
            live_buffers: 0,
        };
        if reserved {
            self.slabs.insert(0, book);
            self.reserved_count += 1;
        } else {
            self.slabs.push(book);
        }
        self.slab_allocs += 1;
        self.peak_reserved = self.peak_reserved.max(self.reserved_bytes());
    }

    /// Takes `bytes` (rounded) at `offset` of slab `id`, which `fit` returned (or offset 0 of a slab just added).
    pub(crate) fn take(&mut self, id: u64, offset: usize, bytes: usize) {
        let need = round_up(bytes);
        let s = self.book_mut(id);
        let len = s
            .free
            .remove(&offset)
            .unwrap_or_else(|| panic!("arena: no free range at {offset} of slab {id}"));
        assert!(
            len >= need,
            "arena: free range of {len} at {offset} cannot hold {need}"
        );
        if len > need {
            s.free.insert(offset + need, len - need);
        }
        s.live_bytes += need;
        s.live_buffers += 1;
        self.buffer_allocs += 1;
        self.peak_live = self.peak_live.max(self.live_bytes());
    }

    /// Returns the range of a dropped buffer to its slab, merged with free neighbours.
    pub(crate) fn give_back(&mut self, id: u64, offset: usize, bytes: usize) {
        let need = round_up(bytes);
        let Some(s) = self.slabs.iter_mut().find(|s| s.id == id) else {
            return; // the slab is already gone (only when its Drop ran first; ranges die with it)
        };
        let (mut start, mut len) = (offset, need);
        if let Some((&prev, &plen)) = s.free.range(..offset).next_back() {
            debug_assert!(prev + plen <= offset, "arena: double free in slab {id}");
            if prev + plen == offset {
                s.free.remove(&prev);
                start = prev;
                len += plen;
            }
        }
        if let Some(&nlen) = s.free.get(&(offset + need)) {
            s.free.remove(&(offset + need));
            len += nlen;
        }
        s.free.insert(start, len);
        s.live_bytes -= need;
        s.live_buffers -= 1;
    }

    /// Forgets slab `id` (its memory went back to the driver).
    pub(crate) fn remove_slab(&mut self, id: u64) {
        if let Some(i) = self.slabs.iter().position(|s| s.id == id) {
            if i < self.reserved_count {
                self.reserved_count -= 1;
            }
            self.slabs.remove(i);
        }
    }

    /// Buffers alive in slab `id` (0 for an unknown slab).
    pub(crate) fn live_in(&self, id: u64) -> usize {
        self.slabs
            .iter()
            .find(|s| s.id == id)
            .map_or(0, |s| s.live_buffers)
    }

    fn book_mut(&mut self, id: u64) -> &mut SlabBook {
        self.slabs
            .iter_mut()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("arena: unknown slab {id}"))
    }

    fn reserved_bytes(&self) -> usize {
        self.slabs.iter().map(|s| s.cap).sum()
    }

    fn live_bytes(&self) -> usize {
        self.slabs.iter().map(|s| s.live_bytes).sum()
    }

    pub(crate) fn stats(&self) -> ArenaStats {
        ArenaStats {
            slabs: self.slabs.len(),
            reserved_bytes: self.reserved_bytes(),
            live_bytes: self.live_bytes(),
            live_buffers: self.slabs.iter().map(|s| s.live_buffers).sum(),
            largest_slab: self.slabs.iter().map(|s| s.cap).max().unwrap_or(0),
            peak_reserved_bytes: self.peak_reserved,
            peak_live_bytes: self.peak_live,
            slab_allocs: self.slab_allocs,
            buffer_allocs: self.buffer_allocs,
        }
    }
}

/// The plan plus a handle on each live slab (weak: buffers own slabs, the arena only finds them).
struct Pool {
    plan: Plan,
    slabs: HashMap<u64, std::sync::Weak<Slab>>,
    next_id: u64,
}

type SharedPool = Arc<std::sync::Mutex<Pool>>;

fn lock(pool: &SharedPool) -> std::sync::MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|p| p.into_inner())
}

/// One device allocation of the arena.
struct Slab {
    id: u64,
    base: u64,
    pool: SharedPool,
    /// Freed with `cuMemFreeAsync` on the compute stream when dropped: work already queued on it finishes first.
    _mem: CudaSlice<u8>,
}

impl Drop for Slab {
    fn drop(&mut self) {
        let mut p = lock(&self.pool);
        p.plan.remove_slab(self.id);
        p.slabs.remove(&self.id);
    }
}

impl std::fmt::Debug for Slab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slab {} at {:#x}", self.id, self.base)
    }
}

/// A buffer's range in its slab; returns the range when dropped (then the slab goes if this was its last user).
#[derive(Debug)]
struct Block {
    slab: Arc<Slab>,
    offset: usize,
    bytes: usize,
}

impl Drop for Block {
    fn drop(&mut self) {
        lock(&self.slab.pool)
            .plan
            .give_back(self.slab.id, self.offset, self.bytes);
        // `self.slab` is released after this, outside the lock (Slab::drop takes it).
    }
}

/// A slab taken by [`Gpu::reserve`]: buffers are placed in it first while it has room. It keeps the slab alive even
/// with no buffer in it; once the buffers it was made for exist, it may be dropped (they keep the slab).
#[derive(Debug)]
pub struct Reservation {
    slab: Arc<Slab>,
    bytes: usize,
}

impl Reservation {
    /// Size of the reserved slab (bytes, a multiple of `ARENA_ALIGN`).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// Device address of its first byte.
    pub fn ptr(&self) -> u64 {
        self.slab.base
    }
    /// Its slab's id (as [`Buf::slab_id`]; see [`Gpu::arena_live_in`]).
    pub fn slab_id(&self) -> u64 {
        self.slab.id
    }
}

/// The arena of one GPU.
pub(crate) struct Arena {
    pool: SharedPool,
    ordinal: usize,
}

impl Arena {
    fn new(ordinal: usize) -> Arena {
        let slab_bytes = match std::env::var("CRYODEN_CUDA_SLAB_MIB") {
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(mib) => mib << 20,
                Err(_) => {
                    eprintln!(
                        "warning: CRYODEN_CUDA_SLAB_MIB={v:?} is not a whole number of MiB; using {} MiB",
                        DEFAULT_SLAB_BYTES >> 20
                    );
                    DEFAULT_SLAB_BYTES
                }
            },
            Err(_) => DEFAULT_SLAB_BYTES,
        };
        Arena {
            pool: Arc::new(std::sync::Mutex::new(Pool {
                plan: Plan::new(slab_bytes),
                slabs: HashMap::new(),
                next_id: 0,
            })),
            ordinal,
        }
    }

    /// A new slab of `bytes` (a multiple of `ARENA_ALIGN`), recorded in the plan. Called with the pool locked.
    fn new_slab(
        &self,
        p: &mut Pool,
        stream: &Arc<CudaStream>,
        bytes: usize,
        request: usize,
        reserved: bool,
    ) -> Result<Arc<Slab>> {
        // SAFETY: uninitialised memory; every op writes a buffer before reading it (tests poison outputs to check).
        let mut mem = unsafe { stream.alloc::<u8>(bytes) };
        if let Err(e) = &mem {
            if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                // Slabs freed in stream order go back to the driver at a synchronisation: wait for them, try again.
                stream.synchronize().map_err(drv("cuStreamSynchronize"))?;
                mem = unsafe { stream.alloc::<u8>(bytes) };
            }
        }
        let mem = match mem {
            Ok(m) => m,
            Err(e) if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                return Err(self.out_of_memory(&p.plan, stream, bytes, request));
            }
            Err(e) => return Err(drv("cuMemAllocAsync")(e)),
        };
        let base = mem.device_ptr(stream).0;
        let id = p.next_id;
        p.next_id += 1;
        let slab = Arc::new(Slab {
            id,
            base,
            pool: self.pool.clone(),
            _mem: mem,
        });
        p.plan.add_slab(id, bytes, reserved);
        p.slabs.insert(id, Arc::downgrade(&slab));
        Ok(slab)
    }

    fn out_of_memory(
        &self,
        plan: &Plan,
        stream: &Arc<CudaStream>,
        bytes: usize,
        request: usize,
    ) -> CudaError {
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        let (free, total) = stream.context().mem_get_info().unwrap_or((0, 0));
        let s = plan.stats();
        CudaError::Shape(format!(
            "out of GPU memory on cuda:{}: asked for {:.1} MiB (a slab for a buffer of {:.1} MiB) with {:.1} MiB free \
             of {:.1} MiB (cryoden holds {:.1} MiB in {} slabs, {:.1} MiB of it in use); lower --batch (training) or \
             --tile (denoising), or free the GPU of other processes (nvidia-smi)",
            self.ordinal,
            mib(bytes),
            mib(request),
            mib(free),
            mib(total),
            mib(s.reserved_bytes),
            s.slabs,
            mib(s.live_bytes)
        ))
    }

    fn alloc(&self, stream: &Arc<CudaStream>, bytes: usize) -> Result<Block> {
        let mut p = lock(&self.pool);
        loop {
            match p.plan.fit(bytes) {
                Fit::In { slab, offset } => {
                    let Some(s) = p.slabs.get(&slab).and_then(|w| w.upgrade()) else {
                        // Dying (its Drop waits for this lock): forget it now, look again.
                        p.plan.remove_slab(slab);
                        p.slabs.remove(&slab);
                        continue;
                    };
                    p.plan.take(slab, offset, bytes);
                    return Ok(Block {
                        slab: s,
                        offset,
                        bytes,
                    });
                }
                Fit::NewSlab { bytes: cap } => {
                    let s = self.new_slab(&mut p, stream, cap, bytes, false)?;
                    p.plan.take(s.id, 0, bytes);
                    return Ok(Block {
                        slab: s,
                        offset: 0,
                        bytes,
                    });
                }
            }
        }
    }

    fn reserve(&self, stream: &Arc<CudaStream>, bytes: usize) -> Result<Reservation> {
        let cap = round_up(bytes);
        let mut p = lock(&self.pool);
        let slab = self.new_slab(&mut p, stream, cap, bytes, true)?;
        Ok(Reservation { slab, bytes: cap })
    }

    fn stats(&self) -> ArenaStats {
        lock(&self.pool).plan.stats()
    }

    fn set_slab_bytes(&self, bytes: usize) {
        let mut p = lock(&self.pool);
        p.plan.slab_bytes = if bytes == 0 { 0 } else { round_up(bytes) };
    }

    fn live_in(&self, slab: u64) -> usize {
        lock(&self.pool).plan.live_in(slab)
    }

    fn slab_bytes(&self) -> usize {
        lock(&self.pool).plan.slab_bytes
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // `CRYODEN_CUDA_ARENA_STATS=1`: what the arena held, for measurements (docs/perf/arena.md). Buffers still
        // alive keep their slabs; the figures that matter here are the peaks and the counts.
        if std::env::var("CRYODEN_CUDA_ARENA_STATS").is_ok_and(|v| v == "1") {
            eprintln!("cuda:{} arena: {}", self.ordinal, self.stats());
        }
    }
}

/// Loss functions of the `loss` kernel (values match its `kind` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LossKind {
    Mse = 0,
    L1 = 1,
}

/// Hyper-parameters of one Adam step (PyTorch defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay).
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step number (for the bias corrections).
    pub step: u64,
    /// Multiplies the gradient first (e.g. 1 / loss scale); 1 normally.
    pub grad_scale: f32,
}

impl AdamStep {
    /// `(1 - beta1^step, sqrt(1 - beta2^step))`, the two bias-correction factors the Adam kernel uses.
    pub fn bias_corrections(&self) -> (f32, f32) {
        let t = self.step.min(i32::MAX as u64) as i32;
        (1.0 - self.beta1.powi(t), (1.0 - self.beta2.powi(t)).sqrt())
    }
}

fn kernel_names() -> Vec<String> {
    let mut v = vec![
        "act_bwd_pairs_bf16".to_string(),
        "bias_act_pairs_bf16".to_string(),
        "reduce_sum_f32".to_string(),
        "sum_squares_f32".to_string(),
        "scale_f32".to_string(),
        "tf32_split_f32".to_string(),
    ];
    for t in ["f32", "bf16"] {
        for k in [
            "act_bwd",
            "sum_parts",
            "maxpool2_fwd",
            "maxpool2_bwd",
            "maxpool2_bwd2",
            "bias_act_vec",
            "act_bwd_vec",
            "maxpool2_fwd_vec",
            "maxpool2_bwd_vec",
            "maxpool2_bwd_act_vec",
            "conv1x1_to1_bwd_data_act_vec",
            "conv_in3_fwd",
            "conv_in3_bwd_filter",
            "conv1x1_to1_bwd_data_vec",
            "conv1x1_to1_fwd_vec",
            "conv1x1_to1_bwd_filter_vec",
            "pixel_shuffle2_bias_act_vec",
            "upsample_fwd",
            "upsample_bwd",
            "conv1x1_to1_bwd_data",
            "pixel_shuffle2",
            "loss",
            "adam",
            "fill",
        ] {
            v.push(format!("{k}_{t}"));
        }
        for o in ["f32", "bf16"] {
            v.push(format!("bias_act_{t}_{o}"));
            v.push(format!("bias_act2_{t}_{o}"));
            v.push(format!("image_norm_{t}_{o}"));
        }
    }
    v
}

/// Whether `c` channels of every view can move in 16-byte accesses: same dtype, `c` and every channel stride
/// multiples of the vector length, pointers 16-byte aligned.
fn vec_ok(c: usize, views: &[&View]) -> bool {
    let Some(first) = views.first() else {
        return false;
    };
    let n = first.dtype.vec_len();
    c > 0
        && c.is_multiple_of(n)
        && views
            .iter()
            .all(|v| v.dtype == first.dtype && v.cs.is_multiple_of(n) && v.ptr.is_multiple_of(16))
}

/// A 2x2 max-pool backward's tensors: dx shaped as x, dy as the pooled x (floor), one dtype.
fn check_pool_backward(op: &str, x: View, dy: View, dx: View) -> Result<()> {
    let s = x.shape;
    same_shape(op, s, dx.shape)?;
    same_dtype(op, x.dtype, dy.dtype)?;
    same_dtype(op, x.dtype, dx.dtype)?;
    same_shape(op, Nhwc::new(s.n, s.h / 2, s.w / 2, s.c), dy.shape)
}

fn same_shape(op: &str, a: Nhwc, b: Nhwc) -> Result<()> {
    if a != b {
        return Err(CudaError::Shape(format!("{op}: shapes {a} and {b} differ")));
    }
    Ok(())
}

fn same_dtype(op: &str, a: DType, b: DType) -> Result<()> {
    if a != b {
        return Err(CudaError::Shape(format!(
            "{op}: dtypes {a:?} and {b:?} differ"
        )));
    }
    Ok(())
}

fn upsample_check(small: Nhwc, big: Nhwc) -> Result<()> {
    if small.n != big.n || small.c != big.c || small.h == 0 || small.w == 0 {
        return Err(CudaError::Shape(format!(
            "upsample: cannot map {small} to {big}"
        )));
    }
    Ok(())
}

fn dims6(x: Nhwc, y: Nhwc) -> (i32, i32, i32, i32, i32, i32) {
    (
        x.n as i32, x.h as i32, x.w as i32, y.h as i32, y.w as i32, x.c as i32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_are_in_the_source() {
        for name in kernel_names() {
            // Instantiated through macros: the base name and the suffix must both occur.
            let base = name.rsplit_once('_').map(|(b, _)| b).unwrap();
            let base = base
                .strip_suffix("_f32")
                .or(base.strip_suffix("_bf16"))
                .unwrap_or(base);
            assert!(ELEMENTWISE_CU.contains(base), "{name}");
        }
    }

    /// The other direction: every kernel the source instantiates is loaded (a missing name fails only on a GPU).
    #[test]
    fn every_kernel_in_the_source_is_loaded() {
        let names = kernel_names();
        for line in ELEMENTWISE_CU.lines() {
            let Some(rest) = line.split("__global__ void ").nth(1) else {
                continue;
            };
            // Past `__launch_bounds__(..)`, if any.
            let rest = match rest.strip_prefix("__launch_bounds__(") {
                Some(r) => r.split_once(") ").map_or(r, |(_, name)| name),
                None => rest,
            };
            let Some(name) = rest.split('(').next() else {
                continue;
            };
            let wanted: Vec<String> = match name.strip_suffix("##sfx") {
                Some(base) => ["f32", "bf16"]
                    .iter()
                    .map(|t| format!("{base}{t}"))
                    .collect(),
                None if name.contains("##") => continue, // two-type instantiations, listed by hand
                None => vec![name.to_string()],
            };
            for w in wanted {
                assert!(
                    names.contains(&w),
                    "{w} is in elementwise.cu but not in kernel_names()"
                );
            }
        }
    }

    /// What `Arena::alloc` does, without the driver: place `bytes`, opening a slab (id `*next`) when needed.
    fn place(p: &mut Plan, next: &mut u64, bytes: usize) -> (u64, usize) {
        match p.fit(bytes) {
            Fit::In { slab, offset } => {
                p.take(slab, offset, bytes);
                (slab, offset)
            }
            Fit::NewSlab { bytes: cap } => {
                let id = *next;
                *next += 1;
                p.add_slab(id, cap, false);
                p.take(id, 0, bytes);
                (id, 0)
            }
        }
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn arena_sizes_round_to_256_bytes() {
        assert_eq!(arena_size(0, DType::F32), 256);
        assert_eq!(arena_size(1, DType::Bf16), 256);
        assert_eq!(arena_size(64, DType::F32), 256);
        assert_eq!(arena_size(65, DType::F32), 512);
        assert_eq!(arena_size(128, DType::Bf16), 256);
        assert_eq!(arena_size(129, DType::Bf16), 512);
        assert_eq!(arena_size(3 << 20, DType::F32), 12 * MIB);
    }

    #[test]
    fn arena_bumps_within_a_slab_at_256_byte_alignment() {
        let mut p = Plan::new(MIB);
        let mut next = 0;
        let mut top = 0;
        for (i, bytes) in [4usize, 1000, 256, 257, 0, 4096, 12]
            .into_iter()
            .enumerate()
        {
            let (slab, off) = place(&mut p, &mut next, bytes);
            assert_eq!((slab, off), (0, top), "request {i} of {bytes} bytes");
            assert_eq!(off % ARENA_ALIGN, 0);
            top += round_up(bytes);
        }
        let st = p.stats();
        assert_eq!(st.slabs, 1);
        assert_eq!(st.reserved_bytes, MIB);
        assert_eq!(st.largest_slab, MIB);
        assert_eq!(st.live_bytes, top);
        assert_eq!(st.live_buffers, 7);
        assert_eq!((st.slab_allocs, st.buffer_allocs), (1, 7));
    }

    #[test]
    fn arena_opens_a_slab_when_full_and_gives_large_requests_their_own() {
        let mut p = Plan::new(MIB);
        let mut next = 0;
        assert_eq!(place(&mut p, &mut next, 700 << 10), (0, 0));
        // 400 KiB does not fit in the 324 KiB left: a second slab of the default size.
        assert_eq!(p.fit(400 << 10), Fit::NewSlab { bytes: MIB });
        assert_eq!(place(&mut p, &mut next, 400 << 10), (1, 0));
        // Larger than a slab: a slab of exactly its (rounded) size.
        assert_eq!(
            p.fit(3 * MIB + 1),
            Fit::NewSlab {
                bytes: 3 * MIB + 256
            }
        );
        assert_eq!(place(&mut p, &mut next, 3 * MIB + 1), (2, 0));
        // First fit in slab order: a small request goes back to the first slab's tail.
        assert_eq!(place(&mut p, &mut next, 100 << 10), (0, 700 << 10));
        let st = p.stats();
        assert_eq!(st.slabs, 3);
        assert_eq!(st.reserved_bytes, 5 * MIB + 256);
        assert_eq!(st.largest_slab, 3 * MIB + 256);
        assert_eq!(st.live_bytes, (1200 << 10) + 3 * MIB + 256);
    }

    #[test]
    fn arena_reuses_and_coalesces_freed_ranges() {
        let mut p = Plan::new(MIB);
        let mut next = 0;
        let a = place(&mut p, &mut next, 1000); // 1024 at 0
        let b = place(&mut p, &mut next, 2000); // 2048 at 1024
        let c = place(&mut p, &mut next, 300); // 512 at 3072
        assert_eq!((a.1, b.1, c.1), (0, 1024, 3072));
        p.give_back(0, b.1, 2000);
        // The hole is reused first (lowest offset that fits), a larger request goes past it.
        assert_eq!(
            p.fit(3000),
            Fit::In {
                slab: 0,
                offset: 3584
            }
        );
        assert_eq!(place(&mut p, &mut next, 1500), (0, 1024));
        p.give_back(0, 1024, 1500);
        p.give_back(0, a.1, 1000);
        // a and b's ranges merged: 3072 bytes at 0.
        assert_eq!(p.fit(3072), Fit::In { slab: 0, offset: 0 });
        p.give_back(0, c.1, 300);
        assert_eq!(p.live_in(0), 0);
        // Everything free is one range again: a request of the whole slab fits at 0.
        assert_eq!(p.fit(MIB), Fit::In { slab: 0, offset: 0 });
        assert_eq!(p.stats().live_bytes, 0);
        assert_eq!(p.stats().peak_live_bytes, 3584);
        p.remove_slab(0);
        assert_eq!(p.stats().slabs, 0);
        assert_eq!(p.stats().reserved_bytes, 0);
        assert_eq!(p.stats().peak_reserved_bytes, MIB);
        assert_eq!(p.live_in(0), 0);
    }

    #[test]
    fn arena_fills_a_reservation_first() {
        let mut p = Plan::new(MIB);
        let mut next = 0;
        assert_eq!(place(&mut p, &mut next, 1000), (0, 0));
        p.add_slab(7, 10 * 1024, true);
        // The old slab has room, but the reserved one is preferred while it has room.
        assert_eq!(place(&mut p, &mut next, 4096), (7, 0));
        assert_eq!(place(&mut p, &mut next, 6000), (7, 4096));
        assert_eq!(place(&mut p, &mut next, 256), (0, 1024));
        p.remove_slab(7);
        assert_eq!(place(&mut p, &mut next, 256), (0, 1280));
    }

    #[test]
    fn arena_slab_size_zero_gives_one_allocation_per_buffer() {
        let mut p = Plan::new(0);
        let mut next = 0;
        assert_eq!(p.fit(10), Fit::NewSlab { bytes: 256 });
        assert_eq!(place(&mut p, &mut next, 10), (0, 0));
        assert_eq!(place(&mut p, &mut next, 10), (1, 0));
        assert_eq!(p.fit(5000), Fit::NewSlab { bytes: 5120 });
        // A reservation is still shared.
        p.add_slab(9, 4096, true);
        assert_eq!(place(&mut p, &mut next, 10), (9, 0));
        assert_eq!(place(&mut p, &mut next, 10), (9, 256));
        assert_eq!(p.stats().slab_allocs, 3);
        assert_eq!(p.stats().buffer_allocs, 4);
    }

    /// Random allocations and frees against a shadow list: live ranges never overlap, stay inside their slab, and
    /// live + free bytes always add up to the slab.
    #[test]
    fn arena_random_traffic_keeps_ranges_disjoint() {
        let mut p = Plan::new(64 << 10);
        let mut next = 0;
        let mut live: Vec<(u64, usize, usize)> = Vec::new();
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = |m: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % m
        };
        for _ in 0..4000 {
            if live.is_empty() || rnd(5) < 3 {
                let bytes = if rnd(10) == 0 {
                    rnd(200_000) as usize
                } else {
                    rnd(5000) as usize
                };
                let (slab, off) = place(&mut p, &mut next, bytes);
                live.push((slab, off, bytes));
            } else {
                let (slab, off, bytes) = live.swap_remove(rnd(live.len() as u64) as usize);
                p.give_back(slab, off, bytes);
                if p.live_in(slab) == 0 {
                    p.remove_slab(slab); // what Slab::drop does
                }
            }
            for book in &p.slabs {
                let mine: Vec<_> = live.iter().filter(|l| l.0 == book.id).collect();
                let used: usize = mine.iter().map(|l| round_up(l.2)).sum();
                let free: usize = book.free.values().sum();
                assert_eq!(used + free, book.cap, "slab {}", book.id);
                assert_eq!(used, book.live_bytes);
                let mut ranges: Vec<_> = mine.iter().map(|l| (l.1, l.1 + round_up(l.2))).collect();
                ranges.extend(book.free.iter().map(|(&o, &l)| (o, o + l)));
                ranges.sort();
                for w in ranges.windows(2) {
                    assert!(w[0].1 <= w[1].0, "overlap in slab {}: {w:?}", book.id);
                }
                assert!(ranges.last().is_none_or(|r| r.1 <= book.cap));
                assert!(ranges.iter().all(|r| r.0 % ARENA_ALIGN == 0));
            }
            assert_eq!(
                p.stats().live_bytes,
                live.iter().map(|l| round_up(l.2)).sum::<usize>()
            );
        }
    }

    #[test]
    fn nhwc_sizes() {
        let s = Nhwc::new(2, 3, 4, 5);
        assert_eq!(s.pixels(), 24);
        assert_eq!(s.len(), 120);
        assert_eq!(s.to_string(), "[2, 3, 4, 5]");
    }
}

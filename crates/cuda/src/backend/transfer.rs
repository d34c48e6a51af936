//! Batches between page-locked host memory and the device, overlapped with compute (the denoise pipeline).
//!
//! From pageable memory the driver copies through its own staging on the calling thread (~6 ms per 64 MiB on the
//! H200's host, docs/perf/gpu-denoise.md); from page-locked memory a copy is a DMA on a copy engine that the host
//! only starts. Uploads use `Gpu::upload_async` (copy stream + device staging, ordered on the compute stream).
//! Downloads stage the result on the compute stream (bf16 converted to f32 there), then copy it out on a second
//! copy stream, so the next forward pass may be queued at once and overwrite the output while the copy runs.

use crate::device::{Buf, Gpu, Nhwc, View};
use crate::error::{drv, CudaError, Result};
use crate::precision::DType;
use cryoden_nn::{HostMemory, ImageNorm};
use cudarc::driver::{CudaContext, CudaEvent, CudaStream};
use std::any::Any;
use std::sync::Arc;

/// Page-locked host memory from `cuMemHostAlloc` (cacheable: the pipeline reads its downloads back; cudarc's
/// `alloc_pinned` asks for write-combined memory, which the CPU reads very slowly).
pub(crate) struct PinnedHost {
    ptr: *mut f32,
    len: usize,
    ctx: Arc<CudaContext>,
    /// Recorded after the last transfer that reads or writes this memory.
    done: CudaEvent,
}

// SAFETY: the pointer is owned (freed once, in Drop); access goes through &self / &mut self.
unsafe impl Send for PinnedHost {}

impl PinnedHost {
    pub(crate) fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<PinnedHost> {
        ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        let bytes = len.max(1) * 4;
        // SAFETY: plain page-locked allocation (flags 0: cacheable, this context only); zeroed below.
        let ptr = unsafe { cudarc::driver::result::malloc_host(bytes, 0) }.map_err(|e| {
            CudaError::Shape(format!(
                "cannot page-lock {} MiB of host memory for transfers ({e}); lower --batch or --tile",
                bytes >> 20
            ))
        })? as *mut f32;
        // SAFETY: `bytes` bytes were just allocated at `ptr`.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        let done = ctx.new_event(None).map_err(drv("cuEventCreate"))?;
        Ok(PinnedHost {
            ptr,
            len,
            ctx: ctx.clone(),
            done,
        })
    }

    fn wait(&self) {
        // An error here means a broken context; the next backend call reports it.
        let _ = self.done.synchronize();
    }

    /// The memory without waiting, for queuing a transfer.
    fn raw(&self) -> &[f32] {
        // SAFETY: `len` floats live at `ptr` for as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The memory without waiting, for queuing a transfer into it.
    fn raw_mut(&mut self) -> &mut [f32] {
        // SAFETY: as above; &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        self.wait();
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by cuMemHostAlloc in `new`; no transfer uses it any more (waited above).
        let _ = unsafe { cudarc::driver::result::free_host(self.ptr as *mut _) };
    }
}

impl HostMemory for PinnedHost {
    fn len(&self) -> usize {
        self.len
    }
    fn as_slice(&self) -> &[f32] {
        self.wait();
        self.raw()
    }
    fn as_mut_slice(&mut self) -> &mut [f32] {
        self.wait();
        self.raw_mut()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The download side: a copy stream and the device staging of the output being copied out.
pub(crate) struct Downloads {
    stream: Arc<CudaStream>,
    /// f32 staging on the device (grown on demand).
    stage: Option<Buf>,
    /// Compute stream: the staging holds the output.
    staged: CudaEvent,
    /// Copy stream: the staging has been copied out (it may be overwritten).
    drained: CudaEvent,
}

impl Downloads {
    pub(crate) fn new(gpu: &Gpu) -> Result<Downloads> {
        let stream = gpu.ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        let staged = gpu.ctx.new_event(None).map_err(drv("cuEventCreate"))?;
        let drained = gpu.ctx.new_event(None).map_err(drv("cuEventCreate"))?;
        Ok(Downloads {
            stream,
            stage: None,
            staged,
            drained,
        })
    }

    /// Queues: (compute stream) `src` → f32 staging (through `norm.restore` if given), after the work queued so
    /// far; (copy stream) staging → `dst`. Records `dst`'s event after the copy. Returns without waiting.
    pub(crate) fn start(
        &mut self,
        gpu: &mut Gpu,
        src: u64,
        dtype: DType,
        len: usize,
        dst: &mut PinnedHost,
        norm: Option<ImageNorm>,
    ) -> Result<()> {
        if self.stage.as_ref().is_none_or(|b| b.len < len) {
            // The old staging may still be read by the copy stream.
            self.drained
                .synchronize()
                .map_err(drv("cuEventSynchronize"))?;
            self.stage = None;
            self.stage = Some(gpu.alloc(len, DType::F32)?);
        }
        let stage = self.stage.as_ref().expect("allocated above");
        // The previous copy out of the staging must be done before it is overwritten.
        gpu.stream
            .wait(&self.drained)
            .map_err(drv("cuStreamWaitEvent"))?;
        let shape = Nhwc::new(1, 1, len, 1);
        let from = View {
            ptr: src,
            dtype,
            shape,
            cs: 1,
        };
        match norm {
            Some(m) => gpu.image_norm(
                src,
                dtype,
                stage.ptr(),
                DType::F32,
                len,
                m.center,
                m.spread,
                true,
            )?,
            None => gpu.bias_act(from, None, stage.view_prefix(shape), 1.0)?,
        }
        self.staged
            .record(&gpu.stream)
            .map_err(drv("cuEventRecord"))?;
        self.stream
            .wait(&self.staged)
            .map_err(drv("cuStreamWaitEvent"))?;
        // The host side must not be read while this runs (PinnedHost's accessors wait on `done`).
        let out = &mut dst.raw_mut()[..len];
        // SAFETY: the staging holds `len` f32; `out` is page-locked and outlives the copy (its Drop waits on `done`).
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(out, stage.ptr(), self.stream.cu_stream())
        }
        .map_err(drv("cuMemcpyDtoHAsync"))?;
        self.drained
            .record(&self.stream)
            .map_err(drv("cuEventRecord"))?;
        dst.done
            .record(&self.stream)
            .map_err(drv("cuEventRecord"))?;
        Ok(())
    }

    /// Waits for every download queued so far.
    pub(crate) fn wait(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))
    }
}

/// Queues the upload of `src[..len]` (page-locked) to `dst` (`Gpu::upload_async`: ordered on the compute stream,
/// normalised on the device if `norm`) and records `src`'s event after it, so the host waits before rewriting `src`
/// while the copy may still read it.
pub(crate) fn upload_pinned(
    gpu: &mut Gpu,
    src: &PinnedHost,
    len: usize,
    dst: u64,
    dtype: DType,
    norm: Option<ImageNorm>,
) -> Result<()> {
    gpu.upload_async(&src.raw()[..len], dst, dtype, norm)?;
    // The compute stream has waited for every chunk's transfer before copying it out of the staging.
    src.done.record(&gpu.stream).map_err(drv("cuEventRecord"))
}

//! The [`Backend`] trait: the small op set a U-Net needs, on buffers + explicit shapes.
//!
//! Conventions shared by every op:
//! - Buffers are flat `f32` arrays owned by the backend ([`Backend::Buf`]). Ops never allocate: scratch space is
//!   an explicit `ws` buffer whose required length the backend reports (`*_workspace_len`).
//! - Activations are NHWC; an op reads or writes a channel window given by a [`View`] (see `shape.rs`).
//! - Parameters live in one flat buffer; an op gets the buffer and the element offset of its weight / bias.
//!   Weight layout inside the flat buffer is "channels-last filter": PyTorch's shape with dimension 1 moved to the
//!   end — conv `[cout, k, k, cin]` (PyTorch `[cout, cin, k, k]`), transposed conv `[cin, 2, 2, cout]` (PyTorch
//!   `[cin, cout, 2, 2]`). This is cuDNN's NHWC filter format and the GEMM-friendly one for im2col; checkpoints
//!   convert to PyTorch layout on save and back on load ([`crate::params`]).
//! - Gradients of parameters are ACCUMULATED (`+=`) into the gradient buffer (zero it once per step with
//!   [`Backend::fill`]), so micro-batches can add up. Gradients of activations overwrite their destination unless
//!   `accumulate` is true (used where a skip connection's gradient meets the main path's).
//! - Activations are applied on the op's output `y`; their backward uses `y` (ReLU and LeakyReLU keep the sign,
//!   so `y > 0 ⇔ pre-activation > 0`), which saves storing the pre-activation.

use crate::shape::{ConvGeom, ConvTGeom, PoolGeom, UpsampleGeom, View};
use crate::ImageNorm;
use crate::Result;

/// Pointwise activation fused after bias.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// No activation (output conv, transposed conv).
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `x > 0 ? x : slope·x` (Topaz uses slope 0.1).
    LeakyRelu(f32),
}

impl Activation {
    /// Applies the activation to one value.
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::LeakyRelu(s) => {
                if v > 0.0 {
                    v
                } else {
                    v * s
                }
            }
        }
    }
    /// Derivative, as a function of the activation's OUTPUT `y`.
    #[inline(always)]
    pub fn grad_from_output(self, y: f32) -> f32 {
        match self {
            Activation::Identity => 1.0,
            Activation::Relu => {
                if y > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::LeakyRelu(s) => {
                if y > 0.0 {
                    1.0
                } else {
                    s
                }
            }
        }
    }
}

/// The backward of a layer's bias + activation, handed to an op that writes that activation's output gradient so
/// the two can run as one pass (the `*_act` ops): `dx ← dx · act'(y)` and `db += Σ_pixels dx`, as
/// [`Backend::bias_act_backward`], where `y` (the activation's output) is the tensor the op read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActBackward {
    pub act: Activation,
    /// Offset of the layer's bias gradient in `grads`, if it has a bias.
    pub db_off: Option<usize>,
}

/// What a buffer will hold, so a device backend can choose its storage type. The CPU backend stores everything
/// in f32; the CUDA backend in bf16 mode stores [`BufKind::Activation`] buffers in bf16 (half the bytes moved by
/// every elementwise op, what PyTorch's autocast does) and keeps everything else in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufKind {
    /// Parameters, their gradients, optimizer moments, the loss scalar: always f32.
    Param,
    /// Activations, their gradients, network inputs and targets: the backend's activation storage type.
    Activation,
    /// Scratch space of the conv ops (`*_workspace_len` floats).
    Workspace,
}

/// Loss between a prediction and a target, averaged over all elements (as PyTorch's `reduction="mean"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Mean squared error, `mean((p - t)²)`.
    Mse,
    /// Mean absolute error, `mean(|p - t|)`; gradient `sign(p - t) / N` (0 at equality, as torch).
    L1,
}

/// Hyper-parameters of Adam (f64, like the Python floats torch receives), identical to `torch.optim.Adam(lr, betas=(beta1, beta2), eps, weight_decay)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty added to the gradient (torch's `weight_decay`, not AdamW's decoupled decay).
    pub weight_decay: f64,
}

impl Default for AdamParams {
    /// PyTorch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The op set of a U-Net. Implemented by [`crate::cpu::Cpu`] (the reference) and by the CUDA backend.
///
/// Every method returns `Result` so device backends can report failures; the CPU backend fails only on
/// inconsistent shapes.
pub trait Backend: Send + Sync {
    /// A flat `f32` buffer in this backend's memory.
    type Buf: Send + Sync;

    /// Human-readable name ("cpu (2 threads)", "cuda:0 H100 ...").
    fn name(&self) -> String;

    // ---- memory -------------------------------------------------------------------------------------------
    /// A zero-filled f32 buffer of `len` floats. Allocate once, outside the hot loop.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A zero-filled buffer of `len` elements for `kind` of data; its element type is the backend's choice
    /// (upload/download/fill still speak f32). Default: [`Backend::alloc`].
    fn alloc_kind(&self, len: usize, kind: BufKind) -> Result<Self::Buf> {
        let _ = kind;
        self.alloc(len)
    }
    /// Says that buffers of these lengths and kinds are allocated next, together and for as long as each other
    /// (a model's activations), so a backend can take them from one block: the CUDA backend reserves one slab of
    /// its memory arena for them. Lasts until [`Backend::end_reserve`]. Default: nothing.
    fn reserve(&self, bufs: &[(usize, BufKind)]) -> Result<()> {
        let _ = bufs;
        Ok(())
    }
    /// Ends [`Backend::reserve`]; what is left of the block is not used for later buffers.
    fn end_reserve(&self) {}
    /// Length in floats.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Copies host data into `dst[offset .. offset + src.len()]`.
    fn upload(&self, src: &[f32], dst: &mut Self::Buf, offset: usize) -> Result<()>;
    /// Copies `src[offset .. offset + dst.len()]` to the host.
    fn download(&self, src: &Self::Buf, offset: usize, dst: &mut [f32]) -> Result<()>;
    /// Sets `buf[offset .. offset + len]` to `value`.
    fn fill(&self, buf: &mut Self::Buf, offset: usize, len: usize, value: f32) -> Result<()>;
    /// Waits until all queued work is done (no-op on CPU).
    fn synchronize(&self) -> Result<()>;

    // ---- batches through host memory (inference pipelines) ------------------------------------------------
    /// Host memory of `len` floats for batches moved by [`Backend::upload_host`] and [`Backend::download_host`].
    /// A GPU backend returns page-locked memory, whose transfers run at the bus's full speed and do not block the
    /// host. Default: an ordinary zero-filled vector.
    fn alloc_host(&self, len: usize) -> Result<crate::HostBuf> {
        Ok(crate::HostBuf::pageable(len))
    }
    /// [`Backend::alloc_host`] as a function other threads can call (e.g. readers decoding files straight into
    /// memory the device copies from). Default: ordinary vectors.
    fn host_allocator(&self) -> crate::HostAllocator {
        std::sync::Arc::new(|len| Ok(crate::HostBuf::pageable(len)))
    }
    /// Whether [`Backend::upload_host`] and [`Backend::download_host`] apply their [`ImageNorm`] on the device, so
    /// that a caller with a choice should hand over raw pixels rather than map them on the host. Default: false (the
    /// default transfers map on the host, through a copy).
    fn maps_on_device(&self) -> bool {
        false
    }
    /// Starts copying `src[..len]` into `dst[offset..]`, each value through `norm.normalize` if given: later ops
    /// see the new data, ops queued before still see the old. May return before the copy is done; touching `src`
    /// then waits for it. Default: [`Backend::upload`] (of a mapped copy).
    fn upload_host(
        &self,
        src: &crate::HostBuf,
        len: usize,
        dst: &mut Self::Buf,
        offset: usize,
        norm: Option<ImageNorm>,
    ) -> Result<()> {
        match norm {
            None => self.upload(&src[..len], dst, offset),
            Some(n) => {
                let mapped: Vec<f32> = src[..len].iter().map(|&v| n.normalize(v)).collect();
                self.upload(&mapped, dst, offset)
            }
        }
    }
    /// Starts copying `src[offset .. offset + len]`, as the ops queued so far leave it, into `dst[..len]`, each
    /// value through `norm.restore` if given; ops queued afterwards may overwrite `src` at once. May return before
    /// the copy is done: reading `dst` (or [`Backend::wait_host`]) waits for it. Default: [`Backend::download`].
    fn download_host(
        &self,
        src: &Self::Buf,
        offset: usize,
        len: usize,
        dst: &mut crate::HostBuf,
        norm: Option<ImageNorm>,
    ) -> Result<()> {
        let out = &mut dst[..len];
        self.download(src, offset, out)?;
        if let Some(n) = norm {
            out.iter_mut().for_each(|v| *v = n.restore(*v));
        }
        Ok(())
    }
    /// Waits until the copies started by [`Backend::upload_host`] and [`Backend::download_host`] are done, and
    /// reports their errors. Default: nothing to wait for.
    fn wait_host(&self) -> Result<()> {
        Ok(())
    }

    // ---- channel concat / split ---------------------------------------------------------------------------
    /// `dst[view dv] (+)= src[view sv]` for `c` channels of `pixels` pixels. Concatenation and split are this
    /// op on channel windows (most of the time the models avoid it entirely by writing in place).
    #[allow(clippy::too_many_arguments)]
    fn copy_channels(
        &self,
        pixels: usize,
        c: usize,
        src: &Self::Buf,
        sv: View,
        dst: &mut Self::Buf,
        dv: View,
        accumulate: bool,
    ) -> Result<()>;

    // ---- k×k convolution (stride 1, zero same padding, odd k) --------------------------------------------
    /// Scratch floats needed by the three conv ops for geometry `g`.
    fn conv_workspace_len(&self, g: &ConvGeom) -> usize;
    /// `y = act(conv(x, w) + b)`; `bias` is the offset of `b` (`[cout]`) in `params` or `None` for no bias.
    /// x: (n, h, w, cin) at view `xv`; w: `[cout, k, k, cin]` at `params[w_off..]`; y: (n, h, w, cout) at `yv`.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_forward(
        &self,
        g: &ConvGeom,
        x: &Self::Buf,
        xv: View,
        params: &Self::Buf,
        w_off: usize,
        bias: Option<usize>,
        act: Activation,
        y: &mut Self::Buf,
        yv: View,
        ws: &mut Self::Buf,
    ) -> Result<()>;
    /// `dx (+)= conv_transpose(dy, w)`: gradient of the conv's input. dy: (n, h, w, cout); dx: (n, h, w, cin).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward_data(
        &self,
        g: &ConvGeom,
        dy: &Self::Buf,
        dyv: View,
        params: &Self::Buf,
        w_off: usize,
        dx: &mut Self::Buf,
        dxv: View,
        accumulate: bool,
        ws: &mut Self::Buf,
    ) -> Result<()>;
    /// [`Backend::conv2d_backward_data`] into `dx` (overwritten), then the backward of the bias + activation that
    /// produced the conv's input `x` (x is that activation's output): `dx ← act'(x) · conv_transpose(dy, w)`,
    /// `db += Σ_pixels dx`. A device backend fuses the two where it can (one pass over dx instead of two).
    /// Default: the two ops in turn.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward_data_act(
        &self,
        g: &ConvGeom,
        dy: &Self::Buf,
        dyv: View,
        params: &Self::Buf,
        w_off: usize,
        x: &Self::Buf,
        xv: View,
        dx: &mut Self::Buf,
        dxv: View,
        act: ActBackward,
        grads: &mut Self::Buf,
        ws: &mut Self::Buf,
    ) -> Result<()> {
        self.conv2d_backward_data(g, dy, dyv, params, w_off, dx, dxv, false, ws)?;
        let px = g.dims.pixels();
        self.bias_act_backward(px, g.cin, act.act, x, xv, dx, dxv, grads, act.db_off)
    }
    /// `dw += Σ_pixels x ⊗ dy` (weight gradient, `[cout, k, k, cin]` at `grads[dw_off..]`).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward_filter(
        &self,
        g: &ConvGeom,
        x: &Self::Buf,
        xv: View,
        dy: &Self::Buf,
        dyv: View,
        grads: &mut Self::Buf,
        dw_off: usize,
        ws: &mut Self::Buf,
    ) -> Result<()>;

    // ---- bias + activation ----------------------------------------------------------------------------------
    /// `y = act(y + b)` in place over `c` channels of `pixels` pixels (for ops without a fused epilogue).
    #[allow(clippy::too_many_arguments)]
    fn bias_act_forward(
        &self,
        pixels: usize,
        c: usize,
        act: Activation,
        params: &Self::Buf,
        b_off: Option<usize>,
        y: &mut Self::Buf,
        yv: View,
    ) -> Result<()>;
    /// Backward of bias + activation, in place: `dy ← dy · act'(y)` (the pre-activation gradient) and
    /// `db += Σ_pixels dy` when `db_off` is given (offset in `grads`).
    #[allow(clippy::too_many_arguments)]
    fn bias_act_backward(
        &self,
        pixels: usize,
        c: usize,
        act: Activation,
        y: &Self::Buf,
        yv: View,
        dy: &mut Self::Buf,
        dyv: View,
        grads: &mut Self::Buf,
        db_off: Option<usize>,
    ) -> Result<()>;

    // ---- 2×2 max-pool, stride 2, floor ----------------------------------------------------------------------
    /// y: (n, h/2, w/2, c) = max over each 2×2 window of x: (n, h, w, c).
    fn maxpool2_forward(
        &self,
        g: &PoolGeom,
        x: &Self::Buf,
        xv: View,
        y: &mut Self::Buf,
        yv: View,
    ) -> Result<()>;
    /// Routes dy to the first maximal element of each window (as PyTorch); pixels dropped by floor get 0
    /// (or are left as they are when accumulating). Needs the forward's x and y.
    #[allow(clippy::too_many_arguments)]
    fn maxpool2_backward(
        &self,
        g: &PoolGeom,
        x: &Self::Buf,
        xv: View,
        y: &Self::Buf,
        yv: View,
        dy: &Self::Buf,
        dyv: View,
        dx: &mut Self::Buf,
        dxv: View,
        accumulate: bool,
    ) -> Result<()>;
    /// [`Backend::maxpool2_backward`], then the backward of the bias + activation that produced the pool's input
    /// `x` (x is that activation's output) over dx: `dx ← act'(x) · dx`, `db += Σ_pixels dx`. A device backend fuses
    /// the two (the pool's backward reads x anyway). Default: the two ops in turn.
    #[allow(clippy::too_many_arguments)]
    fn maxpool2_backward_act(
        &self,
        g: &PoolGeom,
        x: &Self::Buf,
        xv: View,
        y: &Self::Buf,
        yv: View,
        dy: &Self::Buf,
        dyv: View,
        dx: &mut Self::Buf,
        dxv: View,
        accumulate: bool,
        act: ActBackward,
        grads: &mut Self::Buf,
    ) -> Result<()> {
        self.maxpool2_backward(g, x, xv, y, yv, dy, dyv, dx, dxv, accumulate)?;
        let px = g.dims.pixels();
        self.bias_act_backward(px, g.c, act.act, x, xv, dx, dxv, grads, act.db_off)
    }

    // ---- nearest upsampling to an exact size ---------------------------------------------------------------
    /// `y = F.interpolate(x, size=(oh, ow), mode="nearest")`.
    fn upsample_nearest_forward(
        &self,
        g: &UpsampleGeom,
        x: &Self::Buf,
        xv: View,
        y: &mut Self::Buf,
        yv: View,
    ) -> Result<()>;
    /// `dx (+)= Σ over the output pixels that copied each input pixel of dy`.
    #[allow(clippy::too_many_arguments)]
    fn upsample_nearest_backward(
        &self,
        g: &UpsampleGeom,
        dy: &Self::Buf,
        dyv: View,
        dx: &mut Self::Buf,
        dxv: View,
        accumulate: bool,
    ) -> Result<()>;

    // ---- 2×2 stride-2 transposed convolution ----------------------------------------------------------------
    /// Scratch floats needed by the three transposed-conv ops.
    fn convt_workspace_len(&self, g: &ConvTGeom) -> usize;
    /// `y[2i+a, 2j+b, o] = bias[o] + Σ_c x[i, j, c] · w[c, a, b, o]`, then `act`. w: `[cin, 2, 2, cout]`.
    #[allow(clippy::too_many_arguments)]
    fn convt2x2_forward(
        &self,
        g: &ConvTGeom,
        x: &Self::Buf,
        xv: View,
        params: &Self::Buf,
        w_off: usize,
        bias: Option<usize>,
        act: Activation,
        y: &mut Self::Buf,
        yv: View,
        ws: &mut Self::Buf,
    ) -> Result<()>;
    /// `dx (+)= Σ_{a,b,o} dy[2i+a, 2j+b, o] · w[c, a, b, o]`.
    #[allow(clippy::too_many_arguments)]
    fn convt2x2_backward_data(
        &self,
        g: &ConvTGeom,
        dy: &Self::Buf,
        dyv: View,
        params: &Self::Buf,
        w_off: usize,
        dx: &mut Self::Buf,
        dxv: View,
        accumulate: bool,
        ws: &mut Self::Buf,
    ) -> Result<()>;
    /// `dw[c, a, b, o] += Σ_{i,j} x[i, j, c] · dy[2i+a, 2j+b, o]`.
    #[allow(clippy::too_many_arguments)]
    fn convt2x2_backward_filter(
        &self,
        g: &ConvTGeom,
        x: &Self::Buf,
        xv: View,
        dy: &Self::Buf,
        dyv: View,
        grads: &mut Self::Buf,
        dw_off: usize,
        ws: &mut Self::Buf,
    ) -> Result<()>;
    /// The whole backward of [`Backend::convt2x2_forward`] with the identity: `db += Σ_pixels dy` (when `db_off` is
    /// given), then [`Backend::convt2x2_backward_filter`] and [`Backend::convt2x2_backward_data`]. `y` is the
    /// forward's output (the identity's backward does not read it). One call, so that a device backend that needs
    /// `dy` packed (it is a channel slice of the decoder's concatenation) packs it once for all three, in the
    /// same pass as the bias gradient. Default: the three ops in turn.
    #[allow(clippy::too_many_arguments)]
    fn convt2x2_backward(
        &self,
        g: &ConvTGeom,
        x: &Self::Buf,
        xv: View,
        y: &Self::Buf,
        yv: View,
        dy: &mut Self::Buf,
        dyv: View,
        params: &Self::Buf,
        w_off: usize,
        grads: &mut Self::Buf,
        dw_off: usize,
        db_off: Option<usize>,
        dx: &mut Self::Buf,
        dxv: View,
        accumulate: bool,
        ws: &mut Self::Buf,
    ) -> Result<()> {
        if db_off.is_some() {
            let px = g.out_dims().pixels();
            self.bias_act_backward(
                px,
                g.cout,
                Activation::Identity,
                y,
                yv,
                dy,
                dyv,
                grads,
                db_off,
            )?;
        }
        self.convt2x2_backward_filter(g, x, xv, dy, dyv, grads, dw_off, ws)?;
        self.convt2x2_backward_data(g, dy, dyv, params, w_off, dx, dxv, accumulate, ws)
    }

    // ---- loss ------------------------------------------------------------------------------------------------
    /// Loss of `pred` against `target` (dense, `len` floats each): writes the mean loss to `loss[0]` and its
    /// gradient w.r.t. `pred` to `dpred` (overwritten). Summation is in f64 on CPU.
    #[allow(clippy::too_many_arguments)]
    fn loss_forward_backward(
        &self,
        kind: LossKind,
        len: usize,
        pred: &Self::Buf,
        target: &Self::Buf,
        dpred: &mut Self::Buf,
        loss: &mut Self::Buf,
    ) -> Result<()>;

    // ---- optimizer and whole-buffer reductions ---------------------------------------------------------------
    /// One `torch.optim.Adam` step over the whole flat buffer; `step` is the 1-based step count after this step
    /// (used for bias correction). `m` and `v` are the first and second moments, same length as `params`.
    fn adam_step(
        &self,
        hp: &AdamParams,
        step: u64,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<()>;
    /// [`Backend::adam_step`], skipped (parameters and moments untouched) when `loss[0]` is not finite. A device
    /// backend checks the loss on the device, so a training step needs no host round trip before the update.
    /// Default: downloads the loss, then `adam_step` if it is finite.
    #[allow(clippy::too_many_arguments)]
    fn adam_step_if_finite(
        &self,
        hp: &AdamParams,
        step: u64,
        loss: &Self::Buf,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<()> {
        let mut l = [0.0f32];
        self.download(loss, 0, &mut l)?;
        if !l[0].is_finite() {
            return Ok(());
        }
        self.adam_step(hp, step, params, grads, m, v)
    }

    /// Runs `f`, the device work of one whole training step (forward, loss, backward, optimizer) or of one
    /// inference forward pass (no upload, download or synchronisation inside). A device backend may capture the work `f` enqueues as a graph and
    /// replay it while later steps enqueue the same ops on the same buffers, which removes per-op launch cost; the
    /// CUDA backend does (`CudaBackend::run_step`). The only value allowed to change between replays without
    /// changing the ops is the `step` given to [`Backend::adam_step_if_finite`]. Default: runs `f`.
    fn run_step(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        f()
    }

    /// `Σ buf[i]²` over the whole buffer, in f64 (for gradient norms).
    fn sum_squares(&self, buf: &Self::Buf) -> Result<f64>;
    /// `buf *= s` over the whole buffer (gradient clipping, loss scaling).
    fn scale(&self, buf: &mut Self::Buf, s: f32) -> Result<()>;
}

//! Shapes and channel views of NHWC f32 tensors.
//!
//! A tensor of activations is `n` images of `h × w` pixels with `c` channels, stored NHWC (channels fastest).
//! A [`View`] selects the channel window `[offset, offset + c)` of a buffer whose pixels are `stride` floats
//! apart: element `(i, y, x, ch)` sits at `((i * h + y) * w + x) * stride + offset + ch`. Views let the U-Net
//! decoder write its concatenation in place: the upsampling writes channels `[0, c)` of the concat buffer and the
//! skip branch writes `[c, 2c)`, so no copy is ever made.

/// Channel window of an NHWC buffer: pixel stride and first channel. The number of channels and the spatial
/// size come from the op's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct View {
    /// Floats between consecutive pixels (the buffer's total channel count).
    pub stride: usize,
    /// First channel of the window.
    pub offset: usize,
}

impl View {
    /// A dense tensor of `c` channels (stride `c`, offset 0).
    pub const fn dense(c: usize) -> Self {
        View {
            stride: c,
            offset: 0,
        }
    }
    /// Channels `[offset, offset + ..)` of a buffer with `stride` channels per pixel.
    pub const fn channels(stride: usize, offset: usize) -> Self {
        View { stride, offset }
    }
    /// Buffer length needed for `pixels` pixels (all images × rows × columns).
    pub const fn buf_len(&self, pixels: usize) -> usize {
        pixels * self.stride
    }
    pub(crate) fn check(
        &self,
        op: &'static str,
        c: usize,
        pixels: usize,
        buf_len: usize,
    ) -> crate::Result<()> {
        if self.offset + c > self.stride {
            return Err(crate::NnError::Shape {
                op,
                msg: format!(
                    "channel window [{}, {}) exceeds stride {}",
                    self.offset,
                    self.offset + c,
                    self.stride
                ),
            });
        }
        if buf_len < pixels * self.stride {
            return Err(crate::NnError::Shape {
                op,
                msg: format!(
                    "buffer of {buf_len} floats is smaller than {pixels} pixels × stride {}",
                    self.stride
                ),
            });
        }
        Ok(())
    }
}

/// Batch and spatial size of an NHWC tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dims {
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    pub const fn new(n: usize, h: usize, w: usize) -> Self {
        Dims { n, h, w }
    }
    /// Number of pixels over the whole batch.
    pub const fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// A k×k convolution, stride 1, zero "same" padding `k / 2` (k odd), `cin → cout` channels, on `dims`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeom {
    pub dims: Dims,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
}

impl ConvGeom {
    /// Multiply-adds of the forward pass × 2.
    pub fn flops(&self) -> f64 {
        2.0 * self.dims.pixels() as f64 * (self.cin * self.cout * self.k * self.k) as f64
    }
    /// Weight count (`cout · cin · k · k`).
    pub const fn weight_len(&self) -> usize {
        self.cout * self.cin * self.k * self.k
    }
}

/// A 2×2, stride-2 transposed convolution `cin → cout`: input `dims`, output `(n, 2h, 2w)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvTGeom {
    pub dims: Dims,
    pub cin: usize,
    pub cout: usize,
}

impl ConvTGeom {
    pub const fn out_dims(&self) -> Dims {
        Dims::new(self.dims.n, self.dims.h * 2, self.dims.w * 2)
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.dims.pixels() as f64 * (self.cin * self.cout * 4) as f64
    }
    pub const fn weight_len(&self) -> usize {
        self.cin * self.cout * 4
    }
}

/// A 2×2 max-pool, stride 2, floor mode (as `nn.MaxPool2d(2)`): input `dims`, output `(n, h/2, w/2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolGeom {
    pub dims: Dims,
    pub c: usize,
}

impl PoolGeom {
    pub const fn out_dims(&self) -> Dims {
        Dims::new(self.dims.n, self.dims.h / 2, self.dims.w / 2)
    }
}

/// Nearest-neighbour resampling of `c` channels from `dims` to `(n, oh, ow)`, exactly as
/// `F.interpolate(x, size=(oh, ow), mode="nearest")`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpsampleGeom {
    pub dims: Dims,
    pub c: usize,
    pub oh: usize,
    pub ow: usize,
}

impl UpsampleGeom {
    pub const fn out_dims(&self) -> Dims {
        Dims::new(self.dims.n, self.oh, self.ow)
    }
}

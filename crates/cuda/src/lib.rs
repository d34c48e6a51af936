//! cryoden-cuda: the CUDA backend of cryoden-nn.
//!
//! cuDNN does the convolutions (NHWC, algorithms found once per shape); NVRTC-compiled kernels do everything around
//! them, fused and writing in place (bias + activation, pooling, upsampling into the concatenation buffer, loss with
//! its gradient, one Adam kernel over the flat parameter buffer). All CUDA libraries are loaded at run time, so the
//! binary builds and runs without CUDA; `probe` turns a missing library into a clear error instead of a panic.
//!
//! Entry points: [`probe::check_all`] (is a GPU usable?), [`Gpu::open`] (one GPU and its kernels),
//! [`probe::Report::collect`] (what `cryoden doctor` prints).

pub mod backend;
pub mod conv;
pub mod device;
pub mod engine;
pub mod error;
pub mod nvrtc;
pub mod precision;
pub mod probe;
pub mod split;

pub use backend::{CudaBackend, CudaBuf};
pub use conv::ConvGeom;
pub use device::{ActGrad, AdamStep, Buf, Gpu, LossKind, MmaChoice, MmaMode, Nhwc, View};
pub use error::{CudaError, Library, Result};
pub use precision::{DType, Precision};
pub use split::{SplitChoice, SplitMode};

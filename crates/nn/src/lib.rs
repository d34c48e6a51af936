//! cryoden-nn: a small, explicit neural-network core for image-to-image U-Nets. Knows nothing of cryo-EM.
//!
//! # Pieces
//! - [`shape`]: NHWC f32 tensors described by [`Dims`] (n, h, w) + channel count, and channel-strided [`View`]s
//!   (pixel stride + first channel) so a concatenation is written in place by the ops that produce its parts.
//! - [`Backend`]: ONE trait with the op set a U-Net needs, on backend buffers (`B::Buf`) + explicit shapes:
//!   conv k×k forward / backward-data / backward-filter (bias + activation fused in the forward epilogue),
//!   bias + activation forward/backward, 2×2 max-pool, nearest upsampling to an exact size, 2×2 stride-2 transposed
//!   conv, channel copy (concat/split), MSE/L1 loss with gradient, Adam over a whole flat buffer. Ops never
//!   allocate: scratch is an explicit buffer sized by `*_workspace_len`. Implemented by [`cpu::Cpu`] (the
//!   reference) and by `cryoden-cuda`.
//! - [`ParamTable`]: parameters, gradients and Adam moments are each ONE flat buffer split into named tensors
//!   (PyTorch state_dict names and shapes; filters stored channels-last inside, converted at the checkpoint edge).
//! - [`Model`] + [`Arch`]: `unet` (widths configurable), `topaz-unet`, `topaz-unet-small`, each with explicit
//!   forward/backward; [`Activations`] holds every per-batch-size buffer.
//! - [`train`]: [`TrainState`] (params, grads, m, v, step) and [`train_step`] (forward → loss → backward → Adam).
//! - [`checkpoint`]: safetensors in PyTorch layout with architecture metadata; optimizer state in a second file.
//! - [`bench`]: the `cryoden bench train` measurement.
//!
//! # Typical use
//! ```no_run
//! use cryoden_nn::{cpu::Cpu, AdamParams, Arch, Backend, LossKind, Model, TrainState};
//! # fn main() -> cryoden_nn::Result<()> {
//! let be = Cpu::new(0)?;
//! let model = Model::new(Arch::from_name("unet", Some(&[16, 32, 64, 128]))?)?;
//! let mut state = TrainState::new(&be, &model, &model.init_params(42))?;
//! let mut acts = model.activations(&be, 8, 128, 128)?; // batch 8 of 128×128, once
//! let (input, target) = (vec![0.0f32; 8 * 128 * 128], vec![0.0f32; 8 * 128 * 128]);
//! let loss = cryoden_nn::train_step(&be, &model, &mut state, &mut acts, &input, &target, LossKind::Mse,
//!                                   &AdamParams { lr: 1e-4, ..Default::default() })?;
//! # Ok(()) }
//! ```
//! Inference: `acts.upload_input(..)`, `model.forward(&be, &state.params, &mut acts)`, `acts.download_output(..)`.
//! Parity with PyTorch: build the flat buffer from a torch state_dict with [`ParamTable::from_torch`] per tensor
//! (or load a checkpoint), run [`train::loss_and_gradients`], and compare `grads` via [`ParamTable::export_torch`].

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cpu;
mod error;
pub mod host;
pub mod models;
pub mod params;
pub mod shape;
pub mod train;

pub use backend::{ActBackward, Activation, AdamParams, Backend, BufKind, LossKind};
pub use error::{NnError, Result};
pub use host::{HostAllocator, HostBuf, HostMemory, ImageNorm};
pub use models::{Activations, Arch, Model, DEFAULT_UNET_WIDTHS};
pub use params::{ParamEntry, ParamKind, ParamTable, TorchTensor};
pub use shape::{ConvGeom, ConvTGeom, Dims, PoolGeom, UpsampleGeom, View};
pub use train::{enqueue_train_step, train_step, PendingStep, TrainState};

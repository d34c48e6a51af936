//! cryoden-topaz: reads Topaz-Denoise models (PyTorch `torch.save` files) without executing anything, and
//! converts them to cryoden checkpoints.
//!
//! A pickle is a program; `torch.load` runs it. Here a restricted pickle machine ([`pickle`]) interprets only the
//! opcodes and globals that a saved state_dict needs and builds plain data, so a hostile file is refused with the
//! opcode or global it tried to use. Whole pickled modules (what `topaz denoise --save-prefix` writes) are read as
//! inert records of their class name and attributes, from which the state_dict is collected the way
//! `Module.state_dict()` would; no class is imported or called.
//!
//! ```no_run
//! # fn main() -> Result<(), cryoden_topaz::Error> {
//! use std::path::Path;
//! // Any torch.save file as named tensors (state_dict order), executing nothing:
//! let file = cryoden_topaz::load(Path::new("unet_L2_v0.2.2.sav"))?;
//! println!("{} tensors, container {:?}", file.tensors.len(), file.container);
//! // A Topaz U-Net as a cryoden checkpoint (`cryoden import-topaz`):
//! let imported = cryoden_topaz::import(Path::new("unet_L2_v0.2.2.sav"), cryoden_topaz::ArchChoice::Auto)?;
//! cryoden_topaz::write_checkpoint(&imported, Path::new("topaz-unet.safetensors"))?;
//! # Ok(()) }
//! ```

pub mod convert;
pub mod error;
pub mod pickle;
pub mod torch_file;

pub use convert::{import, write_checkpoint, ArchChoice, Imported};
pub use error::{Error, PickleError};
pub use pickle::DType;
pub use torch_file::{load, load_bytes, Container, TorchFile, TorchTensor};

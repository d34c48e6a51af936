//! cryoden-topaz: reads Topaz-Denoise models (PyTorch `torch.save` files) without executing anything, and
//! converts them to cryoden checkpoints.
//!
//! A pickle is a program; `torch.load` runs it. Here a restricted pickle machine ([`pickle`]) interprets only the
//! opcodes and globals that a saved state_dict needs and builds plain data, so a hostile file is refused with the
//! opcode or global it tried to use. Whole pickled modules (what `topaz denoise --save-prefix` writes) are read as
//! inert records of their class name and attributes, from which the state_dict is collected the way
//! `Module.state_dict()` would; no class is imported or called.

pub mod convert;
pub mod error;
pub mod pickle;
pub mod torch_file;

pub use convert::{import, write_checkpoint, ArchChoice, Imported};
pub use error::{Error, PickleError};
pub use pickle::DType;
pub use torch_file::{load, load_bytes, Container, TorchFile, TorchTensor};

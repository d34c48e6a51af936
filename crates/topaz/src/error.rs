//! Typed errors. Every error about a file names it and says what to do.

use std::path::PathBuf;

/// Why the restricted unpickler refused a pickle. Offsets are bytes from the start of the file.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error(
        "pickle opcode {name} (0x{opcode:02x}) at byte {offset} is not accepted: only the opcodes of a saved \
         state_dict are (nothing in the file is ever executed)"
    )]
    UnsupportedOpcode {
        opcode: u8,
        name: &'static str,
        offset: u64,
    },
    #[error(
        "pickle global {module}.{name} at byte {offset} is refused: only collections.OrderedDict, \
         torch._utils._rebuild_tensor_v2/_rebuild_parameter, torch.*Storage, builtins.set and the module classes \
         of torch.nn.modules/topaz are accepted (nothing in the file is ever executed)"
    )]
    ForbiddenGlobal {
        module: String,
        name: String,
        offset: u64,
    },
    #[error("the file ends inside a pickle (at byte {offset}): it is truncated; copy or download it again")]
    Truncated { offset: u64 },
    #[error("pickle opcode {opcode} at byte {offset} found too few values on the stack: the file is damaged")]
    StackUnderflow { opcode: &'static str, offset: u64 },
    #[error("pickle at byte {offset} refers to memo entry {index}, which was never stored: the file is damaged")]
    MemoMissing { index: u64, offset: u64 },
    #[error("malformed pickle at byte {offset}: {what}")]
    Malformed { offset: u64, what: String },
}

/// Errors of reading a PyTorch/Topaz file or converting it to a cryoden checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: not a PyTorch file ({reason}); expected a Topaz model saved by torch.save (a .sav from \
         topaz/pretrained/denoise or a model written by `topaz denoise --save-prefix`)",
        path.display()
    )]
    NotTorchFile { path: PathBuf, reason: String },
    /// The pickle was refused; the message names the opcode or global.
    #[error("{}: {reason}", path.display())]
    Pickle { path: PathBuf, reason: PickleError },
    /// The container or its contents are inconsistent (sizes, keys, shapes).
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    /// The tensors are fine but do not form a network cryoden has.
    #[error("{}: {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },
    /// Loading into the cryoden network or writing the checkpoint failed (the message names the file).
    #[error(transparent)]
    Nn(#[from] cryoden_nn::NnError),
}

//! cryoden-train: the training loop of `cryoden train` — loaders (in-memory and streaming), augmentation,
//! validation over the whole validation set, checkpoints, exact resume, metrics.

pub mod loader;
pub mod plan;

//! cryoden-prep: from movies to Noise2Noise training datasets.
//!
//! - [`split`]: a movie (MRC stack or multi-page TIFF, streamed frame by frame) → even and odd half sums
//!   (0-based frame index even → even half, RELION's convention), with optional gain reference, global drift
//!   correction ([`align`]) and, for a single counted micrograph, binomial thinning ([`thin`]).
//! - [`prepare`]: paired halves (or clean images plus synthetic [`noise`]) → a dataset directory: per-micrograph
//!   [`normalize`]ation, [`patches`], a seeded train/validation split by micrograph, four MRC stacks and a
//!   [`Manifest`].
//! - [`Dataset`]: opens a dataset directory, checks it against its manifest and gives memory-mapped access to
//!   the patch pairs.
//!
//! # The dataset directory (format version 1; docs/DATA.md has the full description)
//!
//! ```text
//! DATASET/manifest.json      see `Manifest` (serde, unknown fields refused)
//! DATASET/train_input.mrcs   MRC-2014, mode 2 (f32), little-endian, nx = ny = patch_size, nz = counts.train
//! DATASET/train_target.mrcs  same shape; image k is the partner of image k of train_input
//! DATASET/val_input.mrcs     nz = counts.val (may be 0)
//! DATASET/val_target.mrcs
//! ```
//!
//! Reading it (what `cryoden-train` does):
//!
//! ```no_run
//! use cryoden_prep::{Dataset, Split};
//! let ds = Dataset::open("dataset".as_ref())?;        // checks shapes, counts, sizes (not checksums)
//! let train = ds.split(Split::Train);
//! for i in 0..train.len() {
//!     let (input, target) = train.pair(i);             // &[f32] each, patch_size² values, row-major
//!     # let _ = (input, target);
//! }
//! ds.verify_checksums()?;                              // optional: reads every byte once (SHA-256)
//! # Ok::<(), cryoden_prep::Error>(())
//! ```

pub mod align;
pub mod dataset;
pub mod error;
pub mod fft2;
pub mod manifest;
pub mod noise;
pub mod normalize;
pub mod pairing;
pub mod patches;
pub mod prepare;
pub mod split;
pub mod thin;

pub use dataset::{Dataset, Pairs};
pub use error::{Error, Result};
pub use manifest::{Manifest, Split};

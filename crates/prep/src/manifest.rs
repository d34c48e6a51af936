//! `manifest.json` of a dataset directory: what the four stacks hold and where every patch came from.
//!
//! Version 1. All fields are required; unknown fields are refused (a reader of version 1 must not silently
//! ignore something a later writer meant). See docs/DATA.md for an annotated example.

use crate::noise::NoiseModel;
use crate::normalize::{Affine, Method};
use serde::{Deserialize, Serialize};

/// Value of [`Manifest::format`].
pub const FORMAT: &str = "cryoden-dataset";
/// Value of [`Manifest::version`] written by this crate; [`crate::Dataset::open`] reads this version only.
pub const VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const TRAIN_INPUT: &str = "train_input.mrcs";
pub const TRAIN_TARGET: &str = "train_target.mrcs";
pub const VAL_INPUT: &str = "val_input.mrcs";
pub const VAL_TARGET: &str = "val_target.mrcs";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `"cryoden-dataset"`.
    pub format: String,
    /// Always 1 for this layout.
    pub version: u32,
    /// Program and version that wrote the dataset, e.g. `"cryoden 0.1.0"`.
    pub tool: String,
    /// Side of every (square) patch, in pixels.
    pub patch_size: usize,
    /// Step between patch starts, in pixels (the far-edge patch may be closer; see `patches::starts`).
    pub stride: usize,
    pub normalize: Method,
    /// Where the pairs came from.
    pub source: Source,
    /// Seed of the train/validation split (and of synthetic noise).
    pub seed: u64,
    /// Requested fraction of micrographs held out for validation.
    pub val_fraction: f64,
    /// Number of patch pairs in each split.
    pub counts: Counts,
    /// The four stacks.
    pub files: Files,
    /// Every source micrograph, in the order its patches appear in its split's stacks.
    pub micrographs: Vec<Micrograph>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// Even/odd half sums: input = even half, target = odd half.
    Halves { even_dir: String, odd_dir: String },
    /// Clean images with two independent synthetic noise draws: input = first draw, target = second.
    Clean { dir: String, noise: NoiseModel },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub train: usize,
    pub val: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Files {
    pub train_input: FileEntry,
    pub train_target: FileEntry,
    pub val_input: FileEntry,
    pub val_target: FileEntry,
}

impl Files {
    /// `(entry, split, is_input)` for the four stacks.
    pub fn all(&self) -> [(&FileEntry, Split, bool); 4] {
        [
            (&self.train_input, Split::Train, true),
            (&self.train_target, Split::Train, false),
            (&self.val_input, Split::Val, true),
            (&self.val_target, Split::Val, false),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// File name inside the dataset directory.
    pub name: String,
    /// Size in bytes of the whole file (header included).
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the whole file.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Micrograph {
    /// Pairing name (file stem without `_EVN`/`_ODD`).
    pub name: String,
    /// Source files as given on the command line: even half and odd half, or the clean image twice.
    pub even: String,
    pub odd: String,
    pub split: Split,
    /// Image size in pixels.
    pub width: usize,
    pub height: usize,
    /// Pixel size in Å, from the MRC header of the even half (0 when the header has none).
    pub pixel_size: f32,
    /// Applied to both halves: `x' = (x − offset) / scale` (see `normalize`).
    pub normalization: Affine,
    /// Index of this micrograph's first patch in its split's stacks, and how many consecutive patches it has.
    pub first_patch: usize,
    pub patch_count: usize,
    /// Patch origins: patch `first_patch + j·x_starts.len() + i` is the window at `(x_starts[i], y_starts[j])`.
    pub x_starts: Vec<usize>,
    pub y_starts: Vec<usize>,
}

impl Manifest {
    /// Micrographs of one split, in stack order.
    pub fn micrographs_of(&self, split: Split) -> impl Iterator<Item = &Micrograph> {
        self.micrographs.iter().filter(move |m| m.split == split)
    }
}

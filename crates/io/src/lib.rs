//! cryoden-io: the file formats of cryo-EM, strictly handled. Knows nothing of neural networks.
//!
//! Conventions: images in memory are row-major `f32`, x fastest (MRC order); a stack is sample-major (image 0
//! first). Every output is written atomically (temporary name in the same directory, renamed on success). Every
//! error names the file, the problem and the fix ([`Error`], [`Fault`]).
//!
//! # Reading
//! - [`mrc::read`]`(path) -> Mrc { header, byte_order, ext_header, data: Vec<f32>, warnings }`: any MRC file,
//!   modes 0 (int8), 1 (int16), 2 (float32), 6 (uint16), 12 (float16), either byte order, plain or gzip
//!   (detected by content, so `.mrc.gz` / `.map.gz` just work). Complex modes 3/4 are refused with a clear
//!   message. [`mrc::read_with`] with [`ReadOptions::permissive`] reads what mrcfile's `permissive=True` reads.
//! - [`MrcStack::open`]`(path)`: memory-mapped random access; `nx() ny() nz() voxel_size() header() mode()`,
//!   `read_image(i) -> Vec<f32>`, `read_image_into(i, &mut [f32])`, `read_all()`, `data_stats()`,
//!   `fei_sections()` (dose e/Å², pixel size Å, ... from FEI1/FEI2 extended headers).
//! - [`FrameStack`]: `n_frames() frame_dims() read_frame(i) read_frame_into(i, out) pixel_size() path()`,
//!   implemented by [`MrcStack`] and [`TiffStack`] (grayscale u8/u16/f32 pages; none/LZW/deflate);
//!   [`open_frames`]`(path, opts) -> Box<dyn FrameStack>` picks by extension (.tif/.tiff → TIFF, else MRC).
//! - [`mrc::to_xyz`]`(header, data)`: reorder file order (mapc/mapr/maps) to x fastest; data are otherwise
//!   returned in file order, as mrcfile returns them.
//! - [`mrc::validate`]`(path) -> Vec<Deviation { field, found, expected }>`: every deviation from MRC-2014
//!   (mrcfile's `validate` checks plus file size and NaN/Inf).
//!
//! # Writing
//! - [`mrc::write`]`(path, &data, [nx, ny, nz], &WriteOptions)`: mode 2 by default, or 12 (float16), or 0/1/6
//!   for integer counts (values that do not fit are refused, never clipped); either byte order; voxel size,
//!   origin, labels, extended header kept from [`WriteOptions`] (`WriteOptions::like(&header)` copies an input's).
//! - [`StackWriter`]: `create(path, nx, ny, &opts)`, `append(&images)` (one or more whole images),
//!   `finish()` fixes nz and the statistics and renames into place; dropped unfinished, it leaves nothing.
//! - [`tiff::write_stack`] for TIFF movies; [`preview::write_png`] for 8-bit previews with percentile contrast.
//! - [`atomic`]: [`AtomicFile`] and [`write_atomic`] for any other output.

pub mod atomic;
pub mod bench;
pub mod codec;
pub mod error;
pub mod fei;
pub mod frames;
pub mod header;
pub mod info;
pub mod mrc;
pub mod paths;
pub mod preview;
pub mod stats;
pub mod tiff;

pub use atomic::{write_atomic, AtomicFile};
pub use error::{Deviation, Error, Fault, Result};
pub use frames::{open_frames, FrameStack};
pub use header::{ByteOrder, Header, Mode};
pub use mrc::{
    read, read_into, read_with, validate, write, ExtHeader, Mrc, MrcStack, ReadOptions,
    StackWriter, WriteOptions,
};
pub use preview::{write_png, Contrast};
pub use stats::Stats;
pub use tiff::{TiffCompression, TiffSample, TiffStack};

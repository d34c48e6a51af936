//! The frame-stack interface shared by MRC and TIFF movies, so later stages do not care which format a movie is.

use crate::error::Result;
use crate::mrc::{MrcStack, ReadOptions};
use std::path::Path;

/// A stack of 2-D frames (movie frames, or images of an image stack) read one at a time as f32, x fastest.
pub trait FrameStack: Send + Sync {
    /// Number of frames.
    fn n_frames(&self) -> usize;
    /// Frame size (nx, ny) in pixels.
    fn frame_dims(&self) -> (usize, usize);
    /// Decode frame `i` into `out` (length nx * ny).
    fn read_frame_into(&self, i: usize, out: &mut [f32]) -> Result<()>;
    /// Pixel size in Å when the file records one.
    fn pixel_size(&self) -> Option<f32>;
    /// The file the frames come from (for messages).
    fn path(&self) -> &Path;
    /// Frame `i` as a new vector.
    fn read_frame(&self, i: usize) -> Result<Vec<f32>> {
        let (nx, ny) = self.frame_dims();
        let mut out = vec![0f32; nx * ny];
        self.read_frame_into(i, &mut out)?;
        Ok(out)
    }
}

impl FrameStack for MrcStack {
    fn n_frames(&self) -> usize {
        self.nz()
    }
    fn frame_dims(&self) -> (usize, usize) {
        (self.nx(), self.ny())
    }
    fn read_frame_into(&self, i: usize, out: &mut [f32]) -> Result<()> {
        self.read_image_into(i, out)
    }
    fn pixel_size(&self) -> Option<f32> {
        let v = self.voxel_size()[0];
        (v > 0.0).then_some(v)
    }
    fn path(&self) -> &Path {
        MrcStack::path(self)
    }
}

/// Whether a path names a TIFF file (by extension).
pub fn is_tiff_path(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".tif") || name.ends_with(".tiff")
}

/// Open a movie or image stack: TIFF by extension (.tif/.tiff), MRC otherwise (plain or gzip).
pub fn open_frames(path: impl AsRef<Path>, opts: ReadOptions) -> Result<Box<dyn FrameStack>> {
    let path = path.as_ref();
    if is_tiff_path(path) {
        Ok(Box::new(crate::tiff::TiffStack::open(path)?))
    } else {
        Ok(Box::new(MrcStack::open_with(path, opts)?))
    }
}

//! Multi-page TIFF movie stacks (grayscale uint8 / uint16 / float32, uncompressed, LZW or deflate) through the
//! `tiff` crate, exposed as a [`FrameStack`](crate::frames::FrameStack).

use crate::atomic::write_atomic;
use crate::error::{Error, Fault, Result};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tiff::decoder::{Decoder, DecodingResult};
use tiff::ColorType;

/// Sample type of a TIFF stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TiffSample {
    U8,
    U16,
    F32,
}

/// Compression for [`write_stack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TiffCompression {
    None,
    Lzw,
    Deflate,
}

type Dec = Decoder<BufReader<File>>;

/// A multi-page TIFF opened for random access to its pages (decoded on request; the decoder is shared behind a
/// lock, so concurrent readers take turns).
pub struct TiffStack {
    path: PathBuf,
    dec: Mutex<Dec>,
    nx: usize,
    ny: usize,
    n: usize,
    sample: TiffSample,
}

impl std::fmt::Debug for TiffStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TiffStack")
            .field("path", &self.path)
            .field("dims", &(self.nx, self.ny, self.n))
            .field("sample", &self.sample)
            .finish()
    }
}

fn tiff_err(path: &Path, e: tiff::TiffError) -> Error {
    match e {
        tiff::TiffError::IoError(io) => Error::io(path, "cannot read TIFF", io),
        other => Error::format(path, Fault::Tiff(other.to_string())),
    }
}

/// Grayscale sample type of the current page, or a clear error.
fn page_sample(path: &Path, dec: &mut Dec, page: usize) -> Result<TiffSample> {
    let ct = dec.colortype().map_err(|e| tiff_err(path, e))?;
    let fmt = dec
        .find_tag_unsigned::<u16>(tiff::tags::Tag::SampleFormat)
        .map_err(|e| tiff_err(path, e))?
        .unwrap_or(1);
    match (ct, fmt) {
        (ColorType::Gray(8), 1) => Ok(TiffSample::U8),
        (ColorType::Gray(16), 1) => Ok(TiffSample::U16),
        (ColorType::Gray(32), 3) => Ok(TiffSample::F32),
        _ => Err(Error::format(
            path,
            Fault::Tiff(format!(
                "page {page} is {ct:?} with sample format {fmt}; cryoden reads grayscale uint8, uint16 and float32 \
                 pages — convert the movie (e.g. to MRC) first"
            )),
        )),
    }
}

impl TiffStack {
    /// Open a TIFF and check that every page is grayscale uint8/uint16/float32 of the same size and type.
    pub fn open(path: impl AsRef<Path>) -> Result<TiffStack> {
        let path = path.as_ref();
        let f = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
        if f.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
            return Err(Error::format(path, Fault::Empty));
        }
        let mut dec = Decoder::new(BufReader::new(f)).map_err(|e| tiff_err(path, e))?;
        let (w, h) = dec.dimensions().map_err(|e| tiff_err(path, e))?;
        let sample = page_sample(path, &mut dec, 0)?;
        let mut n = 1;
        while dec.more_images() {
            dec.next_image().map_err(|e| tiff_err(path, e))?;
            let d = dec.dimensions().map_err(|e| tiff_err(path, e))?;
            let s = page_sample(path, &mut dec, n)?;
            if d != (w, h) || s != sample {
                return Err(Error::format(
                    path,
                    Fault::Tiff(format!(
                        "page {n} is {}x{} {s:?} but page 0 is {w}x{h} {sample:?}; a movie's frames must match",
                        d.0, d.1
                    )),
                ));
            }
            n += 1;
        }
        Ok(TiffStack {
            path: path.to_path_buf(),
            dec: Mutex::new(dec),
            nx: w as usize,
            ny: h as usize,
            n,
            sample,
        })
    }

    pub fn sample(&self) -> TiffSample {
        self.sample
    }
}

impl crate::frames::FrameStack for TiffStack {
    fn n_frames(&self) -> usize {
        self.n
    }
    fn frame_dims(&self) -> (usize, usize) {
        (self.nx, self.ny)
    }
    fn pixel_size(&self) -> Option<f32> {
        None
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn read_frame_into(&self, i: usize, out: &mut [f32]) -> Result<()> {
        let path = &self.path;
        if i >= self.n || out.len() != self.nx * self.ny {
            return Err(Error::usage(
                path,
                format!(
                    "frame {i} into a buffer of {} values; the stack has {} frames of {} x {}",
                    out.len(),
                    self.n,
                    self.nx,
                    self.ny
                ),
            ));
        }
        // A poisoned lock only means another reader panicked; the decoder is re-positioned below anyway.
        let mut dec = self.dec.lock().unwrap_or_else(|p| p.into_inner());
        dec.seek_to_image(i).map_err(|e| tiff_err(path, e))?;
        let img = dec.read_image().map_err(|e| tiff_err(path, e))?;
        let short = |len: usize| {
            Error::format(
                path,
                Fault::Tiff(format!(
                    "page {i} decoded to {len} samples, expected {}",
                    out.len()
                )),
            )
        };
        match img {
            DecodingResult::U8(v) if v.len() == out.len() => {
                out.iter_mut().zip(&v).for_each(|(o, &x)| *o = x as f32)
            }
            DecodingResult::U16(v) if v.len() == out.len() => {
                out.iter_mut().zip(&v).for_each(|(o, &x)| *o = x as f32)
            }
            DecodingResult::F32(v) if v.len() == out.len() => out.copy_from_slice(&v),
            DecodingResult::U8(v) => return Err(short(v.len())),
            DecodingResult::U16(v) => return Err(short(v.len())),
            DecodingResult::F32(v) => return Err(short(v.len())),
            _ => {
                return Err(Error::format(
                    path,
                    Fault::Tiff(format!("page {i} has an unsupported sample type")),
                ))
            }
        }
        Ok(())
    }
}

/// Write frames (n images of nx × ny, x fastest) as a multi-page grayscale TIFF, atomically. Integer samples must
/// be integers in range (checked, never clipped).
pub fn write_stack(
    path: impl AsRef<Path>,
    frames: &[f32],
    nx: usize,
    ny: usize,
    sample: TiffSample,
    compression: TiffCompression,
) -> Result<()> {
    use tiff::encoder::{colortype, compression::DeflateLevel, Compression, TiffEncoder};
    let path = path.as_ref();
    let plane = nx * ny;
    if plane == 0 || !frames.len().is_multiple_of(plane) {
        return Err(Error::usage(
            path,
            format!(
                "{} values is not a whole number of {nx} x {ny} frames",
                frames.len()
            ),
        ));
    }
    let (lo, hi) = match sample {
        TiffSample::U8 => (0.0, 255.0),
        TiffSample::U16 => (0.0, 65535.0),
        TiffSample::F32 => (f32::MIN, f32::MAX),
    };
    let integer = sample != TiffSample::F32;
    if let Some(i) = frames
        .iter()
        .position(|&v| !(v >= lo && v <= hi) || (integer && v != v.round()))
    {
        return Err(Error::usage(
            path,
            format!(
                "value {} at index {i} does not fit TIFF samples of type {sample:?}",
                frames[i]
            ),
        ));
    }
    let comp = match compression {
        TiffCompression::None => Compression::Uncompressed,
        TiffCompression::Lzw => Compression::Lzw,
        TiffCompression::Deflate => Compression::Deflate(DeflateLevel::Balanced),
    };
    let (w, h) = (nx as u32, ny as u32);
    write_atomic(path, |out| {
        let terr = |e: tiff::TiffError| Error::usage(path, format!("TIFF encoding failed: {e}"));
        let mut enc = TiffEncoder::new(out).map_err(terr)?.with_compression(comp);
        for f in frames.chunks(plane) {
            match sample {
                TiffSample::U8 => {
                    let v: Vec<u8> = f.iter().map(|&x| x as u8).collect();
                    enc.write_image::<colortype::Gray8>(w, h, &v)
                        .map_err(terr)?
                }
                TiffSample::U16 => {
                    let v: Vec<u16> = f.iter().map(|&x| x as u16).collect();
                    enc.write_image::<colortype::Gray16>(w, h, &v)
                        .map_err(terr)?
                }
                TiffSample::F32 => enc
                    .write_image::<colortype::Gray32Float>(w, h, f)
                    .map_err(terr)?,
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::FrameStack;

    #[test]
    fn every_sample_type_and_compression_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (nx, ny, n) = (17, 9, 3);
        let frames: Vec<f32> = (0..nx * ny * n).map(|i| (i % 200) as f32).collect();
        for sample in [TiffSample::U8, TiffSample::U16, TiffSample::F32] {
            for comp in [
                TiffCompression::None,
                TiffCompression::Lzw,
                TiffCompression::Deflate,
            ] {
                let p = dir.path().join(format!("{sample:?}-{comp:?}.tif"));
                write_stack(&p, &frames, nx, ny, sample, comp).unwrap();
                let s = TiffStack::open(&p).unwrap();
                assert_eq!(
                    (s.n_frames(), s.frame_dims(), s.sample()),
                    (n, (nx, ny), sample)
                );
                // Random access, out of order.
                for i in [2, 0, 1] {
                    assert_eq!(
                        s.read_frame(i).unwrap(),
                        frames[i * nx * ny..(i + 1) * nx * ny].to_vec()
                    );
                }
            }
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.tif");
        std::fs::write(&p, b"II*\0garbage that is not a tiff directory").unwrap();
        let e = TiffStack::open(&p).unwrap_err().to_string();
        assert!(e.contains("bad.tif"), "{e}");
    }
}

//! 8-bit grayscale PNG previews with percentile contrast (for reports and quick looks).

use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use std::path::Path;

/// Contrast limits as percentiles of the finite values: `low` maps to black, `high` to white.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contrast {
    pub low: f32,
    pub high: f32,
}

impl Default for Contrast {
    /// 0.5 % and 99.5 %: robust to hot pixels, keeps most of the range.
    fn default() -> Contrast {
        Contrast {
            low: 0.5,
            high: 99.5,
        }
    }
}

/// Value at percentile `p` (0-100) of the finite values (nearest rank). `None` when there are none.
pub fn percentile(data: &[f32], p: f32) -> Option<f32> {
    let mut v: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let k = ((p.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f32).round() as usize;
    let (_, x, _) = v.select_nth_unstable_by(k, f32::total_cmp);
    Some(*x)
}

/// Map an image to 8 bits: percentile limits, linear in between, NaN to black. Row-major, x fastest.
pub fn to_u8(data: &[f32], contrast: Contrast) -> Vec<u8> {
    let lo = percentile(data, contrast.low).unwrap_or(0.0);
    let hi = percentile(data, contrast.high).unwrap_or(1.0);
    let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
    data.iter()
        .map(|&v| {
            if v.is_finite() {
                ((v - lo) * scale).round().clamp(0.0, 255.0) as u8
            } else {
                0
            }
        })
        .collect()
}

/// Write an nx × ny f32 image as an 8-bit grayscale PNG, atomically. Row 0 of the data is the top row of the PNG.
pub fn write_png(
    path: impl AsRef<Path>,
    data: &[f32],
    nx: usize,
    ny: usize,
    contrast: Contrast,
) -> Result<()> {
    let path = path.as_ref();
    if nx.checked_mul(ny) != Some(data.len()) || nx == 0 || ny == 0 {
        return Err(Error::usage(
            path,
            format!(
                "PNG preview: {} values for an image of {nx} x {ny}",
                data.len()
            ),
        ));
    }
    let (w, h) = (
        u32::try_from(nx).map_err(|_| Error::usage(path, "image too wide for PNG"))?,
        u32::try_from(ny).map_err(|_| Error::usage(path, "image too tall for PNG"))?,
    );
    let pixels = to_u8(data, contrast);
    write_atomic(path, |w_out| {
        let mut enc = png::Encoder::new(w_out, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let png_err =
            |e: png::EncodingError| Error::usage(path, format!("PNG encoding failed: {e}"));
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(&pixels).map_err(png_err)?;
        writer.finish().map_err(png_err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_contrast_and_png_round_trip() {
        let (nx, ny) = (20, 10);
        let mut data: Vec<f32> = (0..nx * ny).map(|i| i as f32).collect();
        data[5] = f32::NAN;
        data[6] = 1e9; // hot pixel, clipped by the 99.5 % limit
        let px = to_u8(&data, Contrast::default());
        assert_eq!(px[5], 0);
        assert_eq!(px[6], 255);
        assert!(px[100] > 100 && px[100] < 140, "{}", px[100]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        write_png(&p, &data, nx, ny, Contrast::default()).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0u8; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (20, 10));
        assert_eq!(&buf[..info.buffer_size()], &px[..]);
    }
}

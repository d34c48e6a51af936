//! The per-section metadata of FEI/Thermo Fisher extended headers (exttyp FEI1 and FEI2), as laid out in mrcfile's
//! `fei_dtype_dict`: packed records of `Metadata size` bytes (768 for FEI1, 888 for FEI2), one per section, in the
//! file's byte order. Only the cheap, commonly needed fields are decoded.

use crate::header::{ByteOrder, Header};

/// Metadata of one section (frame or image). Physical quantities converted to cryo-EM units.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeiSection {
    /// Record size in bytes (768 = FEI1, 888 = FEI2).
    pub metadata_size: i32,
    pub metadata_version: i32,
    pub microscope: String,
    pub application: String,
    /// High tension in volts.
    pub ht_volts: f64,
    /// Dose in electrons per Å² (the file stores electrons per m²).
    pub dose_e_per_a2: f64,
    /// Stage alpha tilt in degrees.
    pub alpha_tilt_deg: f64,
    /// Pixel size in Å along x and y (the file stores metres).
    pub pixel_size_a: [f64; 2],
    /// Defocus in µm (the file stores metres).
    pub defocus_um: f64,
}

/// Offsets inside one record (bytes).
const OFF_HT: usize = 84;
const OFF_DOSE: usize = 92;
const OFF_ALPHA: usize = 100;
const OFF_PIXEL_X: usize = 156;
const OFF_PIXEL_Y: usize = 164;
const OFF_DEFOCUS: usize = 220;
/// Smallest record holding every field decoded here.
const MIN_RECORD: usize = OFF_DEFOCUS + 8;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// Decode the FEI records of an extended header: `None` when exttyp is not FEI1/FEI2 or the records do not fit
/// (mrcfile warns and returns `None` in the same cases).
pub fn sections(header: &Header, order: ByteOrder, ext: &[u8]) -> Option<Vec<FeiSection>> {
    if &header.exttyp != b"FEI1" && &header.exttyp != b"FEI2" {
        return None;
    }
    let i32_at = |b: &[u8], at: usize| {
        let v: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(match order {
            ByteOrder::Little => i32::from_le_bytes(v),
            ByteOrder::Big => i32::from_be_bytes(v),
        })
    };
    let f64_at = |b: &[u8], at: usize| {
        let v: [u8; 8] = b[at..at + 8].try_into().expect("8 bytes");
        match order {
            ByteOrder::Little => f64::from_le_bytes(v),
            ByteOrder::Big => f64::from_be_bytes(v),
        }
    };
    let size = i32_at(ext, 0)?;
    if size < MIN_RECORD as i32 {
        return None;
    }
    let size = size as usize;
    let n = header.nz.max(0) as usize;
    if ext.len() < n.checked_mul(size)? {
        return None;
    }
    let out = (0..n)
        .map(|k| {
            let r = &ext[k * size..(k + 1) * size];
            FeiSection {
                metadata_size: i32_at(r, 0).unwrap_or(0),
                metadata_version: i32_at(r, 4).unwrap_or(0),
                microscope: text(&r[20..36]),
                application: text(&r[52..68]),
                ht_volts: f64_at(r, OFF_HT),
                dose_e_per_a2: f64_at(r, OFF_DOSE) * 1e-20,
                alpha_tilt_deg: f64_at(r, OFF_ALPHA),
                pixel_size_a: [f64_at(r, OFF_PIXEL_X) * 1e10, f64_at(r, OFF_PIXEL_Y) * 1e10],
                defocus_um: f64_at(r, OFF_DEFOCUS) * 1e6,
            }
        })
        .collect();
    Some(out)
}

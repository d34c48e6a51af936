//! Conversion between MRC voxel bytes (any mode, either byte order) and f32. Tight loops over fixed-size chunks
//! that the compiler vectorises; large buffers are split across threads.

use crate::header::{ByteOrder, Mode};
use half::f16;
use rayon::prelude::*;

/// Voxels per parallel chunk.
const PAR_CHUNK: usize = 1 << 18;

macro_rules! decode_loop {
    ($src:expr, $dst:expr, $n:literal, $conv:expr) => {
        for (o, c) in $dst.iter_mut().zip($src.chunks_exact($n)) {
            let b: [u8; $n] = c.try_into().unwrap();
            *o = $conv(b);
        }
    };
}

fn decode_serial(mode: Mode, order: ByteOrder, src: &[u8], dst: &mut [f32]) {
    use ByteOrder::*;
    match (mode, order) {
        (Mode::Int8, _) => decode_loop!(src, dst, 1, |b: [u8; 1]| b[0] as i8 as f32),
        (Mode::Int16, Little) => decode_loop!(src, dst, 2, |b| i16::from_le_bytes(b) as f32),
        (Mode::Int16, Big) => decode_loop!(src, dst, 2, |b| i16::from_be_bytes(b) as f32),
        (Mode::Uint16, Little) => decode_loop!(src, dst, 2, |b| u16::from_le_bytes(b) as f32),
        (Mode::Uint16, Big) => decode_loop!(src, dst, 2, |b| u16::from_be_bytes(b) as f32),
        (Mode::Float32, Little) => decode_loop!(src, dst, 4, f32::from_le_bytes),
        (Mode::Float32, Big) => decode_loop!(src, dst, 4, f32::from_be_bytes),
        (Mode::Float16, Little) => {
            decode_loop!(src, dst, 2, |b| f16::from_bits(u16::from_le_bytes(b))
                .to_f32())
        }
        (Mode::Float16, Big) => {
            decode_loop!(src, dst, 2, |b| f16::from_bits(u16::from_be_bytes(b))
                .to_f32())
        }
    }
}

/// Decode `dst.len()` voxels from `src` (exactly `dst.len() * mode.bytes()` bytes).
pub fn decode(mode: Mode, order: ByteOrder, src: &[u8], dst: &mut [f32]) {
    let nb = mode.bytes();
    assert_eq!(
        src.len(),
        dst.len() * nb,
        "decode: byte count does not match voxel count"
    );
    if dst.len() <= PAR_CHUNK {
        decode_serial(mode, order, src, dst);
    } else {
        dst.par_chunks_mut(PAR_CHUNK)
            .zip(src.par_chunks(PAR_CHUNK * nb))
            .for_each(|(d, s)| decode_serial(mode, order, s, d));
    }
}

/// Why a value cannot be stored in the requested mode.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeError {
    pub index: usize,
    pub value: f32,
    pub reason: &'static str,
}

macro_rules! encode_loop {
    ($src:expr, $dst:expr, $n:literal, $conv:expr) => {
        for (c, &v) in $dst.chunks_exact_mut($n).zip($src.iter()) {
            c.copy_from_slice(&$conv(v));
        }
    };
}

/// First value that mode `mode` cannot hold exactly (non-finite, out of range, or not an integer for the
/// integer modes; overflow to infinity for float16).
fn check(mode: Mode, src: &[f32]) -> Option<EncodeError> {
    let bad = |index: usize, reason| EncodeError {
        index,
        value: src[index],
        reason,
    };
    // Fast path: one branch-free pass decides whether anything is wrong; only then look for the index.
    let (lo, hi, reason) = match mode {
        Mode::Int8 => (-128.0, 127.0, "integer mode 0 holds integers in -128..=127"),
        Mode::Int16 => (
            -32768.0,
            32767.0,
            "integer mode 1 holds integers in -32768..=32767",
        ),
        Mode::Uint16 => (0.0, 65535.0, "integer mode 6 holds integers in 0..=65535"),
        Mode::Float32 => (f32::MIN, f32::MAX, "NaN and infinity are not stored"),
        Mode::Float16 => (
            -65504.0,
            65504.0,
            "float16 (mode 12) holds finite values within ±65504",
        ),
    };
    let integer = matches!(mode, Mode::Int8 | Mode::Int16 | Mode::Uint16);
    let ok = |v: f32| v >= lo && v <= hi && (!integer || v == v.round());
    if src.iter().fold(true, |acc, &v| acc & ok(v)) {
        return None;
    }
    let i = src.iter().position(|&v| !ok(v)).expect("a value failed");
    Some(bad(i, reason))
}

fn encode_serial(mode: Mode, order: ByteOrder, src: &[f32], dst: &mut [u8]) {
    use ByteOrder::*;
    match (mode, order) {
        (Mode::Int8, _) => encode_loop!(src, dst, 1, |v: f32| [(v as i8) as u8]),
        (Mode::Int16, Little) => encode_loop!(src, dst, 2, |v: f32| (v as i16).to_le_bytes()),
        (Mode::Int16, Big) => encode_loop!(src, dst, 2, |v: f32| (v as i16).to_be_bytes()),
        (Mode::Uint16, Little) => encode_loop!(src, dst, 2, |v: f32| (v as u16).to_le_bytes()),
        (Mode::Uint16, Big) => encode_loop!(src, dst, 2, |v: f32| (v as u16).to_be_bytes()),
        (Mode::Float32, Little) => encode_loop!(src, dst, 4, |v: f32| v.to_le_bytes()),
        (Mode::Float32, Big) => encode_loop!(src, dst, 4, |v: f32| v.to_be_bytes()),
        (Mode::Float16, Little) => {
            encode_loop!(src, dst, 2, |v: f32| f16::from_f32(v)
                .to_bits()
                .to_le_bytes())
        }
        (Mode::Float16, Big) => {
            encode_loop!(src, dst, 2, |v: f32| f16::from_f32(v)
                .to_bits()
                .to_be_bytes())
        }
    }
}

/// Encode `src` into `dst` (`src.len() * mode.bytes()` bytes), refusing values the mode cannot hold.
pub fn encode(
    mode: Mode,
    order: ByteOrder,
    src: &[f32],
    dst: &mut [u8],
) -> Result<(), EncodeError> {
    let nb = mode.bytes();
    assert_eq!(
        dst.len(),
        src.len() * nb,
        "encode: byte count does not match voxel count"
    );
    if src.len() <= PAR_CHUNK {
        if let Some(e) = check(mode, src) {
            return Err(e);
        }
        encode_serial(mode, order, src, dst);
        return Ok(());
    }
    let errs: Vec<EncodeError> = src
        .par_chunks(PAR_CHUNK)
        .zip(dst.par_chunks_mut(PAR_CHUNK * nb))
        .enumerate()
        .filter_map(|(k, (s, d))| match check(mode, s) {
            Some(mut e) => {
                e.index += k * PAR_CHUNK;
                Some(e)
            }
            None => {
                encode_serial(mode, order, s, d);
                None
            }
        })
        .collect();
    match errs.into_iter().min_by_key(|e| e.index) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Index of the first NaN or infinity, if any.
pub fn first_non_finite(data: &[f32]) -> Option<usize> {
    if data.iter().fold(true, |acc, v| acc & v.is_finite()) {
        None
    } else {
        data.iter().position(|v| !v.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_mode_and_order() {
        let vals: Vec<f32> = vec![0.0, 1.0, -1.0, 100.0, 127.0, -128.0, 42.0, 3.0];
        for mode in [Mode::Int8, Mode::Int16, Mode::Float32, Mode::Float16] {
            for order in [ByteOrder::Little, ByteOrder::Big] {
                let mut b = vec![0u8; vals.len() * mode.bytes()];
                encode(mode, order, &vals, &mut b).unwrap();
                let mut back = vec![0f32; vals.len()];
                decode(mode, order, &b, &mut back);
                assert_eq!(back, vals, "{mode:?} {order:?}");
            }
        }
        let mut b = vec![0u8; 4];
        encode(Mode::Uint16, ByteOrder::Big, &[65535.0, 1.0], &mut b).unwrap();
        assert_eq!(b, [0xff, 0xff, 0, 1]);
    }

    #[test]
    fn refuses_what_the_mode_cannot_hold() {
        let mut b = vec![0u8; 6];
        let e = encode(Mode::Uint16, ByteOrder::Little, &[1.0, -1.0, 2.0], &mut b).unwrap_err();
        assert_eq!((e.index, e.value), (1, -1.0));
        let e = encode(Mode::Int16, ByteOrder::Little, &[1.0, 2.0, 2.5], &mut b).unwrap_err();
        assert_eq!(e.index, 2);
        let e = encode(Mode::Float16, ByteOrder::Little, &[1e5, 0.0, 0.0], &mut b).unwrap_err();
        assert_eq!(e.index, 0);
        let mut b = vec![0u8; 12];
        let e = encode(
            Mode::Float32,
            ByteOrder::Little,
            &[0.0, f32::NAN, 1.0],
            &mut b,
        )
        .unwrap_err();
        assert_eq!(e.index, 1);
    }

    #[test]
    fn large_buffers_take_the_parallel_path() {
        let n = 3 * PAR_CHUNK + 17;
        let vals: Vec<f32> = (0..n).map(|i| (i % 60000) as f32).collect();
        let mut b = vec![0u8; n * 2];
        encode(Mode::Uint16, ByteOrder::Little, &vals, &mut b).unwrap();
        let mut back = vec![0f32; n];
        decode(Mode::Uint16, ByteOrder::Little, &b, &mut back);
        assert_eq!(back, vals);
        let mut bad = vals.clone();
        bad[2 * PAR_CHUNK + 5] = -3.0;
        let e = encode(Mode::Uint16, ByteOrder::Little, &bad, &mut b).unwrap_err();
        assert_eq!(e.index, 2 * PAR_CHUNK + 5);
    }
}

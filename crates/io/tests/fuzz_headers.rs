//! Stable-Rust stand-in for the cargo-fuzz target `fuzz/fuzz_targets/mrc_header.rs`: mutated headers (random
//! field values, bit flips, truncation, gzip) through the same checks. Bounded: CRYODEN_FUZZ_ITERS inputs
//! (default 3000, a few seconds) so it runs in every test suite; scripts/fuzz.sh runs it longer when cargo-fuzz is
//! unavailable. Every input must give data or a typed error: no panic, no huge allocation (the suite would abort).

use cryoden_io::{write, ByteOrder, Mode, MrcStack, ReadOptions, WriteOptions};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Same body as the cargo-fuzz target.
fn check(data: &[u8]) {
    for opts in [ReadOptions::strict(), ReadOptions::permissive()] {
        if let Ok(s) = MrcStack::from_bytes("fuzz.mrc", data.to_vec(), opts) {
            let _ = s.validate();
            let _ = s.fei_sections();
            if s.nz() > 0 {
                let _ = s.read_image(s.nz() - 1);
            }
            let all = s.read_all();
            if let Ok(v) = all {
                assert_eq!(v.len(), s.nx() * s.ny() * s.nz());
            }
        }
    }
}

/// Valid seeds: every mode, both byte orders, with and without an FEI extended header.
fn seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for (k, mode) in [
        Mode::Int8,
        Mode::Int16,
        Mode::Float32,
        Mode::Uint16,
        Mode::Float16,
    ]
    .into_iter()
    .enumerate()
    {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let p = dir.path().join(format!("s{k}{}.mrc", order.as_str()));
            let data: Vec<f32> = (0..5 * 4 * 3).map(|i| (i % 100) as f32).collect();
            let ext = (k % 2 == 0).then(|| {
                let mut b = vec![0u8; 3 * 888];
                for z in 0..3 {
                    b[z * 888..z * 888 + 4].copy_from_slice(&888i32.to_le_bytes());
                }
                cryoden_io::ExtHeader {
                    exttyp: *b"FEI2",
                    bytes: b,
                }
            });
            let opts = WriteOptions {
                mode,
                byte_order: order,
                ext_header: ext,
                ..WriteOptions::default()
            };
            write(&p, &data, [5, 4, 3], &opts).unwrap();
            out.push(std::fs::read(&p).unwrap());
        }
    }
    out
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    let interesting: [i32; 12] = [0, 1, -1, 2, 3, 4, 6, 12, 101, i32::MAX, i32::MIN, 100_000];
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            // A header field (4-byte aligned, within the first 224 bytes) set to an interesting value.
            0 if b.len() >= 224 => {
                let at = 4 * rng.below(56) as usize;
                let v = interesting[rng.below(interesting.len() as u64) as usize];
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                b[at..at + 4].copy_from_slice(&bytes);
            }
            // Random bit flip anywhere.
            1 if !b.is_empty() => {
                let at = rng.below(b.len() as u64) as usize;
                b[at] ^= 1 << rng.below(8);
            }
            // Truncate.
            2 => {
                let n = rng.below(b.len() as u64 + 1) as usize;
                b.truncate(n);
            }
            // Append garbage.
            3 => {
                for _ in 0..rng.below(64) {
                    b.push(rng.next() as u8);
                }
            }
            // Random nsymbt.
            4 if b.len() >= 96 => {
                let v = rng.next() as i32 >> rng.below(31);
                b[92..96].copy_from_slice(&v.to_le_bytes());
            }
            // Gzip it (possibly corrupting the stream afterwards).
            _ => {
                use std::io::Write;
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&b).unwrap();
                b = enc.finish().unwrap();
                if rng.below(2) == 0 && b.len() > 20 {
                    let at = 10 + rng.below(b.len() as u64 - 10) as usize;
                    b[at] ^= 0xff;
                }
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

#[test]
fn mutated_headers_never_panic() {
    let iters: u64 = std::env::var("CRYODEN_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seeds = seeds();
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for s in &seeds {
        check(s);
    }
    for _ in 0..iters {
        let s = &seeds[rng.below(seeds.len() as u64) as usize];
        check(&mutate(&mut rng, s));
    }
    // Pure noise of every short length, too.
    for len in 0..1100 {
        let v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check(&v);
    }
}

/// Regression: nz = 0 with nx * ny huge used to allocate an nx * ny buffer for statistics.
#[test]
fn zero_sections_with_huge_planes_allocate_nothing() {
    let seeds = seeds();
    let mut b = seeds[4].clone(); // float32, little-endian
    b[0..4].copy_from_slice(&i32::MAX.to_le_bytes());
    b[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
    b[8..12].copy_from_slice(&0i32.to_le_bytes());
    b[92..96].copy_from_slice(&0i32.to_le_bytes());
    let s = MrcStack::from_bytes("zero.mrc", b, ReadOptions::permissive()).unwrap();
    assert_eq!(s.nz(), 0);
    assert_eq!(s.data_stats().unwrap().n, 0);
    assert!(s.validate().is_ok());
}

/// Regression (found by this test): exttyp FEI1/FEI2 with an extended header shorter than 4 bytes panicked.
#[test]
fn fei_exttyp_with_empty_extended_header() {
    let mut b = seeds()[1].clone(); // int8, no extended header
    b[104..108].copy_from_slice(b"FEI1");
    let s = MrcStack::from_bytes("fei.mrc", b, ReadOptions::strict()).unwrap();
    assert_eq!(s.fei_sections(), None);
}

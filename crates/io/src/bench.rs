//! `cryoden bench io`: read a mode-6 (uint16) micrograph to f32 and write it as mode 2, from the page cache.
//! The figure the I/O layer promises is "memory/disk speed": ≥ 1 GB/s for this round trip.

use crate::error::{Error, Result};
use crate::header::Mode;
use crate::mrc::{read, write, WriteOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What was measured (seconds per repeat; rates in decimal GB/s of file bytes).
#[derive(Debug, Clone, serde::Serialize)]
pub struct IoBench {
    pub size: usize,
    pub repeats: usize,
    pub input_bytes: u64,
    pub output_bytes: u64,
    /// Median seconds: open + decode mode 6 → f32.
    pub read_s: f64,
    /// Median seconds: encode f32 → mode 2, write, rename.
    pub write_s: f64,
    /// Median seconds of the whole round trip.
    pub total_s: f64,
    pub read_gb_s: f64,
    pub write_gb_s: f64,
    /// (input + output bytes) / total.
    pub roundtrip_gb_s: f64,
    pub threads: usize,
}

/// Removes the scratch directory however the bench ends.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Run the round trip `repeats` times on a `size`² synthetic counting-detector image in a scratch directory
/// under `dir` (removed afterwards). One untimed warm-up puts the input in the page cache.
pub fn io_roundtrip(dir: &Path, size: usize, repeats: usize) -> Result<IoBench> {
    if size == 0 || repeats == 0 {
        return Err(Error::usage(
            dir,
            "bench io: --size and --repeats must be positive",
        ));
    }
    let scratch = Scratch(dir.join(format!("cryoden-bench-io-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)
        .map_err(|e| Error::io(&scratch.0, "cannot create scratch directory", e))?;
    let input = scratch.0.join("in_mode6.mrc");
    let output = scratch.0.join("out_mode2.mrc");
    // Counts like a dose-fractionated sum (a few thousand per pixel), from a fixed LCG: deterministic input.
    let mut state = 0x2545F4914F6CDD1Du64;
    let counts: Vec<f32> = (0..size * size)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (4000 + (state >> 52) as u32) as f32
        })
        .collect();
    let opts6 = WriteOptions {
        mode: Mode::Uint16,
        ..WriteOptions::with_voxel_size(0.83)
    };
    write(&input, &counts, [size, size, 1], &opts6)?;
    drop(counts);
    let run_once = |out: &Path| -> Result<(f64, f64)> {
        let t0 = Instant::now();
        let m = read(&input)?;
        let t1 = Instant::now();
        write(
            out,
            &m.data,
            [m.nx(), m.ny(), 1],
            &WriteOptions::like(&m.header),
        )?;
        Ok((
            t1.duration_since(t0).as_secs_f64(),
            t1.elapsed().as_secs_f64(),
        ))
    };
    run_once(&output)?; // warm-up: page cache, allocator
    let (mut r, mut w, mut t) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        let (a, b) = run_once(&output)?;
        r.push(a);
        w.push(b);
        t.push(a + b);
    }
    let len = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| Error::io(p, "cannot stat", e))
    };
    let (ib, ob) = (len(&input)?, len(&output)?);
    let (rs, ws, ts) = (median(r), median(w), median(t));
    Ok(IoBench {
        size,
        repeats,
        input_bytes: ib,
        output_bytes: ob,
        read_s: rs,
        write_s: ws,
        total_s: ts,
        read_gb_s: ib as f64 / rs / 1e9,
        write_gb_s: ob as f64 / ws / 1e9,
        roundtrip_gb_s: (ib + ob) as f64 / ts / 1e9,
        threads: rayon::current_num_threads(),
    })
}

//! `split`: one movie → even and odd half sums (or one counted micrograph → two thinned halves).
//!
//! Frames are read one at a time through [`cryoden_io::FrameStack`] (MRC stacks, multi-page TIFF), multiplied
//! by the gain reference when one is given, and added to the even half (0-based frame index even) or the odd half
//! (RELION's convention). Memory: two half sums and one frame (plus, with alignment, five half-spectra).
//! With an odd number of frames the last frame is left out, so both halves hold the same number of frames and
//! therefore the same expected dose (a Noise2Noise pair must have equal expectations).

use crate::align::{AlignParams, Aligner};
use crate::error::{Error, Result};
use crate::pairing;
use crate::thin;
use cryoden_io::{open_frames, FrameStack, ReadOptions, WriteOptions};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A gain reference: multiplied into every frame (values = counts × gain after correction).
pub struct Gain {
    pub path: PathBuf,
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Gain {
    /// Reads the first image of an MRC or TIFF file. Values must be finite and non-negative (0 marks dead
    /// pixels).
    pub fn load(path: &Path) -> Result<Gain> {
        let s = open_frames(path, ReadOptions::strict())?;
        if s.n_frames() == 0 {
            return Err(Error::input(path, "the gain reference holds no image"));
        }
        if s.n_frames() > 1 {
            return Err(Error::input(
                path,
                format!(
                    "the gain reference holds {} images, expected 1; extract the gain image first",
                    s.n_frames()
                ),
            ));
        }
        let (width, height) = s.frame_dims();
        let data = s.read_frame(0)?;
        if let Some(i) = data.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(Error::input(
                path,
                format!(
                    "gain value {} at pixel x={}, y={}; a gain reference must be finite and non-negative",
                    data[i],
                    i % width,
                    i / width
                ),
            ));
        }
        Ok(Gain {
            path: path.to_path_buf(),
            width,
            height,
            data,
        })
    }
}

/// How to split.
#[derive(Default)]
pub struct SplitOptions {
    pub gain: Option<Gain>,
    /// Global drift correction of the frames (see [`crate::align`]).
    pub align: Option<AlignParams>,
    /// Binomial thinning of a one-image counted micrograph instead of frame splitting.
    pub thin: bool,
    /// Seed of the thinning (each movie uses `seed` mixed with its name, so results do not depend on order).
    pub seed: u64,
}

/// What was done to one movie.
#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub movie: PathBuf,
    pub name: String,
    pub even: PathBuf,
    pub odd: PathBuf,
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    /// Frames summed into the halves (even count; the last frame of an odd-length movie is left out; 1 for
    /// thinning).
    pub frames_used: usize,
    pub pixel_size: Option<f32>,
    /// Mean value per pixel of each half.
    pub mean_even: f64,
    pub mean_odd: f64,
    /// Per-frame drift `[dx, dy]` in pixels relative to frame 0, when aligned.
    pub shifts: Option<Vec<[f32; 2]>>,
    pub shifts_file: Option<PathBuf>,
}

/// The per-movie JSON written by `--align` (`DIR/shifts/NAME.json`).
#[derive(Debug, Clone, Serialize)]
pub struct ShiftsFile<'a> {
    pub movie: &'a Path,
    pub frames: usize,
    pub frames_used: usize,
    pub params: AlignParams,
    /// Meaning of `shifts`.
    pub convention: &'static str,
    pub shifts: &'a [[f32; 2]],
}

pub const SHIFT_CONVENTION: &str =
    "shifts[i] = [dx, dy] in pixels: frame i shows the specimen moved by (dx, dy) \
     relative to frame 0 (frame_i(x) = frame_0(x - d)); frame i was shifted by -d before summing";

/// Output paths of a movie's halves under `out`.
pub fn output_paths(out: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        out.join("even").join(format!("{name}.mrc")),
        out.join("odd").join(format!("{name}.mrc")),
    )
}

/// Splits `movie` into `out/even/NAME.mrc` and `out/odd/NAME.mrc` (and `out/shifts/NAME.json` when aligning),
/// NAME being the file stem. On error nothing of this movie is left in `out`.
pub fn split_movie(movie: &Path, out: &Path, opts: &SplitOptions) -> Result<SplitReport> {
    let stack = open_frames(movie, ReadOptions::strict())?;
    let (w, h) = stack.frame_dims();
    let n = stack.n_frames();
    let name = pairing::stem(movie);
    if let Some(g) = &opts.gain {
        if (g.width, g.height) != (w, h) {
            return Err(Error::input(
                movie,
                format!(
                    "frames are {w} x {h} but the gain reference {} is {} x {}; give the gain of this detector \
                     mode (flip or rotate it beforehand if the software that wrote it stores it transposed)",
                    g.path.display(),
                    g.width,
                    g.height
                ),
            ));
        }
    }
    let gain = opts.gain.as_ref().map(|g| g.data.as_slice());
    let (even, odd, frames_used, shifts) = if opts.thin {
        if n != 1 {
            return Err(Error::input(
                movie,
                format!(
                    "--thin splits a single counted micrograph, but this file has {n} frames; split the frames \
                     into even/odd sums instead (leave out --thin)"
                ),
            ));
        }
        let img = stack.read_frame(0)?;
        let seed = opts.seed ^ fnv1a(name.as_bytes());
        let (a, b) = thin::thin(&img, w, gain, seed).map_err(|f| match f {
            thin::ThinFault::NotCount { x, y, value } => Error::input(
                movie,
                format!(
                    "pixel x={x}, y={y} is {value}{}, not a whole count; binomial thinning is valid only for raw \
                     counts (counting-mode, not dose-weighted, not gain-normalised unless --gain gives that gain) \
                     — see docs/DATA.md",
                    if gain.is_some() { " after division by the gain" } else { "" }
                ),
            ),
            thin::ThinFault::BadGain { x, y, value } => Error::input(
                movie,
                format!("gain {value} at pixel x={x}, y={y}: thinning divides by the gain, which must be > 0"),
            ),
        })?;
        (a, b, 1, None)
    } else {
        if n < 2 {
            return Err(Error::input(
                movie,
                format!(
                    "{n} frame(s): an even/odd split needs at least 2 frames; for a single counted micrograph use \
                     --thin"
                ),
            ));
        }
        let used = n - n % 2;
        let (e, o, s) = sum_halves(stack.as_ref(), used, gain, opts.align)?;
        (e, o, used, s)
    };
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
    let (even_path, odd_path) = output_paths(out, &name);
    let mut report = SplitReport {
        movie: movie.to_path_buf(),
        name: name.clone(),
        even: even_path.clone(),
        odd: odd_path.clone(),
        width: w,
        height: h,
        frames: n,
        frames_used,
        pixel_size: stack.pixel_size(),
        mean_even: mean(&even),
        mean_odd: mean(&odd),
        shifts: None,
        shifts_file: None,
    };
    let mut wopts = WriteOptions::with_voxel_size(stack.pixel_size().unwrap_or(0.0));
    let how = if opts.thin {
        "binomial thinning".to_string()
    } else {
        format!(
            "frames 0..{frames_used} of {n}{}{}",
            if opts.align.is_some() {
                ", aligned"
            } else {
                ""
            },
            if gain.is_some() {
                ", gain-corrected"
            } else {
                ""
            }
        )
    };
    let mut written: Vec<PathBuf> = vec![];
    let result = (|| -> Result<()> {
        for (half, data, path) in [("even", &even, &even_path), ("odd", &odd, &odd_path)] {
            let dir = path.parent().expect("joined path");
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::fs(dir, "cannot create the output directory", e))?;
            wopts.labels = vec![
                format!("cryoden {} split: {half} half", env!("CARGO_PKG_VERSION")),
                format!("{how}"),
            ];
            cryoden_io::write(path, data, [w, h, 1], &wopts)?;
            written.push(path.clone());
        }
        if let (Some(s), Some(params)) = (&shifts, opts.align) {
            let dir = out.join("shifts");
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::fs(&dir, "cannot create the output directory", e))?;
            let p = dir.join(format!("{name}.json"));
            let doc = ShiftsFile {
                movie,
                frames: n,
                frames_used,
                params,
                convention: SHIFT_CONVENTION,
                shifts: s,
            };
            let text = serde_json::to_string_pretty(&doc).expect("serialisable");
            cryoden_io::write_atomic(&p, |f| {
                use std::io::Write;
                f.write_all(text.as_bytes())
                    .and_then(|_| f.write_all(b"\n"))
                    .map_err(|e| cryoden_io::Error::Io {
                        path: p.clone(),
                        what: "cannot write",
                        source: e,
                    })
            })?;
            report.shifts_file = Some(p);
        }
        Ok(())
    })();
    if let Err(e) = result {
        for p in written {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    report.shifts = shifts;
    Ok(report)
}

/// Even and odd sums of frames `0..used`, with optional gain and alignment.
#[allow(clippy::type_complexity)]
fn sum_halves(
    stack: &dyn FrameStack,
    used: usize,
    gain: Option<&[f32]>,
    align: Option<AlignParams>,
) -> Result<(Vec<f32>, Vec<f32>, Option<Vec<[f32; 2]>>)> {
    let (w, h) = stack.frame_dims();
    let mut frame = vec![0f32; w * h];
    let mut aligner = align.map(|p| Aligner::new(w, h, p));
    let (mut even, mut odd) = if aligner.is_some() {
        (vec![], vec![])
    } else {
        (vec![0f32; w * h], vec![0f32; w * h])
    };
    let mut shifts = vec![];
    for i in 0..used {
        stack.read_frame_into(i, &mut frame)?;
        if let Some(g) = gain {
            for (v, &g) in frame.iter_mut().zip(g) {
                *v *= g;
            }
        }
        match &mut aligner {
            Some(a) => shifts.push(a.push(&frame, i % 2 == 0)),
            None => {
                let dst = if i % 2 == 0 { &mut even } else { &mut odd };
                for (d, &v) in dst.iter_mut().zip(&frame) {
                    *d += v;
                }
            }
        }
    }
    Ok(match aligner {
        Some(mut a) => {
            // Refinement passes: every frame against the sum of all the others (frames read again, one at a time).
            let passes = align.map(|p| p.refine_passes).unwrap_or(0);
            for _ in 0..passes {
                for (i, d) in shifts.iter_mut().enumerate() {
                    stack.read_frame_into(i, &mut frame)?;
                    if let Some(g) = gain {
                        for (v, &g) in frame.iter_mut().zip(g) {
                            *v *= g;
                        }
                    }
                    *d = a.refine(&frame, i % 2 == 0, *d);
                }
            }
            // Report drifts relative to frame 0 again, and put the sums in frame 0's position.
            let d0 = shifts[0];
            if d0 != [0.0, 0.0] {
                a.recenter(d0);
                for d in shifts.iter_mut() {
                    *d = [d[0] - d0[0], d[1] - d0[1]];
                }
            }
            let (e, o) = a.finish();
            (e, o, Some(shifts))
        }
        None => (even, odd, None),
    })
}

/// Movie extensions picked up from directories (case-insensitive; MRC files may be gzipped).
pub const MOVIE_EXTENSIONS: &[&str] = &["mrc", "mrcs", "mrc.gz", "mrcs.gz", "tif", "tiff"];

/// Expands movie arguments with [`cryoden_io::paths::expand`]: a file → itself, a directory → the movies
/// directly inside it (by [`MOVIE_EXTENSIONS`], not recursive), a quoted pattern with `*`, `?` or `[` → its
/// matching files (for shells that did not expand it, or lists too long for the command line). Sorted, duplicates
/// removed. Two movies with the same stem are refused (their halves would overwrite each other).
pub fn expand_inputs(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let out = cryoden_io::paths::expand(args, MOVIE_EXTENSIONS)?;
    let mut names = std::collections::BTreeMap::new();
    for p in &out {
        if let Some(prev) = names.insert(pairing::stem(p), p.clone()) {
            return Err(Error::Usage(format!(
                "{} and {} have the same name {:?}: their halves would overwrite each other; rename one or split \
                 them into different --out directories",
                prev.display(),
                p.display(),
                pairing::stem(p)
            )));
        }
    }
    Ok(out)
}

/// FNV-1a hash (stable across platforms and versions, unlike `DefaultHasher`), for per-name seeds.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

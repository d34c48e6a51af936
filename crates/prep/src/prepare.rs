//! `prepare`: paired halves (or clean images + synthetic noise) → a dataset directory (see the crate docs and
//! docs/DATA.md).
//!
//! Two stages, so that bad input is found before anything is written and the size is known up front:
//! 1. [`plan`] reads only headers: pairs the halves by name, checks shapes and the patch size, places the
//!    patches and splits the micrographs into train and validation (seeded, by micrograph, never by patch).
//! 2. [`write`] streams one micrograph at a time (read both halves, normalise, cut patches, append to the
//!    stacks), so memory is bounded by one micrograph whatever the dataset size. Everything is written into a
//!    hidden temporary directory beside `--out`, renamed to `--out` only when complete: on any error nothing is
//!    left behind.

use crate::dataset::sha256_file;
use crate::error::{Error, Result};
use crate::manifest::{self, Counts, FileEntry, Files, Manifest, Micrograph, Source, Split};
use crate::noise::{self, NoiseFault, NoiseModel};
use crate::normalize::{self, Affine, Method, StatsFault};
use crate::pairing::{self, Pair};
use crate::patches;
use crate::split::fnv1a;
use cryoden_io::{open_frames, FrameStack, MrcStack, ReadOptions, StackWriter, WriteOptions};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};

/// Where the pairs come from.
#[derive(Debug, Clone)]
pub enum Inputs {
    Halves { even_dir: PathBuf, odd_dir: PathBuf },
    Clean { dir: PathBuf, noise: NoiseModel },
}

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub out: PathBuf,
    pub patch: usize,
    /// Step between patch starts; `None` = `patch` (no overlap).
    pub stride: Option<usize>,
    /// Fraction of micrographs held out for validation, in [0, 1).
    pub val_fraction: f64,
    pub normalize: Method,
    pub seed: u64,
    /// Number of input/target pairs drawn into `preview.png` (0 = none).
    pub preview: usize,
}

/// One micrograph's place in the dataset.
#[derive(Debug, Clone)]
pub struct PlanItem {
    pub pair: Pair,
    pub split: Split,
    pub width: usize,
    pub height: usize,
    pub pixel_size: f32,
    pub x_starts: Vec<usize>,
    pub y_starts: Vec<usize>,
    pub first_patch: usize,
}

impl PlanItem {
    pub fn patch_count(&self) -> usize {
        self.x_starts.len() * self.y_starts.len()
    }
}

/// What [`write`] will produce, known before any pixel is read.
#[derive(Debug, Clone)]
pub struct Plan {
    pub inputs: Inputs,
    pub options: PrepareOptions,
    /// Train micrographs first, then validation ones, each group in name order (= stack order).
    pub items: Vec<PlanItem>,
    pub counts: Counts,
}

impl Plan {
    /// Bytes of the four stacks together (1024-byte headers included).
    pub fn total_bytes(&self) -> u64 {
        let p = (self.options.patch * self.options.patch * 4) as u64;
        2 * (self.counts.train + self.counts.val) as u64 * p + 4 * 1024
    }
    pub fn micrographs(&self, split: Split) -> usize {
        self.items.iter().filter(|i| i.split == split).count()
    }
}

/// Memory available to new processes (`MemAvailable` of /proc/meminfo), in bytes; `None` off Linux.
pub fn memory_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn header_of(path: &Path) -> Result<Box<dyn FrameStack>> {
    let s = open_frames(path, ReadOptions::strict())?;
    if s.n_frames() != 1 {
        return Err(Error::input(
            path,
            format!(
                "holds {} images; a half (or clean image) must be a single image — run `cryoden split` on movies",
                s.n_frames()
            ),
        ));
    }
    Ok(s)
}

/// Stage 1: checks everything that can be checked from headers and places every patch. Reads no pixels.
pub fn plan(inputs: &Inputs, opts: &PrepareOptions) -> Result<Plan> {
    if opts.patch == 0 {
        return Err(Error::Usage("--patch must be at least 1 pixel".into()));
    }
    let stride = opts.stride.unwrap_or(opts.patch);
    if stride == 0 {
        return Err(Error::Usage("--stride must be at least 1 pixel".into()));
    }
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return Err(Error::Usage(format!(
            "--val-fraction {} is outside [0, 1): it is the fraction of micrographs held out for validation",
            opts.val_fraction
        )));
    }
    check_out(&opts.out)?;
    let pairs = match inputs {
        Inputs::Halves { even_dir, odd_dir } => pairing::pair_dirs(even_dir, odd_dir)?,
        Inputs::Clean { dir, .. } => {
            let files = pairing::list_images(dir)?;
            if files.is_empty() {
                return Err(Error::input(
                    dir,
                    "no images (.mrc, .mrcs, .map, .tif, .tiff) in this directory",
                ));
            }
            let mut seen = std::collections::BTreeMap::new();
            let mut v = vec![];
            for f in files {
                let name = pairing::stem(&f);
                if let Some(prev) = seen.insert(name.clone(), f.clone()) {
                    return Err(Error::input(
                        &f,
                        format!(
                            "same name as {}; keep one of them",
                            Path::new(&prev).display()
                        ),
                    ));
                }
                v.push(Pair {
                    name,
                    even: f.clone(),
                    odd: f,
                });
            }
            v
        }
    };
    let mut items = vec![];
    for pair in pairs {
        let e = header_of(&pair.even)?;
        let (w, h) = e.frame_dims();
        if pair.odd != pair.even {
            let o = header_of(&pair.odd)?;
            if o.frame_dims() != (w, h) {
                let (ow, oh) = o.frame_dims();
                return Err(Error::input(
                    &pair.odd,
                    format!(
                        "{ow} x {oh} but its even partner {} is {w} x {h}; the halves of a micrograph must come \
                         from the same movie",
                        pair.even.display()
                    ),
                ));
            }
        }
        let (xs, ys) = match (
            patches::starts(w, opts.patch, stride),
            patches::starts(h, opts.patch, stride),
        ) {
            (Some(x), Some(y)) => (x, y),
            _ => {
                return Err(Error::input(
                    &pair.even,
                    format!(
                        "{w} x {h} is smaller than --patch {}; use a smaller patch or leave this micrograph out",
                        opts.patch
                    ),
                ))
            }
        };
        items.push(PlanItem {
            pixel_size: e.pixel_size().unwrap_or(0.0),
            pair,
            split: Split::Train,
            width: w,
            height: h,
            x_starts: xs,
            y_starts: ys,
            first_patch: 0,
        });
    }
    // Split by micrograph: shuffle the name-sorted list with the seed, the first n_val are validation.
    let n = items.len();
    let n_val = if opts.val_fraction > 0.0 {
        if n < 2 {
            return Err(Error::Usage(format!(
                "{n} micrograph: a validation split by micrograph needs at least 2; add micrographs or pass \
                 --val-fraction 0"
            )));
        }
        ((opts.val_fraction * n as f64).round() as usize).clamp(1, n - 1)
    } else {
        0
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed));
    for &i in &order[..n_val] {
        items[i].split = Split::Val;
    }
    // Stack order: train micrographs by name, then validation ones by name (items are name-sorted already).
    items.sort_by_key(|i| i.split == Split::Val);
    let mut counts = Counts { train: 0, val: 0 };
    for it in items.iter_mut() {
        let c = match it.split {
            Split::Train => &mut counts.train,
            Split::Val => &mut counts.val,
        };
        it.first_patch = *c;
        *c += it.patch_count();
    }
    Ok(Plan {
        inputs: inputs.clone(),
        options: opts.clone(),
        items,
        counts,
    })
}

/// `--out` must not exist, or be an empty directory (it is replaced as a whole at the end).
fn check_out(out: &Path) -> Result<()> {
    if out.exists() {
        let empty = out.is_dir()
            && std::fs::read_dir(out)
                .map_err(|e| Error::fs(out, "cannot list the output directory", e))?
                .next()
                .is_none();
        if !empty {
            return Err(Error::input(
                out,
                "already exists and is not empty; choose a new --out directory or remove this one (a dataset is \
                 never overwritten in place)",
            ));
        }
    }
    Ok(())
}

/// Reads a single-image file (strict: NaN/Inf are refused by the reader with their position).
fn read_image(path: &Path) -> Result<Vec<f32>> {
    let s = header_of(path)?;
    let img = s.read_frame(0)?;
    if let Some(i) = img.iter().position(|v| !v.is_finite()) {
        let (w, _) = s.frame_dims();
        return Err(Error::input(
            path,
            format!(
                "pixel x={}, y={} is {}; NaN/Inf pixels cannot be normalised — fix or leave out this micrograph",
                i % w,
                i / w,
                img[i]
            ),
        ));
    }
    Ok(img)
}

fn stats_error(path: &Path, f: StatsFault, method: Method, w: usize) -> Error {
    match f {
        StatsFault::NonFinite { index } => Error::input(
            path,
            format!(
                "pixel x={}, y={} is not finite; NaN/Inf pixels cannot be normalised — fix or leave out this \
                 micrograph",
                index % w,
                index / w
            ),
        ),
        StatsFault::NoSpread { center } => Error::input(
            path,
            match method {
                Method::P95 => format!(
                    "no spread to normalise by: at least 95 % of the pixels (of the sum of both halves) equal the \
                     median {center}; a constant or nearly empty image (too low a dose?) — leave it out, or use \
                     --normalize zscore if it is merely very sparse"
                ),
                Method::Zscore => format!(
                    "constant image (every pixel {center}): nothing to normalise or learn — leave it out"
                ),
            },
        ),
    }
}

/// The normalised `(input, target)` of one micrograph and the normalisation applied.
fn load_pair(
    item: &PlanItem,
    inputs: &Inputs,
    opts: &PrepareOptions,
) -> Result<(Vec<f32>, Vec<f32>, Affine)> {
    let w = item.width;
    match inputs {
        Inputs::Halves { .. } => {
            let mut e = read_image(&item.pair.even)?;
            let mut o = read_image(&item.pair.odd)?;
            let aff = normalize::for_halves(&e, &o, opts.normalize)
                .map_err(|f| stats_error(&item.pair.even, f, opts.normalize, w))?;
            aff.apply(&mut e);
            aff.apply(&mut o);
            Ok((e, o, aff))
        }
        Inputs::Clean { noise: model, .. } => {
            let c = read_image(&item.pair.even)?;
            let seed = opts.seed ^ fnv1a(item.pair.name.as_bytes());
            noise::noisy_pair(&c, *model, opts.normalize, seed).map_err(|f| match f {
                NoiseFault::Stats(s) => stats_error(&item.pair.even, s, opts.normalize, w),
                NoiseFault::Negative { index, value } => Error::input(
                    &item.pair.even,
                    format!(
                        "pixel x={}, y={} is {value}; poisson noise needs a non-negative clean image (an expected \
                         count image such as `simulate`'s truth) — use gaussian noise for other images",
                        index % w,
                        index / w
                    ),
                ),
                NoiseFault::ZeroMean => Error::input(
                    &item.pair.even,
                    "the image is all zeros; poisson noise needs a positive mean",
                ),
            })
        }
    }
}

/// Stage 2: writes the dataset of `plan`. `progress(done, total)` is called after each micrograph.
pub fn write(plan: &Plan, progress: &mut dyn FnMut(usize, usize)) -> Result<Manifest> {
    let opts = &plan.options;
    let out = &opts.out;
    check_out(out)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| Error::fs(&parent, "cannot create the parent directory", e))?;
    let leaf = out
        .file_name()
        .ok_or_else(|| Error::Usage(format!("--out {} has no directory name", out.display())))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        leaf.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp)
        .map_err(|e| Error::fs(&tmp, "cannot create a temporary directory", e))?;
    match write_into(plan, &tmp, progress) {
        Ok(m) => {
            if out.exists() {
                // Checked empty above (and again here: someone may have written into it meanwhile).
                std::fs::remove_dir(out)
                    .map_err(|e| Error::fs(out, "cannot replace the empty directory", e))?;
            }
            std::fs::rename(&tmp, out).map_err(|e| {
                let _ = std::fs::remove_dir_all(&tmp);
                Error::fs(out, "cannot rename the finished dataset into place", e)
            })?;
            Ok(m)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_into(plan: &Plan, dir: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<Manifest> {
    let opts = &plan.options;
    let p = opts.patch;
    // Voxel size of the stacks: the first micrograph's (0 = unknown when they disagree).
    let px = plan.items.first().map(|i| i.pixel_size).unwrap_or(0.0);
    let px = if plan.items.iter().all(|i| i.pixel_size == px) {
        px
    } else {
        0.0
    };
    let mut wopts = WriteOptions::with_voxel_size(px);
    wopts.labels = vec![format!(
        "cryoden {} prepare: dataset stack",
        env!("CARGO_PKG_VERSION")
    )];
    let mut writers = [
        StackWriter::create(dir.join(manifest::TRAIN_INPUT), p, p, &wopts)?,
        StackWriter::create(dir.join(manifest::TRAIN_TARGET), p, p, &wopts)?,
        StackWriter::create(dir.join(manifest::VAL_INPUT), p, p, &wopts)?,
        StackWriter::create(dir.join(manifest::VAL_TARGET), p, p, &wopts)?,
    ];
    let mut micrographs = vec![];
    let mut buf_in = vec![];
    let mut buf_tg = vec![];
    let total = plan.items.len();
    for (k, item) in plan.items.iter().enumerate() {
        let (a, b, aff) = load_pair(item, &plan.inputs, opts)?;
        let n = item.patch_count();
        buf_in.resize(n * p * p, 0.0);
        buf_tg.resize(n * p * p, 0.0);
        let mut j = 0;
        for &y in &item.y_starts {
            for &x in &item.x_starts {
                let r = j * p * p..(j + 1) * p * p;
                patches::extract(&a, item.width, x, y, p, &mut buf_in[r.clone()]);
                patches::extract(&b, item.width, x, y, p, &mut buf_tg[r]);
                j += 1;
            }
        }
        let base = if item.split == Split::Train { 0 } else { 2 };
        writers[base].append(&buf_in)?;
        writers[base + 1].append(&buf_tg)?;
        micrographs.push(Micrograph {
            name: item.pair.name.clone(),
            even: item.pair.even.to_string_lossy().into_owned(),
            odd: item.pair.odd.to_string_lossy().into_owned(),
            split: item.split,
            width: item.width,
            height: item.height,
            pixel_size: item.pixel_size,
            normalization: aff,
            first_patch: item.first_patch,
            patch_count: n,
            x_starts: item.x_starts.clone(),
            y_starts: item.y_starts.clone(),
        });
        progress(k + 1, total);
    }
    let [ti, tt, vi, vt] = writers;
    for w in [ti, tt, vi, vt] {
        w.finish()?;
    }
    let entry = |name: &str| -> Result<FileEntry> {
        let path = dir.join(name);
        Ok(FileEntry {
            name: name.to_string(),
            bytes: std::fs::metadata(&path)
                .map_err(|e| Error::fs(&path, "cannot stat", e))?
                .len(),
            sha256: sha256_file(&path)?,
        })
    };
    let source = match &plan.inputs {
        Inputs::Halves { even_dir, odd_dir } => Source::Halves {
            even_dir: even_dir.to_string_lossy().into_owned(),
            odd_dir: odd_dir.to_string_lossy().into_owned(),
        },
        Inputs::Clean { dir, noise } => Source::Clean {
            dir: dir.to_string_lossy().into_owned(),
            noise: *noise,
        },
    };
    let m = Manifest {
        format: manifest::FORMAT.to_string(),
        version: manifest::VERSION,
        tool: format!("cryoden {}", env!("CARGO_PKG_VERSION")),
        patch_size: p,
        stride: opts.stride.unwrap_or(p),
        normalize: opts.normalize,
        source,
        seed: opts.seed,
        val_fraction: opts.val_fraction,
        counts: plan.counts,
        files: Files {
            train_input: entry(manifest::TRAIN_INPUT)?,
            train_target: entry(manifest::TRAIN_TARGET)?,
            val_input: entry(manifest::VAL_INPUT)?,
            val_target: entry(manifest::VAL_TARGET)?,
        },
        micrographs,
    };
    let text = serde_json::to_string_pretty(&m).expect("serialisable") + "\n";
    let mpath = dir.join(manifest::MANIFEST_FILE);
    cryoden_io::write_atomic(&mpath, |f| {
        use std::io::Write;
        f.write_all(text.as_bytes())
            .map_err(|e| cryoden_io::Error::Io {
                path: mpath.clone(),
                what: "cannot write",
                source: e,
            })
    })?;
    if opts.preview > 0 {
        write_preview(dir, &m, opts.preview)?;
    }
    Ok(m)
}

/// File name of the preview grid inside the dataset directory.
pub const PREVIEW_FILE: &str = "preview.png";

/// `preview.png`: `n` pairs, evenly spaced over the training stack (then validation), one pair per row
/// (input left, target right), each patch box-averaged down to at most 256 pixels, 4-pixel black gaps.
fn write_preview(dir: &Path, m: &Manifest, n: usize) -> Result<()> {
    let mut picks: Vec<(Split, usize)> = vec![];
    let total = m.counts.train + m.counts.val;
    let n = n.min(total);
    for k in 0..n {
        let g = k * total / n.max(1);
        picks.push(if g < m.counts.train {
            (Split::Train, g)
        } else {
            (Split::Val, g - m.counts.train)
        });
    }
    if picks.is_empty() {
        return Ok(());
    }
    let p = m.patch_size;
    let f = p.div_ceil(256);
    let c = p / f; // cell size
    let gap = 4;
    let (gw, gh) = (2 * c + 3 * gap, n * c + (n + 1) * gap);
    let mut grid = vec![f32::NAN; gw * gh];
    let stacks = [
        MrcStack::open(dir.join(manifest::TRAIN_INPUT))?,
        MrcStack::open(dir.join(manifest::TRAIN_TARGET))?,
        MrcStack::open(dir.join(manifest::VAL_INPUT))?,
        MrcStack::open(dir.join(manifest::VAL_TARGET))?,
    ];
    for (row, &(split, i)) in picks.iter().enumerate() {
        let base = if split == Split::Train { 0 } else { 2 };
        for col in 0..2 {
            let img = stacks[base + col].read_image(i)?;
            let (x0, y0) = (gap + col * (c + gap), gap + row * (c + gap));
            for y in 0..c {
                for x in 0..c {
                    let mut s = 0.0;
                    for dy in 0..f {
                        for dx in 0..f {
                            s += img[(y * f + dy) * p + x * f + dx];
                        }
                    }
                    grid[(y0 + y) * gw + x0 + x] = s / (f * f) as f32;
                }
            }
        }
    }
    cryoden_io::write_png(
        dir.join(PREVIEW_FILE),
        &grid,
        gw,
        gh,
        cryoden_io::Contrast::default(),
    )?;
    Ok(())
}

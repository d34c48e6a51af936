//! Reading a dataset directory written by [`crate::prepare`]: the manifest is checked against the four stacks
//! (format, version, shapes, counts, file sizes, and that the micrographs' patch ranges tile each split), and the
//! patches are served straight from the memory-mapped files as `&[f32]` (no copy, nothing loaded up front).

use crate::error::{Error, Result};
use crate::manifest::{self, FileEntry, Manifest, Split};
use cryoden_io::header::{ByteOrder, Mode};
use cryoden_io::mrc::MrcStack;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// An opened dataset: its manifest and the patch pairs of both splits.
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    train: Pairs,
    val: Pairs,
}

/// The patch pairs of one split: `pair(i)` is image `i` of the input stack and image `i` of the target stack.
pub struct Pairs {
    input: MrcStack,
    target: MrcStack,
    len: usize,
    patch: usize,
}

impl Dataset {
    /// Opens `dir`, parses `manifest.json` strictly and checks it against the stacks. Checksums are not read here
    /// (that reads every byte); call [`Dataset::verify_checksums`] for that.
    pub fn open(dir: &Path) -> Result<Dataset> {
        let mpath = dir.join(manifest::MANIFEST_FILE);
        let text = std::fs::read_to_string(&mpath).map_err(|e| {
            Error::fs(
                &mpath,
                "cannot read the dataset manifest (is this a directory written by `cryoden prepare`?)",
                e,
            )
        })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::dataset(&mpath, format!("not a valid cryoden dataset manifest: {e}"))
        })?;
        if m.format != manifest::FORMAT {
            return Err(Error::dataset(
                &mpath,
                format!("format is {:?}, expected {:?}", m.format, manifest::FORMAT),
            ));
        }
        if m.version != manifest::VERSION {
            return Err(Error::dataset(
                &mpath,
                format!(
                    "dataset format version {} but this cryoden reads version {}; re-run `cryoden prepare` \
                     with this version",
                    m.version,
                    manifest::VERSION
                ),
            ));
        }
        check_layout(&m).map_err(|msg| Error::dataset(&mpath, msg))?;
        let open = |entry: &FileEntry, n: usize| -> Result<MrcStack> {
            let p = dir.join(&entry.name);
            let len = std::fs::metadata(&p)
                .map_err(|e| {
                    Error::fs(&p, "cannot open a dataset stack named in manifest.json", e)
                })?
                .len();
            if len != entry.bytes {
                return Err(Error::dataset(
                    &p,
                    format!(
                        "{len} bytes but manifest.json says {}; the dataset was modified or copied incompletely",
                        entry.bytes
                    ),
                ));
            }
            let s = MrcStack::open(&p)?;
            let native = if cfg!(target_endian = "little") {
                ByteOrder::Little
            } else {
                ByteOrder::Big
            };
            if s.mode() != Mode::Float32 || s.byte_order() != native || s.is_gzip() {
                return Err(Error::dataset(
                    &p,
                    format!(
                        "mode {} {} {}; dataset stacks must be uncompressed mode 2 (float32) in native byte order \
                         — re-run `cryoden prepare`",
                        s.mode().number(),
                        s.byte_order().as_str(),
                        if s.is_gzip() { "gzip" } else { "" }
                    ),
                ));
            }
            if (s.nx(), s.ny(), s.nz()) != (m.patch_size, m.patch_size, n) {
                return Err(Error::dataset(
                    &p,
                    format!(
                        "{} x {} x {} but manifest.json says {p} x {p} x {n}",
                        s.nx(),
                        s.ny(),
                        s.nz(),
                        p = m.patch_size
                    ),
                ));
            }
            if n > 0 && bytemuck::try_cast_slice::<u8, f32>(s.raw_data()).is_err() {
                return Err(Error::dataset(
                    &p,
                    "the data block is not 4-byte aligned (extended header of odd length); re-run `cryoden prepare`",
                ));
            }
            Ok(s)
        };
        let f = &m.files;
        let train = Pairs {
            input: open(&f.train_input, m.counts.train)?,
            target: open(&f.train_target, m.counts.train)?,
            len: m.counts.train,
            patch: m.patch_size,
        };
        let val = Pairs {
            input: open(&f.val_input, m.counts.val)?,
            target: open(&f.val_target, m.counts.val)?,
            len: m.counts.val,
            patch: m.patch_size,
        };
        Ok(Dataset {
            dir: dir.to_path_buf(),
            manifest: m,
            train,
            val,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn patch_size(&self) -> usize {
        self.manifest.patch_size
    }
    pub fn split(&self, split: Split) -> &Pairs {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }
    pub fn train(&self) -> &Pairs {
        &self.train
    }
    pub fn val(&self) -> &Pairs {
        &self.val
    }

    /// Recomputes the SHA-256 of the four stacks (streamed, 1 MiB at a time) and compares with the manifest.
    pub fn verify_checksums(&self) -> Result<()> {
        for (entry, _, _) in self.manifest.files.all() {
            let p = self.dir.join(&entry.name);
            let got = sha256_file(&p)?;
            if got != entry.sha256 {
                return Err(Error::dataset(
                    &p,
                    format!(
                        "SHA-256 {got} but manifest.json says {}; the file was modified or corrupted — re-run \
                         `cryoden prepare`",
                        entry.sha256
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Pairs {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Side of a patch in pixels; each slice returned below holds `patch_size²` values, row-major.
    pub fn patch_size(&self) -> usize {
        self.patch
    }
    /// Input (noisy view 1) of pair `i`. Panics if `i >= len()`.
    pub fn input(&self, i: usize) -> &[f32] {
        image(&self.input, i, self.patch)
    }
    /// Target (noisy view 2) of pair `i`. Panics if `i >= len()`.
    pub fn target(&self, i: usize) -> &[f32] {
        image(&self.target, i, self.patch)
    }
    /// `(input, target)` of pair `i`. Panics if `i >= len()`.
    pub fn pair(&self, i: usize) -> (&[f32], &[f32]) {
        (self.input(i), self.target(i))
    }
    /// Whole stacks as one slice each (`len() · patch_size²` values, sample-major), for bulk loading.
    pub fn all(&self) -> (&[f32], &[f32]) {
        if self.len == 0 {
            return (&[], &[]);
        }
        (
            bytemuck::cast_slice(self.input.raw_data()),
            bytemuck::cast_slice(self.target.raw_data()),
        )
    }
}

fn image(s: &MrcStack, i: usize, patch: usize) -> &[f32] {
    let n = patch * patch;
    // Alignment, mode and size were checked in Dataset::open.
    let all: &[f32] = bytemuck::cast_slice(s.raw_data());
    &all[i * n..(i + 1) * n]
}

/// Consistency of the manifest with itself: the micrographs' patch ranges tile each split exactly.
fn check_layout(m: &Manifest) -> std::result::Result<(), String> {
    if m.patch_size == 0 {
        return Err("patch_size is 0".into());
    }
    for split in [Split::Train, Split::Val] {
        let want = match split {
            Split::Train => m.counts.train,
            Split::Val => m.counts.val,
        };
        let mut next = 0;
        for g in m.micrographs_of(split) {
            if g.first_patch != next {
                return Err(format!(
                    "micrograph {:?} starts at patch {} of the {} split, expected {next}",
                    g.name,
                    g.first_patch,
                    split.as_str()
                ));
            }
            if g.x_starts.len() * g.y_starts.len() != g.patch_count {
                return Err(format!(
                    "micrograph {:?}: {} x-starts × {} y-starts ≠ patch_count {}",
                    g.name,
                    g.x_starts.len(),
                    g.y_starts.len(),
                    g.patch_count
                ));
            }
            next += g.patch_count;
        }
        if next != want {
            return Err(format!(
                "the {} micrographs hold {next} patches but counts.{} is {want}",
                split.as_str(),
                split.as_str()
            ));
        }
    }
    Ok(())
}

/// Lower-case hex SHA-256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::fs(path, "cannot open", e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::fs(path, "cannot read", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

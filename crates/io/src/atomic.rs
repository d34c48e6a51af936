//! Nothing half-written: outputs go to a temporary file in the destination's directory and are renamed over the
//! destination only on success. A temporary that is dropped without [`AtomicFile::commit`] is removed.
//!
//! The data are not fsync'ed: the rename makes a crash leave either the old file or the complete new one on
//! filesystems that order data before the rename (ext4's `auto_da_alloc`, xfs, btrfs), and syncing every output
//! would halve write throughput for no benefit to a rerunnable pipeline.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written under a temporary name next to its destination.
#[derive(Debug)]
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

/// The temporary name for `dest`: hidden, same directory, unique per process and call.
fn temp_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let k = COUNTER.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".{name}.tmp-{}-{k}", std::process::id()))
}

impl AtomicFile {
    /// Create the temporary file for `dest` (which need not exist; its directory must).
    pub fn create(dest: impl AsRef<Path>) -> Result<AtomicFile> {
        let dest = dest.as_ref().to_path_buf();
        if dest.file_name().is_none() {
            return Err(Error::usage(&dest, "output path has no file name"));
        }
        let tmp = temp_name(&dest);
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| {
                Error::io(
                    &dest,
                    "cannot create the output file (does its directory exist?)",
                    e,
                )
            })?;
        Ok(AtomicFile {
            dest,
            tmp,
            file: Some(file),
        })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is present until commit")
    }

    /// Final destination.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Close the temporary file and rename it over the destination.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("file is present until commit");
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| {
            Error::io(
                &self.dest,
                "cannot rename the finished output into place",
                e,
            )
        })?;
        // The destination now owns the data; nothing to remove on drop.
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file.take();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write a whole file atomically: `f` writes to a buffered writer; on `Ok` the file is renamed into place, on
/// `Err` (or panic) the temporary is removed and the destination is untouched.
pub fn write_atomic<F>(dest: impl AsRef<Path>, f: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<&mut File>) -> Result<()>,
{
    let dest = dest.as_ref();
    let mut af = AtomicFile::create(dest)?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, af.file());
        f(&mut w)?;
        w.flush()
            .map_err(|e| Error::io(dest, "cannot write the output file", e))?;
    }
    af.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commit_renames_and_failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.bin");
        write_atomic(&dest, |w| {
            w.write_all(b"hello").map_err(|e| Error::io(&dest, "w", e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        // A failing writer leaves the old file intact and no temporary behind.
        let r = write_atomic(&dest, |w| {
            w.write_all(b"partial").unwrap();
            Err(Error::usage(&dest, "boom"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert_eq!(listing(dir.path()), vec!["a.bin".to_string()]);
        // Dropped without commit: removed.
        drop(AtomicFile::create(dir.path().join("b.bin")).unwrap());
        assert_eq!(listing(dir.path()), vec!["a.bin".to_string()]);
    }

    #[test]
    fn missing_directory_names_the_file() {
        let err = AtomicFile::create("/nonexistent-dir-cryoden/x.mrc").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir-cryoden/x.mrc"),
            "{err}"
        );
    }
}

//! The dataset as training sees it: opened and checked once, then served by one of the two loaders.

use crate::config::LoaderChoice;
use crate::error::{Error, Result};
use crate::loader::{InMemoryPairs, LoaderKind, PairSource};
use cryoden_prep::{Dataset, Split};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// `Auto` picks in-memory when the four stacks take at most this fraction of the memory the kernel reports as
/// available (MemAvailable): the rest stays for activations, the page cache and other processes.
pub const IN_MEMORY_FRACTION: f64 = 0.4;

/// One split of an opened (memory-mapped) dataset, as a [`PairSource`].
pub struct MappedPairs {
    ds: Arc<Dataset>,
    split: Split,
}

impl MappedPairs {
    pub fn new(ds: Arc<Dataset>, split: Split) -> Self {
        MappedPairs { ds, split }
    }
}

impl PairSource for MappedPairs {
    fn len(&self) -> usize {
        self.ds.split(self.split).len()
    }
    fn patch(&self) -> usize {
        self.ds.patch_size()
    }
    fn input(&self, i: usize) -> &[f32] {
        self.ds.split(self.split).input(i)
    }
    fn target(&self, i: usize) -> &[f32] {
        self.ds.split(self.split).target(i)
    }
}

/// An opened dataset with its training and validation pairs behind the chosen loader.
pub struct TrainData {
    pub dataset: Arc<Dataset>,
    pub kind: LoaderKind,
    /// Why `kind` was chosen (printed on stderr).
    pub reason: String,
    pub train: Arc<dyn PairSource>,
    pub val: Arc<dyn PairSource>,
    /// SHA-256 of manifest.json.
    pub manifest_sha256: String,
}

/// A dataset that was opened and checked, before any pair is read.
pub struct CheckedData {
    pub dataset: Arc<Dataset>,
    /// SHA-256 of manifest.json.
    pub manifest_sha256: String,
}

/// Opens `dir` (manifest against stacks, see `cryoden_prep::Dataset::open`) and refuses a dataset without
/// validation or training pairs. Cheap: the stacks are only mapped.
pub fn check(dir: &Path) -> Result<CheckedData> {
    let ds = Arc::new(Dataset::open(dir)?);
    let manifest_path = dir.join(cryoden_prep::manifest::MANIFEST_FILE);
    let bytes =
        std::fs::read(&manifest_path).map_err(|e| Error::fs(&manifest_path, "cannot read", e))?;
    let manifest_sha256 = hex(&Sha256::digest(&bytes));
    let counts = ds.manifest().counts;
    if counts.val == 0 {
        return Err(Error::data(
            dir,
            "the dataset has no validation pairs (counts.val = 0), so best-by-validation checkpoints and \
             the validation loss are impossible; re-run `cryoden prepare` with a validation fraction that \
             leaves at least one micrograph for validation",
        ));
    }
    if counts.train == 0 {
        return Err(Error::data(
            dir,
            "the dataset has no training pairs (counts.train = 0); re-run `cryoden prepare`",
        ));
    }
    Ok(CheckedData {
        dataset: ds,
        manifest_sha256,
    })
}

impl CheckedData {
    /// Sets up the loader: copies every pair into RAM (in-memory) or serves them from the memory map
    /// (streaming); `Auto` decides by size against available memory.
    pub fn load(self, choice: LoaderChoice) -> TrainData {
        let CheckedData {
            dataset: ds,
            manifest_sha256,
        } = self;
        let counts = ds.manifest().counts;
        let patch = ds.patch_size();
        let data_bytes = ((counts.train + counts.val) * 2 * patch * patch * 4) as u64;
        let (kind, reason) = choose(choice, data_bytes, mem_available());
        let (train, val): (Arc<dyn PairSource>, Arc<dyn PairSource>) = match kind {
            LoaderKind::InMemory => {
                let load = |split| {
                    let (i, t) = ds.split(split).all();
                    Arc::new(InMemoryPairs::new(patch, i.to_vec(), t.to_vec()))
                        as Arc<dyn PairSource>
                };
                (load(Split::Train), load(Split::Val))
            }
            LoaderKind::Streaming => (
                Arc::new(MappedPairs::new(ds.clone(), Split::Train)),
                Arc::new(MappedPairs::new(ds.clone(), Split::Val)),
            ),
        };
        TrainData {
            dataset: ds,
            kind,
            reason,
            train,
            val,
            manifest_sha256,
        }
    }
}

/// [`check`] then [`CheckedData::load`].
pub fn open(dir: &Path, choice: LoaderChoice) -> Result<TrainData> {
    Ok(check(dir)?.load(choice))
}

/// `1.23 GiB` or `456.7 MiB`.
fn size(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

fn choose(choice: LoaderChoice, data_bytes: u64, available: Option<u64>) -> (LoaderKind, String) {
    match (choice, available) {
        (LoaderChoice::InMemory, _) => (LoaderKind::InMemory, "--in-memory given".into()),
        (LoaderChoice::Streaming, _) => (LoaderKind::Streaming, "--stream given".into()),
        (LoaderChoice::Auto, None) => (
            LoaderKind::Streaming,
            "available memory unknown (no /proc/meminfo), streaming keeps memory bounded; --in-memory overrides"
                .into(),
        ),
        (LoaderChoice::Auto, Some(avail)) => {
            let limit = (avail as f64 * IN_MEMORY_FRACTION) as u64;
            if data_bytes <= limit {
                (
                    LoaderKind::InMemory,
                    format!(
                        "dataset {} fits in {:.0} % of the {} available; --stream overrides",
                        size(data_bytes),
                        IN_MEMORY_FRACTION * 100.0,
                        size(avail)
                    ),
                )
            } else {
                (
                    LoaderKind::Streaming,
                    format!(
                        "dataset {} exceeds {:.0} % of the {} available; --in-memory overrides",
                        size(data_bytes),
                        IN_MEMORY_FRACTION * 100.0,
                        size(avail)
                    ),
                )
            }
        }
    }
}

/// MemAvailable from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_choice_follows_available_memory() {
        let gib = 1u64 << 30;
        assert_eq!(
            choose(LoaderChoice::Auto, gib, Some(10 * gib)).0,
            LoaderKind::InMemory
        );
        let (k, why) = choose(LoaderChoice::Auto, 5 * gib, Some(10 * gib));
        assert_eq!(k, LoaderKind::Streaming);
        assert!(
            why.contains("exceeds 40 % of the 10.00 GiB available"),
            "{why}"
        );
        assert_eq!(choose(LoaderChoice::Auto, 1, None).0, LoaderKind::Streaming);
        assert_eq!(
            choose(LoaderChoice::InMemory, 100 * gib, Some(gib)).0,
            LoaderKind::InMemory
        );
        assert_eq!(
            choose(LoaderChoice::Streaming, 1, Some(gib)).0,
            LoaderKind::Streaming
        );
        assert!(mem_available().is_some(), "this test runs on Linux");
    }
}

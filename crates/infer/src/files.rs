//! Which files to denoise and where each result goes: inputs given as files, directories or glob patterns,
//! `--shard i/n` for job arrays, output names that never collide.

use crate::Error;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Extensions taken from a directory, without the leading dot (a file named explicitly, or matched by a pattern,
/// is taken whatever its name).
pub const MICROGRAPH_EXTENSIONS: &[&str] = &["mrc", "mrcs", "map", "mrc.gz", "mrcs.gz", "map.gz"];

/// The file name without its micrograph extension (`a/b.mrc.gz` → `b`).
pub fn stem(p: &Path) -> String {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_lowercase();
    // Compound extensions (`.mrc.gz`) are tried before their last part.
    for e in MICROGRAPH_EXTENSIONS
        .iter()
        .rev()
        .chain(["tiff", "tif"].iter())
    {
        if lower.ends_with(&format!(".{e}")) && name.len() > e.len() + 1 {
            return name[..name.len() - e.len() - 1].to_string();
        }
    }
    name
}

/// Expands `inputs` with [`cryoden_io::paths::expand`]: a file as is, a directory to its micrograph files
/// ([`MICROGRAPH_EXTENSIONS`], not recursive), a quoted glob pattern to its matching files. Sorted, each file once.
/// An input that matches nothing is an error naming it.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>, Error> {
    Ok(cryoden_io::paths::expand(inputs, MICROGRAPH_EXTENSIONS)?)
}

/// `--shard i/n`: this job takes every file whose position `k` in the sorted, expanded list has `k mod n = i`
/// (`i` from 0, as SLURM's `--array=0-(n-1)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("--shard {s:?}: expected i/n with 0 ≤ i < n, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    pub fn select<T: Clone>(&self, items: &[T]) -> Vec<T> {
        items
            .iter()
            .enumerate()
            .filter(|(k, _)| k % self.count == self.index)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Output file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// MRC mode 2 (float32).
    Mrc,
    /// MRC mode 12 (float16): half the size, ~3 significant digits.
    Mrc16,
    /// 8-bit PNG preview (0.5–99.5 % contrast); not for further processing.
    Png,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "mrc" => Ok(Format::Mrc),
            "mrc16" => Ok(Format::Mrc16),
            "png" => Ok(Format::Png),
            _ => Err(format!("unknown format {s:?}: use mrc, mrc16 or png")),
        }
    }
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Mrc | Format::Mrc16 => "mrc",
            Format::Png => "png",
        }
    }
}

/// One input and its output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub input: PathBuf,
    pub output: PathBuf,
}

/// `out_dir/<stem><suffix>.<ext>` for each input; two inputs that would write the same file are an error.
pub fn plan_outputs(
    inputs: &[PathBuf],
    out_dir: &Path,
    suffix: &str,
    format: Format,
) -> Result<Vec<Job>, Error> {
    let mut by_output: HashMap<PathBuf, &Path> = HashMap::new();
    let mut jobs = Vec::with_capacity(inputs.len());
    for inp in inputs {
        let output = out_dir.join(format!("{}{}.{}", stem(inp), suffix, format.extension()));
        if let Some(prev) = by_output.insert(output.clone(), inp) {
            return Err(Error::Input {
                path: inp.clone(),
                problem: format!(
                    "would write {} as {} does: give the inputs distinct names or denoise them in separate runs",
                    output.display(),
                    prev.display()
                ),
            });
        }
        if std::fs::canonicalize(inp)
            .ok()
            .is_some_and(|c| Some(c) == std::fs::canonicalize(&output).ok())
        {
            return Err(Error::Input {
                path: inp.clone(),
                problem: "the output would overwrite the input: choose another -o directory or a --suffix".into(),
            });
        }
        jobs.push(Job {
            input: inp.clone(),
            output,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_drop_micrograph_extensions() {
        assert_eq!(stem(Path::new("/a/b/mic_001.mrc")), "mic_001");
        assert_eq!(stem(Path::new("x.mrc.gz")), "x");
        assert_eq!(stem(Path::new("y.MRCS")), "y");
        assert_eq!(stem(Path::new("noext")), "noext");
    }

    #[test]
    fn shards_partition_the_list() {
        let items: Vec<usize> = (0..10).collect();
        let a: Shard = "0/3".parse().unwrap();
        let b: Shard = "1/3".parse().unwrap();
        let c: Shard = "2/3".parse().unwrap();
        let mut all = [a.select(&items), b.select(&items), c.select(&items)].concat();
        all.sort();
        assert_eq!(all, items);
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1-3".parse::<Shard>().is_err());
    }

    #[test]
    fn directories_globs_and_collisions() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b.mrc", "a.mrc", "notes.txt"] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        let dir = d.path().to_string_lossy().into_owned();
        let got = expand_inputs(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(got, vec![d.path().join("a.mrc"), d.path().join("b.mrc")]);
        let pat = format!("{dir}/*.txt");
        assert_eq!(
            expand_inputs(&[pat]).unwrap(),
            vec![d.path().join("notes.txt")]
        );
        let missing = format!("{dir}/nothing_*.mrc");
        assert!(expand_inputs(&[missing])
            .unwrap_err()
            .to_string()
            .contains("nothing_"));
        let twice = vec![d.path().join("a.mrc"), d.path().join("sub").join("a.mrc")];
        assert!(plan_outputs(&twice, Path::new("/out"), "", Format::Mrc).is_err());
        let jobs = plan_outputs(&got, Path::new("/out"), "_dn", Format::Png).unwrap();
        assert_eq!(jobs[0].output, Path::new("/out/a_dn.png"));
        // Writing into the input directory without a suffix would overwrite the inputs.
        assert!(plan_outputs(&got, d.path(), "", Format::Mrc).is_err());
    }
}

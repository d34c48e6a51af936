//! Input lists as users type them: files, directories and glob patterns, expanded the same way by every
//! command (`split`, `denoise`, `evaluate`).
//!
//! - A path that exists as a file is taken as given, whatever its extension.
//! - A directory gives the files directly inside it whose names end in one of the accepted extensions
//!   (case-insensitive; not recursive: sub-directories are left out).
//! - Anything else holding `*`, `?` or `[` is a glob pattern (quoted, for lists too long for the shell or shells
//!   that do not expand); its matches that are files are taken, whatever their extension (the pattern names them).
//! - The result is sorted and each file appears once (two spellings of one file, `a.mrc` and `./a.mrc`, count as
//!   one), so `--shard i/n` and job arrays see the same list whatever the argument order.
//!
//! Errors name the argument: a path that does not exist, a directory without accepted files, a pattern that
//! matches nothing or is malformed.

use crate::error::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// True when `name` ends in `.ext` for one of `exts` (given without the leading dot, e.g. `"mrc"`, `"mrc.gz"`),
/// ignoring case.
pub fn has_extension(path: &Path, exts: &[&str]) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    exts.iter().any(|e| {
        let e = e.trim_start_matches('.').to_lowercase();
        name.len() > e.len() + 1
            && name.ends_with(&e)
            && name.as_bytes()[name.len() - e.len() - 1] == b'.'
    })
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn list_dir(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "cannot list the directory", e))?;
    let mut v = Vec::new();
    for ent in rd {
        let p = ent
            .map_err(|e| Error::io(dir, "cannot list the directory", e))?
            .path();
        if p.is_file() && has_extension(&p, exts) {
            v.push(p);
        }
    }
    if v.is_empty() {
        let list: Vec<String> = exts
            .iter()
            .map(|e| format!(".{}", e.trim_start_matches('.')))
            .collect();
        return Err(Error::usage(
            dir,
            format!(
                "the directory holds no file ending in {} (sub-directories are not searched); give the files, \
                 their directory or a quoted pattern such as 'dir/*.mrc'",
                list.join(", ")
            ),
        ));
    }
    Ok(v)
}

fn glob_files(pattern: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(pattern);
    let paths = glob::glob(pattern).map_err(|e| {
        Error::usage(
            path,
            format!("not a valid glob pattern ({e}); quote it or escape the special character"),
        )
    })?;
    let mut v = Vec::new();
    for p in paths {
        let p = p.map_err(|e| {
            Error::io(
                e.path(),
                "cannot read while expanding a pattern",
                std::io::Error::new(e.error().kind(), e.error().to_string()),
            )
        })?;
        if p.is_file() {
            v.push(p);
        }
    }
    if v.is_empty() {
        return Err(Error::usage(
            path,
            "no file matches this pattern; check the directory and the spelling",
        ));
    }
    Ok(v)
}

fn identity(p: &Path) -> PathBuf {
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(parent), p.file_name()) {
        (Ok(d), Some(n)) => d.join(n),
        _ => p.to_path_buf(),
    }
}

/// Expands `inputs` (files, directories, glob patterns; see the module documentation) into a sorted list of
/// distinct files. `exts` are the extensions taken from directories, without the leading dot (`"mrc"`,
/// `"mrc.gz"`). An empty `inputs` gives an empty list.
pub fn expand<S: AsRef<Path>>(inputs: &[S], exts: &[&str]) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    for inp in inputs {
        let p = inp.as_ref();
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => all.extend(list_dir(p, exts)?),
            Ok(_) => all.push(p.to_path_buf()),
            Err(e) => {
                let s = p.to_string_lossy();
                if e.kind() == std::io::ErrorKind::NotFound && is_pattern(&s) {
                    all.extend(glob_files(&s)?);
                } else if e.kind() == std::io::ErrorKind::NotFound {
                    return Err(Error::io(
                        p,
                        "no such file or directory (and not a glob pattern: no *, ? or [)",
                        e,
                    ));
                } else {
                    return Err(Error::io(p, "cannot open", e));
                }
            }
        }
    }
    all.sort();
    // Drop a file already taken under another spelling (`a.mrc`, `./a.mrc`, `sub/../a.mrc`, absolute); keep the
    // first in sorted order, as it was written. Only the directory is resolved: a symbolic link to a file is a file
    // of its own (its output gets its name).
    let mut seen = HashSet::new();
    all.retain(|p| seen.insert(identity(p)));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXTS: &[&str] = &["mrc", "mrcs", "mrc.gz"];

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for n in ["b.mrc", "a.MRC", "c.mrc.gz", "notes.txt", "x.mrcs.bak"] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub").join("deep.mrc"), b"x").unwrap();
        d
    }

    #[test]
    fn extensions_are_matched_whole_and_without_case() {
        assert!(has_extension(Path::new("a/b.MRC"), EXTS));
        assert!(has_extension(Path::new("b.mrc.gz"), EXTS));
        assert!(!has_extension(Path::new("b.xmrc"), EXTS));
        assert!(!has_extension(Path::new(".mrc"), EXTS));
        assert!(!has_extension(Path::new("b.mrcs.bak"), EXTS));
    }

    #[test]
    fn a_file_is_taken_as_given_whatever_its_extension() {
        let d = tree();
        let f = d.path().join("notes.txt");
        assert_eq!(expand(std::slice::from_ref(&f), EXTS).unwrap(), vec![f]);
    }

    #[test]
    fn a_directory_gives_its_files_with_accepted_extensions_not_recursive() {
        let d = tree();
        let got = expand(&[d.path()], EXTS).unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.MRC", "b.mrc", "c.mrc.gz"]);
    }

    #[test]
    fn an_empty_directory_is_an_error_naming_it_and_the_extensions() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("notes.txt"), b"x").unwrap();
        let msg = expand(&[d.path()], EXTS).unwrap_err().to_string();
        assert!(msg.contains(&*d.path().to_string_lossy()), "{msg}");
        assert!(msg.contains(".mrc, .mrcs, .mrc.gz"), "{msg}");
    }

    #[test]
    fn a_glob_gives_its_matching_files_sorted() {
        let d = tree();
        let pat = d.path().join("*.mrc*");
        let got = expand(&[pat], EXTS).unwrap();
        // Matches are taken whatever their extension: the pattern names them.
        let want = ["b.mrc", "c.mrc.gz", "x.mrcs.bak"].map(|n| d.path().join(n));
        assert_eq!(got, want);
        // A pattern matching a directory takes only files.
        let got = expand(&[d.path().join("s*")], EXTS);
        assert!(got.is_err(), "{got:?}");
    }

    #[test]
    fn a_pattern_matching_nothing_is_an_error_naming_it() {
        let d = tree();
        let pat = d.path().join("nothing_*.mrc");
        let msg = expand(&[&pat], EXTS).unwrap_err().to_string();
        assert!(msg.contains("nothing_*.mrc"), "{msg}");
        assert!(msg.contains("no file matches"), "{msg}");
    }

    #[test]
    fn a_missing_plain_path_is_an_error_naming_it() {
        let d = tree();
        let p = d.path().join("missing.mrc");
        let msg = expand(&[&p], EXTS).unwrap_err().to_string();
        assert!(msg.contains("missing.mrc"), "{msg}");
        assert!(msg.contains("no such file"), "{msg}");
    }

    #[test]
    fn a_malformed_pattern_is_an_error_naming_it() {
        let d = tree();
        let p = d.path().join("[a.mrc");
        let msg = expand(&[&p], EXTS).unwrap_err().to_string();
        assert!(msg.contains("[a.mrc"), "{msg}");
        assert!(msg.contains("not a valid glob pattern"), "{msg}");
    }

    #[test]
    fn duplicates_are_kept_once_and_the_list_is_sorted_across_arguments() {
        let d = tree();
        let b = d.path().join("b.mrc");
        let b2 = d.path().join("sub").join("..").join("b.mrc");
        let inputs = vec![
            b.clone(),
            d.path().join("*.mrc"),
            d.path().to_path_buf(),
            b2,
            d.path().join("notes.txt"),
        ];
        let got = expand(&inputs, EXTS).unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.MRC", "b.mrc", "c.mrc.gz", "notes.txt"]);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn no_inputs_give_an_empty_list() {
        let none: [&str; 0] = [];
        assert!(expand(&none, EXTS).unwrap().is_empty());
    }
}

//! Pairing even and odd half sums by name.
//!
//! A half's key is its file stem (name without extension) with one MotionCor2 suffix removed: `_EVN` in the even
//! directory, `_ODD` in the odd one. So `even/a.mrc ↔ odd/a.mrc` and `x/a_EVN.mrc ↔ x/a_ODD.mrc` both pair as `a`.
//! When `--even` and `--odd` name the same directory, only `_EVN` / `_ODD` files are taken (MotionCor2 writes the
//! full sum and the dose-weighted sum beside them). Every key must have exactly one partner; any leftover is an
//! error listing the unpaired names.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["mrc", "mrcs", "map", "tif", "tiff"];

/// One micrograph's two halves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub name: String,
    pub even: PathBuf,
    pub odd: PathBuf,
}

pub fn is_image(p: &Path) -> bool {
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    IMAGE_EXTENSIONS
        .iter()
        .any(|e| name.len() > e.len() + 1 && name.ends_with(&format!(".{e}")))
}

/// File stem without image extensions (`a.mrc.gz` → `a`).
pub fn stem(p: &Path) -> String {
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    let name = name.strip_suffix(".gz").unwrap_or(&name).to_string();
    match name.rfind('.') {
        Some(i) if i > 0 => name[..i].to_string(),
        _ => name,
    }
}

/// Image files directly inside `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::fs(dir, "cannot list the directory", e))?;
    let mut v = vec![];
    for ent in rd {
        let ent = ent.map_err(|e| Error::fs(dir, "cannot list the directory", e))?;
        let p = ent.path();
        if p.is_file() && is_image(&p) {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

fn keyed(
    dir: &Path,
    suffix: &str,
    other: &str,
    only_suffixed: bool,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut map = BTreeMap::new();
    for p in list_images(dir)? {
        let s = stem(&p);
        let key = match s.strip_suffix(suffix) {
            Some(k) => k.to_string(),
            None if only_suffixed => continue,
            None if s.ends_with(other) => {
                return Err(Error::input(
                    &p,
                    format!(
                        "a {other} half in the {} directory; check that --even and --odd are not swapped",
                        if suffix == "_EVN" { "even" } else { "odd" }
                    ),
                ))
            }
            None => s,
        };
        if let Some(prev) = map.insert(key.clone(), p.clone()) {
            return Err(Error::input(
                &p,
                format!(
                    "pairs under the same name {key:?} as {}; keep one of them (names are matched without \
                     extension and without the _EVN/_ODD suffix)",
                    prev.display()
                ),
            ));
        }
    }
    Ok(map)
}

/// Pairs the images of `even_dir` and `odd_dir` by name; sorted by name.
pub fn pair_dirs(even_dir: &Path, odd_dir: &Path) -> Result<Vec<Pair>> {
    let same = match (even_dir.canonicalize(), odd_dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => even_dir == odd_dir,
    };
    let mut even = keyed(even_dir, "_EVN", "_ODD", same)?;
    let mut odd = keyed(odd_dir, "_ODD", "_EVN", same)?;
    let lonely_even: Vec<String> = even
        .keys()
        .filter(|k| !odd.contains_key(*k))
        .cloned()
        .collect();
    let lonely_odd: Vec<String> = odd
        .keys()
        .filter(|k| !even.contains_key(*k))
        .cloned()
        .collect();
    if !lonely_even.is_empty() || !lonely_odd.is_empty() {
        let show = |v: &[String]| {
            let mut s = v.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 10 {
                s += &format!(", … ({} in all)", v.len());
            }
            s
        };
        let mut msg = String::from("even and odd halves do not pair up by name:");
        if !lonely_even.is_empty() {
            msg += &format!(
                " no odd partner in {} for: {};",
                odd_dir.display(),
                show(&lonely_even)
            );
        }
        if !lonely_odd.is_empty() {
            msg += &format!(
                " no even partner in {} for: {};",
                even_dir.display(),
                show(&lonely_odd)
            );
        }
        msg += " every NAME needs even/NAME and odd/NAME (or NAME_EVN and NAME_ODD); remove or re-split the strays";
        return Err(Error::Usage(msg));
    }
    if even.is_empty() {
        return Err(Error::Usage(format!(
            "no images (.mrc, .mrcs, .map, .tif, .tiff) in {} and {}; point --even and --odd at the halves that \
             `cryoden split` wrote",
            even_dir.display(),
            odd_dir.display()
        )));
    }
    let mut v = vec![];
    for (name, e) in std::mem::take(&mut even) {
        let o = odd.remove(&name).expect("checked above");
        v.push(Pair {
            name,
            even: e,
            odd: o,
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn pairs_plain_and_motioncor_names() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        touch(&d.join("even/b.mrc"));
        touch(&d.join("even/a.mrc"));
        touch(&d.join("odd/a.mrc"));
        touch(&d.join("odd/b_ODD.mrc"));
        touch(&d.join("odd/notes.txt"));
        let p = pair_dirs(&d.join("even"), &d.join("odd")).unwrap();
        assert_eq!(
            p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(p[1].odd, d.join("odd/b_ODD.mrc"));
        // Same directory, MotionCor2 layout: the full and dose-weighted sums are ignored.
        touch(&d.join("mc/m1_EVN.mrc"));
        touch(&d.join("mc/m1_ODD.mrc"));
        touch(&d.join("mc/m1.mrc"));
        touch(&d.join("mc/m1_DW.mrc"));
        let p = pair_dirs(&d.join("mc"), &d.join("mc")).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "m1");
    }

    #[test]
    fn missing_partner_is_named() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        touch(&d.join("even/a.mrc"));
        touch(&d.join("even/c.mrc"));
        touch(&d.join("odd/a.mrc"));
        touch(&d.join("odd/b.mrc"));
        let msg = pair_dirs(&d.join("even"), &d.join("odd"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("no odd partner") && msg.contains(": c;"),
            "{msg}"
        );
        assert!(
            msg.contains("no even partner") && msg.contains(": b;"),
            "{msg}"
        );
    }

    #[test]
    fn swapped_or_duplicate_names_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        touch(&d.join("even/a_ODD.mrc"));
        touch(&d.join("odd/a_ODD.mrc"));
        let msg = pair_dirs(&d.join("even"), &d.join("odd"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("swapped"), "{msg}");
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        touch(&d.join("even/a.mrc"));
        touch(&d.join("even/a_EVN.mrc"));
        touch(&d.join("odd/a.mrc"));
        let msg = pair_dirs(&d.join("even"), &d.join("odd"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("same name \"a\""), "{msg}");
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("e")).unwrap();
        let msg = pair_dirs(&t.path().join("e"), &t.path().join("e"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no images"), "{msg}");
    }
}

//! Atomic models: PDB and mmCIF (plain or gzip) → a list of atoms with elements the scattering table knows.
//!
//! What is read: ATOM and HETATM records of the first model (all alternate locations, weighted by occupancy).
//! Waters (HOH, WAT, DOD, H2O) are dropped: the solvent is the ice of the simulation.

use crate::error::{Result, SimError};
use crate::scattering;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// The default structure: human apoferritin, wwPDB 6Z6U (24-mer, 1.25 Å cryo-EM model; CC0), gzip-compressed.
const APOFERRITIN_6Z6U_GZ: &[u8] = include_bytes!("../data/6z6u.pdb.gz");

/// One atom: position in Å (model frame), index into [`scattering::TABLE`], occupancy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Atom {
    pub pos: [f64; 3],
    pub element: usize,
    pub occupancy: f64,
}

/// An atomic model ready for projection.
#[derive(Debug, Clone)]
pub struct Structure {
    /// File name or "6z6u (built in)".
    pub name: String,
    pub atoms: Vec<Atom>,
    /// True when the model lists hydrogens itself (then no implicit hydrogens are added).
    pub has_hydrogens: bool,
    /// SHA-256 of the (decompressed) file, recorded in simulation.json.
    pub sha256: String,
}

fn is_water(res: &str) -> bool {
    matches!(res.trim(), "HOH" | "WAT" | "DOD" | "H2O")
}

impl Structure {
    /// The built-in apoferritin model (6Z6U).
    pub fn apoferritin() -> Structure {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(APOFERRITIN_6Z6U_GZ)
            .read_to_end(&mut text)
            .expect("the embedded 6z6u.pdb.gz is valid gzip");
        Structure::from_bytes("6z6u (built in)", &text, Format::Pdb)
            .expect("the embedded 6z6u.pdb parses")
    }

    /// Read a PDB or mmCIF file (gzip allowed). mmCIF is recognised by a `.cif`/`.mmcif` extension (before any
    /// `.gz`) or a leading `data_` block; anything else is read as PDB.
    pub fn from_file(path: &Path) -> Result<Structure> {
        let raw = std::fs::read(path).map_err(|e| SimError::Structure {
            path: path.to_path_buf(),
            msg: format!("cannot read the file ({e}); check the path given to --structure"),
        })?;
        let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(|e| SimError::Structure {
                    path: path.to_path_buf(),
                    msg: format!("gzip data are corrupt ({e}); re-download or decompress the file"),
                })?;
            out
        } else {
            raw
        };
        let lower = path.to_string_lossy().to_ascii_lowercase();
        let stem = lower.strip_suffix(".gz").unwrap_or(&lower);
        let looks_cif = stem.ends_with(".cif")
            || stem.ends_with(".mmcif")
            || bytes
                .iter()
                .skip_while(|b| b.is_ascii_whitespace())
                .take(5)
                .eq(b"data_".iter());
        let format = if looks_cif {
            Format::Mmcif
        } else {
            Format::Pdb
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Structure::from_bytes(&name, &bytes, format).map_err(|e| match e {
            SimError::Structure { msg, .. } => SimError::Structure {
                path: path.to_path_buf(),
                msg,
            },
            other => other,
        })
    }

    /// Parse text already in memory; errors carry `name` as the path.
    pub fn from_bytes(name: &str, bytes: &[u8], format: Format) -> Result<Structure> {
        let err = |msg: String| SimError::Structure {
            path: name.into(),
            msg,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| {
            err(
                "not a text file (PDB or mmCIF expected); check the path given to --structure"
                    .into(),
            )
        })?;
        let atoms = match format {
            Format::Pdb => parse_pdb(text).map_err(err)?,
            Format::Mmcif => parse_mmcif(text).map_err(err)?,
        };
        if atoms.is_empty() {
            return Err(err(format!(
                "no atoms found (expected ATOM/HETATM records{}); is this a {} file?",
                if format == Format::Mmcif {
                    " in an _atom_site loop"
                } else {
                    ""
                },
                if format == Format::Mmcif {
                    "mmCIF"
                } else {
                    "PDB"
                }
            )));
        }
        let h = scattering::lookup("H").map(|p| p.symbol);
        let has_hydrogens = atoms
            .iter()
            .any(|a| Some(scattering::TABLE[a.element].symbol) == h);
        Ok(Structure {
            name: name.to_string(),
            atoms,
            has_hydrogens,
            sha256: format!("{:x}", Sha256::digest(bytes)),
        })
    }

    /// Occupancy-weighted centroid (Å).
    pub fn centroid(&self) -> [f64; 3] {
        let mut c = [0.0; 3];
        let mut w = 0.0;
        for a in &self.atoms {
            for (ck, pk) in c.iter_mut().zip(a.pos) {
                *ck += a.occupancy * pk;
            }
            w += a.occupancy;
        }
        c.map(|v| v / w.max(f64::MIN_POSITIVE))
    }

    /// Largest distance of an atom from the centroid (Å).
    pub fn radius(&self) -> f64 {
        let c = self.centroid();
        self.atoms
            .iter()
            .map(|a| {
                ((a.pos[0] - c[0]).powi(2) + (a.pos[1] - c[1]).powi(2) + (a.pos[2] - c[2]).powi(2))
                    .sqrt()
            })
            .fold(0.0, f64::max)
    }
}

/// Structure file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pdb,
    Mmcif,
}

fn element_index(sym: &str, line_no: usize) -> std::result::Result<usize, String> {
    let s = sym.trim();
    scattering::TABLE
        .iter()
        .position(|p| p.symbol.eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            format!(
                "line {line_no}: element '{s}' has no electron scattering factors in cryoden's table; remove those \
                 atoms or use a model without them"
            )
        })
}

/// Element from the PDB atom name (columns 13–16) when columns 77–78 are blank: a name starting in column 13 is a
/// two-letter element (" CA " is carbon, "CA  " calcium), as the PDB format specifies.
fn element_from_name(name: &str) -> String {
    let b = name.as_bytes();
    if b.len() >= 2 && b[0] == b' ' {
        (b[1] as char).to_string()
    } else {
        name.chars()
            .filter(|c| c.is_ascii_alphabetic())
            .take(2)
            .collect()
    }
}

fn parse_pdb(text: &str) -> std::result::Result<Vec<Atom>, String> {
    let mut atoms = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.starts_with("ENDMDL") {
            break; // first model only
        }
        if !(line.starts_with("ATOM  ") || line.starts_with("HETATM")) {
            continue;
        }
        let col = |a: usize, b: usize| line.get(a..b.min(line.len())).unwrap_or("");
        if line.len() < 54 {
            return Err(format!(
                "line {n}: ATOM/HETATM record is {} characters long, coordinates need columns 31–54",
                line.len()
            ));
        }
        if is_water(col(17, 20)) {
            continue;
        }
        let num = |a: usize, b: usize, what: &str| {
            col(a, b).trim().parse::<f64>().map_err(|_| {
                format!(
                    "line {n}: {what} '{}' (columns {}–{}) is not a number",
                    col(a, b).trim(),
                    a + 1,
                    b
                )
            })
        };
        let pos = [num(30, 38, "x")?, num(38, 46, "y")?, num(46, 54, "z")?];
        let occupancy = if col(54, 60).trim().is_empty() {
            1.0
        } else {
            num(54, 60, "occupancy")?
        };
        let elem_field = col(76, 78).trim();
        let elem = if elem_field.is_empty() {
            element_from_name(col(12, 16))
        } else {
            elem_field.to_string()
        };
        if !(pos.iter().all(|v| v.is_finite()) && (0.0..=1.0).contains(&occupancy)) {
            return Err(format!(
                "line {n}: coordinates must be finite and occupancy within 0–1"
            ));
        }
        atoms.push(Atom {
            pos,
            element: element_index(&elem, n)?,
            occupancy,
        });
    }
    Ok(atoms)
}

/// Split one mmCIF data line into tokens, honouring '…' and "…" quoting.
fn cif_tokens(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let q = b[i];
        if q == b'\'' || q == b'"' {
            let start = i + 1;
            let mut j = start;
            // A quote closes only when followed by whitespace or the end of the line.
            while j < b.len()
                && !(b[j] == q && (j + 1 == b.len() || b[j + 1].is_ascii_whitespace()))
            {
                j += 1;
            }
            out.push(&line[start..j.min(b.len())]);
            i = j + 1;
        } else {
            let start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            out.push(&line[start..i]);
        }
    }
    out
}

fn parse_mmcif(text: &str) -> std::result::Result<Vec<Atom>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "loop_"
            && lines
                .get(i + 1)
                .is_some_and(|l| l.trim_start().starts_with("_atom_site."))
        {
            break;
        }
        i += 1;
    }
    if i >= lines.len() {
        return Ok(Vec::new());
    }
    i += 1;
    let mut tags = Vec::new();
    while i < lines.len() && lines[i].trim_start().starts_with("_atom_site.") {
        tags.push(
            lines[i]
                .trim()
                .trim_start_matches("_atom_site.")
                .to_string(),
        );
        i += 1;
    }
    let idx = |t: &str| tags.iter().position(|x| x == t);
    let need =
        |t: &str| idx(t).ok_or_else(|| format!("the _atom_site loop has no _atom_site.{t} column"));
    let (ix, iy, iz, it) = (
        need("Cartn_x")?,
        need("Cartn_y")?,
        need("Cartn_z")?,
        need("type_symbol")?,
    );
    let (iocc, ires, imodel) = (
        idx("occupancy"),
        idx("label_comp_id").or(idx("auth_comp_id")),
        idx("pdbx_PDB_model_num"),
    );
    let mut atoms = Vec::new();
    let mut first_model: Option<String> = None;
    let mut row: Vec<String> = Vec::new();
    let mut row_line = i + 1;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        if t.starts_with("loop_") || t.starts_with('_') || t.starts_with("data_") || t == "#" {
            break;
        }
        if row.is_empty() {
            row_line = i + 1;
        }
        row.extend(cif_tokens(line).into_iter().map(str::to_string));
        i += 1;
        if row.len() < tags.len() {
            continue;
        }
        if row.len() > tags.len() {
            return Err(format!(
                "line {row_line}: {} values for {} _atom_site columns",
                row.len(),
                tags.len()
            ));
        }
        let r = std::mem::take(&mut row);
        if let Some(m) = imodel {
            let first = first_model.get_or_insert_with(|| r[m].clone());
            if *first != r[m] {
                break; // first model only
            }
        }
        if ires.is_some_and(|k| is_water(&r[k])) {
            continue;
        }
        let num = |k: usize, what: &str| {
            r[k].parse::<f64>()
                .map_err(|_| format!("line {row_line}: {what} '{}' is not a number", r[k]))
        };
        let pos = [
            num(ix, "Cartn_x")?,
            num(iy, "Cartn_y")?,
            num(iz, "Cartn_z")?,
        ];
        let occupancy = match iocc {
            Some(k) if r[k] != "." && r[k] != "?" => num(k, "occupancy")?,
            _ => 1.0,
        };
        if !(pos.iter().all(|v| v.is_finite()) && (0.0..=1.0).contains(&occupancy)) {
            return Err(format!(
                "line {row_line}: coordinates must be finite and occupancy within 0–1"
            ));
        }
        atoms.push(Atom {
            pos,
            element: element_index(&r[it], row_line)?,
            occupancy,
        });
    }
    Ok(atoms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_apoferritin() {
        let s = Structure::apoferritin();
        // 32,618 ATOM/HETATM records, of which the waters are dropped.
        assert!(
            s.atoms.len() > 32_000 && s.atoms.len() <= 32_618,
            "{}",
            s.atoms.len()
        );
        assert!(!s.has_hydrogens);
        // Apoferritin's outer diameter is ~120–130 Å.
        let r = s.radius();
        assert!((55.0..75.0).contains(&r), "{r}");
    }

    #[test]
    fn pdb_element_columns_and_names() {
        let pdb = "\
ATOM      1  CA  ALA A   1      11.104   6.134  -6.504  1.00  0.00           C
HETATM    2 CA    CA A 101       1.000   2.000   3.000  0.50 10.00
HETATM    3  O   HOH A 201       0.000   0.000   0.000  1.00  0.00           O
ATOM      4  N   ALA A   1      10.000   6.000  -6.000  1.00  0.00
ENDMDL
ATOM      5  N   ALA A   1      10.000   6.000  -6.000  1.00  0.00           N
";
        let s = Structure::from_bytes("t.pdb", pdb.as_bytes(), Format::Pdb).unwrap();
        let syms: Vec<_> = s
            .atoms
            .iter()
            .map(|a| scattering::TABLE[a.element].symbol)
            .collect();
        assert_eq!(syms, ["C", "Ca", "N"]);
        assert_eq!(s.atoms[1].occupancy, 0.5);
        assert_eq!(s.atoms[0].pos, [11.104, 6.134, -6.504]);
    }

    #[test]
    fn pdb_faults_name_the_line() {
        let bad =
            "ATOM      1  CA  ALA A   1      11.1x4   6.134  -6.504  1.00  0.00           C\n";
        let e = Structure::from_bytes("t.pdb", bad.as_bytes(), Format::Pdb)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.pdb") && e.contains("line 1") && e.contains("x"),
            "{e}"
        );
        let unknown =
            "ATOM      1  XX  ALA A   1      11.104   6.134  -6.504  1.00  0.00          Xq\n";
        let e = Structure::from_bytes("t.pdb", unknown.as_bytes(), Format::Pdb)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'Xq'"), "{e}");
        let e = Structure::from_bytes("t.pdb", b"HEADER nothing here\n", Format::Pdb)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no atoms"), "{e}");
        let e = Structure::from_bytes("t.pdb", &[0xff, 0xfe, 0x00], Format::Pdb)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a text file"), "{e}");
    }

    #[test]
    fn mmcif_atom_site_loop() {
        let cif = "data_test
#
loop_
_atom_site.group_PDB
_atom_site.id
_atom_site.type_symbol
_atom_site.label_atom_id
_atom_site.label_comp_id
_atom_site.Cartn_x
_atom_site.Cartn_y
_atom_site.Cartn_z
_atom_site.occupancy
_atom_site.pdbx_PDB_model_num
ATOM 1 C \"C1'\" ALA 1.0 2.0 3.0 1.00 1
ATOM 2 N N ALA 4.0 5.0 6.0 0.25 1
HETATM 3 O O HOH 0.0 0.0 0.0 1.00 1
ATOM 4 N N ALA 9.0 9.0 9.0 1.00 2
#
";
        let s = Structure::from_bytes("t.cif", cif.as_bytes(), Format::Mmcif).unwrap();
        assert_eq!(s.atoms.len(), 2);
        assert_eq!(s.atoms[1].pos, [4.0, 5.0, 6.0]);
        assert_eq!(s.atoms[1].occupancy, 0.25);
        let missing = cif.replace("_atom_site.Cartn_z\n", "");
        let e = Structure::from_bytes("t.cif", missing.as_bytes(), Format::Mmcif)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Cartn_z"), "{e}");
    }

    #[test]
    fn unreadable_file_is_a_clear_error() {
        let e = Structure::from_file(Path::new("/nonexistent/x.pdb"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/x.pdb") && e.contains("--structure"),
            "{e}"
        );
    }
}

//! Checkpoints: safetensors files in PyTorch layout and names, written atomically.
//!
//! - Weights (`*.safetensors`): one F32 tensor per parameter, PyTorch state_dict name and layout, so
//!   `model.load_state_dict(safetensors.torch.load_file(path))` works on the reference models in `python/`.
//!   Metadata: `format` = `cryoden-weights`, `version`, `arch` (JSON of [`Arch`]), `meta` (the caller's JSON:
//!   normalisation, training configuration, dataset checksum, ...).
//! - Optimizer state (second file): `m.<name>` and `v.<name>` for every parameter (same layout), metadata
//!   `format` = `cryoden-optimizer`, `step`, `adam` (JSON of [`AdamParams`]), `arch`, `meta` (the caller's JSON,
//!   e.g. RNG state and loader position), so a run resumes exactly.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::backend::AdamParams;
use crate::models::{Arch, Model};
use crate::params::ParamTable;
use crate::{NnError, Result};

const VERSION: &str = "1";
const WEIGHTS_FORMAT: &str = "cryoden-weights";
const OPTIMIZER_FORMAT: &str = "cryoden-optimizer";

/// A loaded weights file.
#[derive(Debug)]
pub struct Weights {
    pub model: Model,
    /// Flat parameters in the model's internal layout (ready for [`crate::TrainState::new`]).
    pub params: Vec<f32>,
    /// The caller's metadata as written.
    pub meta: serde_json::Value,
}

/// A loaded optimizer-state file.
#[derive(Debug)]
pub struct OptimizerState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
    pub adam: AdamParams,
    pub meta: serde_json::Value,
}

/// Writes the model's parameters (`params`: flat, internal layout) to `path` atomically.
pub fn save_weights(
    path: &Path,
    model: &Model,
    params: &[f32],
    meta: &serde_json::Value,
) -> Result<()> {
    let table = model.params();
    let tensors = table.export_torch(params)?;
    let mut md = base_meta(WEIGHTS_FORMAT, model.arch())?;
    md.insert("meta".into(), meta.to_string());
    write_tensors(
        path,
        tensors
            .iter()
            .map(|(n, s, d)| (n.clone(), s.clone(), d.as_slice())),
        md,
    )
}

/// Reads a weights file. With `expected`, a file of another architecture is an [`NnError::ArchMismatch`].
pub fn load_weights(path: &Path, expected: Option<&Arch>) -> Result<Weights> {
    let bytes = read(path)?;
    let st = parse(path, &bytes)?;
    let md = metadata(path, &bytes, WEIGHTS_FORMAT)?;
    let arch = arch_of(path, &md)?;
    if let Some(e) = expected {
        if e != &arch {
            return Err(NnError::ArchMismatch {
                path: path.into(),
                found: arch.describe(),
                expected: e.describe(),
            });
        }
    }
    let model = Model::new(arch)?;
    let params = gather(path, &st, model.params(), "")?;
    let meta = json_field(path, &md, "meta")?;
    Ok(Weights {
        model,
        params,
        meta,
    })
}

/// Architecture and caller metadata of a weights or optimizer file, without reading tensors into the model.
pub fn read_meta(path: &Path) -> Result<(Arch, serde_json::Value)> {
    let bytes = read(path)?;
    let md = metadata_any(path, &bytes)?;
    Ok((arch_of(path, &md)?, json_field(path, &md, "meta")?))
}

/// Builds the flat parameter buffer from PyTorch-layout tensors `(name, shape, data)`, e.g. a converted Topaz
/// state_dict. Every parameter of the model must be present exactly once with its PyTorch shape; `source` names
/// the origin in errors.
pub fn params_from_torch<'a>(
    source: &Path,
    table: &ParamTable,
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [f32])>,
) -> Result<Vec<f32>> {
    let mut flat = vec![0.0f32; table.len()];
    let mut seen = vec![false; table.entries().len()];
    for (name, shape, data) in tensors {
        let Some(i) = table.entries().iter().position(|e| e.name == name) else {
            return Err(tensor_err(
                source,
                name,
                "not a parameter of this architecture",
            ));
        };
        let e = &table.entries()[i];
        if shape != e.shape.as_slice() {
            return Err(tensor_err(
                source,
                name,
                &format!("shape {shape:?}, expected {:?}", e.shape),
            ));
        }
        if data.len() != e.len() {
            return Err(tensor_err(
                source,
                name,
                &format!("{} values, expected {}", data.len(), e.len()),
            ));
        }
        if seen[i] {
            return Err(tensor_err(source, name, "given twice"));
        }
        seen[i] = true;
        table.from_torch(e, data, &mut flat[e.range()]);
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(tensor_err(source, &table.entries()[i].name, "missing"));
    }
    Ok(flat)
}

/// Writes Adam's moments (flat, internal layout), step count and hyper-parameters, plus the caller's metadata.
pub fn save_optimizer(
    path: &Path,
    model: &Model,
    m: &[f32],
    v: &[f32],
    step: u64,
    adam: &AdamParams,
    meta: &serde_json::Value,
) -> Result<()> {
    let table = model.params();
    let mt = table.export_torch(m)?;
    let vt = table.export_torch(v)?;
    let mut md = base_meta(OPTIMIZER_FORMAT, model.arch())?;
    md.insert("step".into(), step.to_string());
    md.insert("adam".into(), json(adam)?);
    md.insert("meta".into(), meta.to_string());
    let all = mt
        .iter()
        .map(|t| (format!("m.{}", t.0), t))
        .chain(vt.iter().map(|t| (format!("v.{}", t.0), t)));
    write_tensors(
        path,
        all.map(|(n, (_, s, d))| (n, s.clone(), d.as_slice())),
        md,
    )
}

/// Reads an optimizer-state file written for `model`.
pub fn load_optimizer(path: &Path, model: &Model) -> Result<OptimizerState> {
    let bytes = read(path)?;
    let st = parse(path, &bytes)?;
    let md = metadata(path, &bytes, OPTIMIZER_FORMAT)?;
    let arch = arch_of(path, &md)?;
    if &arch != model.arch() {
        return Err(NnError::ArchMismatch {
            path: path.into(),
            found: arch.describe(),
            expected: model.arch().describe(),
        });
    }
    let step = md
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ckpt_err(path, "metadata field `step` is missing or not an integer"))?;
    let adam: AdamParams = serde_json::from_value(json_field(path, &md, "adam")?)
        .map_err(|e| ckpt_err(path, &format!("metadata field `adam`: {e}")))?;
    let n = model.params().entries().len();
    if st.len() != 2 * n {
        return Err(ckpt_err(
            path,
            &format!(
                "{} tensors, expected {} (m and v per parameter)",
                st.len(),
                2 * n
            ),
        ));
    }
    let m = gather(path, &st, model.params(), "m.")?;
    let v = gather(path, &st, model.params(), "v.")?;
    Ok(OptimizerState {
        m,
        v,
        step,
        adam,
        meta: json_field(path, &md, "meta")?,
    })
}

// ---- helpers ------------------------------------------------------------------------------------------------

fn tensor_err(path: &Path, name: &str, problem: &str) -> NnError {
    NnError::Tensor {
        path: path.into(),
        name: name.into(),
        problem: problem.into(),
    }
}
fn ckpt_err(path: &Path, problem: &str) -> NnError {
    NnError::Checkpoint {
        path: path.into(),
        problem: problem.into(),
    }
}
fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| NnError::Arch(e.to_string()))
}
fn base_meta(format: &str, arch: &Arch) -> Result<HashMap<String, String>> {
    let mut md = HashMap::new();
    md.insert("format".into(), format.into());
    md.insert("version".into(), VERSION.into());
    md.insert("arch".into(), json(arch)?);
    Ok(md)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| NnError::Io {
        path: path.into(),
        source,
    })
}
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| ckpt_err(path, &format!("not a valid safetensors file ({e})")))
}
fn metadata_any(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, m) = SafeTensors::read_metadata(bytes)
        .map_err(|e| ckpt_err(path, &format!("not a valid safetensors file ({e})")))?;
    let md = m
        .metadata()
        .clone()
        .ok_or_else(|| ckpt_err(path, "no metadata: not written by cryoden"))?;
    match md.get("version").map(String::as_str) {
        Some(VERSION) => Ok(md),
        Some(v) => Err(ckpt_err(
            path,
            &format!("format version {v}, this cryoden reads version {VERSION}"),
        )),
        None => Err(ckpt_err(
            path,
            "metadata has no `version`: not written by cryoden",
        )),
    }
}
fn metadata(path: &Path, bytes: &[u8], format: &str) -> Result<HashMap<String, String>> {
    let md = metadata_any(path, bytes)?;
    match md.get("format") {
        Some(f) if f == format => Ok(md),
        Some(f) => Err(ckpt_err(path, &format!("is a {f} file, expected {format}"))),
        None => Err(ckpt_err(
            path,
            "metadata has no `format`: not written by cryoden",
        )),
    }
}
fn json_field(path: &Path, md: &HashMap<String, String>, key: &str) -> Result<serde_json::Value> {
    let s = md
        .get(key)
        .ok_or_else(|| ckpt_err(path, &format!("metadata field `{key}` is missing")))?;
    serde_json::from_str(s)
        .map_err(|e| ckpt_err(path, &format!("metadata field `{key}` is not JSON ({e})")))
}
fn arch_of(path: &Path, md: &HashMap<String, String>) -> Result<Arch> {
    let a: Arch = serde_json::from_value(json_field(path, md, "arch")?)
        .map_err(|e| ckpt_err(path, &format!("metadata field `arch`: {e}")))?;
    Model::new(a.clone()).map_err(|e| ckpt_err(path, &format!("metadata field `arch`: {e}")))?;
    Ok(a)
}

/// Reads every parameter `prefix + name` of `table` from `st` into a flat buffer (internal layout).
fn gather(path: &Path, st: &SafeTensors<'_>, table: &ParamTable, prefix: &str) -> Result<Vec<f32>> {
    let want: std::collections::HashSet<String> = table
        .entries()
        .iter()
        .map(|e| format!("{prefix}{}", e.name))
        .collect();
    let mut named = Vec::new();
    for (name, view) in st.iter() {
        if !name.starts_with(prefix) || !want.contains(name) {
            if prefix.is_empty() || !(name.starts_with("m.") || name.starts_with("v.")) {
                return Err(tensor_err(
                    path,
                    name,
                    "not a parameter of this architecture",
                ));
            }
            continue;
        }
        if view.dtype() != Dtype::F32 {
            return Err(tensor_err(
                path,
                name,
                &format!("dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        named.push((
            name[prefix.len()..].to_string(),
            view.shape().to_vec(),
            data,
        ));
    }
    params_from_torch(
        path,
        table,
        named
            .iter()
            .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())),
    )
}

/// Serialises `(name, shape, data)` tensors with metadata to a temporary file next to `path`, then renames it.
fn write_tensors<'a>(
    path: &Path,
    tensors: impl Iterator<Item = (String, Vec<usize>, &'a [f32])>,
    md: HashMap<String, String>,
) -> Result<()> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .map(|(n, s, d)| (n, s, d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let mut views = Vec::with_capacity(owned.len());
    for (n, s, b) in &owned {
        let v = TensorView::new(Dtype::F32, s.clone(), b)
            .map_err(|e| tensor_err(path, n, &e.to_string()))?;
        views.push((n.clone(), v));
    }
    let bytes = safetensors::tensor::serialize(views, Some(md))
        .map_err(|e| ckpt_err(path, &e.to_string()))?;
    atomic_write(path, &bytes)
}

/// Writes `bytes` to a temporary file in `path`'s directory and renames it over `path`.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| NnError::Io {
        path: PathBuf::from(path),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

//! PyTorch `torch.save` containers: the legacy (pre-1.6, non-zip) stream that Topaz's pretrained `.sav` files use,
//! and the zip archive of PyTorch ≥ 1.6. Both hold one pickle whose persistent ids name storages, plus the raw
//! little-endian storage bytes; see `torch/serialization.py` (`_legacy_load`, `_load`).
//!
//! Legacy layout, five pickles then data:
//! ```text
//! pickle  magic number 0x1950a86a20f9469cfc6c
//! pickle  protocol version 1001
//! pickle  sys info {'protocol_version', 'little_endian', 'type_sizes'}
//! pickle  the object (state_dict) with ('storage', StorageType, key, location, numel, view) persistent ids
//! pickle  list of storage keys, in the order their data follows
//! per key: u64 element count (little-endian), then count × element size bytes
//! ```
//! Zip layout: `<name>/data.pkl` (the object, persistent ids `('storage', StorageType, key, location, numel)`),
//! `<name>/data/<key>` (raw bytes), `<name>/byteorder` (`little`).

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::pickle::{self, DType, PersistentLoad, StorageRef, TensorRef, Value};

/// `torch.serialization.MAGIC_NUMBER`.
const MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// `torch.serialization.PROTOCOL_VERSION`.
const PROTOCOL_VERSION: i128 = 1001;
/// Module objects nest a few levels (model → Sequential → Conv2d); more than this is not a model.
const MAX_MODULE_DEPTH: usize = 32;

/// Which container the file was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// `torch.save(..., _use_new_zipfile_serialization=False)` or PyTorch < 1.6: Topaz's pretrained files.
    Legacy,
    /// PyTorch ≥ 1.6 default.
    Zip,
}

/// One tensor, contiguous, in PyTorch's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Row-major (C-contiguous) little-endian bytes.
    pub bytes: Vec<u8>,
}

impl TorchTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32, for floating-point tensors (f64 is rounded, f16/bf16 widened exactly).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let b = &self.bytes;
        Some(match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F64 => b
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => return None,
        })
    }
}

/// What a Topaz/PyTorch file held: named tensors in state_dict order.
#[derive(Debug, Clone)]
pub struct TorchFile {
    pub container: Container,
    /// For a whole pickled module, its class (e.g. `topaz.denoising.models.UDenoiseNet`); `None` for a state_dict.
    pub module_class: Option<String>,
    /// `(state_dict key, tensor)` in the file's order.
    pub tensors: Vec<(String, TorchTensor)>,
}

impl TorchFile {
    pub fn get(&self, name: &str) -> Option<&TorchTensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Reads a `torch.save` file (legacy or zip) holding a state_dict or a whole module, executing nothing.
pub fn load(path: &Path) -> Result<TorchFile, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_bytes(&bytes, path)
}

/// As [`load`], from bytes already in memory; `path` is used in messages only.
pub fn load_bytes(bytes: &[u8], path: &Path) -> Result<TorchFile, Error> {
    if bytes.starts_with(b"PK\x03\x04") {
        load_zip(bytes, path)
    } else if bytes.starts_with(b"\x80") {
        load_legacy(bytes, path)
    } else {
        let reason = if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
            "a tar archive: the pre-0.4 PyTorch format, not supported; re-save it with a current PyTorch".to_string()
        } else {
            "it starts with neither a pickle nor a zip header".to_string()
        };
        Err(Error::NotTorchFile {
            path: path.to_path_buf(),
            reason,
        })
    }
}

fn invalid(path: &Path, msg: impl Into<String>) -> Error {
    Error::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Persistent ids refer to storages; every reference is recorded so its data can be checked and read later.
struct Storages {
    legacy: bool,
    /// Root key → (dtype, numel), in first-reference order.
    roots: HashMap<String, (DType, u64)>,
}

impl PersistentLoad for Storages {
    fn load(&mut self, pid: &Value) -> Result<Value, String> {
        let v = pickle::parse_storage_pid(pid, self.legacy)?;
        if let Value::Storage(s) = &v {
            match self.roots.get(&s.key) {
                Some(&(dtype, numel)) if dtype != s.dtype || numel != s.root_numel => {
                    return Err(format!(
                        "storage {} is declared twice, as {} of {numel} and as {} of {}",
                        s.key,
                        dtype.storage_name(),
                        s.dtype.storage_name(),
                        s.root_numel
                    ));
                }
                Some(_) => {}
                None => {
                    self.roots.insert(s.key.clone(), (s.dtype, s.root_numel));
                }
            }
        }
        Ok(v)
    }
}

/// A pickle that must not refer to storages (the legacy header pickles).
struct NoStorages;

impl PersistentLoad for NoStorages {
    fn load(&mut self, _pid: &Value) -> Result<Value, String> {
        Err("persistent id outside the object pickle".into())
    }
}

fn unpickle_at(
    bytes: &[u8],
    pos: &mut usize,
    pl: &mut dyn PersistentLoad,
    path: &Path,
) -> Result<Value, Error> {
    pickle::unpickle(bytes, pos, pl).map_err(|reason| Error::Pickle {
        path: path.to_path_buf(),
        reason,
    })
}

fn load_legacy(bytes: &[u8], path: &Path) -> Result<TorchFile, Error> {
    let mut pos = 0;
    let magic =
        unpickle_at(bytes, &mut pos, &mut NoStorages, path).map_err(|e| Error::NotTorchFile {
            path: path.to_path_buf(),
            reason: format!("no magic number: {e}"),
        })?;
    if !matches!(magic, Value::Int(MAGIC)) {
        return Err(Error::NotTorchFile {
            path: path.to_path_buf(),
            reason: "the first pickle is not PyTorch's magic number".into(),
        });
    }
    let version = unpickle_at(bytes, &mut pos, &mut NoStorages, path)?;
    if !matches!(version, Value::Int(PROTOCOL_VERSION)) {
        return Err(invalid(
            path,
            format!("legacy protocol version is {version:?}, expected {PROTOCOL_VERSION}"),
        ));
    }
    let sys_info = unpickle_at(bytes, &mut pos, &mut NoStorages, path)?;
    let little = match &sys_info {
        Value::Dict(d) => d
            .borrow()
            .iter()
            .find(|(k, _)| k.as_str() == Some("little_endian"))
            .map(|(_, v)| v.clone()),
        _ => None,
    };
    match little {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            return Err(invalid(
                path,
                "the file was written on a big-endian machine, which is not supported",
            ));
        }
        _ => {
            return Err(invalid(
                path,
                "the system-info pickle has no little_endian flag",
            ))
        }
    }

    let mut storages = Storages {
        legacy: true,
        roots: HashMap::new(),
    };
    let object = unpickle_at(bytes, &mut pos, &mut storages, path)?;
    let keys = unpickle_at(bytes, &mut pos, &mut NoStorages, path)?;
    let Value::List(keys) = keys else {
        return Err(invalid(path, "the storage-key pickle is not a list"));
    };

    // The data blocks follow in key order, each prefixed with its element count.
    let mut data: HashMap<String, &[u8]> = HashMap::new();
    for key in keys.borrow().iter() {
        let key = key
            .as_str()
            .ok_or_else(|| invalid(path, "a storage key is not a string"))?;
        let &(dtype, numel) = storages.roots.get(key).ok_or_else(|| {
            invalid(
                path,
                format!("storage {key} has data but no tensor refers to it"),
            )
        })?;
        let header = bytes.get(pos..pos + 8).ok_or_else(|| {
            invalid(
                path,
                format!("the file ends before storage {key} (at byte {pos}): it is truncated"),
            )
        })?;
        let count = u64::from_le_bytes(header.try_into().expect("8 bytes"));
        if count != numel {
            return Err(invalid(
                path,
                format!("storage {key} holds {count} elements but is declared with {numel}"),
            ));
        }
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| invalid(path, format!("storage {key} is too large")))?;
        let start = pos + 8;
        let block = start
            .checked_add(len)
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| {
                invalid(
                    path,
                    format!(
                        "the file ends inside storage {key} (at byte {start}): it is truncated"
                    ),
                )
            })?;
        data.insert(key.to_string(), block);
        pos = start + len;
    }
    finish(object, &storages, &data, Container::Legacy, path)
}

fn load_zip(bytes: &[u8], path: &Path) -> Result<TorchFile, Error> {
    let zip_err = |e: zip::result::ZipError| invalid(path, format!("broken zip archive: {e}"));
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zip_err)?;
    let pkl_name = archive
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(|n| n.into_owned())
        .ok_or_else(|| Error::NotTorchFile {
            path: path.to_path_buf(),
            reason:
                "a zip archive without <name>/data.pkl (TorchScript archives are not supported)"
                    .into(),
        })?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut read_entry = |name: &str, limit: u64| -> Result<Option<Vec<u8>>, Error> {
        let mut entry = match archive.by_name(name) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(zip_err(e)),
        };
        if entry.size() > limit {
            return Err(invalid(
                path,
                format!("zip entry {name} is larger than expected"),
            ));
        }
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut buf)
            .map_err(|e| invalid(path, format!("cannot read zip entry {name}: {e}")))?;
        Ok(Some(buf))
    };
    let total = bytes.len() as u64;
    if let Some(order) = read_entry(&format!("{prefix}byteorder"), 16)? {
        if order != b"little" {
            return Err(invalid(
                path,
                "the file was written on a big-endian machine, which is not supported",
            ));
        }
    }
    let pkl = read_entry(&pkl_name, total)?.expect("name listed above");
    let mut storages = Storages {
        legacy: false,
        roots: HashMap::new(),
    };
    let mut pos = 0;
    let object =
        pickle::unpickle(&pkl, &mut pos, &mut storages).map_err(|reason| Error::Pickle {
            path: entry_path(path, &pkl_name),
            reason,
        })?;

    let mut owned: HashMap<String, Vec<u8>> = HashMap::new();
    for (key, &(dtype, numel)) in &storages.roots {
        let name = format!("{prefix}data/{key}");
        let block = read_entry(&name, total)?
            .ok_or_else(|| invalid(path, format!("zip entry {name} is missing")))?;
        let want = numel.checked_mul(dtype.size() as u64);
        if want != Some(block.len() as u64) {
            return Err(invalid(
                path,
                format!(
                    "zip entry {name} has {} bytes, expected {numel} × {}",
                    block.len(),
                    dtype.size()
                ),
            ));
        }
        owned.insert(key.clone(), block);
    }
    let data: HashMap<String, &[u8]> = owned
        .iter()
        .map(|(k, v)| (k.clone(), v.as_slice()))
        .collect();
    finish(object, &storages, &data, Container::Zip, path)
}

/// Turns the unpickled object into named contiguous tensors.
fn finish(
    object: Value,
    storages: &Storages,
    data: &HashMap<String, &[u8]>,
    container: Container,
    path: &Path,
) -> Result<TorchFile, Error> {
    let mut refs: Vec<(String, TensorRef)> = Vec::new();
    let module_class = match &object {
        Value::Dict(_) => {
            collect_state_dict(&object, "", false, &mut refs).map_err(|m| invalid(path, m))?;
            None
        }
        Value::Object(o) => {
            collect_module(&object, "", 0, &mut refs).map_err(|m| invalid(path, m))?;
            Some(o.borrow().class.clone())
        }
        other => {
            return Err(invalid(
                path,
                format!(
                    "the file holds a {other:?}, not a state_dict or a module",
                    other = kind_of(other)
                ),
            ));
        }
    };
    if refs.is_empty() {
        return Err(invalid(path, "the file holds no tensors"));
    }
    let mut tensors = Vec::with_capacity(refs.len());
    for (name, r) in refs {
        let root = data.get(&r.storage.key).ok_or_else(|| {
            invalid(
                path,
                format!(
                    "tensor {name}: the data of storage {} is missing from the file",
                    r.storage.key
                ),
            )
        })?;
        debug_assert!(storages.roots.contains_key(&r.storage.key));
        let t = materialise(&r, root).map_err(|m| invalid(path, format!("tensor {name}: {m}")))?;
        tensors.push((name, t));
    }
    Ok(TorchFile {
        container,
        module_class,
        tensors,
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::List(_) => "list",
        Value::Tuple(_) => "tuple",
        Value::Tensor(_) => "single tensor",
        Value::Str(_) => "string",
        Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::None => "number",
        _ => "value of another kind",
    }
}

/// A state_dict: string keys → tensors. `prefix` is prepended (for module walks), where `in_module` also lets
/// unset entries (`None`) through, as `Module.state_dict()` skips them.
fn collect_state_dict(
    v: &Value,
    prefix: &str,
    in_module: bool,
    out: &mut Vec<(String, TensorRef)>,
) -> Result<(), String> {
    let Value::Dict(d) = v else {
        return Err("expected a dict of tensors".into());
    };
    for (k, v) in d.borrow().iter() {
        let key = k.as_str().ok_or("a state_dict key is not a string")?;
        match v {
            Value::Tensor(t) => out.push((format!("{prefix}{key}"), (**t).clone())),
            // A registered but unset parameter or buffer (`self.bias = None`) is not saved by state_dict().
            Value::None if in_module => {}
            _ => return Err(format!("state_dict entry {prefix}{key} is not a tensor")),
        }
    }
    Ok(())
}

fn dict_get(d: &Value, key: &str) -> Option<Value> {
    match d {
        Value::Dict(d) => d
            .borrow()
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

/// Walks a pickled `nn.Module` record the way `Module.state_dict()` does: own parameters, own persistent
/// buffers, then each submodule with `name.` prepended.
fn collect_module(
    v: &Value,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, TensorRef)>,
) -> Result<(), String> {
    if depth > MAX_MODULE_DEPTH {
        return Err("modules nested too deeply".into());
    }
    let Value::Object(o) = v else {
        return Err(format!("submodule {prefix} is not a module"));
    };
    let o = o.borrow();
    let state = &o.state;
    if let Some(params) = dict_get(state, "_parameters") {
        collect_state_dict(&params, prefix, true, out)?;
    }
    if let Some(buffers) = dict_get(state, "_buffers") {
        let skip: Vec<String> = match dict_get(state, "_non_persistent_buffers_set") {
            Some(Value::Set(s)) => s
                .borrow()
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let mut all = Vec::new();
        collect_state_dict(&buffers, prefix, true, &mut all)?;
        out.extend(
            all.into_iter()
                .filter(|(n, _)| !skip.iter().any(|s| n[prefix.len()..] == *s)),
        );
    }
    if let Some(Value::Dict(children)) = dict_get(state, "_modules") {
        for (k, child) in children.borrow().iter() {
            let name = k.as_str().ok_or("a submodule name is not a string")?;
            if matches!(child, Value::None) {
                continue;
            }
            collect_module(child, &format!("{prefix}{name}."), depth + 1, out)?;
        }
    }
    Ok(())
}

/// Copies a (possibly strided) tensor out of its storage into contiguous bytes, checking every bound.
fn materialise(r: &TensorRef, root: &[u8]) -> Result<TorchTensor, String> {
    let StorageRef {
        dtype,
        root_numel,
        view,
        ..
    } = &r.storage;
    let es = dtype.size();
    let (base, len) = match *view {
        None => (0, *root_numel),
        Some((off, n)) => {
            if off.checked_add(n).is_none_or(|end| end > *root_numel) {
                return Err(format!(
                    "storage view {off}+{n} exceeds its storage of {root_numel} elements"
                ));
            }
            (off, n)
        }
    };
    let shape: Vec<usize> = r
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| "dimension too large".to_string()))
        .collect::<Result<_, _>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("tensor too large")?;
    let mut bytes = Vec::new();
    if numel > 0 {
        // Highest element reached: offset + Σ (size−1)·stride.
        let mut last = r.offset as u128;
        for (&d, &s) in r.shape.iter().zip(&r.stride) {
            last += (d as u128 - 1) * s as u128;
        }
        if last >= len as u128 {
            return Err(format!(
                "elements up to {last} are read from a storage of {len}"
            ));
        }
        // A saved weight never has more elements than its storage; a hostile file could otherwise ask for a huge
        // tensor built from one element (stride 0) and exhaust memory.
        if numel as u64 > len {
            return Err(format!(
                "{numel} elements from a storage of {len} (broadcast views are not supported)"
            ));
        }
        bytes.reserve(numel * es);
        let start = (base + r.offset) as usize;
        let contiguous = {
            let mut expect = 1u64;
            let mut ok = true;
            for (&d, &s) in r.shape.iter().zip(&r.stride).rev() {
                if d != 1 && s != expect {
                    ok = false;
                }
                expect *= d;
            }
            ok
        };
        if contiguous {
            bytes.extend_from_slice(&root[start * es..(start + numel) * es]);
        } else {
            let mut index = vec![0usize; shape.len()];
            for _ in 0..numel {
                let e = start
                    + index
                        .iter()
                        .zip(&r.stride)
                        .map(|(&i, &s)| i * s as usize)
                        .sum::<usize>();
                bytes.extend_from_slice(&root[e * es..(e + 1) * es]);
                for dim in (0..shape.len()).rev() {
                    index[dim] += 1;
                    if index[dim] < shape[dim] {
                        break;
                    }
                    index[dim] = 0;
                }
            }
        }
    }
    Ok(TorchTensor {
        shape,
        dtype: *dtype,
        bytes,
    })
}

/// For messages: the path of an entry inside a zip archive.
fn entry_path(path: &Path, entry: &str) -> PathBuf {
    PathBuf::from(format!("{}:{entry}", path.display()))
}

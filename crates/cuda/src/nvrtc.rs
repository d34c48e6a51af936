//! Run-time compilation of the CUDA C++ kernels with NVRTC, straight to machine code (CUBIN) for the GPU's own
//! architecture, with a disk cache: compiling costs 20–50 ms a module, loading a cached CUBIN well under 1 ms.
//!
//! Cache key: SHA-256 of (source, architecture, options, NVRTC version), so a changed kernel, GPU or compiler never
//! reuses a stale binary. Files are written to a temporary name and renamed, so a crash never leaves a torn entry,
//! and a file that is not an ELF image is ignored and rebuilt.

use crate::error::{CudaError, Result};
use sha2::{Digest, Sha256};
use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `$XDG_CACHE_HOME/cryoden/kernels`, else `$HOME/.cache/cryoden/kernels`; `None` when neither is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    cache_dir_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

fn cache_dir_from(
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    match (
        xdg.filter(|x| !x.is_empty()),
        home.filter(|h| !h.is_empty()),
    ) {
        (Some(x), _) => Some(PathBuf::from(x).join("cryoden").join("kernels")),
        (None, Some(h)) => Some(
            PathBuf::from(h)
                .join(".cache")
                .join("cryoden")
                .join("kernels"),
        ),
        (None, None) => None,
    }
}

/// Hex SHA-256 over everything that changes the compiled binary.
pub fn cache_key(
    source: &str,
    arch: &str,
    options: &[String],
    nvrtc_version: (i32, i32),
) -> String {
    let mut h = Sha256::new();
    // Length-prefixed fields, so ("ab","c") and ("a","bc") differ.
    for part in [source.as_bytes(), arch.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update((options.len() as u64).to_le_bytes());
    for o in options {
        h.update((o.len() as u64).to_le_bytes());
        h.update(o.as_bytes());
    }
    h.update(nvrtc_version.0.to_le_bytes());
    h.update(nvrtc_version.1.to_le_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The architecture flag for a compute capability: (9, 0) → `sm_90`.
pub fn arch_for(cc: (i32, i32)) -> String {
    format!("sm_{}{}", cc.0, cc.1)
}

/// A compiled module and where it came from.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub from_cache: bool,
    /// Time spent compiling (0 when loaded from the cache).
    pub compile_ms: f64,
}

/// NVRTC with a disk cache.
#[derive(Debug, Clone)]
pub struct Compiler {
    pub arch: String,
    /// `None`: no cache (nothing is written).
    pub cache_dir: Option<PathBuf>,
    pub nvrtc_version: (i32, i32),
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

impl Compiler {
    /// `arch` e.g. `sm_90`. NVRTC must be present (see `probe::check_all`).
    pub fn new(arch: String, cache_dir: Option<PathBuf>) -> Result<Compiler> {
        Ok(Compiler {
            arch,
            cache_dir,
            nvrtc_version: crate::probe::nvrtc_version()?,
        })
    }

    /// The options every module is compiled with, plus `extra`.
    pub fn options(&self, extra: &[&str]) -> Vec<String> {
        let mut o = vec![
            format!("--gpu-architecture={}", self.arch),
            "--std=c++17".to_string(),
        ];
        o.extend(extra.iter().map(|s| s.to_string()));
        o
    }

    fn cache_path(&self, key: &str) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{key}.cubin")))
    }

    /// Compiles `source` (named `name` in messages) or loads it from the cache.
    pub fn compile(&self, name: &str, source: &str, extra_options: &[&str]) -> Result<Compiled> {
        let options = self.options(extra_options);
        let key = cache_key(source, &self.arch, &options, self.nvrtc_version);
        if let Some(path) = self.cache_path(&key) {
            if let Ok(bytes) = std::fs::read(&path) {
                if bytes.starts_with(ELF_MAGIC) {
                    return Ok(Compiled {
                        cubin: bytes,
                        from_cache: true,
                        compile_ms: 0.0,
                    });
                }
            }
        }
        let t = Instant::now();
        let cubin = nvrtc_compile_cubin(name, source, &self.arch, &options)?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        if let Some(path) = self.cache_path(&key) {
            write_atomic(&path, &cubin)?;
        }
        Ok(Compiled {
            cubin,
            from_cache: false,
            compile_ms,
        })
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("cache path has a parent");
    let err = |source| CudaError::Cache {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// One NVRTC compilation to CUBIN. The program is destroyed on every path.
fn nvrtc_compile_cubin(
    name: &str,
    source: &str,
    arch: &str,
    options: &[String],
) -> Result<Vec<u8>> {
    use cudarc::nvrtc::sys;
    let nv = |call: &'static str| move |source| CudaError::Nvrtc { call, source };
    let src = CString::new(source)
        .map_err(|_| CudaError::Shape(format!("kernel source {name} contains a NUL byte")))?;
    let cname = CString::new(name)
        .map_err(|_| CudaError::Shape(format!("kernel name {name:?} contains a NUL")))?;
    let prog = cudarc::nvrtc::result::create_program(&src, Some(&cname))
        .map_err(nv("nvrtcCreateProgram"))?;
    struct Guard(sys::nvrtcProgram);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: created by nvrtcCreateProgram above and destroyed only here.
            let _ = unsafe { cudarc::nvrtc::result::destroy_program(self.0) };
        }
    }
    let guard = Guard(prog);
    // SAFETY: `prog` is a live program (owned by `guard`).
    if let Err(e) = unsafe { cudarc::nvrtc::result::compile_program(guard.0, options) } {
        // SAFETY: as above.
        let log = unsafe { cudarc::nvrtc::result::get_program_log(guard.0) }
            .map(|l| {
                unsafe { CStr::from_ptr(l.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_else(|_| format!("(no log; {e})"));
        return Err(CudaError::Compile {
            name: name.to_string(),
            arch: arch.to_string(),
            options: options.to_vec(),
            log,
        });
    }
    let mut size = 0usize;
    // SAFETY: compiled program; `size` is an out parameter.
    unsafe { sys::nvrtcGetCUBINSize(guard.0, &mut size) }
        .result()
        .map_err(nv("nvrtcGetCUBINSize"))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has the size NVRTC reported.
    unsafe { sys::nvrtcGetCUBIN(guard.0, cubin.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(nv("nvrtcGetCUBIN"))?;
    Ok(cubin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_prefers_xdg_then_home() {
        assert_eq!(
            cache_dir_from(Some("/x".into()), Some("/h".into())),
            Some(PathBuf::from("/x/cryoden/kernels"))
        );
        assert_eq!(
            cache_dir_from(None, Some("/h".into())),
            Some(PathBuf::from("/h/.cache/cryoden/kernels"))
        );
        assert_eq!(
            cache_dir_from(Some("".into()), Some("/h".into())),
            Some(PathBuf::from("/h/.cache/cryoden/kernels"))
        );
        assert_eq!(cache_dir_from(None, None), None);
    }

    #[test]
    fn cache_key_changes_with_every_input() {
        let o = vec!["--std=c++17".to_string()];
        let base = cache_key("src", "sm_90", &o, (13, 0));
        assert_eq!(base.len(), 64);
        assert_eq!(base, cache_key("src", "sm_90", &o, (13, 0)));
        assert_ne!(base, cache_key("src2", "sm_90", &o, (13, 0)));
        assert_ne!(base, cache_key("src", "sm_80", &o, (13, 0)));
        assert_ne!(base, cache_key("src", "sm_90", &[], (13, 0)));
        assert_ne!(base, cache_key("src", "sm_90", &o, (13, 1)));
        // Field boundaries matter.
        assert_ne!(
            cache_key("ab", "c", &[], (13, 0)),
            cache_key("a", "bc", &[], (13, 0))
        );
    }

    #[test]
    fn arch_flag() {
        assert_eq!(arch_for((9, 0)), "sm_90");
        assert_eq!(arch_for((12, 0)), "sm_120");
    }

    #[test]
    fn atomic_write_creates_dir_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/k.cubin");
        write_atomic(&p, b"\x7fELFdata").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"\x7fELFdata");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("k.cubin")]);
    }
}

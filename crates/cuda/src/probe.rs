//! What is installed: libraries, versions, GPUs, and the library files actually mapped into this process.
//!
//! cudarc (with `dynamic-loading`) panics on first use of a library it cannot dlopen, and `CudaContext::new`
//! panics without a driver. Everything here checks presence first (`is_culib_present`, which only tries a dlopen)
//! and turns absence into a typed error with the fix in its message.

use crate::error::{drv, CudaError, Library, Result};
use cudarc::driver::{result as dres, sys as dsys};

/// The CUDA version the bindings were generated for (`cuda-13000`): the driver must support at least this.
pub const MIN_DRIVER_CUDA_VERSION: i32 = 13000;

/// Whether `lib` can be dlopened under one of the names cudarc tries. Never panics.
pub fn is_present(lib: Library) -> bool {
    // SAFETY: each call only dlopens the library and closes it again; no symbol is called.
    unsafe {
        match lib {
            Library::Driver => cudarc::driver::sys::is_culib_present(),
            Library::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
            Library::Cudnn => cudarc::cudnn::sys::is_culib_present(),
            Library::Nccl => cudarc::nccl::sys::is_culib_present(),
        }
    }
}

/// Checks the driver, a recent enough driver version and at least one GPU; returns the GPU count.
pub fn check_driver() -> Result<usize> {
    if !is_present(Library::Driver) {
        return Err(CudaError::LibraryMissing(Library::Driver));
    }
    match dres::init() {
        Ok(()) => {}
        Err(e) if e.0 == dsys::CUresult::CUDA_ERROR_NO_DEVICE => {
            return Err(CudaError::NoGpu("cuInit: CUDA_ERROR_NO_DEVICE".into()))
        }
        Err(e) => return Err(CudaError::NoGpu(format!("cuInit: {e}"))),
    }
    let version = driver_version()?;
    if version < MIN_DRIVER_CUDA_VERSION {
        return Err(CudaError::DriverTooOld(version));
    }
    let count = dres::device::get_count().map_err(drv("cuDeviceGetCount"))?;
    if count <= 0 {
        return Err(CudaError::NoGpu("cuDeviceGetCount returned 0".into()));
    }
    Ok(count as usize)
}

/// Checks everything one GPU needs (driver, NVRTC, cuDNN) and that `ordinal` exists.
pub fn check_all(ordinal: usize) -> Result<()> {
    let count = check_driver()?;
    if ordinal >= count {
        return Err(CudaError::NoSuchGpu { ordinal, count });
    }
    for lib in [Library::Nvrtc, Library::Cudnn] {
        if !is_present(lib) {
            return Err(CudaError::LibraryMissing(lib));
        }
    }
    Ok(())
}

/// The CUDA version the driver supports, e.g. 13000 for 13.0. Requires the driver to be present.
pub fn driver_version() -> Result<i32> {
    let mut v = 0;
    // SAFETY: plain out-parameter call; the caller checked the library is present.
    unsafe { dsys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(drv("cuDriverGetVersion"))?;
    Ok(v)
}

/// NVRTC's version, e.g. (13, 0). Requires NVRTC to be present.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: out-parameter call; the caller checked the library is present.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|source| CudaError::Nvrtc {
            call: "nvrtcVersion",
            source,
        })?;
    Ok((major, minor))
}

/// cuDNN's version number, e.g. 91400 for 9.14.0. Requires cuDNN to be present.
pub fn cudnn_version() -> usize {
    cudarc::cudnn::result::get_version()
}

/// NCCL's version number, e.g. 22803 for 2.28.3. Requires NCCL to be present.
pub fn nccl_version() -> Option<i32> {
    let mut v = 0;
    // SAFETY: out-parameter call; the caller checked the library is present.
    let status = unsafe { cudarc::nccl::sys::ncclGetVersion(&mut v) };
    (status == cudarc::nccl::sys::ncclResult_t::ncclSuccess).then_some(v)
}

/// `91400` → `"9.14.0"` (cuDNN 9 encodes major*10000 + minor*100 + patch).
pub fn format_cudnn_version(v: usize) -> String {
    format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
}

/// `22803` → `"2.28.3"` (NCCL ≥ 2.9 encodes major*10000 + minor*100 + patch).
pub fn format_nccl_version(v: i32) -> String {
    format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
}

/// `13000` → `"13.0"`.
pub fn format_cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Paths of the CUDA-related shared libraries mapped into this process, from `/proc/self/maps` content.
/// Two copies of one library (e.g. a venv's and the system's cuBLASLt) show up as two entries.
pub fn cuda_libraries_in_maps(maps: &str) -> Vec<String> {
    const PREFIXES: [&str; 7] = [
        "libcuda.",
        "libnvrtc",
        "libcudnn",
        "libcublas",
        "libnccl",
        "libcudart",
        "libnvJitLink",
    ];
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode [path]; the path is the sixth field and may contain spaces.
        let path = match line.splitn(6, char::is_whitespace).nth(5) {
            Some(p) => p.trim(),
            None => continue,
        };
        if !path.starts_with('/') {
            continue;
        }
        let file = path.rsplit('/').next().unwrap_or(path);
        if PREFIXES.iter().any(|p| file.starts_with(p)) && !out.iter().any(|o| o == path) {
            out.push(path.to_string());
        }
    }
    out
}

/// The CUDA-related libraries mapped into this process now.
pub fn mapped_cuda_libraries() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| cuda_libraries_in_maps(&m))
        .unwrap_or_default()
}

/// One GPU as the driver describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability, e.g. (9, 0) for Hopper.
    pub compute_capability: (i32, i32),
    pub total_memory_bytes: usize,
    pub multiprocessors: i32,
    pub l2_cache_bytes: i32,
    /// Largest dynamic shared memory one block may opt into (bytes): 227 KiB on H100/H200, 163 KiB on A100, 99 KiB
    /// on most consumer cards.
    pub max_shared_per_block_optin: i32,
}

/// Describes GPU `ordinal` without creating a context (no memory is taken on the GPU).
pub fn gpu_info(ordinal: usize) -> Result<GpuInfo> {
    use dsys::CUdevice_attribute::*;
    let dev = dres::device::get(ordinal as i32).map_err(drv("cuDeviceGet"))?;
    // SAFETY: `dev` is a valid device handle from cuDeviceGet; attribute queries have no other preconditions.
    let attr =
        |a| unsafe { dres::device::get_attribute(dev, a) }.map_err(drv("cuDeviceGetAttribute"));
    Ok(GpuInfo {
        ordinal,
        name: dres::device::get_name(dev).map_err(drv("cuDeviceGetName"))?,
        compute_capability: (
            attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ),
        // SAFETY: as above.
        total_memory_bytes: unsafe { dres::device::total_mem(dev) }
            .map_err(drv("cuDeviceTotalMem"))?,
        multiprocessors: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        l2_cache_bytes: attr(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?,
        max_shared_per_block_optin: attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
    })
}

/// Everything `cryoden doctor` prints about CUDA. Each part is filled as far as the machine allows; what failed is
/// in `problems`, with its fix.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub driver_cuda_version: Option<String>,
    pub nvrtc_version: Option<String>,
    pub cudnn_version: Option<String>,
    pub nccl_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
    /// Result of a functional check on GPU 0: context, kernel compilation (with the cache) and one cuDNN conv.
    pub selfcheck: Option<String>,
    pub kernel_cache_dir: Option<String>,
    /// Paths of the CUDA libraries mapped into the process after all of the above ran.
    pub mapped_libraries: Vec<String>,
    pub problems: Vec<String>,
}

impl Report {
    /// Probes everything; never panics, never fails (failures become `problems`).
    pub fn collect() -> Report {
        let mut r = Report::default();
        let gpu_count = match check_driver() {
            Ok(n) => n,
            Err(e) => {
                // Only ask the driver for its version if it can be loaded (cudarc panics otherwise).
                if is_present(Library::Driver) {
                    if let Ok(v) = driver_version() {
                        r.driver_cuda_version = Some(format_cuda_version(v));
                    }
                }
                r.problems.push(e.to_string());
                0
            }
        };
        if gpu_count > 0 {
            if let Ok(v) = driver_version() {
                r.driver_cuda_version = Some(format_cuda_version(v));
            }
            for i in 0..gpu_count {
                match gpu_info(i) {
                    Ok(g) => r.gpus.push(g),
                    Err(e) => r.problems.push(e.to_string()),
                }
            }
        }
        if is_present(Library::Nvrtc) {
            match nvrtc_version() {
                Ok((a, b)) => r.nvrtc_version = Some(format!("{a}.{b}")),
                Err(e) => r.problems.push(e.to_string()),
            }
        } else {
            r.problems
                .push(CudaError::LibraryMissing(Library::Nvrtc).to_string());
        }
        if is_present(Library::Cudnn) {
            r.cudnn_version = Some(format_cudnn_version(cudnn_version()));
        } else {
            r.problems
                .push(CudaError::LibraryMissing(Library::Cudnn).to_string());
        }
        if is_present(Library::Nccl) {
            r.nccl_version = nccl_version().map(format_nccl_version);
        } else {
            r.nccl_version = Some(format!(
                "not found (only needed for several GPUs: {})",
                Library::Nccl.fix()
            ));
        }
        r.kernel_cache_dir = crate::nvrtc::default_cache_dir().map(|p| p.display().to_string());
        if gpu_count > 0 && r.nvrtc_version.is_some() && r.cudnn_version.is_some() {
            match crate::device::Gpu::selfcheck(0) {
                Ok(s) => r.selfcheck = Some(s),
                Err(e) => r.problems.push(format!("self-check on cuda:0 failed: {e}")),
            }
        }
        r.mapped_libraries = mapped_cuda_libraries();
        r
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or_none = |o: &Option<String>| o.clone().unwrap_or_else(|| "not found".into());
        writeln!(f, "CUDA driver:   {}", or_none(&self.driver_cuda_version))?;
        writeln!(f, "NVRTC:         {}", or_none(&self.nvrtc_version))?;
        writeln!(f, "cuDNN:         {}", or_none(&self.cudnn_version))?;
        writeln!(f, "NCCL:          {}", or_none(&self.nccl_version))?;
        if self.gpus.is_empty() {
            writeln!(f, "GPUs:          none")?;
        }
        for g in &self.gpus {
            writeln!(
                f,
                "GPU cuda:{}:    {}, compute capability {}.{}, {:.1} GiB, {} SMs, L2 {} MiB",
                g.ordinal,
                g.name,
                g.compute_capability.0,
                g.compute_capability.1,
                g.total_memory_bytes as f64 / (1u64 << 30) as f64,
                g.multiprocessors,
                g.l2_cache_bytes >> 20
            )?;
        }
        if let Some(s) = &self.selfcheck {
            writeln!(f, "self-check:    {s}")?;
        }
        if let Some(d) = &self.kernel_cache_dir {
            writeln!(f, "kernel cache:  {d}")?;
        }
        writeln!(f, "libraries mapped into this process:")?;
        if self.mapped_libraries.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for p in &self.mapped_libraries {
            writeln!(f, "  {p}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parsing_keeps_cuda_libraries_once_in_order() {
        let maps = "\
7f00-7f01 r--p 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libcudnn.so.9.14.0
7f01-7f02 r-xp 00001000 08:01 123 /usr/lib/x86_64-linux-gnu/libcudnn.so.9.14.0
7f02-7f03 r--p 00000000 08:01 124 /usr/local/nvidia/lib64/libcuda.so.580.159.04
7f03-7f04 r--p 00000000 08:01 125 /usr/lib/x86_64-linux-gnu/libc.so.6
7f04-7f05 rw-p 00000000 00:00 0 
7f05-7f06 r--p 00000000 08:01 126 /opt/my libs/libcublasLt.so.13
7f06-7f07 r--p 00000000 08:01 127 /usr/local/cuda-13.0/lib64/libnvrtc-builtins.so.13.0
7ffd-7ffe rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            cuda_libraries_in_maps(maps),
            vec![
                "/usr/lib/x86_64-linux-gnu/libcudnn.so.9.14.0",
                "/usr/local/nvidia/lib64/libcuda.so.580.159.04",
                "/opt/my libs/libcublasLt.so.13",
                "/usr/local/cuda-13.0/lib64/libnvrtc-builtins.so.13.0",
            ]
        );
    }

    #[test]
    fn version_formatting() {
        assert_eq!(format_cudnn_version(91400), "9.14.0");
        assert_eq!(format_nccl_version(22803), "2.28.3");
        assert_eq!(format_cuda_version(13000), "13.0");
        assert_eq!(format_cuda_version(12040), "12.4");
    }

    /// On a machine without the driver (CI, this VM) the check must return the documented error, not panic.
    #[test]
    fn no_driver_gives_clear_error_not_panic() {
        if is_present(Library::Driver) {
            // A GPU machine: whatever is found, the answer is a value, and a missing ordinal is an error.
            let err = check_all(10_000).unwrap_err();
            assert!(
                err.to_string().contains("cuda:10000") || err.to_string().contains("--device cuda"),
                "{err}"
            );
            return;
        }
        let err = check_all(0).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--device cuda requested but libcuda.so.1 was not found"),
            "{err}"
        );
        let report = Report::collect();
        assert!(report.gpus.is_empty());
        assert!(
            report.problems.iter().any(|p| p.contains("libcuda.so.1")),
            "{:?}",
            report.problems
        );
    }
}

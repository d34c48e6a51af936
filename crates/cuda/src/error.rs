//! Typed errors of the CUDA backend. Every message says what was missing or failed and what to do about it.

use std::path::PathBuf;

/// A library the backend loads at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Library {
    /// The driver API (`libcuda.so.1`), part of the NVIDIA driver.
    Driver,
    /// The run-time compiler (`libnvrtc.so.13`), part of the CUDA 13 toolkit.
    Nvrtc,
    /// cuDNN 9 (`libcudnn.so.9`).
    Cudnn,
    /// NCCL 2 (`libnccl.so`), only needed for several GPUs.
    Nccl,
}

impl Library {
    /// The file name a user would look for.
    pub fn file_name(self) -> &'static str {
        match self {
            Library::Driver => "libcuda.so.1",
            Library::Nvrtc => "libnvrtc.so.13",
            Library::Cudnn => "libcudnn.so.9",
            Library::Nccl => "libnccl.so",
        }
    }

    /// What to do when it is missing.
    pub fn fix(self) -> &'static str {
        match self {
            Library::Driver => "install the NVIDIA driver (R580 or newer, CUDA 13) or use --device cpu",
            Library::Nvrtc => {
                "install the CUDA 13 run-time compiler (package cuda-nvrtc-13-0, or pip nvidia-cuda-nvrtc) and put its \
                 lib directory (e.g. /usr/local/cuda/lib64) on LD_LIBRARY_PATH, or use --device cpu"
            }
            Library::Cudnn => {
                "install cuDNN 9 for CUDA 13 (package libcudnn9-cuda-13, or pip nvidia-cudnn-cu13) and put its lib \
                 directory on LD_LIBRARY_PATH, or use --device cpu"
            }
            Library::Nccl => "install NCCL 2 with an unversioned libnccl.so (package libnccl-dev), or use one GPU",
        }
    }
}

/// Everything that can go wrong in the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("--device cuda requested but {} was not found; {}", .0.file_name(), .0.fix())]
    LibraryMissing(Library),

    #[error(
        "--device cuda requested but the NVIDIA driver supports CUDA {}.{} only; cryoden needs a driver for CUDA 13.0 \
         or newer (R580+): update the driver or use --device cpu",
        .0 / 1000, (.0 % 1000) / 10
    )]
    DriverTooOld(i32),

    #[error("--device cuda requested but the driver found no GPU ({0}); check `nvidia-smi`, or use --device cpu")]
    NoGpu(String),

    #[error("--device cuda:{ordinal} requested but there are {count} GPU(s) (cuda:0 to cuda:{}); pick one of them", .count.saturating_sub(1))]
    NoSuchGpu { ordinal: usize, count: usize },

    #[error("CUDA driver call {call} failed: {source}")]
    Driver {
        call: &'static str,
        #[source]
        source: cudarc::driver::DriverError,
    },

    #[error("cuDNN call {call} failed: {source}")]
    Cudnn {
        call: &'static str,
        #[source]
        source: cudarc::cudnn::CudnnError,
    },

    #[error("cuDNN found no usable {what} algorithm for {shape} (precision {precision}); every candidate failed")]
    NoConvAlgorithm {
        what: &'static str,
        shape: String,
        precision: &'static str,
    },

    #[error("cuDNN backend-API call {what} failed: {source}")]
    CudnnEngine {
        what: &'static str,
        #[source]
        source: cudarc::cudnn::CudnnError,
    },

    #[error(
        "cuDNN's backend API has no usable {what} engine for {shape} (precision {precision}) and engines are forced          (CRYODEN_CUDNN_ENGINES=force or set_engine_mode(Force)); {why}"
    )]
    NoEngine {
        what: &'static str,
        shape: String,
        precision: &'static str,
        why: String,
    },

    #[error(
        "NVRTC could not compile kernel module {name} for {arch} (options {options:?}):\n{log}"
    )]
    Compile {
        name: String,
        arch: String,
        options: Vec<String>,
        log: String,
    },

    #[error("NVRTC call {call} failed: {source}")]
    Nvrtc {
        call: &'static str,
        #[source]
        source: cudarc::nvrtc::result::NvrtcError,
    },

    #[error("kernel cache {}: {source}; remove the directory or set XDG_CACHE_HOME to a writable place", .path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Shape(String),

    #[error("unknown precision {0:?}: expected f32, tf32 or bf16")]
    UnknownPrecision(String),
}

pub type Result<T, E = CudaError> = std::result::Result<T, E>;

/// `.map_err(drv("cuMemAlloc"))` names the failing driver call.
pub(crate) fn drv(call: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    move |source| CudaError::Driver { call, source }
}

/// `.map_err(dnn("cudnnConvolutionForward"))` names the failing cuDNN call.
pub(crate) fn dnn(call: &'static str) -> impl FnOnce(cudarc::cudnn::CudnnError) -> CudaError {
    move |source| CudaError::Cudnn { call, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_driver_message_names_library_and_fix() {
        let msg = CudaError::LibraryMissing(Library::Driver).to_string();
        assert_eq!(
            msg,
            "--device cuda requested but libcuda.so.1 was not found; install the NVIDIA driver (R580 or newer, CUDA \
             13) or use --device cpu"
        );
    }

    #[test]
    fn old_driver_message_gives_version() {
        let msg = CudaError::DriverTooOld(12040).to_string();
        assert!(msg.contains("CUDA 12.4 only"), "{msg}");
        assert!(msg.contains("--device cpu"), "{msg}");
    }

    #[test]
    fn bad_ordinal_message_lists_range() {
        let msg = CudaError::NoSuchGpu {
            ordinal: 3,
            count: 2,
        }
        .to_string();
        assert!(
            msg.contains("cuda:3") && msg.contains("cuda:0 to cuda:1"),
            "{msg}"
        );
    }
}

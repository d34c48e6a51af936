//! Precision modes. Every mode keeps f32 master weights, f32 Adam moments and f32 loss accumulation; they differ in
//! what the convolutions compute with and what activations are stored in.

use crate::error::CudaError;
use cudarc::cudnn::sys::{cudnnDataType_t, cudnnMathType_t};

/// Storage type of a device buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DType {
    F32,
    Bf16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
        }
    }
    /// Elements per 16-byte access (the `VN` of elementwise.cu's vector kernels).
    pub fn vec_len(self) -> usize {
        16 / self.size()
    }
    /// Suffix of the kernel names in elementwise.cu (`bias_act_f32_bf16`, `fill_bf16`, ...).
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
        }
    }
    pub(crate) fn cudnn(self) -> cudnnDataType_t {
        match self {
            DType::F32 => cudnnDataType_t::CUDNN_DATA_FLOAT,
            DType::Bf16 => cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        }
    }
}

/// `--precision`: what the GPU computes convolutions with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Precision {
    /// f32 storage and arithmetic, TF32 off (`CUDNN_FMA_MATH`): matches the CPU reference to ~1e-6.
    F32,
    /// f32 storage; convolutions may round their inputs to TF32 on tensor cores (PyTorch's default for cuDNN conv).
    Tf32,
    /// bf16 activations and bf16 weight copies, f32 accumulation in the convolutions, f32 master weights and moments.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
    /// Storage type of activations and of the weights the convolutions read.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 | Precision::Tf32 => DType::F32,
            Precision::Bf16 => DType::Bf16,
        }
    }
    /// cuDNN math type, as PyTorch sets it: FMA only for f32 with TF32 off, default (TF32 allowed) for tf32,
    /// tensor ops for bf16.
    pub(crate) fn math(self) -> cudnnMathType_t {
        match self {
            Precision::F32 => cudnnMathType_t::CUDNN_FMA_MATH,
            Precision::Tf32 => cudnnMathType_t::CUDNN_DEFAULT_MATH,
            Precision::Bf16 => cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
        }
    }
    /// Relative L2 tolerance of GPU results against the f32 CPU reference (forward and gradients), per DESIGN.
    pub fn parity_tolerance(self) -> f64 {
        match self {
            Precision::F32 => 1e-5,
            Precision::Tf32 => 1e-3,
            Precision::Bf16 => 1e-2,
        }
    }
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Tf32, Precision::Bf16];
}

impl std::str::FromStr for Precision {
    type Err = CudaError;
    fn from_str(s: &str) -> Result<Self, CudaError> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(CudaError::UnknownPrecision(s.to_string())),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::F32);
        let e = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert_eq!(e, "unknown precision \"fp16\": expected f32, tf32 or bf16");
    }

    #[test]
    fn storage_types() {
        assert_eq!(Precision::F32.dtype(), DType::F32);
        assert_eq!(Precision::Tf32.dtype(), DType::F32);
        assert_eq!(Precision::Bf16.dtype().size(), 2);
    }
}

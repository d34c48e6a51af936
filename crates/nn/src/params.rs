//! The flat parameter buffer and its table of named slices (llm.c style).
//!
//! Parameters, gradients and both Adam moments each live in ONE buffer of [`ParamTable::len`] floats, split into
//! named tensors by the same table: a checkpoint is one pass, the gradient norm one loop, Adam one op.
//! Inside the buffer, filters are "channels-last" (see `backend.rs`); [`ParamTable::to_torch`] and
//! [`ParamTable::from_torch`] convert one tensor to and from PyTorch's layout.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{NnError, Result};

/// What a parameter tensor is; decides its internal layout and its PyTorch-default initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// `nn.Conv2d` weight, PyTorch `[cout, cin, k, k]`, internal `[cout, k, k, cin]`.
    ConvWeight,
    /// `nn.ConvTranspose2d` weight, PyTorch `[cin, cout, k, k]`, internal `[cin, k, k, cout]`.
    ConvTWeight,
    /// Bias `[cout]` of either.
    Bias,
}

/// One named tensor of the flat buffer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamEntry {
    /// PyTorch state_dict key, e.g. `enc0.conv1.weight` or Topaz's `enc1.0.weight`.
    pub name: String,
    /// PyTorch shape (what checkpoints hold).
    pub shape: Vec<usize>,
    /// Element offset in the flat buffer.
    pub offset: usize,
    pub kind: ParamKind,
    /// `fan_in` as PyTorch computes it for the layer owning this tensor (`weight.size(1) · k · k`), which sets the
    /// default-init bound `1 / sqrt(fan_in)` of both its weight and its bias.
    pub fan_in: usize,
}

impl ParamEntry {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `offset .. offset + len`.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// A tensor in PyTorch layout: `(name, shape, data)`.
pub type TorchTensor = (String, Vec<usize>, Vec<f32>);

/// Ordered table of named slices of the flat parameter buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamTable {
    entries: Vec<ParamEntry>,
    len: usize,
}

impl ParamTable {
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a tensor; returns its offset. Offsets are aligned to 16 floats (64 bytes) so device kernels and
    /// SIMD loads of each tensor start aligned; the padding stays zero and gets zero gradient.
    pub fn push(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        kind: ParamKind,
        fan_in: usize,
    ) -> usize {
        let offset = self.len.next_multiple_of(16);
        let e = ParamEntry {
            name: name.into(),
            shape: shape.to_vec(),
            offset,
            kind,
            fan_in,
        };
        self.len = offset + e.len();
        self.entries.push(e);
        offset
    }
    /// Total length of the flat buffer in floats (including alignment padding).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Number of trainable scalars (PyTorch's `sum(p.numel())`, padding excluded).
    pub fn num_params(&self) -> usize {
        self.entries.iter().map(ParamEntry::len).sum()
    }
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }
    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
    /// PyTorch's default initialisation of every tensor, from a seeded ChaCha8 stream: weights
    /// `kaiming_uniform_(a=√5)` = U(−1/√fan_in, 1/√fan_in), biases U(−1/√fan_in, 1/√fan_in). Returns the flat
    /// buffer (internal layout). Tensors are drawn in table order, each in its PyTorch element order, so the result
    /// is independent of the internal layout.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut flat = vec![0.0f32; self.len];
        let mut torch = Vec::new();
        for e in &self.entries {
            let bound = 1.0 / (e.fan_in as f64).sqrt();
            torch.clear();
            torch.extend((0..e.len()).map(|_| rng.random_range(-bound..bound) as f32));
            self.from_torch(e, &torch, &mut flat[e.range()]);
        }
        flat
    }

    /// Converts one tensor from internal layout (`internal`, `e.len()` floats) to PyTorch layout (`torch`).
    pub fn to_torch(&self, e: &ParamEntry, internal: &[f32], torch: &mut [f32]) {
        permute(e, internal, torch, false)
    }
    /// Converts one tensor from PyTorch layout to internal layout.
    pub fn from_torch(&self, e: &ParamEntry, torch: &[f32], internal: &mut [f32]) {
        permute(e, torch, internal, true)
    }

    /// The whole flat buffer as `(name, PyTorch shape, PyTorch-layout data)` triples.
    pub fn export_torch(&self, flat: &[f32]) -> Result<Vec<TorchTensor>> {
        self.check_len("parameter buffer", flat.len())?;
        Ok(self
            .entries
            .iter()
            .map(|e| {
                let mut t = vec![0.0; e.len()];
                self.to_torch(e, &flat[e.range()], &mut t);
                (e.name.clone(), e.shape.clone(), t)
            })
            .collect())
    }

    pub(crate) fn check_len(&self, what: &str, got: usize) -> Result<()> {
        if got != self.len {
            return Err(NnError::Length {
                what: what.to_string(),
                expected: self.len,
                got,
            });
        }
        Ok(())
    }
}

/// Moves dimension 1 of a 4-d filter to the end (`to_internal`) or back. Biases are copied.
fn permute(e: &ParamEntry, src: &[f32], dst: &mut [f32], to_internal: bool) {
    assert_eq!(src.len(), e.len());
    assert_eq!(dst.len(), e.len());
    if e.kind == ParamKind::Bias || e.shape.len() != 4 {
        dst.copy_from_slice(src);
        return;
    }
    // PyTorch [a, b, kh, kw] ↔ internal [a, kh, kw, b].
    let (a, b, kh, kw) = (e.shape[0], e.shape[1], e.shape[2], e.shape[3]);
    for i in 0..a {
        for j in 0..b {
            for y in 0..kh {
                for x in 0..kw {
                    let t = ((i * b + j) * kh + y) * kw + x;
                    let n = ((i * kh + y) * kw + x) * b + j;
                    if to_internal {
                        dst[n] = src[t];
                    } else {
                        dst[t] = src[n];
                    }
                }
            }
        }
    }
}

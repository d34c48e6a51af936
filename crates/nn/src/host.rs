//! Host memory for batches that travel between the host and a device.
//!
//! A GPU moves data fastest, and without blocking the host, from and to page-locked ("pinned") memory: the driver
//! copies pageable memory through its own staging buffer first, on the calling thread. [`Backend::alloc_host`]
//! gives a backend the chance to hand out such memory; the CPU backend hands out an ordinary vector.
//!
//! [`Backend::alloc_host`]: crate::Backend::alloc_host

use std::any::Any;
use std::ops::{Deref, DerefMut};

/// Memory behind a [`HostBuf`]. A backend's own kind waits, in both accessors, until no transfer of its own is
/// still reading or writing the memory, so the host never sees a half-finished copy.
pub trait HostMemory: Send + 'static {
    /// Length in floats (never waits).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_slice(&self) -> &[f32];
    fn as_mut_slice(&mut self) -> &mut [f32];
    /// For a backend to recognise memory it allocated (and may transfer asynchronously).
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl HostMemory for Vec<f32> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn as_slice(&self) -> &[f32] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [f32] {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The per-image normalisation of an inference batch: `(v − center) / spread` on the way to the network, undone on
/// the way back. Both maps are done in f64 and rounded once to f32, on whichever side does them (the host, or a
/// device through [`crate::Backend::upload_host`] / [`crate::Backend::download_host`]), so every backend feeds the
/// network the same f32 values.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ImageNorm {
    pub center: f64,
    pub spread: f64,
}

impl ImageNorm {
    /// Raw pixel → network input.
    #[inline]
    pub fn normalize(&self, v: f32) -> f32 {
        ((v as f64 - self.center) / self.spread) as f32
    }
    /// Network output → raw scale (a multiply and an add, each rounded: no fused multiply-add).
    #[inline]
    pub fn restore(&self, v: f32) -> f32 {
        (v as f64 * self.spread + self.center) as f32
    }
}

/// Host memory for transfers, from any thread: [`crate::Backend::host_allocator`].
pub type HostAllocator = std::sync::Arc<dyn Fn(usize) -> crate::Result<HostBuf> + Send + Sync>;

/// `len` floats of host memory from [`crate::Backend::alloc_host`]; derefs to `[f32]`.
pub struct HostBuf {
    mem: Box<dyn HostMemory>,
}

impl HostBuf {
    /// Ordinary (pageable) memory, zero-filled.
    pub fn pageable(len: usize) -> HostBuf {
        HostBuf::new(Box::new(vec![0.0f32; len]))
    }
    /// Wraps a backend's memory.
    pub fn new(mem: Box<dyn HostMemory>) -> HostBuf {
        HostBuf { mem }
    }
    /// Length in floats, without waiting for a transfer in flight (unlike going through `Deref`).
    pub fn len(&self) -> usize {
        self.mem.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The backend-specific memory, for a backend to downcast.
    pub fn memory(&self) -> &dyn HostMemory {
        self.mem.as_ref()
    }
    pub fn memory_mut(&mut self) -> &mut dyn HostMemory {
        self.mem.as_mut()
    }
}

impl Deref for HostBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.mem.as_slice()
    }
}

impl DerefMut for HostBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.mem.as_mut_slice()
    }
}

impl AsRef<[f32]> for HostBuf {
    fn as_ref(&self) -> &[f32] {
        self
    }
}

impl AsMut<[f32]> for HostBuf {
    fn as_mut(&mut self) -> &mut [f32] {
        self
    }
}

/// A copy in ordinary (pageable) memory.
impl Clone for HostBuf {
    fn clone(&self) -> HostBuf {
        HostBuf::new(Box::new(self.to_vec()))
    }
}

/// Equal contents (whatever memory holds them).
impl PartialEq for HostBuf {
    fn eq(&self, other: &HostBuf) -> bool {
        self[..] == other[..]
    }
}

impl std::fmt::Debug for HostBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostBuf({} floats)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pageable_memory_is_zeroed_and_writable() {
        let mut b = HostBuf::pageable(5);
        assert_eq!(&b[..], &[0.0; 5]);
        b[2] = 3.5;
        assert_eq!(b[2], 3.5);
        assert!(b.memory().as_any().downcast_ref::<Vec<f32>>().is_some());
        let c = b.clone();
        assert_eq!(c, b);
        b[0] = 1.0;
        assert_ne!(c, b);
    }
}

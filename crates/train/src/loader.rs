//! The two training-data sources and the batch streams over them. Both sources turn the same [`EpochPlan`]s into
//! the same [`Batch`]es; they differ only in where the pixels live:
//!
//! - in-memory: every pair is copied into RAM once;
//! - streaming: pairs are read from the memory-mapped stacks, so host memory stays bounded whatever the dataset
//!   size.
//!
//! [`Batches::prefetch`] assembles batches on a background thread that keeps at most `prefetch` batches queued (a
//! bounded channel), overlapped with the training step; the training loop uses it for both sources.
//! [`Batches::sync`] assembles them on the caller's thread (tests, tools).

use crate::plan::{Aug, AugmentConfig, EpochPlan};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use cryoden_nn::HostBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Noise2Noise pairs of `patch × patch` f32 images (row-major, `x` fastest), addressable by index.
pub trait PairSource: Send + Sync {
    /// Number of pairs.
    fn len(&self) -> usize;
    /// Side of the square patches.
    fn patch(&self) -> usize;
    /// The input image of pair `i` (`patch * patch` values).
    fn input(&self, i: usize) -> &[f32];
    /// The target image of pair `i`.
    fn target(&self, i: usize) -> &[f32];

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pairs held in RAM, one sample-major buffer per side.
#[derive(Clone, Debug)]
pub struct InMemoryPairs {
    patch: usize,
    input: Vec<f32>,
    target: Vec<f32>,
}

impl InMemoryPairs {
    /// Take ownership of two sample-major stacks of `patch × patch` images.
    ///
    /// # Panics
    /// If the two stacks differ in length or are not a whole number of patches (a programming error: datasets are
    /// checked against their manifest when opened).
    pub fn new(patch: usize, input: Vec<f32>, target: Vec<f32>) -> Self {
        assert!(
            patch > 0 && input.len() == target.len() && input.len().is_multiple_of(patch * patch)
        );
        InMemoryPairs {
            patch,
            input,
            target,
        }
    }

    /// Copy every pair of `src` into RAM.
    pub fn copy_from(src: &dyn PairSource) -> Self {
        let p = src.patch();
        let mut input = Vec::with_capacity(src.len() * p * p);
        let mut target = Vec::with_capacity(src.len() * p * p);
        for i in 0..src.len() {
            input.extend_from_slice(src.input(i));
            target.extend_from_slice(src.target(i));
        }
        InMemoryPairs::new(p, input, target)
    }
}

impl PairSource for InMemoryPairs {
    fn len(&self) -> usize {
        self.input.len() / (self.patch * self.patch)
    }
    fn patch(&self) -> usize {
        self.patch
    }
    fn input(&self, i: usize) -> &[f32] {
        let n = self.patch * self.patch;
        &self.input[i * n..(i + 1) * n]
    }
    fn target(&self, i: usize) -> &[f32] {
        let n = self.patch * self.patch;
        &self.target[i * n..(i + 1) * n]
    }
}

/// One training step's data: `n` images of `size × size` per side, NHWC with one channel (= sample-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// 0-based epoch and step within the epoch.
    pub epoch: u64,
    pub step: usize,
    pub n: usize,
    pub size: usize,
    /// `[n, size, size, 1]`; page-locked on a GPU when the training loop provided the buffers
    /// ([`Batches::give_back`]), so the upload is a DMA the host only starts.
    pub input: HostBuf,
    /// `[n, size, size, 1]`
    pub target: HostBuf,
}

impl Batch {
    fn empty() -> Self {
        Batch {
            epoch: 0,
            step: 0,
            n: 0,
            size: 0,
            input: HostBuf::pageable(0),
            target: HostBuf::pageable(0),
        }
    }

    /// A batch of `n` pairs of `size²` in the given memory (e.g. `Backend::alloc_host`), for [`Batches::give_back`].
    pub fn with_buffers(n: usize, size: usize, input: HostBuf, target: HostBuf) -> Self {
        Batch {
            n,
            size,
            input,
            target,
            ..Batch::empty()
        }
    }
}

/// Which loader feeds training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoaderKind {
    InMemory,
    Streaming,
}

/// Settings that decide the batches (recorded in the run's config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSpec {
    pub seed: u64,
    pub batch: usize,
    /// Side of the crops fed to the network (≤ the patch side).
    pub crop: usize,
    pub augment: AugmentConfig,
}

/// Assemble step `step` of `plan` from `src` into `out` (buffers are reused).
pub fn fill_batch(
    src: &dyn PairSource,
    plan: &EpochPlan,
    epoch: u64,
    step: usize,
    crop: usize,
    out: &mut Batch,
) {
    let items = plan.step(step);
    let (p, c) = (src.patch(), crop);
    let m = c * c;
    out.epoch = epoch;
    out.step = step;
    out.n = items.len();
    out.size = c;
    // Buffers of another size are replaced (by ordinary memory); every value is written below.
    for buf in [&mut out.input, &mut out.target] {
        if buf.len() != items.len() * m {
            *buf = HostBuf::pageable(items.len() * m);
        }
    }
    let one = |k: usize, inp: &mut [f32], tgt: &mut [f32]| {
        let (i, aug) = items[k];
        let (a, b) = (src.input(i as usize), src.target(i as usize));
        let (a, b) = if aug.swap { (b, a) } else { (a, b) };
        aug.apply(a, p, c, inp);
        aug.apply(b, p, c, tgt);
    };
    let pairs = out.input.chunks_mut(m).zip(out.target.chunks_mut(m));
    // Large batches on several threads, one image pair each: one thread assembled 8 × 1024² pairs in ~35 ms on
    // the H200's host, slower than the GPU's training step (docs/PERFORMANCE.md, "Batch upload overlap").
    // Each pair is written by exactly one thread, so the batch is the same either way.
    if items.len() > 1 && m >= PARALLEL_FILL_MIN {
        std::thread::scope(|s| {
            for (k, (inp, tgt)) in pairs.enumerate() {
                s.spawn(move || one(k, inp, tgt));
            }
        });
    } else {
        for (k, (inp, tgt)) in pairs.enumerate() {
            one(k, inp, tgt);
        }
    }
}

/// Crop size (pixels) from which `fill_batch` assembles the pairs of a batch on one thread each (512²: below,
/// a thread start costs more than a pair).
const PARALLEL_FILL_MIN: usize = 512 * 512;

/// A stream of batches from `(first_epoch, first_step)` up to the end of epoch `end_epoch - 1`.
pub struct Batches {
    inner: Inner,
}

enum Inner {
    Sync {
        src: Arc<dyn PairSource>,
        spec: BatchSpec,
        epoch: u64,
        step: usize,
        end_epoch: u64,
        plan: Option<EpochPlan>,
        spare: Option<Batch>,
    },
    Prefetch {
        rx: Option<Receiver<Batch>>,
        recycle: Sender<Batch>,
        worker: Option<JoinHandle<()>>,
    },
}

impl Batches {
    /// Batches of the in-memory kind, assembled on the caller's thread.
    pub fn sync(
        src: Arc<dyn PairSource>,
        spec: BatchSpec,
        first_epoch: u64,
        first_step: usize,
        end_epoch: u64,
    ) -> Self {
        Batches {
            inner: Inner::Sync {
                src,
                spec,
                epoch: first_epoch,
                step: first_step,
                end_epoch,
                plan: None,
                spare: None,
            },
        }
    }

    /// Batches of the streaming kind: a background thread assembles them and keeps at most `prefetch` queued.
    pub fn prefetch(
        src: Arc<dyn PairSource>,
        spec: BatchSpec,
        first_epoch: u64,
        first_step: usize,
        end_epoch: u64,
        prefetch: usize,
    ) -> Self {
        let (tx, rx) = bounded::<Batch>(prefetch.max(1));
        // Consumed batches come back for reuse, so steady state allocates nothing.
        let (recycle, reuse) = unbounded::<Batch>();
        let worker = std::thread::Builder::new()
            .name("cryoden-prefetch".into())
            .spawn(move || {
                let mut step = first_step;
                for epoch in first_epoch..end_epoch {
                    let plan = EpochPlan::new(
                        spec.seed,
                        epoch,
                        src.len(),
                        spec.batch,
                        src.patch(),
                        spec.crop,
                        spec.augment,
                    );
                    while step < plan.steps() {
                        let mut b = reuse.try_recv().unwrap_or_else(|_| Batch::empty());
                        fill_batch(&*src, &plan, epoch, step, spec.crop, &mut b);
                        if tx.send(b).is_err() {
                            return; // the consumer hung up
                        }
                        step += 1;
                    }
                    step = 0;
                }
            })
            .expect("spawning the prefetch thread");
        Batches {
            inner: Inner::Prefetch {
                rx: Some(rx),
                recycle,
                worker: Some(worker),
            },
        }
    }

    /// Whether batches are assembled on a prefetch thread (see [`Batches::give_back`]).
    pub fn prefetching(&self) -> bool {
        matches!(self.inner, Inner::Prefetch { .. })
    }

    /// Hand a consumed batch back so its buffers are reused. A new batch may be handed in too (page-locked memory
    /// for the GPU, [`Batch::with_buffers`]): the prefetch thread fills handed-in batches before making new ones.
    pub fn give_back(&mut self, b: Batch) {
        match &mut self.inner {
            Inner::Sync { spare, .. } => *spare = Some(b),
            Inner::Prefetch { recycle, .. } => {
                let _ = recycle.send(b);
            }
        }
    }
}

impl Iterator for Batches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        match &mut self.inner {
            Inner::Sync {
                src,
                spec,
                epoch,
                step,
                end_epoch,
                plan,
                spare,
            } => loop {
                if *epoch >= *end_epoch {
                    return None;
                }
                let p = plan.get_or_insert_with(|| {
                    EpochPlan::new(
                        spec.seed,
                        *epoch,
                        src.len(),
                        spec.batch,
                        src.patch(),
                        spec.crop,
                        spec.augment,
                    )
                });
                if *step >= p.steps() {
                    *epoch += 1;
                    *step = 0;
                    *plan = None;
                    continue;
                }
                let mut b = spare.take().unwrap_or_else(Batch::empty);
                fill_batch(&**src, p, *epoch, *step, spec.crop, &mut b);
                *step += 1;
                return Some(b);
            },
            Inner::Prefetch { rx, worker, .. } => {
                let got = rx.as_ref().and_then(|rx| rx.recv().ok());
                if got.is_none() {
                    // The worker finished or died: surface a panic instead of ending training early.
                    if let Some(w) = worker.take() {
                        if let Err(p) = w.join() {
                            std::panic::resume_unwind(p);
                        }
                    }
                }
                got
            }
        }
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        if let Inner::Prefetch { rx, worker, .. } = &mut self.inner {
            // Closing the channel makes the worker's next send fail, so it exits.
            drop(rx.take());
            if let Some(w) = worker.take() {
                let _ = w.join();
            }
        }
    }
}

/// The validation set in order, in batches of `batch` (the last one may be smaller), each image the centred
/// `crop × crop` window of its patch, no augmentation.
pub fn validation_batches(
    src: &dyn PairSource,
    batch: usize,
    crop: usize,
) -> impl Iterator<Item = Batch> + '_ {
    let n = src.len();
    (0..n.div_ceil(batch)).map(move |s| {
        let mut b = validation_batch(src, s * batch..((s + 1) * batch).min(n), crop);
        b.step = s;
        b
    })
}

/// Validation pairs `range` as one batch (centre crops, no augmentation).
pub fn validation_batch(src: &dyn PairSource, range: std::ops::Range<usize>, crop: usize) -> Batch {
    let off = ((src.patch() - crop) / 2) as u32;
    let centre = Aug {
        crop_y: off,
        crop_x: off,
        ..Aug::IDENTITY
    };
    let items: Vec<(u32, Aug)> = range.map(|i| (i as u32, centre)).collect();
    let plan = EpochPlan {
        batch: items.len(),
        items,
    };
    let mut b = Batch::empty();
    fill_batch(src, &plan, 0, 0, crop, &mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(n: usize, p: usize) -> InMemoryPairs {
        let input = (0..n * p * p).map(|v| v as f32).collect();
        let target = (0..n * p * p).map(|v| -(v as f32)).collect();
        InMemoryPairs::new(p, input, target)
    }

    #[test]
    fn sync_and_prefetch_give_identical_batches_across_epochs_and_from_mid_epoch() {
        let src: Arc<dyn PairSource> = Arc::new(source(23, 8));
        let spec = BatchSpec {
            seed: 11,
            batch: 4,
            crop: 6,
            augment: AugmentConfig::ALL,
        };
        let a: Vec<Batch> = Batches::sync(src.clone(), spec, 0, 0, 3).collect();
        let b: Vec<Batch> = Batches::prefetch(src.clone(), spec, 0, 0, 3, 2).collect();
        assert_eq!(a.len(), 3 * 5);
        assert_eq!(a, b);
        // Starting mid-run gives the tail of the same sequence.
        let c: Vec<Batch> = Batches::prefetch(src.clone(), spec, 1, 2, 3, 1).collect();
        assert_eq!(&a[5 + 2..], &c[..]);
        let d: Vec<Batch> = Batches::sync(src, spec, 1, 2, 3).collect();
        assert_eq!(c, d);
    }

    #[test]
    fn recycled_buffers_do_not_leak_old_data() {
        let src: Arc<dyn PairSource> = Arc::new(source(9, 4));
        let spec = BatchSpec {
            seed: 2,
            batch: 3,
            crop: 4,
            augment: AugmentConfig::ALL,
        };
        let fresh: Vec<Batch> = Batches::sync(src.clone(), spec, 0, 0, 2).collect();
        let mut it = Batches::prefetch(src, spec, 0, 0, 2, 1);
        let mut got = Vec::new();
        while let Some(b) = it.next() {
            got.push(b.clone());
            it.give_back(b);
        }
        assert_eq!(fresh, got);
    }

    #[test]
    fn swap_exchanges_input_and_target() {
        let src = source(4, 2);
        let spec_items = EpochPlan::new(
            5,
            0,
            4,
            4,
            2,
            2,
            AugmentConfig {
                flip: false,
                rot90: false,
                swap: true,
            },
        );
        let mut b = Batch::empty();
        fill_batch(&src, &spec_items, 0, 0, 2, &mut b);
        for (k, &(i, a)) in spec_items.items.iter().enumerate() {
            let (x, y) = (&b.input[k * 4..k * 4 + 4], &b.target[k * 4..k * 4 + 4]);
            if a.swap {
                assert_eq!((x, y), (src.target(i as usize), src.input(i as usize)));
            } else {
                assert_eq!((x, y), (src.input(i as usize), src.target(i as usize)));
            }
        }
    }

    /// Crops of at least `PARALLEL_FILL_MIN` pixels are assembled one pair per thread: every pair lands in its own
    /// slot, exactly as the one-thread path writes it (each pair's augmentation applied directly).
    #[test]
    fn threaded_fill_matches_pair_by_pair() {
        let (p, c) = (520, 512);
        assert!(c * c >= PARALLEL_FILL_MIN);
        let src = source(5, p);
        let plan = EpochPlan::new(3, 1, 5, 4, p, c, AugmentConfig::ALL);
        let mut b = Batch::empty();
        fill_batch(&src, &plan, 1, 0, c, &mut b);
        let m = c * c;
        let mut want = vec![0.0f32; m];
        for (k, &(i, aug)) in plan.step(0).iter().enumerate() {
            let (x, y) = (src.input(i as usize), src.target(i as usize));
            let (x, y) = if aug.swap { (y, x) } else { (x, y) };
            aug.apply(x, p, c, &mut want);
            assert!(b.input[k * m..(k + 1) * m] == want[..], "input {k}");
            aug.apply(y, p, c, &mut want);
            assert!(b.target[k * m..(k + 1) * m] == want[..], "target {k}");
        }
    }

    #[test]
    fn dropping_a_prefetching_stream_early_stops_its_thread() {
        let src: Arc<dyn PairSource> = Arc::new(source(64, 8));
        let spec = BatchSpec {
            seed: 0,
            batch: 2,
            crop: 8,
            augment: AugmentConfig::ALL,
        };
        let mut it = Batches::prefetch(src, spec, 0, 0, 1000, 2);
        assert!(it.next().is_some());
        drop(it); // must return (joins the worker)
    }

    #[test]
    fn validation_covers_every_sample_once_centred() {
        let src = source(7, 6);
        let v: Vec<Batch> = validation_batches(&src, 3, 4).collect();
        assert_eq!(v.iter().map(|b| b.n).collect::<Vec<_>>(), vec![3, 3, 1]);
        // Sample 6, centre 4×4 of a 6×6 patch starts at (1, 1).
        let last = &v[2];
        assert_eq!(last.input[0], src.input(6)[7]);
        assert_eq!(last.target[15], src.target(6)[4 * 6 + 4]);
    }
}

//! What an epoch feeds the network: the shuffled sample order and each sample's augmentation, both a pure
//! function of `(seed, epoch)`. Because nothing here carries state from one epoch to the next, the in-memory and
//! the streaming loaders produce the same batches, and a resumed run replays exactly the batches an uninterrupted
//! one would have seen (the only state to save is the epoch counter).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Independent random streams drawn from one seed; the stream number keeps them apart so that, e.g., changing the
/// crop size does not change the shuffle order.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
enum Stream {
    Shuffle = 0,
    Augment = 1,
}

fn rng(seed: u64, epoch: u64, stream: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Two streams per epoch; 2^63 epochs is more than enough.
    rng.set_stream(epoch.wrapping_mul(2).wrapping_add(stream as u64));
    rng
}

/// How the training pairs are augmented; each switch is a flag of `cryoden train`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Random horizontal flip (with `rot90`, all 8 symmetries of the square).
    pub flip: bool,
    /// Random rotation by a multiple of 90°.
    pub rot90: bool,
    /// Random swap of input and target (Noise2Noise pairs are symmetric).
    pub swap: bool,
}

impl AugmentConfig {
    /// Everything on: the default, as in Topaz.
    pub const ALL: AugmentConfig = AugmentConfig {
        flip: true,
        rot90: true,
        swap: true,
    };
    /// Nothing: used for validation and tests.
    pub const NONE: AugmentConfig = AugmentConfig {
        flip: false,
        rot90: false,
        swap: false,
    };
}

/// One sample's geometric transform and pairing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aug {
    /// Top-left corner of the crop inside the patch.
    pub crop_y: u32,
    pub crop_x: u32,
    /// Mirror `x` (applied after the crop, before the rotation).
    pub flip: bool,
    /// Counter-clockwise quarter turns, 0..4, as `numpy.rot90(a, k)`.
    pub rot: u8,
    /// Feed the target as input and the input as target.
    pub swap: bool,
}

impl Aug {
    pub const IDENTITY: Aug = Aug {
        crop_y: 0,
        crop_x: 0,
        flip: false,
        rot: 0,
        swap: false,
    };

    /// Copy the `crop × crop` window of `src` (a `patch × patch` image, `x` fastest) into `dst`, transformed.
    ///
    /// Output pixel `(y, x)` reads the crop pixel that `numpy.rot90(np.fliplr(crop) if flip else crop, rot)`
    /// puts there.
    pub fn apply(&self, src: &[f32], patch: usize, crop: usize, dst: &mut [f32]) {
        debug_assert_eq!(src.len(), patch * patch);
        debug_assert_eq!(dst.len(), crop * crop);
        let (cy, cx) = (self.crop_y as usize, self.crop_x as usize);
        debug_assert!(cy + crop <= patch && cx + crop <= patch);
        let n = crop;
        let last = n - 1;
        // np.rot90(m, k)[i, j] = m[j, n-1-i] (k=1), m[n-1-i, n-1-j] (k=2), m[n-1-j, i] (k=3);
        // the flipped crop is f[i, j] = c[i, n-1-j].
        for i in 0..n {
            let row = &mut dst[i * n..(i + 1) * n];
            match (self.rot & 3, self.flip) {
                // Straight row copies for the two cases that keep rows as rows.
                (0, false) => {
                    let s = (cy + i) * patch + cx;
                    row.copy_from_slice(&src[s..s + n]);
                }
                (2, true) => {
                    let s = (cy + last - i) * patch + cx;
                    row.copy_from_slice(&src[s..s + n]);
                }
                (rot, flip) => {
                    for (j, out) in row.iter_mut().enumerate() {
                        // Index into the (possibly flipped) crop m.
                        let (my, mx) = match rot {
                            0 => (i, j),
                            1 => (j, last - i),
                            2 => (last - i, last - j),
                            _ => (last - j, i),
                        };
                        let mx = if flip { last - mx } else { mx };
                        *out = src[(cy + my) * patch + cx + mx];
                    }
                }
            }
        }
    }
}

/// One epoch: which training samples, in which order, with which augmentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochPlan {
    /// `(sample index, augmentation)` in feeding order; `batches * batch` entries (the last partial batch is
    /// dropped so every step has the same shape; the next epoch's shuffle covers the dropped samples).
    pub items: Vec<(u32, Aug)>,
    pub batch: usize,
}

impl EpochPlan {
    /// The plan for `epoch` (0-based) of a run with `seed`, over `n` samples of `patch × patch`, cropped to `crop`.
    pub fn new(
        seed: u64,
        epoch: u64,
        n: usize,
        batch: usize,
        patch: usize,
        crop: usize,
        aug: AugmentConfig,
    ) -> Self {
        assert!(batch > 0 && crop > 0 && crop <= patch);
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.shuffle(&mut rng(seed, epoch, Stream::Shuffle));
        order.truncate(n / batch * batch);
        let mut r = rng(seed, epoch, Stream::Augment);
        let span = (patch - crop) as u32;
        let items = order
            .into_iter()
            .map(|i| {
                // Always draw every field, so switching one augmentation off leaves the others unchanged.
                let crop_y = r.random_range(0..=span);
                let crop_x = r.random_range(0..=span);
                let flip = r.random::<bool>();
                let rot = r.random_range(0..4u8);
                let swap = r.random::<bool>();
                let a = Aug {
                    crop_y,
                    crop_x,
                    flip: flip && aug.flip,
                    rot: if aug.rot90 { rot } else { 0 },
                    swap: swap && aug.swap,
                };
                (i, a)
            })
            .collect();
        EpochPlan { items, batch }
    }

    pub fn steps(&self) -> usize {
        self.items.len() / self.batch
    }

    /// The items of step `s`.
    pub fn step(&self, s: usize) -> &[(u32, Aug)] {
        &self.items[s * self.batch..(s + 1) * self.batch]
    }
}

/// Steps per epoch for `n` training samples (the last partial batch is dropped).
pub fn steps_per_epoch(n: usize, batch: usize) -> usize {
    n / batch
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: build the transformed image with the numpy formulas written out index by index.
    fn reference(src: &[f32], patch: usize, crop: usize, a: Aug) -> Vec<f32> {
        let n = crop;
        let c = |y: usize, x: usize| src[(a.crop_y as usize + y) * patch + a.crop_x as usize + x];
        let m = |y: usize, x: usize| if a.flip { c(y, n - 1 - x) } else { c(y, x) };
        // Rotate k times by 90° counter-clockwise, one quarter turn at a time: r[i, j] = prev[j, n-1-i].
        let mut cur: Vec<f32> = (0..n * n).map(|k| m(k / n, k % n)).collect();
        for _ in 0..a.rot {
            let prev = cur.clone();
            for i in 0..n {
                for j in 0..n {
                    cur[i * n + j] = prev[j * n + (n - 1 - i)];
                }
            }
        }
        cur
    }

    #[test]
    fn transforms_match_numpy_formulas_and_are_the_8_symmetries() {
        let patch = 7;
        let src: Vec<f32> = (0..patch * patch).map(|v| v as f32).collect();
        for crop in [4, 5, 7] {
            let mut seen = Vec::new();
            for flip in [false, true] {
                for rot in 0..4 {
                    let a = Aug {
                        crop_y: (patch - crop) as u32,
                        crop_x: 1.min((patch - crop) as u32),
                        flip,
                        rot,
                        swap: false,
                    };
                    let mut dst = vec![0.0; crop * crop];
                    a.apply(&src, patch, crop, &mut dst);
                    assert_eq!(
                        dst,
                        reference(&src, patch, crop, a),
                        "crop {crop} flip {flip} rot {rot}"
                    );
                    seen.push(dst);
                }
            }
            seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
            seen.dedup();
            assert_eq!(seen.len(), 8, "the 8 transforms must differ");
        }
    }

    #[test]
    fn rot90_once_is_numpy_rot90() {
        // numpy.rot90([[0, 1], [2, 3]]) == [[1, 3], [0, 2]]
        let src = [0.0, 1.0, 2.0, 3.0];
        let mut dst = [0.0; 4];
        Aug {
            rot: 1,
            ..Aug::IDENTITY
        }
        .apply(&src, 2, 2, &mut dst);
        assert_eq!(dst, [1.0, 3.0, 0.0, 2.0]);
        // np.fliplr: [[1, 0], [3, 2]]
        Aug {
            flip: true,
            ..Aug::IDENTITY
        }
        .apply(&src, 2, 2, &mut dst);
        assert_eq!(dst, [1.0, 0.0, 3.0, 2.0]);
    }

    #[test]
    fn plan_is_a_function_of_seed_and_epoch() {
        let a = EpochPlan::new(7, 3, 103, 8, 64, 48, AugmentConfig::ALL);
        let b = EpochPlan::new(7, 3, 103, 8, 64, 48, AugmentConfig::ALL);
        assert_eq!(a, b);
        assert_eq!(a.steps(), 12);
        assert_eq!(a.items.len(), 96);
        let other_epoch = EpochPlan::new(7, 4, 103, 8, 64, 48, AugmentConfig::ALL);
        let other_seed = EpochPlan::new(8, 3, 103, 8, 64, 48, AugmentConfig::ALL);
        assert_ne!(a.items, other_epoch.items);
        assert_ne!(a.items, other_seed.items);
        // Each sample appears at most once per epoch.
        let mut idx: Vec<u32> = a.items.iter().map(|x| x.0).collect();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), 96);
        for (_, g) in &a.items {
            assert!(g.crop_y <= 16 && g.crop_x <= 16 && g.rot < 4);
        }
    }

    #[test]
    fn augmentation_switches_only_mask_their_own_field() {
        let all = EpochPlan::new(1, 0, 50, 5, 32, 32, AugmentConfig::ALL);
        let none = EpochPlan::new(1, 0, 50, 5, 32, 32, AugmentConfig::NONE);
        for ((i, a), (j, b)) in all.items.iter().zip(&none.items) {
            assert_eq!(i, j, "the order must not depend on augmentation");
            assert_eq!(*b, Aug::IDENTITY);
            assert_eq!((a.crop_y, a.crop_x), (0, 0));
        }
        // With 50 samples, every kind of augmentation occurs.
        assert!(all.items.iter().any(|(_, a)| a.flip) && all.items.iter().any(|(_, a)| !a.flip));
        assert!(all.items.iter().any(|(_, a)| a.swap) && all.items.iter().any(|(_, a)| !a.swap));
        for r in 0..4 {
            assert!(all.items.iter().any(|(_, a)| a.rot == r));
        }
    }
}

//! Data statistics (min, max, mean, standard deviation) in f64, mergeable across images so that a streaming
//! writer can fix the header statistics at the end without a second pass.

use rayon::prelude::*;

/// Statistics of a set of f32 values. `std` is the population standard deviation (numpy's `std()`, which is what
/// MRC's `rms` field holds).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stats {
    pub n: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Sum of squared deviations from the mean (for merging).
    #[serde(skip)]
    pub m2: f64,
    /// Number of NaN or infinite values (excluded from the other statistics).
    pub non_finite: u64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            n: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
            non_finite: 0,
        }
    }
}

/// Values per parallel chunk: large enough to amortise rayon, small enough to stay in L2.
const CHUNK: usize = 1 << 16;

impl Stats {
    /// Statistics of `data` (parallel over chunks; each chunk uses sums shifted by its first value, which keeps
    /// f64 cancellation negligible for image data).
    pub fn of(data: &[f32]) -> Stats {
        if data.len() <= CHUNK {
            return Stats::of_chunk(data);
        }
        data.par_chunks(CHUNK)
            .map(Stats::of_chunk)
            .reduce(Stats::default, |a, b| a.merge(&b))
    }

    fn of_chunk(data: &[f32]) -> Stats {
        Stats::of_chunk_finite(data).unwrap_or_else(|| Stats::of_chunk_general(data))
    }

    /// Fast path for data without NaN/Inf (the common case): eight independent accumulators, no branches, so the
    /// compiler vectorises it. `None` if a non-finite value is present.
    fn of_chunk_finite(data: &[f32]) -> Option<Stats> {
        const L: usize = 8;
        let first = *data.first()?;
        if !first.is_finite() {
            return None;
        }
        let shift = first as f64;
        let (mut lo, mut hi) = ([first; L], [first; L]);
        let (mut s, mut s2) = ([0f64; L], [0f64; L]);
        let mut finite = true;
        let mut lanes = data.chunks_exact(L);
        for c in &mut lanes {
            for k in 0..L {
                let v = c[k];
                finite &= v.is_finite();
                lo[k] = if v < lo[k] { v } else { lo[k] };
                hi[k] = if v > hi[k] { v } else { hi[k] };
                let d = v as f64 - shift;
                s[k] += d;
                s2[k] += d * d;
            }
        }
        for (k, &v) in lanes.remainder().iter().enumerate() {
            finite &= v.is_finite();
            lo[k] = lo[k].min(v);
            hi[k] = hi[k].max(v);
            let d = v as f64 - shift;
            s[k] += d;
            s2[k] += d * d;
        }
        if !finite {
            return None;
        }
        let nf = data.len() as f64;
        let (s, s2): (f64, f64) = (s.iter().sum(), s2.iter().sum());
        Some(Stats {
            n: data.len() as u64,
            min: lo.iter().copied().fold(f32::INFINITY, f32::min) as f64,
            max: hi.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64,
            mean: shift + s / nf,
            m2: (s2 - s * s / nf).max(0.0),
            non_finite: 0,
        })
    }

    fn of_chunk_general(data: &[f32]) -> Stats {
        let shift = data.iter().copied().find(|v| v.is_finite()).unwrap_or(0.0) as f64;
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        let mut bad = 0u64;
        for &v in data {
            if !v.is_finite() {
                bad += 1;
                continue;
            }
            lo = lo.min(v);
            hi = hi.max(v);
            let d = v as f64 - shift;
            s += d;
            s2 += d * d;
        }
        let n = data.len() as u64 - bad;
        if n == 0 {
            return Stats {
                non_finite: bad,
                ..Stats::default()
            };
        }
        let nf = n as f64;
        Stats {
            n,
            min: lo as f64,
            max: hi as f64,
            mean: shift + s / nf,
            m2: (s2 - s * s / nf).max(0.0),
            non_finite: bad,
        }
    }

    /// Combine two disjoint sets (Chan et al.'s parallel variance update).
    pub fn merge(&self, o: &Stats) -> Stats {
        if self.n == 0 {
            return Stats {
                non_finite: self.non_finite + o.non_finite,
                ..*o
            };
        }
        if o.n == 0 {
            return Stats {
                non_finite: self.non_finite + o.non_finite,
                ..*self
            };
        }
        let n = self.n + o.n;
        let (na, nb, nn) = (self.n as f64, o.n as f64, n as f64);
        let delta = o.mean - self.mean;
        Stats {
            n,
            min: self.min.min(o.min),
            max: self.max.max(o.max),
            mean: self.mean + delta * nb / nn,
            m2: self.m2 + o.m2 + delta * delta * na * nb / nn,
            non_finite: self.non_finite + o.non_finite,
        }
    }

    /// Population standard deviation (0 for an empty set).
    pub fn std(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_two_pass_and_merges() {
        // Offset data stresses cancellation: values near 1e4 with unit spread.
        let data: Vec<f32> = (0..300_000)
            .map(|i: u64| 10_000.0 + ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let s = Stats::of(&data);
        let mean = data.iter().map(|&v| v as f64).sum::<f64>() / data.len() as f64;
        let var = data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / data.len() as f64;
        assert!(
            (s.mean - mean).abs() < 1e-9 * mean,
            "{} vs {}",
            s.mean,
            mean
        );
        assert!(
            (s.std() - var.sqrt()).abs() < 1e-9,
            "{} vs {}",
            s.std(),
            var.sqrt()
        );
        let (a, b) = data.split_at(12345);
        let m = Stats::of(a).merge(&Stats::of(b));
        assert!((m.std() - s.std()).abs() < 1e-9);
        assert_eq!((m.min, m.max, m.n), (s.min, s.max, s.n));
    }

    #[test]
    fn counts_non_finite() {
        let s = Stats::of(&[1.0, f32::NAN, 3.0, f32::INFINITY]);
        assert_eq!(
            (s.n, s.non_finite, s.mean, s.min, s.max),
            (2, 2, 2.0, 1.0, 3.0)
        );
    }
}

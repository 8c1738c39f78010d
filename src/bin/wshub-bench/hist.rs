//! A small log-linear latency histogram (about 3% relative precision) that merges by adding
//! counts, so worker processes can ship theirs to the coordinator as sparse `[index, count]` pairs.

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two (2^SUB_BITS): 32 gives a relative error under ~3%.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for values up to 2^40 (about 18 minutes in microseconds).
const BUCKETS: usize = ((40 - SUB_BITS as usize) + 1) * SUB as usize;

/// Histogram of non-negative values (the bench records microseconds).
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

/// Sparse wire form of a [`Histogram`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SparseHistogram {
    /// `[bucket index, count]` for every non-empty bucket.
    pub buckets: Vec<(u32, u64)>,
    /// Largest value recorded.
    pub max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], total: 0, max: 0 }
    }
}

fn index_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let mantissa = (v >> shift) - SUB; // 0..SUB
    let idx = ((shift as u64 + 1) * SUB + mantissa) as usize;
    idx.min(BUCKETS - 1)
}

/// Upper bound of the values in bucket `idx`.
fn value_of(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < SUB {
        return idx;
    }
    let shift = idx / SUB - 1;
    let mantissa = idx % SUB;
    ((SUB + mantissa + 1) << shift) - 1
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index_of(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Value at quantile `q` (0..=1), within the bucket precision; 0 when empty.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_of(i).min(self.max);
            }
        }
        self.max
    }

    /// Largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Adds every count of `other` into `self`.
    pub fn merge_sparse(&mut self, other: &SparseHistogram) {
        for &(i, c) in &other.buckets {
            if let Some(slot) = self.counts.get_mut(i as usize) {
                *slot += c;
                self.total += c;
            }
        }
        self.max = self.max.max(other.max);
    }

    /// The sparse wire form.
    pub fn to_sparse(&self) -> SparseHistogram {
        let buckets = self.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i as u32, *c)).collect();
        SparseHistogram { buckets, max: self.max }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.04, "{p50}");
        assert_eq!(h.quantile(1.0), 100_000);
        let mut m = Histogram::default();
        m.merge_sparse(&h.to_sparse());
        assert_eq!(m.total, 100_000);
        assert_eq!(m.quantile(0.99), h.quantile(0.99));
    }
}

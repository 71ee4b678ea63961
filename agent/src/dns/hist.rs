//! A sparse log-linear latency histogram: 8 buckets per power of two (relative error
//! under 7%), so memory grows with the spread of latencies, not with their count.

use std::collections::BTreeMap;

/// Latencies in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    buckets: BTreeMap<u16, u64>,
    count: u64,
    max: u64,
}

fn bucket(v: u64) -> u16 {
    if v < 8 {
        return v as u16;
    }
    let log = 63 - v.leading_zeros();
    let shift = log - 3;
    (((log - 2) << 3) | ((v >> shift) & 7) as u32) as u16
}

/// `[lower, upper)` of a bucket.
fn bounds(i: u16) -> (u64, u64) {
    if i < 8 {
        return (u64::from(i), u64::from(i) + 1);
    }
    let log = u32::from(i >> 3) + 2;
    let lower = (8 | u64::from(i & 7)) << (log - 3);
    (lower, lower + (1 << (log - 3)))
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        *self.buckets.entry(bucket(us)).or_insert(0) += 1;
        self.count += 1;
        self.max = self.max.max(us);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// The `q` quantile (0 < q ≤ 1): the midpoint of its bucket, never above the maximum.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (&i, &n) in &self.buckets {
            seen += n;
            if seen >= rank {
                let (lo, hi) = bounds(i);
                return Some(((lo + hi - 1) / 2).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (&i, &n) in &other.buckets {
            *self.buckets.entry(i).or_insert(0) += n;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_with_small_relative_error() {
        for v in [0u64, 1, 7, 8, 15, 16, 17, 100, 1_000, 50_000, 123_456_789, u64::MAX / 2] {
            let (lo, hi) = bounds(bucket(v));
            assert!(lo <= v && v < hi, "{v}: [{lo}, {hi})");
            assert!((hi - lo) as f64 <= (lo.max(8) as f64) / 8.0 + 1.0, "{v}: [{lo}, {hi})");
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=100 {
            h.record(v * 1_000);
        }
        let p50 = h.quantile(0.5).expect("p50");
        assert!((47_000..=54_000).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).expect("p99");
        assert!((92_000..=100_000).contains(&p99), "{p99}");
        assert_eq!(h.max(), Some(100_000));
        let mut g = Histogram::default();
        g.record(7);
        g.merge(&h);
        assert_eq!((g.count(), g.max()), (101, Some(100_000)));
    }
}

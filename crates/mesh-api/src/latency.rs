//! How long something took, counted into buckets as a Prometheus histogram is, so that `/metrics` can show
//! its distribution (`histogram_quantile`) and not only its last value.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The buckets' upper bounds, in milliseconds: from a loopback RPC's few milliseconds to a ballot that waits
/// for a block on a slow chain.
pub const BOUNDS_MS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

/// Durations observed: how many fell at or under each of [`BOUNDS_MS`] and above the last (not cumulative
/// here; the exposition makes them so), their sum and their count.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// One count per bound, then the count above the last.
    pub buckets: Vec<u64>,
    pub sum_micros: u64,
    pub count: u64,
}

impl Latency {
    /// Counts one duration.
    pub fn observe(&mut self, took: Duration) {
        if self.buckets.len() != BOUNDS_MS.len() + 1 {
            self.buckets = vec![0; BOUNDS_MS.len() + 1];
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MS
            .iter()
            .position(|&ms| micros <= ms.saturating_mul(1_000))
            .unwrap_or(BOUNDS_MS.len());
        self.buckets[bucket] = self.buckets[bucket].saturating_add(1);
        self.sum_micros = self.sum_micros.saturating_add(micros);
        self.count = self.count.saturating_add(1);
    }

    /// The cumulative count at or under each bound, in seconds as Prometheus writes `le`, then `+Inf`.
    pub fn cumulative(&self) -> Vec<(String, u64)> {
        let mut total = 0u64;
        let mut out = Vec::with_capacity(BOUNDS_MS.len() + 1);
        for (i, ms) in BOUNDS_MS.iter().enumerate() {
            total = total.saturating_add(self.buckets.get(i).copied().unwrap_or(0));
            out.push((format!("{}.{:03}", ms / 1000, ms % 1000), total));
        }
        out.push(("+Inf".to_owned(), self.count));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_duration_falls_in_the_first_bucket_that_holds_it() {
        let mut l = Latency::default();
        for ms in [0, 1, 3, 10, 11, 20_000] {
            l.observe(Duration::from_millis(ms));
        }
        assert_eq!(l.count, 6);
        assert_eq!(l.sum_micros, 20_025_000);
        let c = l.cumulative();
        assert_eq!(c[0], ("0.001".to_owned(), 2), "0 and 1 ms are at most 1 ms");
        assert_eq!(c[1], ("0.005".to_owned(), 3));
        assert_eq!(c[2], ("0.010".to_owned(), 4), "10 ms is at most 10 ms");
        assert_eq!(c[3], ("0.025".to_owned(), 5));
        assert_eq!(c[11], ("10.000".to_owned(), 5), "20 s is above every bound");
        assert_eq!(c[12], ("+Inf".to_owned(), 6));
        assert!(
            c.windows(2).all(|w| w[0].1 <= w[1].1),
            "cumulative: never decreasing"
        );
    }

    #[test]
    fn nothing_observed_is_zero_everywhere() {
        let c = Latency::default().cumulative();
        assert_eq!(c.len(), BOUNDS_MS.len() + 1);
        assert!(c.iter().all(|(_, n)| *n == 0));
    }
}

//! How fast one instance answered since the last look: the sidecar's heartbeat takes the 99th
//! percentile of its request → reply times every second and reports it to the instance, where
//! a rebalance Job reads it to pace its copy (`docs/protocol.md`, "Pacing").
//!
//! Replies are counted in log-linear buckets (four per doubling, so a bucket's upper bound is
//! at most a quarter above any value in it) with one relaxed atomic add each; the percentile
//! is the upper bound of the bucket it falls in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::redis::protocol::heartbeat::LatencyReport;

/// Sub-buckets per doubling.
const SUB_BITS: u32 = 2;
/// Buckets: everything from 67 s up shares the last.
const BUCKETS: usize = 100;

/// Reply counts by latency since the last [`LatencyWindow::take_counts`].
#[derive(Debug)]
pub struct LatencyWindow {
    counts: [AtomicU64; BUCKETS],
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The bucket of a latency of `micros`.
fn bucket(micros: u64) -> usize {
    if micros < (1 << SUB_BITS) {
        return 0;
    }
    let exp = 63 - micros.leading_zeros();
    let sub = (micros >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    let index = ((exp - SUB_BITS) << SUB_BITS) + sub as u32 + 1;
    (index as usize).min(BUCKETS - 1)
}

/// The largest latency (µs) bucket `index` holds (its exclusive upper bound, less one).
fn upper_bound(index: usize) -> u64 {
    if index == 0 {
        return (1 << SUB_BITS) - 1;
    }
    let i = index as u64 - 1;
    let exp = i >> SUB_BITS;
    let sub = i & ((1 << SUB_BITS) - 1);
    (((1 << SUB_BITS) + sub + 1) << exp) - 1
}

impl LatencyWindow {
    /// Counts one reply that took `latency`.
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts since the last call; starts the next window. [`LatencyWindow::put_back`]
    /// returns them when their report could not be delivered.
    pub fn take_counts(&self) -> Counts {
        Counts(std::array::from_fn(|i| {
            self.counts[i].swap(0, Ordering::Relaxed)
        }))
    }

    /// Adds counts taken earlier back into the current window (their report never arrived:
    /// the next one covers them).
    pub fn put_back(&self, taken: &Counts) {
        for (c, n) in self.counts.iter().zip(taken.0) {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// Reply counts by bucket, taken out of a [`LatencyWindow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts([u64; BUCKETS]);

impl Counts {
    /// Their 99th percentile and number; `None` when there were none.
    pub fn report(&self) -> Option<LatencyReport> {
        let requests: u64 = self.0.iter().sum();
        if requests == 0 {
            return None;
        }
        // The smallest latency at least 99 % of the replies did not exceed.
        let wanted = requests - requests / 100;
        let mut seen = 0;
        let index = self
            .0
            .iter()
            .position(|c| {
                seen += c;
                seen >= wanted
            })
            .unwrap_or(BUCKETS - 1);
        Some(LatencyReport {
            p99_micros: upper_bound(index),
            requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_lands_in_a_bucket_whose_bound_is_at_most_a_quarter_above_it() {
        let mut micros = 0u64;
        while micros < 60_000_000 {
            let b = bucket(micros);
            assert!(upper_bound(b) >= micros, "{micros} µs in bucket {b}");
            if b > 0 {
                assert!(upper_bound(b - 1) < micros, "{micros} µs below bucket {b}");
            }
            if micros >= 4 {
                assert!(
                    upper_bound(b) * 4 <= micros * 5 + 4,
                    "{micros} µs: {}",
                    upper_bound(b)
                );
            }
            micros = micros + 1 + micros / 97;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn the_report_is_the_99th_percentile_of_the_window_and_the_next_window_starts_empty() {
        let w = LatencyWindow::default();
        assert_eq!(w.take_counts().report(), None);
        for _ in 0..990 {
            w.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            w.record(Duration::from_millis(20));
        }
        let r = w.take_counts().report().unwrap();
        assert_eq!(r.requests, 1_000);
        assert!((100..=125).contains(&r.p99_micros), "{r:?}");
        // One slow reply more, and the 99th percentile is the slow ones'.
        for _ in 0..990 {
            w.record(Duration::from_micros(100));
        }
        for _ in 0..11 {
            w.record(Duration::from_millis(20));
        }
        let r = w.take_counts().report().unwrap();
        assert!((20_000..=25_000).contains(&r.p99_micros), "{r:?}");
        assert_eq!(w.take_counts().report(), None);
    }

    #[test]
    fn counts_put_back_are_reported_with_the_next_window() {
        let w = LatencyWindow::default();
        for _ in 0..5 {
            w.record(Duration::from_secs(1));
        }
        let undelivered = w.take_counts();
        assert_eq!(undelivered.report().map(|r| r.requests), Some(5));
        for _ in 0..100 {
            w.record(Duration::from_micros(100));
        }
        w.put_back(&undelivered);
        let r = w.take_counts().report().unwrap();
        assert_eq!(r.requests, 105);
        assert!(r.p99_micros >= 1_000_000, "{r:?}");
        assert_eq!(w.take_counts().report(), None);
    }
}

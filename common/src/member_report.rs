//! What each consumer reports about itself once a second into the `consumer_status` table,
//! and the producer's dashboard reads back. Shared here so both sides agree on the shape.
//!
//! Consumers are scaled with no fixed ports (compose replicas), so the dashboard cannot ask
//! them; each one writes its own row instead, keyed by a member id (host and pid).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One consumer process's report. Counters are cumulative since the process started; the
/// reader turns them into rates. `outcomes` is a map so that outcomes added later
/// (confirmed, cancelled, expired) show up without a change here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    pub member_id: String,
    pub host: String,
    pub pid: u32,
    /// The admin address, for the operator who wants /status of this member.
    pub admin_port: u16,
    pub started_at: DateTime<Utc>,
    pub reported_at: DateTime<Utc>,
    /// "running" or "paused" (POST /pause).
    pub state: String,
    /// What /ready would say about writes and gaps: `ready` false with the reasons.
    pub ready: bool,
    pub problems: Vec<String>,
    pub partitions: Vec<PartitionReport>,
    /// Average messages per batch over the last interval, and the last batch's size.
    pub batch_size_avg: f64,
    pub batch_size_last: u64,
    pub lock_conflicts: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Cumulative counts per outcome: reserved, rejected, already_applied, confirmed,
    /// cancelled, expired, and refused (commands refused, not orders).
    pub outcomes: BTreeMap<String, u64>,
    /// placed_at -> database commit, of the orders committed in the last interval.
    pub latency: LatencyHistogram,
    /// The busiest products of each of the last few intervals, oldest first. A member may
    /// report twice between two reads of the dashboard; each interval carries its end, so
    /// the reader counts every interval once, whichever report it came in.
    #[serde(default)]
    pub hot_intervals: Vec<HotInterval>,
}

/// One report interval's busiest products: (product_id, orders), busiest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotInterval {
    pub until: DateTime<Utc>,
    pub products: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartitionReport {
    pub partition: i32,
    /// As of librdkafka's last statistics (every 5 s); `None` until the first.
    pub lag: Option<i64>,
}

/// A histogram of milliseconds in logarithmic buckets (about 5% wide), so that reports of
/// several consumers merge exactly and quantiles come out within 5%, in a few hundred
/// bytes whatever the number of orders.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Bucket index -> count; only non-empty buckets.
    pub buckets: BTreeMap<u16, u64>,
}

const GROWTH: f64 = 1.05;
/// 1.05^400 ms is far beyond any latency worth telling apart (about 9 days).
const LAST_BUCKET: u16 = 400;

impl LatencyHistogram {
    /// Bucket 0 holds everything under 1 ms; bucket i >= 1 holds (1.05^(i-1), 1.05^i] ms.
    pub fn bucket(ms: f64) -> u16 {
        if ms.is_nan() || ms < 1.0 {
            return 0;
        }
        // Clamped as a float: an infinite value must not overflow the cast.
        ((ms.ln() / GROWTH.ln()).ceil() + 1.0).clamp(1.0, f64::from(LAST_BUCKET)) as u16
    }

    /// The upper bound of a bucket, in ms: what a quantile falling into it reports.
    pub fn upper_bound(bucket: u16) -> f64 {
        match bucket {
            0 => 1.0,
            i => GROWTH.powi(i32::from(i) - 1),
        }
    }

    pub fn record(&mut self, ms: f64) {
        *self.buckets.entry(Self::bucket(ms)).or_default() += 1;
    }

    pub fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    pub fn merge(&mut self, other: &Self) {
        for (bucket, count) in &other.buckets {
            *self.buckets.entry(*bucket).or_default() += count;
        }
    }

    /// The q-quantile (0..=1) in ms, `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in &self.buckets {
            seen += count;
            if seen >= rank {
                return Some(Self::upper_bound(*bucket));
            }
        }
        self.buckets.keys().next_back().map(|b| Self::upper_bound(*b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_five_percent_and_merge_exactly() {
        let mut low = LatencyHistogram::default();
        let mut high = LatencyHistogram::default();
        for ms in 1..=90 {
            low.record(f64::from(ms));
        }
        for ms in 991..=1000 {
            high.record(f64::from(ms));
        }
        let mut all = low.clone();
        all.merge(&high);
        assert_eq!(all.count(), 100);
        let p50 = all.quantile(0.5).unwrap();
        assert!((50.0..=52.5).contains(&p50), "p50 {p50}");
        let p99 = all.quantile(0.99).unwrap();
        assert!((999.0..=1050.0).contains(&p99), "p99 {p99}");
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
        assert_eq!(LatencyHistogram::bucket(0.3), 0);
        assert_eq!(LatencyHistogram::bucket(f64::INFINITY), LAST_BUCKET);
    }

    #[test]
    fn a_value_never_exceeds_its_bucket_bound_nor_falls_below_the_previous() {
        for ms in [1.0, 1.04, 1.05, 1.06, 7.3, 100.0, 12_345.6] {
            let bucket = LatencyHistogram::bucket(ms);
            assert!(ms <= LatencyHistogram::upper_bound(bucket) * 1.000_000_1, "{ms} in {bucket}");
            assert!(ms > LatencyHistogram::upper_bound(bucket - 1) * 0.999_999_9, "{ms} in {bucket}");
        }
    }
}

//! How many parts (concurrent transactions) a batch is split into: at most `WORKERS`,
//! adapted to the lock conflicts this consumer meets, additive increase and multiplicative
//! decrease, as TCP's congestion window and vector's adaptive request concurrency.
//!
//! Parts of one consumer never share a row (split.rs), so a lone consumer never conflicts
//! and keeps all `WORKERS`. Consumers of one group do share rows: orders are keyed by
//! customer, so every consumer's batch touches every hot product, and on a wide catalog each
//! part of thousands of products overlaps some part of every other consumer. Each
//! conflict costs rows locked, written and rolled back or skipped and retried. Four
//! consumers with four parts each put 16 such transactions on the rows at once; with one
//! each, the catalog ran at 40.6k orders/s instead of 33.3k (README, Scaling). Halving on a
//! conflicted batch and growing by one on a clean one finds that by itself, per consumer,
//! without knowing how many others there are (compose's `--scale` gives no one that number).

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct PartLimit {
    max: usize,
    adaptive: bool,
    current: AtomicUsize,
}

impl PartLimit {
    /// Starts at `max`: a consumer alone in its group never conflicts, and should not have
    /// to earn its workers back first.
    pub fn new(max: usize, adaptive: bool) -> Self {
        let max = max.max(1);
        metrics::gauge!("consumer_write_parts").set(max as f64);
        Self { max, adaptive, current: AtomicUsize::new(max) }
    }

    /// WORKERS: the most parts a batch is split into.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many parts the next batch may be split into.
    pub fn parts(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// After a batch: halves the limit if its parts met `conflicts` lock conflicts, else
    /// raises it by one, within 1..=max. Returns the new limit. Batches are written one
    /// after another, so there is one writer; the atomic is for readers (metrics, tests).
    pub fn observe(&self, conflicts: u64) -> usize {
        if !self.adaptive {
            return self.max;
        }
        let current = self.parts();
        let next = next_limit(current, self.max, conflicts);
        if next != current {
            self.current.store(next, Ordering::Relaxed);
            metrics::gauge!("consumer_write_parts").set(next as f64);
            tracing::debug!(from = current, to = next, conflicts, "write parts limit changed");
        }
        next
    }
}

/// The rule itself, pure: AIMD within 1..=max.
pub fn next_limit(current: usize, max: usize, conflicts: u64) -> usize {
    if conflicts > 0 {
        (current / 2).max(1)
    } else {
        (current + 1).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_halve_the_limit_down_to_one_and_clean_batches_raise_it_by_one_up_to_max() {
        let limit = PartLimit::new(4, true);
        assert_eq!(limit.parts(), 4);
        assert_eq!(limit.observe(3), 2);
        assert_eq!(limit.observe(1), 1);
        assert_eq!(limit.observe(9), 1, "never below one");
        assert_eq!(limit.observe(0), 2);
        assert_eq!(limit.observe(0), 3);
        assert_eq!(limit.observe(0), 4);
        assert_eq!(limit.observe(0), 4, "never above WORKERS");
    }

    #[test]
    fn a_fixed_limit_ignores_conflicts() {
        let limit = PartLimit::new(4, false);
        assert_eq!(limit.observe(5), 4);
        assert_eq!(limit.parts(), 4);
    }

    #[test]
    fn zero_workers_means_one() {
        assert_eq!(PartLimit::new(0, true).parts(), 1);
    }
}

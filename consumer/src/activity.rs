//! What the batch loop did since the status reporter last looked: end-to-end latencies
//! (placed_at -> database commit), orders per product and batch sizes. The reporter takes
//! the interval every second (`take`), so memory stays bounded by the number of distinct
//! products and latency buckets, not by the order rate.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use orderflow_common::member_report::LatencyHistogram;

#[derive(Debug, Default)]
pub struct Activity {
    interval: Mutex<Interval>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Interval {
    pub latency: LatencyHistogram,
    pub products: HashMap<String, u64>,
    pub batches: u64,
    pub messages: u64,
    pub last_batch: u64,
}

/// What the batch loop keeps of a batch's orders until it is committed: per product counts
/// and placed_at, computed before the orders move into the writer task.
#[derive(Debug, Default)]
pub struct BatchActivity {
    products: HashMap<String, u64>,
    placed: Vec<DateTime<Utc>>,
}

impl BatchActivity {
    /// `orders`: each order's products (a cart counts once for each of its lines' products)
    /// and when it was placed (its latency is counted once).
    pub fn new<'a, P: IntoIterator<Item = &'a str>>(orders: impl IntoIterator<Item = (P, DateTime<Utc>)>) -> Self {
        let mut batch = Self::default();
        for (products, placed_at) in orders {
            for product in products {
                // Few distinct products per batch: the lookup hits far more often than it inserts.
                match batch.products.get_mut(product) {
                    Some(count) => *count += 1,
                    None => {
                        batch.products.insert(product.to_owned(), 1);
                    }
                }
            }
            batch.placed.push(placed_at);
        }
        batch
    }
}

impl Activity {
    /// Records a batch whose write committed at `committed_at`, of `size` messages.
    pub fn record(&self, batch: BatchActivity, size: usize, committed_at: DateTime<Utc>) {
        let mut latency = LatencyHistogram::default();
        for placed_at in &batch.placed {
            // A producer's clock ahead of ours gives a negative latency: shown as < 1 ms.
            latency.record((committed_at - *placed_at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
        }
        let mut interval = self.interval.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        interval.latency.merge(&latency);
        for (product, count) in batch.products {
            *interval.products.entry(product).or_default() += count;
        }
        interval.batches += 1;
        interval.messages += size as u64;
        interval.last_batch = size as u64;
    }

    /// The interval since the last call; a new one starts (keeping the last batch size).
    pub fn take(&self) -> Interval {
        let mut interval = self.interval.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let last_batch = interval.last_batch;
        std::mem::replace(&mut *interval, Interval { last_batch, ..Interval::default() })
    }
}

impl Interval {
    /// The `k` products with the most orders, busiest first (ties by product id).
    pub fn top_products(&self, k: usize) -> Vec<(String, u64)> {
        let mut products: Vec<(String, u64)> = self.products.iter().map(|(p, c)| (p.clone(), *c)).collect();
        products.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        products.truncate(k);
        products
    }

    pub fn average_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.messages as f64 / self.batches as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn an_interval_counts_products_latencies_and_batches_then_starts_over() {
        let activity = Activity::default();
        let now = Utc::now();
        let batch = |orders: &[(&'static str, i64)]| BatchActivity::new(orders.iter().map(|(p, ms)| ([*p], now - Duration::milliseconds(*ms))));
        activity.record(batch(&[("HOT", 10), ("HOT", 20), ("COLD", 30)]), 3, now);
        activity.record(batch(&[("HOT", 1000), ("WARM", 40), ("WARM", 50)]), 4, now);
        let interval = activity.take();
        assert_eq!(interval.top_products(2), vec![("HOT".to_owned(), 3), ("WARM".to_owned(), 2)]);
        assert_eq!(interval.latency.count(), 6);
        let p99 = interval.latency.quantile(0.99).unwrap();
        assert!((1000.0..1050.0).contains(&p99), "{p99}");
        assert_eq!(interval.average_batch(), 3.5);
        let next = activity.take();
        assert_eq!(next.batches, 0);
        assert!(next.products.is_empty());
        assert_eq!(next.last_batch, 4, "the last batch size outlives its interval");
    }
}

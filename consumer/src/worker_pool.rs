//! Writing a batch with several workers at once. The batch is split by product, so workers
//! of one consumer never wait for each other's row locks; each part is one transaction,
//! retried until it commits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::join_all;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use orderflow_common::order::ValidOrder;

use orderflow_common::errors::Chain;
use orderflow_common::log_limit::{self, LogLimiter};

use crate::reservation::{reserve, Applied, ErrorClass};
use crate::stats::Stats;
use crate::stuck::StuckWrites;

/// The batch was given up at shutdown; parts may have committed, none of its offsets are.
#[derive(Debug, thiserror::Error)]
#[error("batch abandoned at shutdown before it was fully written")]
pub struct Abandoned;

pub struct WorkerPool {
    pool: Pool,
    workers: usize,
    stats: Arc<Stats>,
    stuck: Arc<StuckWrites>,
    permanent_retry: Duration,
}

/// Transient retries: one warning per SQLSTATE (or "connection") per 10 s.
static TRANSIENT_LOGS: LogLimiter = LogLimiter::new(log_limit::EVERY);
/// Permanent errors: an ERROR on about every slow retry, but never more than one per 10 s.
static PERMANENT_LOGS: LogLimiter = LogLimiter::new(log_limit::EVERY);

impl WorkerPool {
    pub fn new(pool: Pool, workers: usize, stats: Arc<Stats>) -> Self {
        let permanent_retry = Duration::from_millis(crate::settings::BatchSettings::default().permanent_retry_ms);
        Self { pool, workers: workers.max(1), stats, stuck: Arc::default(), permanent_retry }
    }

    /// Where permanent errors are reported (for /ready), and how often they are retried.
    pub fn with_permanent_errors(self, stuck: Arc<StuckWrites>, permanent_retry: Duration) -> Self {
        Self { stuck, permanent_retry, ..self }
    }

    /// Writes every order. Returns only when all parts committed, or with `Abandoned` once
    /// `abandon` fires; no error drops an order, they differ only in how they are retried.
    pub async fn write(&self, orders: &[ValidOrder], abandon: &CancellationToken) -> Result<Applied, Abandoned> {
        let unique = unique_by_order_id(orders);
        let parts = split_by_product(&unique, self.workers);
        let results = join_all(parts.iter().map(|part| self.write_part(part, abandon))).await;
        let mut applied = Applied { already_applied: (orders.len() - unique.len()) as u64, ..Applied::default() };
        for result in results {
            applied += result?;
        }
        Ok(applied)
    }

    async fn write_part(&self, orders: &[&ValidOrder], abandon: &CancellationToken) -> Result<Applied, Abandoned> {
        let mut attempt = 0_u32;
        let mut conflicts = 0;
        // Set while this part is stuck on a permanent error; dropped when it gets through.
        let mut stuck = None;
        loop {
            let error = match reserve(&self.pool, orders).await {
                Ok(applied) => {
                    if stuck.is_some() {
                        tracing::info!(attempt, orders = orders.len(), "reservation went through after permanent errors");
                    }
                    return Ok(Applied { lock_conflicts: conflicts, ..applied });
                }
                Err(error) => error,
            };
            attempt += 1;
            let cause = match error.class() {
                ErrorClass::Conflict => "lock_conflict",
                ErrorClass::Transient => "database_error",
                ErrorClass::Permanent => "permanent",
            };
            let pause = match error.class() {
                ErrorClass::Conflict => {
                    conflicts += 1;
                    self.stats.record_lock_conflict();
                    tracing::debug!(attempt, %error, "retrying after conflict");
                    backoff(attempt, Duration::from_millis(2), Duration::from_millis(250))
                }
                ErrorClass::Transient => {
                    self.stats.record_database_error();
                    let kind = error.sqlstate().map_or("connection", |code| code.code());
                    if let Some(suppressed) = TRANSIENT_LOGS.allow(kind) {
                        tracing::warn!(attempt, error = %Chain(&error), orders = orders.len(), suppressed, "reservation failed, retrying");
                    }
                    backoff(attempt, Duration::from_millis(100), Duration::from_secs(5))
                }
                ErrorClass::Permanent => {
                    // The part keeps its orders: the offsets of this batch are not committed,
                    // so nothing behind it is skipped, and fixing the schema or constraint
                    // lets it continue by itself.
                    let sqlstate = error.sqlstate().map_or("none", |code| code.code()).to_owned();
                    stuck.get_or_insert_with(|| self.stuck.enter());
                    self.stuck.report(Chain(&error).to_string(), &sqlstate, orders.len());
                    self.stats.record_permanent_error(&sqlstate);
                    if let Some(suppressed) = PERMANENT_LOGS.allow(&sqlstate) {
                        tracing::error!(
                            attempt,
                            error = %Chain(&error),
                            sqlstate,
                            orders = orders.len(),
                            retry_in_ms = self.permanent_retry.as_millis() as u64,
                            suppressed,
                            "reservation failed with a permanent error; the batch waits and is retried slowly"
                        );
                    }
                    self.permanent_retry
                }
            };
            // Time spent waiting, by cause: the benchmark's scaling breakdown reads it to tell
            // backoff after lock conflicts from time spent writing.
            metrics::counter!("consumer_backoff_microseconds_total", "cause" => cause).increment(pause.as_micros() as u64);
            tokio::select! {
                _ = abandon.cancelled() => return Err(Abandoned),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// A redelivery inside one batch carries the same order_id twice; the first one wins.
fn unique_by_order_id(orders: &[ValidOrder]) -> Vec<&ValidOrder> {
    let mut seen = HashSet::with_capacity(orders.len());
    orders.iter().filter(|order| seen.insert(order.order_id)).collect()
}

/// Splits into at most `parts` groups by product, keeping offset order inside each group.
/// Products go, busiest first, to the group with the fewest orders so far: a flash sale has
/// a handful of hot products, and a hash would often leave one worker with twice the work
/// of another while the batch waits for the slowest.
fn split_by_product<'a>(orders: &[&'a ValidOrder], parts: usize) -> Vec<Vec<&'a ValidOrder>> {
    let mut per_product: HashMap<&str, usize> = HashMap::new();
    for order in orders {
        *per_product.entry(order.product_id.as_str()).or_default() += 1;
    }
    let mut busiest_first: Vec<(&str, usize)> = per_product.into_iter().collect();
    busiest_first.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut load = vec![0_usize; parts];
    let mut group_of: HashMap<&str, usize> = HashMap::with_capacity(busiest_first.len());
    for (product, count) in busiest_first {
        let lightest = (0..parts).min_by_key(|&group| load[group]).unwrap_or(0);
        load[lightest] += count;
        group_of.insert(product, lightest);
    }
    let mut groups: Vec<Vec<&ValidOrder>> = load.iter().map(|&n| Vec::with_capacity(n)).collect();
    for order in orders {
        groups[group_of[order.product_id.as_str()]].push(order);
    }
    groups.retain(|group| !group.is_empty());
    groups
}

/// Exponential backoff with full jitter: spreads retries of competing consumers apart.
fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base.saturating_mul(2_u32.saturating_pow(attempt.min(16))).min(cap);
    rand::rng().random_range(Duration::ZERO..=ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn order(product: &str) -> ValidOrder {
        ValidOrder {
            order_id: Uuid::now_v7(),
            customer_id: "C".into(),
            product_id: product.into(),
            quantity: 1,
            amount_cents: 100,
            placed_at: Utc::now(),
        }
    }

    #[test]
    fn a_product_never_spans_two_parts_and_order_is_kept() {
        let orders: Vec<ValidOrder> = (0..200).map(|i| order(&format!("P{}", i % 13))).collect();
        let refs: Vec<&ValidOrder> = orders.iter().collect();
        let parts = split_by_product(&refs, 4);
        assert!(parts.len() <= 4);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 200);
        let mut owner = std::collections::HashMap::new();
        for (index, part) in parts.iter().enumerate() {
            for order in part {
                assert_eq!(*owner.entry(order.product_id.clone()).or_insert(index), index);
            }
            // UUIDv7 made in sequence sort in creation order, which is offset order here.
            assert!(part.windows(2).all(|w| w[0].order_id < w[1].order_id));
        }
    }

    #[test]
    fn hot_products_are_spread_evenly_over_the_parts() {
        // Ten equally hot products over four parts: no part may get more than three.
        let orders: Vec<ValidOrder> = (0..1000).map(|i| order(&format!("PROD{:03}", i % 10))).collect();
        let refs: Vec<&ValidOrder> = orders.iter().collect();
        let sizes: Vec<usize> = split_by_product(&refs, 4).iter().map(Vec::len).collect();
        assert_eq!(sizes.len(), 4);
        assert!(sizes.iter().all(|&n| (200..=300).contains(&n)), "{sizes:?}");
        // One product that dominates gets a part to itself.
        let mut skewed: Vec<ValidOrder> = (0..900).map(|_| order("HOT")).collect();
        skewed.extend((0..100).map(|i| order(&format!("COLD{i}"))));
        let refs: Vec<&ValidOrder> = skewed.iter().collect();
        let parts = split_by_product(&refs, 4);
        assert!(parts.iter().any(|part| part.len() == 900 && part.iter().all(|o| o.product_id == "HOT")));
    }

    #[test]
    fn duplicates_inside_a_batch_are_dropped() {
        let first = order("P");
        let orders = vec![first.clone(), order("P"), first];
        assert_eq!(unique_by_order_id(&orders).len(), 2);
    }

    #[test]
    fn backoff_stays_under_its_cap() {
        for attempt in 0..40 {
            assert!(backoff(attempt, Duration::from_millis(2), Duration::from_millis(250)) <= Duration::from_millis(250));
        }
    }
}

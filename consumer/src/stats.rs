//! Counters for the stats log line and /status.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};

use serde::Serialize;

use orderflow_common::command::CommandKind;

use crate::reservation::{kind_index, refusal_index, Applied, REFUSALS};

#[derive(Debug, Default)]
pub struct Stats {
    processed: AtomicU64,
    reserved: AtomicU64,
    rejected: AtomicU64,
    already_applied: AtomicU64,
    failed: AtomicU64,
    lock_conflicts: AtomicU64,
    database_errors: AtomicU64,
    batches: AtomicU64,
    confirmed: AtomicU64,
    cancelled: AtomicU64,
    expired: AtomicU64,
    refused: AtomicU64,
    parked: AtomicU64,
    events_published: AtomicU64,
    /// Messages per second over the last report interval, as f64 bits.
    rate_bits: AtomicU64,
    recent: Mutex<VecDeque<BatchRecord>>,
}

const RECENT_BATCHES: usize = 20;

/// One committed batch, for /status.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRecord {
    pub finished_at: DateTime<Utc>,
    pub size: usize,
    pub duration_ms: f64,
    pub reserved: u64,
    pub rejected: u64,
    pub already_applied: u64,
    pub failed: u64,
    pub lock_conflicts: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Totals {
    /// Messages finished: reserved, rejected, already applied (redeliveries) or failed.
    pub processed: u64,
    pub reserved: u64,
    pub rejected: u64,
    pub already_applied: u64,
    /// Messages that could not be parsed or failed validation: sent to the dead-letter topic.
    pub failed: u64,
    pub lock_conflicts: u64,
    pub database_errors: u64,
    pub batches: u64,
    pub rate_per_second: f64,
    /// Holds ended by a confirm, a cancel, or their deadline (sweeper or a late command).
    pub confirmed: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Commands refused (too late, or their order never came).
    pub refused: u64,
    /// Commands that arrived before their order and wait for it.
    pub parked: u64,
    /// Events acknowledged by `order-events` (batch and outbox).
    pub events_published: u64,
}

impl Stats {
    /// Records a committed batch, in the totals and as Prometheus metrics.
    pub fn record_batch(&self, applied: &Applied, failed: u64, size: usize, elapsed: Duration) {
        let rejected = applied.rejected();
        self.reserved.fetch_add(applied.reserved, Relaxed);
        self.rejected.fetch_add(rejected, Relaxed);
        self.already_applied.fetch_add(applied.already_applied, Relaxed);
        self.failed.fetch_add(failed, Relaxed);
        self.processed.fetch_add(applied.reserved + rejected + applied.already_applied + failed + applied.commands(), Relaxed);
        self.record_commands(applied);
        self.batches.fetch_add(1, Relaxed);
        let mut recent = self.recent.lock().expect("recent batches lock poisoned");
        if recent.len() == RECENT_BATCHES {
            recent.pop_front();
        }
        recent.push_back(BatchRecord {
            finished_at: Utc::now(),
            size,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            reserved: applied.reserved,
            rejected,
            already_applied: applied.already_applied,
            failed,
            lock_conflicts: applied.lock_conflicts,
        });
        drop(recent);
        metrics::histogram!("consumer_batch_size").record(size as f64);
        metrics::histogram!("consumer_batch_duration_seconds").record(elapsed.as_secs_f64());
        metrics::counter!("orders_reserved_total").increment(applied.reserved);
        metrics::counter!("orders_rejected_total", "reason" => "insufficient_stock").increment(applied.insufficient_stock);
        metrics::counter!("orders_rejected_total", "reason" => "unknown_product").increment(applied.unknown_product);
        metrics::counter!("orders_already_applied_total").increment(applied.already_applied);
        metrics::counter!("consumer_invalid_messages_total").increment(failed);
    }

    /// What commands did (in a batch, or decided by the sweeper), and the holds they ended.
    pub fn record_commands(&self, applied: &Applied) {
        self.confirmed.fetch_add(applied.confirmed, Relaxed);
        self.cancelled.fetch_add(applied.cancelled, Relaxed);
        self.refused.fetch_add(applied.refusals(), Relaxed);
        self.parked.fetch_add(applied.parked, Relaxed);
        metrics::counter!("orders_confirmed_total").increment(applied.confirmed);
        metrics::counter!("orders_cancelled_total").increment(applied.cancelled);
        metrics::counter!("commands_parked_total").increment(applied.parked);
        for kind in [CommandKind::Confirm, CommandKind::Cancel] {
            for refusal in REFUSALS {
                let count = applied.refused[kind_index(kind)][refusal_index(refusal)];
                if count > 0 {
                    metrics::counter!("commands_refused_total", "kind" => kind.as_str(), "reason" => refusal.as_str()).increment(count);
                }
            }
        }
        self.record_expired(applied.expired);
    }

    /// Holds released at their deadline.
    pub fn record_expired(&self, expired: u64) {
        self.expired.fetch_add(expired, Relaxed);
        metrics::counter!("orders_expired_total").increment(expired);
    }

    pub fn record_events(&self, published: u64) {
        self.events_published.fetch_add(published, Relaxed);
    }

    pub fn record_lock_conflict(&self) {
        self.lock_conflicts.fetch_add(1, Relaxed);
        metrics::counter!("lock_conflicts_total").increment(1);
        metrics::counter!("transaction_retries_total", "cause" => "lock_conflict").increment(1);
    }

    pub fn record_database_error(&self) {
        self.database_errors.fetch_add(1, Relaxed);
        metrics::counter!("transaction_retries_total", "cause" => "database_error").increment(1);
    }

    /// A permanent error: counted with the database errors in the totals, and by SQLSTATE.
    pub fn record_permanent_error(&self, sqlstate: &str) {
        self.database_errors.fetch_add(1, Relaxed);
        metrics::counter!("consumer_permanent_errors_total", "sqlstate" => sqlstate.to_owned()).increment(1);
    }

    /// The last batches, newest first.
    pub fn recent_batches(&self) -> Vec<BatchRecord> {
        self.recent.lock().expect("recent batches lock poisoned").iter().rev().cloned().collect()
    }

    pub fn totals(&self) -> Totals {
        Totals {
            processed: self.processed.load(Relaxed),
            reserved: self.reserved.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            already_applied: self.already_applied.load(Relaxed),
            failed: self.failed.load(Relaxed),
            lock_conflicts: self.lock_conflicts.load(Relaxed),
            database_errors: self.database_errors.load(Relaxed),
            batches: self.batches.load(Relaxed),
            rate_per_second: f64::from_bits(self.rate_bits.load(Relaxed)),
            confirmed: self.confirmed.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            expired: self.expired.load(Relaxed),
            refused: self.refused.load(Relaxed),
            parked: self.parked.load(Relaxed),
            events_published: self.events_published.load(Relaxed),
        }
    }

    /// Logs a stats line every `interval` and keeps the current rate for /status.
    pub async fn report_every(&self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let (mut last_processed, mut last_at) = (self.processed.load(Relaxed), Instant::now());
        loop {
            ticker.tick().await;
            let processed = self.processed.load(Relaxed);
            let rate = (processed - last_processed) as f64 / last_at.elapsed().as_secs_f64();
            self.rate_bits.store(rate.to_bits(), Relaxed);
            (last_processed, last_at) = (processed, Instant::now());
            let totals = self.totals();
            tracing::info!(
                processed = totals.processed,
                reserved = totals.reserved,
                rejected = totals.rejected,
                confirmed = totals.confirmed,
                cancelled = totals.cancelled,
                expired = totals.expired,
                refused = totals.refused,
                failed = totals.failed,
                lock_conflicts = totals.lock_conflicts,
                throughput_msg_per_s = format!("{rate:.1}"),
                "consumer stats"
            );
        }
    }
}

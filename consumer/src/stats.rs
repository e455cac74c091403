//! Counters for the stats log line and /status.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::reservation::Applied;

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
}

impl Stats {
    /// Records a committed batch, in the totals and as Prometheus metrics.
    pub fn record_batch(&self, applied: &Applied, failed: u64, size: usize, elapsed: Duration) {
        let rejected = applied.rejected();
        self.reserved.fetch_add(applied.reserved, Relaxed);
        self.rejected.fetch_add(rejected, Relaxed);
        self.already_applied.fetch_add(applied.already_applied, Relaxed);
        self.failed.fetch_add(failed, Relaxed);
        self.processed.fetch_add(applied.reserved + rejected + applied.already_applied + failed, Relaxed);
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
                failed = totals.failed,
                lock_conflicts = totals.lock_conflicts,
                throughput_msg_per_s = format!("{rate:.1}"),
                "consumer stats"
            );
        }
    }
}

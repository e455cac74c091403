//! The batch loop: collect a batch, drop what this member no longer owns, write it, then
//! commit offsets. Strictly one batch at a time, so offsets are committed only after the
//! database commit of everything before them, and the consumer polls (and so sees
//! rebalances) only between batches.

use std::collections::HashSet;
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use orderflow_common::order::{InvalidMessage, PlacedOrder, ValidOrder};

use crate::context::OrderflowContext;
use crate::offsets::ProcessedOffsets;
use crate::settings::BatchSettings;
use crate::stats::Stats;
use crate::worker_pool::WorkerPool;

pub type OrderConsumer = StreamConsumer<OrderflowContext>;

/// One message as read: where it came from, and the order or why there is none.
struct Received {
    partition: i32,
    offset: i64,
    order: Result<ValidOrder, InvalidMessage>,
}

pub struct Pipeline {
    pub consumer: Arc<OrderConsumer>,
    pub workers: WorkerPool,
    pub offsets: Arc<ProcessedOffsets>,
    pub stats: Arc<Stats>,
    pub settings: BatchSettings,
    pub topic: String,
}

impl Pipeline {
    /// Runs until `shutdown`; then finishes the batch in hand (unless `abandon` fires
    /// first) and commits synchronously.
    pub async fn run(self, shutdown: CancellationToken, abandon: CancellationToken) {
        while !shutdown.is_cancelled() {
            let batch = self.collect(&shutdown).await;
            if batch.is_empty() {
                continue;
            }
            if self.process(batch, &abandon).await.is_err() {
                tracing::warn!("batch abandoned at shutdown; its offsets stay uncommitted and it will be redelivered");
                break;
            }
        }
        let done = self.offsets.to_commit(&self.topic, None);
        if done.count() > 0 {
            match self.consumer.commit(&done, CommitMode::Sync) {
                Ok(()) => tracing::info!(partitions = done.count(), "final offset commit done"),
                Err(error) => tracing::warn!(%error, "final offset commit failed; redelivered orders are applied idempotently"),
            }
        }
        self.consumer.unsubscribe();
        tracing::info!("batch loop stopped");
    }

    /// Waits for a first message, then gathers more until the batch is full or
    /// `max_wait` has passed. Shutdown ends the wait with whatever is in hand.
    async fn collect(&self, shutdown: &CancellationToken) -> Vec<Received> {
        let max = self.settings.max_messages as usize;
        let mut batch = Vec::with_capacity(max.min(10_000));
        let mut deadline = None;
        while batch.len() < max {
            let until = deadline.unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(1));
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(until) => {
                    if deadline.is_some() { break }
                    continue
                }
                message = self.consumer.recv() => message,
            };
            match message {
                Ok(message) => {
                    batch.push(Received {
                        partition: message.partition(),
                        offset: message.offset(),
                        order: PlacedOrder::from_payload(message.payload()),
                    });
                    deadline.get_or_insert_with(|| Instant::now() + self.settings.max_wait());
                }
                Err(error) => tracing::warn!(%error, "kafka consumer error"),
            }
        }
        batch
    }

    async fn process(&self, batch: Vec<Received>, abandon: &CancellationToken) -> Result<(), crate::worker_pool::Abandoned> {
        let started = Instant::now();
        let batch = self.drop_revoked(batch);
        let mut orders = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        let mut failed = 0;
        for received in batch {
            positions.push((received.partition, received.offset));
            match received.order {
                Ok(order) => orders.push(order),
                Err(error) => {
                    failed += 1;
                    tracing::warn!(partition = received.partition, offset = received.offset, %error, "skipping invalid message");
                }
            }
        }
        let applied = self.workers.write(&orders, abandon).await?;
        let positions_len = positions.len();
        for (partition, offset) in positions {
            self.offsets.record(partition, offset);
        }
        let commit = self.offsets.to_commit(&self.topic, None);
        if let Err(error) = self.consumer.commit(&commit, CommitMode::Async) {
            tracing::warn!(%error, "could not queue the offset commit; retried after the next batch");
        }
        self.stats.record_batch(&applied, failed, positions_len, started.elapsed());
        tracing::debug!(
            orders = orders.len(),
            reserved = applied.reserved,
            rejected = applied.rejected(),
            already_applied = applied.already_applied,
            failed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        Ok(())
    }

    /// Messages of partitions revoked while the batch was being collected belong to their
    /// new owner now; writing them would be harmless (idempotent) but wasted.
    fn drop_revoked(&self, batch: Vec<Received>) -> Vec<Received> {
        let Ok(assignment) = self.consumer.assignment() else {
            return batch;
        };
        let owned: HashSet<i32> = assignment.elements().iter().map(|e| e.partition()).collect();
        let before = batch.len();
        let kept: Vec<Received> = batch.into_iter().filter(|r| owned.contains(&r.partition)).collect();
        if kept.len() < before {
            tracing::info!(dropped = before - kept.len(), "dropped messages of revoked partitions");
        }
        kept
    }
}

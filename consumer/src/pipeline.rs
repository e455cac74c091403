//! The batch loop: collect a batch, drop what this member no longer owns, write it, then
//! commit offsets, which move only past messages whose effects PostgreSQL has committed.

use std::collections::HashSet;
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use orderflow_common::order::{InvalidMessage, PlacedOrder, ValidOrder};

use crate::context::OrderflowContext;
use crate::dead_letters::{DeadLetter, DeadLetterQueue};
use crate::gaps::{self, Gaps};
use crate::offsets::ProcessedOffsets;
use crate::settings::BatchSettings;
use crate::stats::Stats;
use crate::reservation::Applied;
use crate::worker_pool::{Abandoned, WorkerPool};

pub type OrderConsumer = StreamConsumer<OrderflowContext>;

/// One message as read: where it came from, and the order or why there is none.
struct Received {
    partition: i32,
    offset: i64,
    /// The order, or the message as it arrived (for the dead-letter topic).
    order: Result<ValidOrder, DeadLetter>,
}

pub struct Pipeline {
    pub consumer: Arc<OrderConsumer>,
    pub workers: Arc<WorkerPool>,
    pub dead_letters: Arc<DeadLetterQueue>,
    pub offsets: Arc<ProcessedOffsets>,
    pub gaps: Arc<Gaps>,
    pub stats: Arc<Stats>,
    pub settings: BatchSettings,
    pub topic: String,
}

/// A batch being written while the next one is collected.
struct InFlight {
    write: JoinHandle<Result<Applied, Abandoned>>,
    positions: Vec<(i32, i64)>,
    failed: u64,
    started: Instant,
}

impl Pipeline {
    /// Runs until `shutdown`; then finishes the batches in hand (unless `abandon` fires
    /// first) and commits synchronously.
    ///
    /// Two batches overlap: batch k is written while batch k+1 is fetched and parsed.
    /// Writes stay strictly sequential, so a partition's offset is committed only after
    /// every earlier message of it is in PostgreSQL.
    pub async fn run(self, shutdown: CancellationToken, abandon: CancellationToken) {
        let mut in_flight: Option<InFlight> = None;
        loop {
            let batch = if shutdown.is_cancelled() {
                Vec::new()
            } else {
                self.collect(&shutdown, in_flight.is_some()).await
            };
            if let Some(previous) = in_flight.take() {
                if self.finish(previous).await.is_err() {
                    tracing::warn!("batch abandoned at shutdown; its offsets stay uncommitted and it will be redelivered");
                    break;
                }
            }
            if batch.is_empty() {
                if shutdown.is_cancelled() {
                    break;
                }
                continue;
            }
            in_flight = Some(self.start(batch, &abandon));
        }
        let done = self.offsets.to_commit(&self.topic, Some(&self.assigned()));
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
    /// `max_wait` has passed. Shutdown ends the wait with whatever is in hand. With a batch
    /// in flight, an idle wait also ends after `max_wait`, so that batch's offsets are
    /// committed without waiting for more traffic.
    async fn collect(&self, shutdown: &CancellationToken, batch_in_flight: bool) -> Vec<Received> {
        let max = self.settings.max_messages as usize;
        let mut batch = Vec::with_capacity(max.min(10_000));
        let mut deadline = batch_in_flight.then(|| Instant::now() + self.settings.max_wait());
        while batch.len() < max {
            let until = deadline.unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(1));
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(until) => {
                    if deadline.is_some() { break }
                    continue
                }
                message = self.consumer.recv() => match message {
                    // A partition whose next offset was deleted: not a consumer error to log
                    // and forget, but a gap (see gaps.rs).
                    Err(error) if gaps::is_offset_reset(&error) => {
                        self.gaps.signal();
                        continue
                    }
                    message => message,
                },
            };
            match message {
                Ok(message) => {
                    let order = PlacedOrder::from_payload(message.payload()).map_err(|error: InvalidMessage| DeadLetter {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                        error: error.to_string(),
                    });
                    batch.push(Received { partition: message.partition(), offset: message.offset(), order });
                    deadline.get_or_insert_with(|| Instant::now() + self.settings.max_wait());
                }
                Err(error) => tracing::warn!(%error, "kafka consumer error"),
            }
        }
        batch
    }

    fn start(&self, batch: Vec<Received>, abandon: &CancellationToken) -> InFlight {
        let started = Instant::now();
        let batch = self.drop_revoked(batch);
        let mut orders = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        let mut letters = Vec::new();
        for received in batch {
            positions.push((received.partition, received.offset));
            match received.order {
                Ok(order) => orders.push(order),
                Err(letter) => {
                    tracing::warn!(partition = letter.partition, offset = letter.offset, error = %letter.error, "invalid message goes to the dead-letter topic");
                    letters.push(letter);
                }
            }
        }
        let failed = letters.len() as u64;
        let (workers, dead_letters, abandon) = (self.workers.clone(), self.dead_letters.clone(), abandon.clone());
        let write = tokio::spawn(async move {
            let (applied, dead_lettered) =
                tokio::join!(workers.write(&orders, &abandon), send_dead_letters(&dead_letters, &letters, &abandon));
            dead_lettered?;
            applied
        });
        InFlight { write, positions, failed, started }
    }

    async fn finish(&self, in_flight: InFlight) -> Result<(), Abandoned> {
        let applied = match in_flight.write.await {
            Ok(result) => result?,
            Err(error) => {
                tracing::error!(%error, "batch writer task failed");
                return Err(Abandoned);
            }
        };
        // A partition revoked while this batch was written belongs to another member now:
        // its offsets are that member's to commit, and it re-applies these orders idempotently.
        let assigned = self.assigned();
        for (partition, offset) in &in_flight.positions {
            if assigned.contains(partition) {
                self.offsets.record(*partition, *offset);
            }
        }
        let commit = self.offsets.to_commit(&self.topic, Some(&assigned));
        if commit.count() > 0 {
            if let Err(error) = self.consumer.commit(&commit, CommitMode::Async) {
                tracing::warn!(%error, "could not queue the offset commit; retried after the next batch");
            }
        }
        let size = in_flight.positions.len();
        self.stats.record_batch(&applied, in_flight.failed, size, in_flight.started.elapsed());
        tracing::debug!(
            messages = size,
            reserved = applied.reserved,
            rejected = applied.rejected(),
            already_applied = applied.already_applied,
            failed = in_flight.failed,
            elapsed_ms = in_flight.started.elapsed().as_millis() as u64,
            "batch committed"
        );
        Ok(())
    }

    fn assigned(&self) -> Vec<i32> {
        self.consumer
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default()
    }

    /// Messages of partitions revoked while the batch was being collected belong to their
    /// new owner now; writing them would be harmless (idempotent) but wasted.
    fn drop_revoked(&self, batch: Vec<Received>) -> Vec<Received> {
        let owned: HashSet<i32> = self.assigned().into_iter().collect();
        let before = batch.len();
        let kept: Vec<Received> = batch.into_iter().filter(|r| owned.contains(&r.partition)).collect();
        if kept.len() < before {
            tracing::info!(dropped = before - kept.len(), "dropped messages of revoked partitions");
        }
        kept
    }
}

/// Retries until the dead-letter topic took every letter: an invalid message's offset is
/// committed only once it is safe in `orders-dlq`.
async fn send_dead_letters(queue: &DeadLetterQueue, letters: &[DeadLetter], abandon: &CancellationToken) -> Result<(), Abandoned> {
    if letters.is_empty() {
        return Ok(());
    }
    loop {
        match queue.send(letters).await {
            Ok(()) => return Ok(()),
            Err(error) => tracing::error!(%error, letters = letters.len(), "dead-letter topic did not take the messages; retrying"),
        }
        tokio::select! {
            _ = abandon.cancelled() => return Err(Abandoned),
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

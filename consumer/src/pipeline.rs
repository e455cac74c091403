//! The batch loop: collect a batch, drop what this member no longer owns, write it, then
//! commit offsets, which move only past messages whose effects PostgreSQL has committed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use orderflow_common::errors::Chain;
use orderflow_common::log_limit::{self, LogLimiter};
use orderflow_common::command::Inbound;
use orderflow_common::events::OrderEvent;
use orderflow_common::order::InvalidMessage;

use crate::activity::{Activity, BatchActivity};
use crate::context::OrderflowContext;
use crate::control::Control;
use crate::dead_letters::{DeadLetter, DeadLetterQueue};
use crate::events::EventPublisher;
use crate::fault;
use crate::outbox::{self, Relay};
use crate::protocol_trace::{self, CommitCause, Position, Step};
use crate::gaps::{self, Gaps};
use crate::leave::{self, Left};
use crate::offsets::{self, ProcessedOffsets, Ticket};
use crate::settings::BatchSettings;
use crate::stats::Stats;
use crate::reservation::Applied;
use crate::worker_pool::{Abandoned, WorkerPool};

pub type OrderConsumer = StreamConsumer<OrderflowContext>;

/// Why the batch loop stopped other than by shutdown. Either way the process must end: the
/// loop cannot go on without its writer, nor with a Kafka client that is no longer usable.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("the batch writer task failed")]
    Writer(#[source] JoinError),
    #[error("fatal Kafka consumer error")]
    Kafka(#[source] KafkaError),
}

static KAFKA_ERRORS: LogLimiter = LogLimiter::new(log_limit::EVERY);
static COMMIT_ERRORS: LogLimiter = LogLimiter::new(log_limit::EVERY);
static DEAD_LETTER_ERRORS: LogLimiter = LogLimiter::new(log_limit::EVERY);
static EVENT_ERRORS: LogLimiter = LogLimiter::new(log_limit::EVERY);

/// One message as read: where it came from, and the order or command, or why there is none.
struct Received {
    partition: i32,
    offset: i64,
    /// The partition's assignment when the message was polled (see `offsets::current`).
    ticket: Option<Ticket>,
    /// The order or command, or the message as it arrived (for the dead-letter topic).
    message: Result<Inbound, DeadLetter>,
}

pub struct Pipeline {
    pub consumer: Arc<OrderConsumer>,
    pub workers: Arc<WorkerPool>,
    pub dead_letters: Arc<DeadLetterQueue>,
    pub offsets: Arc<ProcessedOffsets>,
    pub gaps: Arc<Gaps>,
    pub stats: Arc<Stats>,
    /// Latencies and busiest products, for the status report (status_report.rs).
    pub activity: Arc<Activity>,
    pub settings: BatchSettings,
    pub topic: String,
    pub control: Arc<Control>,
    /// How long a write may take before fetching is paused and the consumer is polled
    /// while it waits (see `wait_for_write`).
    pub hold_after: Duration,
    /// `order-events`, unless ORDER_EVENTS is off: a batch's events are published (and
    /// acknowledged) before its offsets are recorded.
    pub events: Option<Arc<EventPublisher>>,
    /// Relays outbox rows a batch wrote, right after it.
    pub relay: Option<Arc<Relay>>,
}

/// A batch being written while the next one is collected.
struct InFlight {
    write: JoinHandle<Result<Applied, Abandoned>>,
    positions: Vec<(i32, i64, Option<Ticket>)>,
    failed: u64,
    started: Instant,
    activity: BatchActivity,
}

impl Pipeline {
    /// Runs until `shutdown`; then finishes the batches in hand (unless `abandon` fires
    /// first) and commits synchronously.
    ///
    /// Two batches overlap: batch k is written while batch k+1 is fetched and parsed.
    /// Writes stay strictly sequential, so a partition's offset is committed only after
    /// every earlier message of it is in PostgreSQL.
    pub async fn run(self, shutdown: CancellationToken, abandon: CancellationToken) -> Result<(), PipelineError> {
        let result = self.batches(&shutdown, &abandon).await;
        // Also after a failure: every recorded offset is in PostgreSQL already, and
        // committing it spares the next owner some redelivery.
        let done = self.offsets.to_commit(&self.topic, Some(&self.assigned()));
        if done.count() > 0 {
            match self.consumer.commit(&done, CommitMode::Sync) {
                Ok(()) => {
                    protocol_trace::record(|| protocol_trace::offsets_committed(&done, CommitCause::Final));
                    tracing::info!(partitions = done.count(), "final offset commit done")
                }
                Err(error) => tracing::warn!(error = %Chain(&error), "final offset commit failed; redelivered orders are applied idempotently"),
            }
        }
        if let Err(PipelineError::Kafka(_)) = &result {
            // librdkafka cannot close a client after a fatal error: destroying it waits for a
            // group leave that never completes, and the process would hang on its way out
            // instead of exiting. It is exiting anyway, so the client is leaked.
            std::mem::forget(self.consumer.clone());
        } else {
            match leave::leave_group(&self.consumer, leave::LEAVE_LIMIT).await {
                Left::Closed => tracing::info!("left the consumer group"),
                left => tracing::warn!(
                    ?left,
                    limit_ms = leave::LEAVE_LIMIT.as_millis() as u64,
                    "the consumer did not close; exiting without leaving the group, which reassigns its partitions after session.timeout.ms"
                ),
            }
        }
        tracing::info!("batch loop stopped");
        result
    }

    async fn batches(&self, shutdown: &CancellationToken, abandon: &CancellationToken) -> Result<(), PipelineError> {
        let mut in_flight: Option<InFlight> = None;
        loop {
            let mut batch = if shutdown.is_cancelled() {
                Vec::new()
            } else {
                self.collect(shutdown, in_flight.is_some()).await?
            };
            if let Some(previous) = in_flight.take() {
                if !self.finish(previous, &mut batch).await? {
                    tracing::warn!("batch abandoned at shutdown; its offsets stay uncommitted and it will be redelivered");
                    return Ok(());
                }
            }
            if batch.is_empty() {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                continue;
            }
            in_flight = Some(self.start(batch, abandon));
        }
    }

    /// Waits for a first message, then gathers more until the batch is full or
    /// `max_wait` has passed. Shutdown ends the wait with whatever is in hand. With a batch
    /// in flight, an idle wait also ends after `max_wait`, so that batch's offsets are
    /// committed without waiting for more traffic.
    async fn collect(&self, shutdown: &CancellationToken, batch_in_flight: bool) -> Result<Vec<Received>, PipelineError> {
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
                    batch.push(self.received(&message));
                    deadline.get_or_insert_with(|| Instant::now() + self.settings.max_wait());
                }
                Err(error) => consumer_error(error)?,
            }
        }
        Ok(batch)
    }

    fn start(&self, batch: Vec<Received>, abandon: &CancellationToken) -> InFlight {
        let started = Instant::now();
        let batch = self.drop_revoked(batch);
        protocol_trace::record(|| Step::Polled {
            messages: batch.iter().map(|r| (Position { partition: r.partition, offset: r.offset }, protocol_trace::message(r.message.as_ref().ok()))).collect(),
        });
        let mut messages = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        let mut letters = Vec::new();
        for received in batch {
            positions.push((received.partition, received.offset, received.ticket));
            match received.message {
                Ok(message) => messages.push(message),
                Err(letter) => {
                    tracing::warn!(partition = letter.partition, offset = letter.offset, error = %letter.error, "invalid message goes to the dead-letter topic");
                    letters.push(letter);
                }
            }
        }
        let failed = letters.len() as u64;
        // Orders only: a command names no product and has no placed_at (its order's
        // latency was counted when the order committed).
        let activity = BatchActivity::new(messages.iter().filter_map(|message| match message {
            Inbound::Order(order) => Some((order.lines().iter().map(|line| line.product_id.as_str()), order.placed_at)),
            Inbound::Command(_) => None,
        }));
        let (workers, dead_letters, abandon) = (self.workers.clone(), self.dead_letters.clone(), abandon.clone());
        let (events, relay) = (self.events.clone(), self.relay.clone());
        let write = tokio::spawn(async move {
            let (written, dead_lettered) =
                tokio::join!(workers.write(&messages, &abandon), send_dead_letters(&dead_letters, letters, &abandon));
            dead_lettered?;
            let written = written?;
            if !messages.is_empty() {
                fault::after_commit(fault::Point::Batch);
            }
            // Every part has committed: the events are of committed changes only. The
            // offsets wait for their acknowledgement (the write task ends after it).
            if let Some(events) = &events {
                send_events(events, &written.events, &abandon).await?;
            }
            if written.outbox > 0 {
                outbox::after_commit(relay.as_deref()).await;
            }
            Ok(written.applied)
        });
        InFlight { write, positions, failed, started, activity }
    }

    /// Waits for the batch in flight, then records and commits its offsets. `Ok(false)`: it
    /// was abandoned at shutdown. Messages polled meanwhile join `next`.
    async fn finish(&self, mut in_flight: InFlight, next: &mut Vec<Received>) -> Result<bool, PipelineError> {
        let applied = match self.wait_for_write(&mut in_flight.write, next).await? {
            Ok(applied) => applied,
            Err(Abandoned) => return Ok(false),
        };
        // A partition revoked while this batch was written belongs to another member now:
        // its offsets are that member's to commit, and it re-applies these orders idempotently.
        let assigned = self.assigned();
        let recordable = offsets::recordable(&in_flight.positions, &assigned, |p| self.offsets.ticket(p));
        for (partition, offset) in &recordable {
            self.offsets.record(*partition, *offset);
        }
        protocol_trace::record(|| protocol_trace::offsets_recorded(&recordable, &assigned));
        let commit = self.offsets.to_commit(&self.topic, Some(&assigned));
        if commit.count() > 0 {
            // Its outcome comes back to the context's commit_callback (async_commit.rs).
            let handed = crate::async_commit::commit(&self.consumer, &commit);
            if handed.is_ok() {
                protocol_trace::record(|| protocol_trace::offsets_committed(&commit, CommitCause::Batch));
            }
            if let Err(error) = handed {
                if let Some(suppressed) = COMMIT_ERRORS.allow(&kind(&error)) {
                    tracing::warn!(error = %Chain(&error), suppressed, "could not queue the offset commit; retried after the next batch");
                }
            }
        }
        let size = in_flight.positions.len();
        // Activity before totals: see StatusReporter::run.
        self.activity.record(in_flight.activity, size, chrono::Utc::now());
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
        Ok(true)
    }

    /// Waits for the write of the batch in flight. A write can take minutes (the database
    /// down, a row lock held, a permanent error), and the loop polls Kafka only between
    /// batches: librdkafka leaves the group when the application has not polled for
    /// `max.poll.interval.ms`, and the partitions would move to a member that hits the same
    /// wall. So once the write has taken `hold_after`, every assigned partition is paused
    /// and the consumer is polled regularly, which keeps this member in the group and runs
    /// rebalance callbacks. A message already fetched before the pause joins `next`:
    /// dropping it would let a later offset commit skip it.
    async fn wait_for_write(
        &self,
        write: &mut JoinHandle<Result<Applied, Abandoned>>,
        next: &mut Vec<Received>,
    ) -> Result<Result<Applied, Abandoned>, PipelineError> {
        let poll_every = self.hold_after.min(Duration::from_secs(1));
        let mut wake = Instant::now() + self.hold_after;
        let mut held = false;
        let result = loop {
            tokio::select! {
                biased;
                result = &mut *write => break result,
                // Before `recv`: if messages kept coming (an operator resumed meanwhile), the
                // tick must still get its turn to pause again.
                _ = tokio::time::sleep_until(wake) => {
                    if !held {
                        held = true;
                        tracing::warn!(waited_ms = self.hold_after.as_millis() as u64, "batch write is slow; fetching paused, polling on to stay in the group");
                    }
                    // Again at every tick: partitions assigned meanwhile must not fetch either.
                    self.set_fetching(false);
                    wake = Instant::now() + poll_every;
                }
                message = self.consumer.recv(), if held => match message {
                    Ok(message) => next.push(self.received(&message)),
                    Err(error) => consumer_error(error)?,
                },
            }
        };
        if held {
            // An operator's pause outlives ours.
            if !self.control.is_paused() {
                self.set_fetching(true);
            }
            tracing::info!(buffered = next.len(), "batch write finished; fetching resumed");
        }
        result.map_err(PipelineError::Writer)
    }

    fn set_fetching(&self, fetching: bool) {
        let result = self.consumer.assignment().and_then(|assigned| {
            if fetching {
                self.consumer.resume(&assigned)
            } else {
                self.consumer.pause(&assigned)
            }
        });
        if let Err(error) = result {
            tracing::error!(error = %Chain(&error), fetching, "could not change fetching of the assigned partitions");
        }
    }

    fn assigned(&self) -> Vec<i32> {
        self.consumer
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default()
    }

    /// Messages of partitions revoked while the batch was being collected belong to their
    /// new owner now; writing them would be harmless (idempotent) but wasted. So do messages
    /// polled before their partition was revoked and assigned back: their positions could not
    /// be recorded (`offsets::recordable`), and the partition is fetched again from its
    /// committed offset.
    fn drop_revoked(&self, batch: Vec<Received>) -> Vec<Received> {
        let owned: HashSet<i32> = self.assigned().into_iter().collect();
        let before = batch.len();
        let kept: Vec<Received> =
            batch.into_iter().filter(|r| offsets::current(owned.contains(&r.partition), r.ticket, self.offsets.ticket(r.partition))).collect();
        if kept.len() < before {
            tracing::info!(dropped = before - kept.len(), "dropped messages of revoked partitions");
        }
        kept
    }
}

impl Pipeline {
    /// A message as read, with its partition's current ticket.
    fn received(&self, message: &BorrowedMessage<'_>) -> Received {
        Received { ticket: self.offsets.ticket(message.partition()), ..Received::from(message) }
    }
}

impl From<&BorrowedMessage<'_>> for Received {
    fn from(message: &BorrowedMessage<'_>) -> Self {
        let parsed = Inbound::from_payload(message.payload()).map_err(|error: InvalidMessage| DeadLetter {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            error: error.to_string(),
        });
        Self { partition: message.partition(), offset: message.offset(), ticket: None, message: parsed }
    }
}

/// A consumer error from `recv()`. Most pass by themselves (the broker is down, a
/// partition leader moved) and are logged, rate-limited. A fatal one means the client is no
/// longer usable: the loop ends and so does the process, to be restarted clean.
fn consumer_error(error: KafkaError) -> Result<(), PipelineError> {
    let code = kind(&error);
    metrics::counter!("kafka_consumer_errors_total", "code" => code.clone()).increment(1);
    if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
        return Err(PipelineError::Kafka(error));
    }
    if let Some(suppressed) = KAFKA_ERRORS.allow(&code) {
        tracing::warn!(error = %Chain(&error), suppressed, "kafka consumer error");
    }
    Ok(())
}

/// The kind of a Kafka error, for rate limiting and metric labels: librdkafka's code name.
fn kind(error: &KafkaError) -> String {
    error.rdkafka_error_code().map_or_else(|| "Other".to_owned(), |code| format!("{code:?}"))
}

/// Retries until `order-events` acknowledged every event. A failed attempt sends them all
/// again: duplicates carry the same event_id, and consumers of the topic dedupe by it.
async fn send_events(publisher: &EventPublisher, events: &[OrderEvent], abandon: &CancellationToken) -> Result<(), Abandoned> {
    let mut attempt = 0_u32;
    loop {
        let error = match publisher.publish(events, "batch").await {
            Ok(()) => {
                protocol_trace::record(|| Step::EventsPublished { event_ids: events.iter().map(|e| e.event_id).collect(), via_outbox: false });
                return Ok(());
            }
            Err(error) => error,
        };
        attempt += 1;
        if let Some(suppressed) = EVENT_ERRORS.allow("publish") {
            tracing::error!(error = %Chain(&error), events = events.len(), attempt, suppressed, "order-events did not take the batch's events; retrying, offsets held");
        }
        tokio::select! {
            _ = abandon.cancelled() => return Err(Abandoned),
            _ = tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(5)))) => {}
        }
    }
}

/// Retries until the dead-letter topic took every letter: an invalid message's offset is
/// committed only once it is safe in `orders-dlq`. Only the letters not acknowledged are
/// sent again; resending the whole batch duplicated the ones that had gone through.
async fn send_dead_letters(queue: &DeadLetterQueue, letters: Vec<DeadLetter>, abandon: &CancellationToken) -> Result<(), Abandoned> {
    let mut pending = letters;
    while !pending.is_empty() {
        let unsent = match queue.send(pending).await {
            Ok(()) => return Ok(()),
            Err(unsent) => unsent,
        };
        if let Some(suppressed) = DEAD_LETTER_ERRORS.allow(&kind(&unsent.error)) {
            tracing::error!(error = %Chain(&unsent), letters = unsent.letters.len(), suppressed, "dead-letter topic did not take the messages; retrying");
        }
        pending = unsent.letters;
        tokio::select! {
            _ = abandon.cancelled() => return Err(Abandoned),
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
    Ok(())
}

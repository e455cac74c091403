//! Gaps in the log: offsets the broker deleted (retention, or the dev broker's size cap)
//! before this group consumed them.
//!
//! The consumer runs with `auto.offset.reset=error`, so librdkafka stops a partition whose
//! start position is no longer in the log and reports `AutoOffsetReset` instead of silently
//! jumping to the log start. That error does not say which partition, so the watcher here
//! compares every assigned partition's position (or committed offset) with its low
//! watermark. A partition behind its log start is a gap: it stays stopped and paused, is
//! counted, logged once at ERROR and shown by /ready and /status, until an operator
//! acknowledges it (POST /gaps/{partition}/acknowledge). Acknowledging commits the log start,
//! so no member of the group finds the same gap again, and restarts the partition there.
//!
//! A partition with no committed offset and a log start of 0 is a new group's first read,
//! not a gap: it is started at offset 0. With a log start above 0 it is a gap [0, log start):
//! orders accepted before the group existed are orders too, and some of them are gone.
//!
//! librdkafka cannot seek a partition stopped by that error (`Local: Erroneous state`), so
//! a partition is restarted by taking it out of this member's assignment and adding it back
//! at the chosen offset (`incremental_unassign` + `incremental_assign`); the group does not
//! rebalance for that.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use orderflow_common::errors::Chain;

use crate::control::Control;
use crate::offsets::ProcessedOffsets;
use crate::pipeline::OrderConsumer;

/// Broker round trips of a scan or an acknowledgement (committed offsets, watermarks, commit).
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// A failed scan is retried, since a stopped partition reports its error only once; the wait
/// doubles from the first to the last value while the broker stays unreachable.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
const ACKNOWLEDGED_KEPT: usize = 50;

/// Offsets `[from, to)` of `partition` that were deleted before this group consumed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub topic: String,
    pub partition: i32,
    /// The first missing offset: where the group would have read next.
    pub from: i64,
    /// The log start when the gap was found: the first offset still there.
    pub to: i64,
    pub missing: i64,
    pub detected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Acknowledged {
    #[serde(flatten)]
    pub gap: Gap,
    pub acknowledged_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum GapError {
    #[error("no open gap on partition {0}")]
    NotFound(i32),
    #[error("gap check task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("kafka: {context}")]
    Kafka { context: &'static str, source: KafkaError },
}

fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> GapError {
    move |source| GapError::Kafka { context, source }
}

/// What to do with one assigned partition, given where it would read next and its log start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// No committed offset and nothing deleted yet: a new group starts at the beginning.
    StartAt(i64),
    Gap { from: i64, to: i64 },
}

/// `position` is where this member reads next (after what it has consumed), `committed`
/// the group's committed offset; either may be unknown. `log_start` is the low watermark.
pub fn judge(position: Option<i64>, committed: Option<i64>, log_start: i64) -> Verdict {
    match position.or(committed) {
        Some(next) if next < log_start => Verdict::Gap { from: next, to: log_start },
        Some(_) => Verdict::Fine,
        None if log_start > 0 => Verdict::Gap { from: 0, to: log_start },
        None => Verdict::StartAt(0),
    }
}

/// True for the error librdkafka raises, under `auto.offset.reset=error`, when a partition's
/// start offset is not in the log (or there is none): from `recv()` as a consumption error,
/// and to the client context as a global one.
pub fn is_offset_reset(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)
            | KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::AutoOffsetReset)
            | KafkaError::Global(RDKafkaErrorCode::AutoOffsetReset)
    )
}

#[derive(Debug, Default)]
struct State {
    open: BTreeMap<i32, Gap>,
    acknowledged: VecDeque<Acknowledged>,
    /// Partitions this member started at offset 0 itself in the current assignment: a late
    /// error about their first start must not restart them again.
    started: HashSet<i32>,
    /// Counts revokes: a scan that overlapped one may have judged a partition this member no
    /// longer owns, so its findings are dropped and it runs again.
    revokes: u64,
}

#[derive(Debug)]
pub struct Gaps {
    topic: String,
    state: Mutex<State>,
    wake: Notify,
    /// Scans and acknowledgements change the assignment; one at a time.
    busy: tokio::sync::Mutex<()>,
}

impl Gaps {
    pub fn new(topic: String) -> Self {
        Self { topic, state: Mutex::default(), wake: Notify::new(), busy: tokio::sync::Mutex::new(()) }
    }

    /// Asks the watcher for a scan; called on every `AutoOffsetReset` error.
    pub fn signal(&self) {
        self.wake.notify_one();
    }

    pub fn is_open(&self, partition: i32) -> bool {
        self.lock().open.contains_key(&partition)
    }

    pub fn open(&self) -> Vec<Gap> {
        self.lock().open.values().cloned().collect()
    }

    /// Newest first.
    pub fn acknowledged(&self) -> Vec<Acknowledged> {
        self.lock().acknowledged.iter().rev().cloned().collect()
    }

    /// On revoke: the next owner finds the gap again, since the committed offset is still
    /// below the log start.
    pub fn forget(&self, partitions: &[i32]) {
        let mut state = self.lock();
        state.revokes += 1;
        for partition in partitions {
            if state.open.remove(partition).is_some() {
                gauge(*partition, 0);
            }
            state.started.remove(partition);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("gaps lock poisoned")
    }

    /// Runs the watcher, and stops the consumer (through `shutdown`) if it ever ends on its
    /// own: without it a gap would stop its partition with nobody told.
    /// Runs until `shutdown`: scans whenever woken. It returns only at shutdown, so the
    /// application's supervisor treats any other end (or a panic) as a failure.
    pub async fn watch(self: Arc<Self>, consumer: Arc<OrderConsumer>, control: Arc<Control>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            let mut wait = RETRY_FIRST;
            while let Err(error) = self.scan(&consumer, &control).await {
                tracing::warn!(error = %Chain(&error), retry_in_ms = wait.as_millis() as u64, "gap check failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }

    /// Finds the assigned partitions that cannot continue, pauses the gaps and starts new
    /// groups' partitions at 0.
    async fn scan(self: &Arc<Self>, consumer: &Arc<OrderConsumer>, control: &Arc<Control>) -> Result<(), GapError> {
        let _busy = self.busy.lock().await;
        let (gaps, consumer, control) = (self.clone(), consumer.clone(), control.clone());
        tokio::task::spawn_blocking(move || gaps.scan_blocking(&consumer, &control)).await?
    }

    fn scan_blocking(&self, consumer: &OrderConsumer, control: &Control) -> Result<(), GapError> {
        let revokes = self.lock().revokes;
        let assigned = consumer.assignment().map_err(kafka("reading the assignment"))?;
        let positions = consumer.position().map_err(kafka("reading positions"))?;
        let committed = consumer.committed_offsets(assigned.clone(), BROKER_TIMEOUT).map_err(kafka("reading committed offsets"))?;
        let mut new_gaps = Vec::new();
        let mut start = Vec::new();
        for element in assigned.elements_for_topic(&self.topic) {
            let partition = element.partition();
            let position = known(positions.find_partition(&self.topic, partition).map(|e| e.offset()));
            let committed = known(committed.find_partition(&self.topic, partition).map(|e| e.offset()));
            if self.is_open(partition) {
                continue;
            }
            let (log_start, _) =
                consumer.fetch_watermarks(&self.topic, partition, BROKER_TIMEOUT).map_err(kafka("reading watermarks"))?;
            match judge(position, committed, log_start) {
                Verdict::Fine => {}
                // Started here already; a late error about its first start changes nothing.
                Verdict::StartAt(_) if self.lock().started.contains(&partition) => {}
                Verdict::StartAt(offset) => start.push((partition, offset)),
                Verdict::Gap { from, to } => new_gaps.push(Gap {
                    topic: self.topic.clone(),
                    partition,
                    from,
                    to,
                    missing: to - from,
                    detected_at: Utc::now(),
                }),
            }
        }
        if !new_gaps.is_empty() {
            let list = self.list(new_gaps.iter().map(|gap| (gap.partition, Offset::Invalid)));
            // Stopped by librdkafka already, or about to be; paused as well so that nothing
            // but an acknowledgement starts it again.
            consumer.pause(&list).map_err(kafka("pausing gapped partitions"))?;
            let mut state = self.lock();
            if state.revokes != revokes {
                // Some of these partitions may belong to another member now. The next scan
                // judges only what is still assigned; the pause just put on a revoked one is
                // lifted if it is ever assigned here again (see context.rs).
                drop(state);
                self.signal();
                return Ok(());
            }
            for gap in new_gaps {
                tracing::error!(
                    topic = %gap.topic,
                    partition = gap.partition,
                    from = gap.from,
                    to = gap.to,
                    missing = gap.missing,
                    "offsets deleted before they were consumed; partition stopped until the gap is acknowledged"
                );
                gauge(gap.partition, gap.missing);
                state.open.insert(gap.partition, gap);
            }
        }
        if !start.is_empty() {
            tracing::info!(partitions = ?start.iter().map(|(p, _)| p).collect::<Vec<_>>(), "no committed offset and nothing deleted: starting at offset 0");
            self.restart(consumer, control, &start)?;
            let mut state = self.lock();
            if state.revokes == revokes {
                state.started.extend(start.iter().map(|(partition, _)| *partition));
            } else {
                // A partition marked started after its revoke would never be started again
                // should it come back; the next scan judges them afresh instead.
                drop(state);
                self.signal();
            }
        }
        Ok(())
    }

    /// Takes `partitions` out of the assignment and adds them back at the given offsets,
    /// paused exactly when the consumer is paused.
    fn restart(&self, consumer: &OrderConsumer, control: &Control, partitions: &[(i32, i64)]) -> Result<(), GapError> {
        let at = self.list(partitions.iter().map(|(partition, offset)| (*partition, Offset::Offset(*offset))));
        let bare = self.list(partitions.iter().map(|(partition, _)| (*partition, Offset::Invalid)));
        consumer.incremental_unassign(&bare).map_err(kafka("unassigning for a restart"))?;
        consumer.incremental_assign(&at).map_err(kafka("assigning at the new offset"))?;
        // The pause a gap put on the partition outlives the reassignment: lift it, unless
        // the operator paused the consumer.
        if control.is_paused() {
            consumer.pause(&bare).map_err(kafka("keeping restarted partitions paused"))?;
        } else {
            consumer.resume(&bare).map_err(kafka("resuming restarted partitions"))?;
        }
        Ok(())
    }

    /// The operator's decision that the gap's orders are lost (or recovered elsewhere):
    /// commit the log start synchronously, so no member finds this gap again, then read on
    /// from there.
    pub async fn acknowledge(
        self: &Arc<Self>,
        partition: i32,
        consumer: &Arc<OrderConsumer>,
        offsets: &Arc<ProcessedOffsets>,
        control: &Arc<Control>,
    ) -> Result<Acknowledged, GapError> {
        let _busy = self.busy.lock().await;
        let (gaps, consumer, offsets, control) = (self.clone(), consumer.clone(), offsets.clone(), control.clone());
        tokio::task::spawn_blocking(move || gaps.acknowledge_blocking(partition, &consumer, &offsets, &control)).await?
    }

    fn acknowledge_blocking(
        &self,
        partition: i32,
        consumer: &OrderConsumer,
        offsets: &ProcessedOffsets,
        control: &Control,
    ) -> Result<Acknowledged, GapError> {
        let gap = self.lock().open.get(&partition).cloned().ok_or(GapError::NotFound(partition))?;
        let commit = self.list([(partition, Offset::Offset(gap.to))]);
        consumer.commit(&commit, CommitMode::Sync).map_err(kafka("committing the log start"))?;
        // A batch from before the gap may still finish; its offsets must not take the
        // commit back below the log start.
        offsets.record(partition, gap.to - 1);
        self.restart(consumer, control, &[(partition, gap.to)])?;
        let acknowledged = Acknowledged { gap, acknowledged_at: Utc::now() };
        let mut state = self.lock();
        state.open.remove(&partition);
        if state.acknowledged.len() == ACKNOWLEDGED_KEPT {
            state.acknowledged.pop_front();
        }
        state.acknowledged.push_back(acknowledged.clone());
        drop(state);
        gauge(partition, 0);
        let gap = &acknowledged.gap;
        tracing::warn!(
            topic = %gap.topic,
            partition,
            from = gap.from,
            to = gap.to,
            missing = gap.missing,
            "gap acknowledged by admin request; offsets committed past it and the partition restarted at the log start"
        );
        Ok(acknowledged)
    }

    fn list(&self, partitions: impl IntoIterator<Item = (i32, Offset)>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (partition, offset) in partitions {
            list.add_partition_offset(&self.topic, partition, offset).expect("a fresh list accepts any offset");
        }
        list
    }
}

fn known(offset: Option<Offset>) -> Option<i64> {
    match offset {
        Some(Offset::Offset(offset)) if offset >= 0 => Some(offset),
        _ => None,
    }
}

fn gauge(partition: i32, missing: i64) {
    metrics::gauge!("consumer_offset_gap_messages", "partition" => partition.to_string()).set(missing as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        // Committed offset behind the log start: the difference is missing.
        assert_eq!(judge(None, Some(50), 80), Verdict::Gap { from: 50, to: 80 });
        assert_eq!(judge(None, Some(80), 80), Verdict::Fine);
        assert_eq!(judge(None, Some(90), 80), Verdict::Fine);
        // Consumed further than committed: only what was not consumed is missing.
        assert_eq!(judge(Some(60), Some(50), 80), Verdict::Gap { from: 60, to: 80 });
        assert_eq!(judge(Some(85), Some(50), 80), Verdict::Fine);
        // A new group: fine from 0, a gap when the log no longer starts at 0.
        assert_eq!(judge(None, None, 0), Verdict::StartAt(0));
        assert_eq!(judge(None, None, 7), Verdict::Gap { from: 0, to: 7 });
    }

    #[test]
    fn forgetting_a_revoked_partition_closes_its_gap() {
        let gaps = Gaps::new("t".into());
        let gap = Gap { topic: "t".into(), partition: 3, from: 1, to: 5, missing: 4, detected_at: Utc::now() };
        gaps.lock().open.insert(3, gap.clone());
        gaps.lock().started.insert(4);
        assert!(gaps.is_open(3));
        assert_eq!(gaps.open(), vec![gap]);
        gaps.forget(&[3, 4]);
        assert!(!gaps.is_open(3));
        assert!(gaps.lock().started.is_empty());
    }

    #[test]
    fn errors_are_logged_with_their_cause() {
        let error = GapError::Kafka {
            context: "reading watermarks",
            source: KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut),
        };
        let text = Chain(&error).to_string();
        assert!(text.starts_with("kafka: reading watermarks: "), "{text}");
        assert!(text.contains("Timed out"), "{text}");
    }

    #[test]
    fn only_the_offset_reset_error_signals_a_gap() {
        assert!(is_offset_reset(&KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)));
        assert!(is_offset_reset(&KafkaError::Global(RDKafkaErrorCode::AutoOffsetReset)));
        assert!(!is_offset_reset(&KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange)));
        assert!(!is_offset_reset(&KafkaError::PartitionEOF(0)));
    }
}

//! The Kafka consumer context: logs rebalances and commit failures, and on revoke commits
//! what is done for the partitions being taken away before they go.

use std::sync::Arc;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use orderflow_common::errors::Chain;
use orderflow_common::kafka;
use orderflow_common::log_limit::{self, LogLimiter};

use crate::control::{Control, PartitionStatus};
use crate::gaps::{self, Gaps};
use crate::offsets::ProcessedOffsets;
use crate::protocol_trace::{self, CommitCause, Step};

static COMMIT_FAILURES: LogLimiter = LogLimiter::new(log_limit::EVERY);

pub struct OrderflowContext {
    pub topic: String,
    pub offsets: Arc<ProcessedOffsets>,
    pub control: Arc<Control>,
    pub gaps: Arc<Gaps>,
}

impl ClientContext for OrderflowContext {
    /// librdkafka's own lines, rate-limited: with the broker down they repeat many times a
    /// second.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, text: &str) {
        kafka::log_librdkafka(level, facility, text);
    }

    /// Rate-limited like `log`, except for the offset-reset error: gaps.rs reports that one
    /// with its partition and range, and for a new group starting at 0 (no committed offset
    /// yet) it is no error at all. librdkafka raises it here as well as from `recv()`; either
    /// one starts a gap check.
    fn error(&self, error: KafkaError, reason: &str) {
        if gaps::is_offset_reset(&error) {
            tracing::debug!(%error, reason, "librdkafka refused to reset an offset");
            self.gaps.signal();
            return;
        }
        kafka::log_librdkafka_error(&error, reason);
    }

    /// librdkafka's statistics (every `statistics.interval.ms`) carry each assigned
    /// partition's lag; exporting them costs no extra broker round trip.
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut statuses = Vec::new();
        for (partition, stats) in &topic.partitions {
            // -1 is librdkafka's internal "unassigned" partition; lag -1 means unknown yet.
            if *partition >= 0 && stats.consumer_lag >= 0 {
                metrics::gauge!("consumer_lag", "partition" => partition.to_string()).set(stats.consumer_lag as f64);
            }
            if *partition >= 0 {
                statuses.push(PartitionStatus {
                    partition: *partition,
                    committed_offset: stats.committed_offset,
                    high_watermark: stats.hi_offset,
                    lag: stats.consumer_lag,
                });
            }
        }
        self.control.update_partitions(statuses);
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|element| element.partition()).collect()
}

impl ConsumerContext for OrderflowContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = partitions(list);
                tracing::info!(partitions = ?assigned, "partitions assigned");
                // A new ticket each: a batch polled before a revoke of these is stale.
                self.offsets.assign(&assigned);
                protocol_trace::record(|| Step::Assigned { partitions: assigned.clone() });
                // librdkafka reports a lag only once the group has committed an offset, so a
                // fresh stack would export no lag series at all. 0 until the statistics know.
                for partition in &assigned {
                    metrics::gauge!("consumer_lag", "partition" => partition.to_string()).set(0.0);
                }
            }
            Rebalance::Revoke(list) => {
                let revoked = partitions(list);
                tracing::info!(partitions = ?revoked, "partitions revoked");
                // The new owner reports these now; a stale value here would count twice.
                for partition in &revoked {
                    metrics::gauge!("consumer_lag", "partition" => partition.to_string()).set(0.0);
                }
                // Everything recorded is committed in PostgreSQL. A batch still being written
                // finishes, but the loop records no offsets for partitions it no longer owns,
                // and messages of these partitions still in hand are dropped: the next owner
                // reads them again and applies them idempotently.
                let done = self.offsets.to_commit(&self.topic, Some(&revoked));
                if done.count() > 0 {
                    match consumer.commit(&done, CommitMode::Sync) {
                        Ok(()) => protocol_trace::record(|| protocol_trace::offsets_committed(&done, CommitCause::Revoke)),
                        Err(error) => tracing::warn!(error = %Chain(&error), "commit on revoke failed; the next owner re-applies (idempotently)"),
                    }
                }
                self.offsets.forget(&revoked);
                self.gaps.forget(&revoked);
                protocol_trace::record(|| Step::Revoked { partitions: revoked.clone() });
            }
            Rebalance::Error(error) => tracing::error!(error = %Chain(error), "rebalance error"),
        }
    }

    /// Partitions assigned while paused stay paused: pausing is the operator's decision,
    /// and a rebalance must not undo it. Otherwise they are resumed: librdkafka keeps a
    /// partition's pause across a revoke and a later reassignment, so a partition paused at
    /// a gap (or by /pause) and then revoked would come back paused, with nothing to resume it.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        if list.count() == 0 {
            return;
        }
        if self.control.is_paused() {
            if let Err(error) = consumer.pause(list) {
                tracing::error!(error = %Chain(&error), "could not keep newly assigned partitions paused");
            }
            return;
        }
        // Gaps are forgotten on revoke, so a newly assigned partition has none open; the
        // filter keeps that true should the order of callbacks ever change.
        let mut resumable = TopicPartitionList::new();
        for element in list.elements().iter().filter(|e| !self.gaps.is_open(e.partition())) {
            resumable.add_partition(element.topic(), element.partition());
        }
        if let Err(error) = consumer.resume(&resumable) {
            tracing::error!(error = %Chain(&error), "could not resume newly assigned partitions");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        crate::async_commit::report(result.is_ok());
        if let Err(error) = result {
            // Not fatal: the offsets are committed again after the next batch, and anything
            // redelivered meanwhile is applied idempotently.
            let kind = error.rdkafka_error_code().map_or_else(|| "Other".to_owned(), |code| format!("{code:?}"));
            if let Some(suppressed) = COMMIT_FAILURES.allow(&kind) {
                tracing::warn!(error = %Chain(&error), partitions = ?partitions(offsets), suppressed, "offset commit failed");
            }
        }
    }
}

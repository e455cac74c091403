//! The Kafka consumer context: logs rebalances and commit failures, and on revoke commits
//! what is done for the partitions being taken away before they go.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::offsets::ProcessedOffsets;

pub struct OrderflowContext {
    pub topic: String,
    pub offsets: Arc<ProcessedOffsets>,
}

impl ClientContext for OrderflowContext {}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|element| element.partition()).collect()
}

impl ConsumerContext for OrderflowContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => tracing::info!(partitions = ?partitions(list), "partitions assigned"),
            Rebalance::Revoke(list) => {
                let revoked = partitions(list);
                tracing::info!(partitions = ?revoked, "partitions revoked");
                // The batch loop polls only between batches, so nothing is in flight here:
                // everything recorded is committed in PostgreSQL. Messages of these partitions
                // still in hand are dropped by the loop and redelivered to the next owner.
                let done = self.offsets.to_commit(&self.topic, Some(&revoked));
                if done.count() > 0 {
                    if let Err(error) = consumer.commit(&done, CommitMode::Sync) {
                        tracing::warn!(%error, "commit on revoke failed; the next owner re-applies (idempotently)");
                    }
                }
                self.offsets.forget(&revoked);
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            // Not fatal: the offsets are committed again after the next batch, and anything
            // redelivered meanwhile is applied idempotently.
            tracing::warn!(%error, partitions = ?partitions(offsets), "offset commit failed");
        }
    }
}

//! Publishing accepted orders to Kafka. One idempotent, batching producer is shared by all
//! requests; a request returns only when the broker has acknowledged every one of its orders.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use orderflow_common::config::KafkaSettings;
use orderflow_common::kafka;
use orderflow_common::order::PlacedOrder;

use crate::settings::PublishSettings;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker did not acknowledge {failed} of {total} orders: {first}")]
    NotAcknowledged { failed: usize, total: usize, first: KafkaError },
    #[error("broker did not acknowledge within {0:?}")]
    TimedOut(Duration),
}

pub struct OrderPublisher {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl OrderPublisher {
    pub fn new(kafka_settings: &KafkaSettings, publish: &PublishSettings) -> Result<Self, KafkaError> {
        let mut config = kafka::client_config(kafka_settings);
        config
            // Durability: every in-sync replica has the message before we answer 202, and
            // retries cannot duplicate or reorder it.
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", publish.linger_ms.to_string())
            .set("batch.size", publish.batch_bytes.to_string())
            .set("compression.type", &publish.compression)
            // A delivery report, success or failure, always arrives within the publish timeout.
            .set("message.timeout.ms", publish.timeout_ms.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            // Same key-to-partition mapping as the Java client, so mixed producers agree.
            .set("partitioner", "murmur2_random");
        kafka::apply_overrides(&mut config, kafka_settings);
        Ok(Self { producer: config.create()?, topic: kafka_settings.topic.clone(), timeout: publish.timeout() })
    }

    /// Publishes the orders, keyed by customer_id, and waits for all acknowledgements.
    /// On error some orders may still have been written: the caller claims none of them.
    pub async fn publish(&self, orders: &[PlacedOrder]) -> Result<(), PublishError> {
        let payloads: Vec<Vec<u8>> =
            orders.iter().map(|order| serde_json::to_vec(order).expect("an order always serializes")).collect();
        let deliveries = orders.iter().zip(&payloads).map(|(order, payload)| {
            let record = FutureRecord::to(&self.topic).key(order.customer_id.as_bytes()).payload(payload);
            self.producer.send(record, Timeout::After(self.timeout))
        });
        let started = std::time::Instant::now();
        // message.timeout.ms already bounds each delivery; this is the backstop.
        let results = tokio::time::timeout(self.timeout + Duration::from_secs(1), join_all(deliveries)).await;
        metrics::histogram!("kafka_produce_duration_seconds").record(started.elapsed().as_secs_f64());
        let Ok(results) = results else {
            metrics::counter!("kafka_produce_errors_total").increment(orders.len() as u64);
            return Err(PublishError::TimedOut(self.timeout));
        };
        let mut failures = results.into_iter().filter_map(Result::err);
        let Some((first, _)) = failures.next() else {
            return Ok(());
        };
        let failed = 1 + failures.count();
        metrics::counter!("kafka_produce_errors_total").increment(failed as u64);
        Err(PublishError::NotAcknowledged { failed, total: orders.len(), first })
    }

    /// Readiness: the topic's metadata can be fetched through the producer's own connection.
    pub fn check_topic(&self, timeout: Duration) -> Result<usize, String> {
        kafka::topic_partitions(self.producer.client(), &self.topic, timeout)
    }

    /// Waits for queued messages at shutdown, so that nothing in flight is dropped.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(Timeout::After(timeout)) {
            tracing::warn!(%error, "producer flush at shutdown did not complete");
        }
    }
}

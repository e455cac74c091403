//! Publishing accepted orders and commands to Kafka. One idempotent, batching producer is
//! shared by all requests; a request returns only when the broker has acknowledged every one
//! of its messages (the counting itself is `orderflow_common::acked`).

use std::time::Duration;

use rdkafka::error::KafkaError;

use orderflow_common::acked::{AckedProducer, Outgoing};
pub use orderflow_common::acked::PublishError;
use orderflow_common::config::KafkaSettings;
use orderflow_common::kafka;

use crate::settings::PublishSettings;

pub struct OrderPublisher {
    producer: AckedProducer,
    topic: String,
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
        Ok(Self { producer: AckedProducer::new(&config, publish.timeout())?, topic: kafka_settings.topic.clone() })
    }

    /// Publishes the messages (orders or commands), keyed by customer_id, and waits for all
    /// acknowledgements. On error some may still have been written: the caller claims none.
    pub async fn publish<M: Outgoing>(&self, messages: &[M]) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let outcome = self.producer.publish(&self.topic, messages).await;
        metrics::histogram!("kafka_produce_duration_seconds").record(started.elapsed().as_secs_f64());
        match &outcome {
            Err(PublishError::NotAcknowledged { failed, .. }) => metrics::counter!("kafka_produce_errors_total").increment(*failed as u64),
            Err(PublishError::TimedOut(_)) => metrics::counter!("kafka_produce_errors_total").increment(messages.len() as u64),
            Ok(()) => {}
        }
        outcome
    }

    /// Readiness: the topic's metadata can be fetched through the producer's own connection.
    pub fn check_topic(&self, timeout: Duration) -> Result<usize, String> {
        kafka::topic_partitions(self.producer.client(), &self.topic, timeout)
    }

    /// Waits for queued messages at shutdown, so that nothing in flight is dropped.
    pub fn flush(&self, timeout: Duration) {
        self.producer.flush(timeout);
    }
}

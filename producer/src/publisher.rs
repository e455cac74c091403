//! Publishing accepted orders to Kafka. One idempotent, batching producer is shared by all
//! requests; a request returns only when the broker has acknowledged every one of its orders.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use tokio::sync::oneshot;

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

/// The acknowledgements still owed for one request's orders. Every message of the request
/// carries it as its delivery opaque; the last report (success or failure) wakes the request.
/// One counter per request instead of one future per order: at 1000 orders per request the
/// per-order futures were a tenth of the producer's CPU.
struct PendingAcks {
    remaining: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<KafkaError>>,
    all_reported: Mutex<Option<oneshot::Sender<()>>>,
}

impl PendingAcks {
    fn new(count: usize) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (sender, receiver) = oneshot::channel();
        let acks = Self {
            remaining: AtomicUsize::new(count),
            failed: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            all_reported: Mutex::new(Some(sender)),
        };
        (Arc::new(acks), receiver)
    }

    fn report(&self, outcome: Result<(), KafkaError>) {
        if let Err(error) = outcome {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error.lock().expect("not poisoned").get_or_insert(error);
        }
        // AcqRel: the waiter that sees the last report also sees every failure recorded.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(sender) = self.all_reported.lock().expect("not poisoned").take() {
                let _ = sender.send(());
            }
        }
    }

    fn outcome(&self, total: usize) -> Result<(), PublishError> {
        let failed = self.failed.load(Ordering::Acquire);
        let Some(first) = self.first_error.lock().expect("not poisoned").take() else {
            debug_assert_eq!(failed, 0);
            return Ok(());
        };
        Err(PublishError::NotAcknowledged { failed, total, first })
    }
}

/// Routes each delivery report to the request that sent the message.
struct AckRouter;

/// librdkafka's log lines and errors, rate-limited: with the broker down they repeat many
/// times a second.
impl ClientContext for AckRouter {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, text: &str) {
        orderflow_common::kafka::log_librdkafka(level, facility, text);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        orderflow_common::kafka::log_librdkafka_error(&error, reason);
    }
}

impl ProducerContext for AckRouter {
    type DeliveryOpaque = Arc<PendingAcks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Self::DeliveryOpaque) {
        acks.report(result.as_ref().map(|_| ()).map_err(|(error, _)| error.clone()));
    }
}

pub struct OrderPublisher {
    producer: ThreadedProducer<AckRouter>,
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
        Ok(Self {
            producer: config.create_with_context(AckRouter)?,
            topic: kafka_settings.topic.clone(),
            timeout: publish.timeout(),
        })
    }

    /// Publishes the orders, keyed by customer_id, and waits for all acknowledgements.
    /// On error some orders may still have been written: the caller claims none of them.
    pub async fn publish(&self, orders: &[PlacedOrder]) -> Result<(), PublishError> {
        // No message means no delivery report, and nothing would ever wake the wait below.
        if orders.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (acks, all_reported) = PendingAcks::new(orders.len());
        let mut payload = Vec::with_capacity(256);
        for order in orders {
            // librdkafka copies the payload, so one buffer serves every order.
            payload.clear();
            serde_json::to_writer(&mut payload, order).expect("an order always serializes");
            self.enqueue(order.customer_id.as_bytes(), &payload, &acks, started).await;
        }
        // message.timeout.ms already bounds each delivery; this is the backstop.
        let reported = tokio::time::timeout(self.timeout + Duration::from_secs(1), all_reported).await;
        metrics::histogram!("kafka_produce_duration_seconds").record(started.elapsed().as_secs_f64());
        if !matches!(reported, Ok(Ok(()))) {
            metrics::counter!("kafka_produce_errors_total").increment(orders.len() as u64);
            return Err(PublishError::TimedOut(self.timeout));
        }
        let outcome = acks.outcome(orders.len());
        if let Err(PublishError::NotAcknowledged { failed, .. }) = &outcome {
            metrics::counter!("kafka_produce_errors_total").increment(*failed as u64);
        }
        outcome
    }

    /// Hands one message to librdkafka. A full local queue is waited out (the queue drains as
    /// the broker acknowledges) until the publish timeout; any other refusal is reported as
    /// that message's failure.
    async fn enqueue(&self, key: &[u8], payload: &[u8], acks: &Arc<PendingAcks>, started: std::time::Instant) {
        let mut record = BaseRecord::with_opaque_to(&self.topic, acks.clone()).key(key).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) if started.elapsed() < self.timeout => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => return acks.report(Err(error)),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_request_wakes_only_after_the_last_report_and_sees_every_failure() {
        let (acks, mut all_reported) = PendingAcks::new(3);
        acks.report(Ok(()));
        acks.report(Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
        assert!(all_reported.try_recv().is_err(), "one acknowledgement is still owed");
        acks.report(Ok(()));
        all_reported.await.expect("woken by the last report");
        match acks.outcome(3) {
            Err(PublishError::NotAcknowledged { failed: 1, total: 3, .. }) => {}
            other => panic!("expected one failure of three, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn all_acknowledged_is_success() {
        let (acks, all_reported) = PendingAcks::new(2);
        acks.report(Ok(()));
        acks.report(Ok(()));
        all_reported.await.expect("woken");
        assert!(acks.outcome(2).is_ok());
    }
}

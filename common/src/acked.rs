//! A Kafka producer whose callers wait for the broker's acknowledgement of every message they
//! sent: the API's 202 (orders and commands) and the consumer's events both rest on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::oneshot;

use crate::polled::PolledProducer;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker did not acknowledge {failed} of {total} messages: {first}")]
    NotAcknowledged { failed: usize, total: usize, first: KafkaError },
    #[error("broker did not acknowledge within {0:?}")]
    TimedOut(Duration),
}

/// A message to publish: its key and its payload, written into a reused buffer.
pub trait Outgoing {
    fn key(&self) -> &[u8];
    fn write_payload(&self, buffer: &mut Vec<u8>);
}

/// The acknowledgements still owed for one call's messages. Every message of the call
/// carries it as its delivery opaque; the last report (success or failure) wakes the caller.
/// One counter per call instead of one future per message: at 1000 orders per request the
/// per-order futures were a tenth of the producer's CPU.
pub struct PendingAcks {
    remaining: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<KafkaError>>,
    all_reported: Mutex<Option<oneshot::Sender<()>>>,
}

impl PendingAcks {
    pub fn new(count: usize) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (sender, receiver) = oneshot::channel();
        let acks = Self {
            remaining: AtomicUsize::new(count),
            failed: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            all_reported: Mutex::new(Some(sender)),
        };
        (Arc::new(acks), receiver)
    }

    pub fn report(&self, outcome: Result<(), KafkaError>) {
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

    pub fn outcome(&self, total: usize) -> Result<(), PublishError> {
        let failed = self.failed.load(Ordering::Acquire);
        let Some(first) = self.first_error.lock().expect("not poisoned").take() else {
            debug_assert_eq!(failed, 0);
            return Ok(());
        };
        Err(PublishError::NotAcknowledged { failed, total, first })
    }
}

/// Routes each delivery report to the call that sent the message, and rate-limits
/// librdkafka's logging (with the broker down it repeats many times a second).
pub struct AckRouter;

impl ClientContext for AckRouter {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, text: &str) {
        crate::kafka::log_librdkafka(level, facility, text);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::log_librdkafka_error(&error, reason);
    }
}

impl ProducerContext for AckRouter {
    type DeliveryOpaque = Arc<PendingAcks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Self::DeliveryOpaque) {
        acks.report(result.as_ref().map(|_| ()).map_err(|(error, _)| error.clone()));
    }
}

pub struct AckedProducer {
    producer: PolledProducer<AckRouter>,
    timeout: Duration,
}

impl AckedProducer {
    /// `config` should set `message.timeout.ms` to `timeout`: a delivery report, success or
    /// failure, then always arrives within it.
    pub fn new(config: &ClientConfig, timeout: Duration) -> Result<Self, KafkaError> {
        Ok(Self { producer: PolledProducer::new(config, AckRouter, "kafka-acks")?, timeout })
    }

    /// Publishes every message to `topic` and waits for all acknowledgements. On error some
    /// messages may still have been written.
    pub async fn publish<M: Outgoing>(&self, topic: &str, messages: &[M]) -> Result<(), PublishError> {
        // No message means no delivery report, and nothing would ever wake the wait below.
        if messages.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let (acks, all_reported) = PendingAcks::new(messages.len());
        let mut payload = Vec::with_capacity(256);
        for message in messages {
            // librdkafka copies the payload, so one buffer serves every message.
            payload.clear();
            message.write_payload(&mut payload);
            self.enqueue(topic, message.key(), &payload, &acks, started).await;
        }
        // message.timeout.ms already bounds each delivery; this is the backstop.
        let reported = tokio::time::timeout(self.timeout + Duration::from_secs(1), all_reported).await;
        if !matches!(reported, Ok(Ok(()))) {
            return Err(PublishError::TimedOut(self.timeout));
        }
        acks.outcome(messages.len())
    }

    /// Hands one message to librdkafka. A full local queue is waited out (the queue drains as
    /// the broker acknowledges) until the timeout; any other refusal is reported as that
    /// message's failure.
    async fn enqueue(&self, topic: &str, key: &[u8], payload: &[u8], acks: &Arc<PendingAcks>, started: Instant) {
        let mut record = BaseRecord::with_opaque_to(topic, acks.clone()).key(key).payload(payload);
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

    pub fn client(&self) -> &rdkafka::client::Client<AckRouter> {
        self.producer.client()
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
    async fn the_caller_wakes_only_after_the_last_report_and_sees_every_failure() {
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

impl Outgoing for crate::order::PlacedOrder {
    fn key(&self) -> &[u8] {
        self.customer_id.as_bytes()
    }

    fn write_payload(&self, buffer: &mut Vec<u8>) {
        serde_json::to_writer(buffer, self).expect("an order always serializes");
    }
}

impl Outgoing for crate::command::OrderCommand {
    fn key(&self) -> &[u8] {
        self.customer_id.as_bytes()
    }

    fn write_payload(&self, buffer: &mut Vec<u8>) {
        serde_json::to_writer(buffer, self).expect("a command always serializes");
    }
}

impl Outgoing for crate::events::OrderEvent {
    fn key(&self) -> &[u8] {
        self.customer_id.as_bytes()
    }

    fn write_payload(&self, buffer: &mut Vec<u8>) {
        serde_json::to_writer(buffer, self).expect("an event always serializes");
    }
}

//! Dead letters: messages that cannot become orders go to `orders-dlq` with headers naming
//! the error and where they came from. Their offsets are committed only after the dead-letter
//! topic acknowledged them, so a bad message is never simply lost.

use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::oneshot;

use orderflow_common::config::KafkaSettings;
use orderflow_common::kafka;
use orderflow_common::polled::PolledProducer;

/// librdkafka gives up on a letter after this (`message.timeout.ms`); its report, success
/// or failure, always comes within it.
const LETTER_TIMEOUT: Duration = Duration::from_secs(10);

pub const HEADER_ERROR: &str = "orderflow-error";
pub const HEADER_TOPIC: &str = "orderflow-source-topic";
pub const HEADER_PARTITION: &str = "orderflow-source-partition";
pub const HEADER_OFFSET: &str = "orderflow-source-offset";

/// A message as it arrived, with why it was refused.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub error: String,
}

/// Hands each letter's delivery report to the `send` call waiting for it, and rate-limits
/// librdkafka's logging like the other clients.
pub struct LetterRouter;

impl ClientContext for LetterRouter {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, text: &str) {
        kafka::log_librdkafka(level, facility, text);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka::log_librdkafka_error(&error, reason);
    }
}

impl ProducerContext for LetterRouter {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Self::DeliveryOpaque) {
        let _ = waiter.send(result.as_ref().map(|_| ()).map_err(|(error, _)| error.clone()));
    }
}

pub struct DeadLetterQueue {
    producer: PolledProducer<LetterRouter>,
    source_topic: String,
    topic: String,
}

impl DeadLetterQueue {
    pub fn new(settings: &KafkaSettings, topic: &str) -> Result<Self, KafkaError> {
        let mut config = kafka::client_config(settings);
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", LETTER_TIMEOUT.as_millis().to_string());
        kafka::apply_overrides(&mut config, settings);
        Ok(Self { producer: PolledProducer::new(&config, LetterRouter, "kafka-dlq")?, source_topic: settings.topic.clone(), topic: topic.to_owned() })
    }

    /// Publishes every letter and waits for all acknowledgements. The letters the topic did
    /// not acknowledge come back in the error, in their original order, to be sent again.
    pub async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), Unsent> {
        let sends = letters.iter().map(|letter| async move {
            let (partition, offset) = (letter.partition.to_string(), letter.offset.to_string());
            let headers = OwnedHeaders::new()
                .insert(Header { key: HEADER_ERROR, value: Some(letter.error.as_str()) })
                .insert(Header { key: HEADER_TOPIC, value: Some(self.source_topic.as_str()) })
                .insert(Header { key: HEADER_PARTITION, value: Some(partition.as_str()) })
                .insert(Header { key: HEADER_OFFSET, value: Some(offset.as_str()) });
            let (waiter, report) = oneshot::channel();
            let mut record: BaseRecord<'_, [u8], [u8], _> = BaseRecord::with_opaque_to(&self.topic, Box::new(waiter)).headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &letter.payload {
                record = record.payload(payload.as_slice());
            }
            self.enqueue(record).await?;
            // message.timeout.ms bounds the report; this is the backstop.
            match tokio::time::timeout(LETTER_TIMEOUT + Duration::from_secs(1), report).await {
                Ok(Ok(outcome)) => outcome,
                _ => Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)),
            }
        });
        let results = join_all(sends).await;
        let sent = results.iter().filter(|result| result.is_ok()).count();
        metrics::counter!("dead_letters_total").increment(sent as u64);
        let mut first_error = None;
        let mut unsent = Vec::new();
        for (letter, result) in letters.into_iter().zip(results) {
            if let Err(error) = result {
                first_error.get_or_insert(error);
                unsent.push(letter);
            }
        }
        match first_error {
            None => Ok(()),
            Some(error) => Err(Unsent { letters: unsent, error }),
        }
    }
}

impl DeadLetterQueue {
    /// Hands one letter to librdkafka, waiting out a full local queue (it drains as the
    /// broker acknowledges) for up to LETTER_TIMEOUT. On any other refusal the letter is
    /// unsent and its waiter dropped with the record.
    async fn enqueue(&self, mut record: BaseRecord<'_, [u8], [u8], Box<oneshot::Sender<Result<(), KafkaError>>>>) -> Result<(), KafkaError> {
        let started = Instant::now();
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) if started.elapsed() < LETTER_TIMEOUT => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

/// Letters the dead-letter topic did not acknowledge, and the first error seen.
#[derive(Debug, thiserror::Error)]
#[error("{} dead letters were not acknowledged", letters.len())]
pub struct Unsent {
    pub letters: Vec<DeadLetter>,
    #[source]
    pub error: KafkaError,
}

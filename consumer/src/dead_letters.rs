//! Dead letters: messages that cannot become orders go to `orders-dlq` with headers naming
//! the error and where they came from. Their offsets are committed only after the dead-letter
//! topic acknowledged them, so a bad message is never simply lost.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use orderflow_common::config::KafkaSettings;
use orderflow_common::kafka::{self, QuietContext};

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

pub struct DeadLetterQueue {
    producer: FutureProducer<QuietContext>,
    source_topic: String,
    topic: String,
}

impl DeadLetterQueue {
    pub fn new(settings: &KafkaSettings, topic: &str) -> Result<Self, KafkaError> {
        let mut config = kafka::client_config(settings);
        config.set("acks", "all").set("enable.idempotence", "true").set("linger.ms", "5").set("message.timeout.ms", "10000");
        kafka::apply_overrides(&mut config, settings);
        Ok(Self { producer: config.create_with_context(QuietContext)?, source_topic: settings.topic.clone(), topic: topic.to_owned() })
    }

    /// Publishes every letter and waits for all acknowledgements. The letters the topic did
    /// not acknowledge come back in the error, in their original order, to be sent again.
    pub async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), Unsent> {
        let sends = letters.iter().map(|letter| {
            let (partition, offset) = (letter.partition.to_string(), letter.offset.to_string());
            let headers = OwnedHeaders::new()
                .insert(Header { key: HEADER_ERROR, value: Some(letter.error.as_str()) })
                .insert(Header { key: HEADER_TOPIC, value: Some(self.source_topic.as_str()) })
                .insert(Header { key: HEADER_PARTITION, value: Some(partition.as_str()) })
                .insert(Header { key: HEADER_OFFSET, value: Some(offset.as_str()) });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &letter.payload {
                record = record.payload(payload.as_slice());
            }
            self.producer.send(record, Timeout::After(Duration::from_secs(10)))
        });
        let results = join_all(sends).await;
        let sent = results.iter().filter(|result| result.is_ok()).count();
        metrics::counter!("dead_letters_total").increment(sent as u64);
        let mut first_error = None;
        let mut unsent = Vec::new();
        for (letter, result) in letters.into_iter().zip(results) {
            if let Err((error, _)) = result {
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

/// Letters the dead-letter topic did not acknowledge, and the first error seen.
#[derive(Debug, thiserror::Error)]
#[error("{} dead letters were not acknowledged", letters.len())]
pub struct Unsent {
    pub letters: Vec<DeadLetter>,
    #[source]
    pub error: KafkaError,
}

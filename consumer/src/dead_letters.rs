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
use orderflow_common::kafka;

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
    producer: FutureProducer,
    source_topic: String,
    topic: String,
}

impl DeadLetterQueue {
    pub fn new(settings: &KafkaSettings, topic: &str) -> Result<Self, KafkaError> {
        let mut config = kafka::client_config(settings);
        config.set("acks", "all").set("enable.idempotence", "true").set("linger.ms", "5").set("message.timeout.ms", "10000");
        kafka::apply_overrides(&mut config, settings);
        Ok(Self { producer: config.create()?, source_topic: settings.topic.clone(), topic: topic.to_owned() })
    }

    /// Publishes every letter and waits for all acknowledgements.
    pub async fn send(&self, letters: &[DeadLetter]) -> Result<(), KafkaError> {
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
        for result in join_all(sends).await {
            result.map_err(|(error, _)| error)?;
        }
        metrics::counter!("dead_letters_total").increment(letters.len() as u64);
        Ok(())
    }
}

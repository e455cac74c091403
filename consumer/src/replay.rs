//! `consumer dlq-replay`: re-emits dead letters to the orders topic once their cause is fixed.
//! Each letter's DLQ offset is committed only after orders-placed acknowledged it, so an
//! interrupted replay resumes without losing a message (it may re-emit a few, which the
//! consumer applies idempotently).

use std::time::Duration;

use futures::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};

use orderflow_common::kafka;

use crate::settings::Settings;

/// Stop when the dead-letter topic has been quiet this long.
const IDLE: Duration = Duration::from_secs(5);
const CHUNK: usize = 500;

pub async fn replay(settings: &Settings, limit: Option<u64>) -> Result<u64, KafkaError> {
    let mut config = kafka::client_config(&settings.kafka);
    config
        .set("group.id", format!("{}-dlq-replay", settings.group.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    kafka::apply_overrides(&mut config, &settings.kafka);
    let source: StreamConsumer = config.create()?;
    source.subscribe(&[&settings.dead_letter_topic])?;

    let mut config = kafka::client_config(&settings.kafka);
    config.set("acks", "all").set("enable.idempotence", "true");
    kafka::apply_overrides(&mut config, &settings.kafka);
    let target: FutureProducer = config.create()?;

    let mut replayed = 0_u64;
    loop {
        let mut chunk = Vec::new();
        while chunk.len() < CHUNK && limit.is_none_or(|limit| replayed + (chunk.len() as u64) < limit) {
            match tokio::time::timeout(if chunk.is_empty() { IDLE } else { Duration::from_millis(50) }, source.recv()).await {
                Ok(Ok(message)) => chunk.push(message.detach()),
                Ok(Err(error)) => tracing::warn!(%error, "dead-letter read error"),
                Err(_) => break,
            }
        }
        if chunk.is_empty() {
            break;
        }
        let sends = chunk.iter().map(|letter| {
            let offset = letter.offset().to_string();
            let headers = OwnedHeaders::new().insert(Header { key: "orderflow-replayed-from-dlq-offset", value: Some(offset.as_str()) });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&settings.kafka.topic).headers(headers);
            if let Some(key) = letter.key() {
                record = record.key(key);
            }
            if let Some(payload) = letter.payload() {
                record = record.payload(payload);
            }
            target.send(record, Timeout::After(Duration::from_secs(30)))
        });
        for result in join_all(sends).await {
            result.map_err(|(error, _)| error)?;
        }
        let mut done = TopicPartitionList::new();
        for letter in &chunk {
            done.add_partition_offset(letter.topic(), letter.partition(), Offset::Offset(letter.offset() + 1))?;
        }
        source.commit(&done, CommitMode::Sync)?;
        replayed += chunk.len() as u64;
        tracing::info!(replayed, "dead letters re-emitted");
        if limit.is_some_and(|limit| replayed >= limit) {
            break;
        }
    }
    Ok(replayed)
}

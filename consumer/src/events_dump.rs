//! `consumer events-dump`: prints the events of `order-events`, one JSON object per line,
//! from the start of every partition up to its end at the time of the call, then exits. For
//! testers and scripts (`scripts/race-test.sh --scenario lifecycle` checks one final event
//! per order with it); `--order-ids FILE` keeps only the events of the orders listed.

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

use orderflow_common::events::OrderEvent;
use orderflow_common::kafka;

use crate::settings::Settings;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("kafka")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} has no partitions")]
    NoTopic(String),
    #[error("reading the topic did not reach its end within {0:?}")]
    TimedOut(Duration),
    #[error("writing the output")]
    Io(#[from] std::io::Error),
}

/// Blocking: call from a blocking thread. Returns how many events were printed.
pub fn dump(settings: &Settings, only: Option<&HashSet<Uuid>>, within: Duration, out: &mut impl Write) -> Result<u64, DumpError> {
    let topic = &settings.holds.events_topic;
    let mut config = kafka::client_config(&settings.kafka);
    config.set("group.id", "orderflow-events-dump").set("enable.auto.commit", "false");
    kafka::apply_overrides(&mut config, &settings.kafka);
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    if partitions.is_empty() {
        return Err(DumpError::NoTopic(topic.clone()));
    }
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashSet::new();
    let mut ends = std::collections::HashMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            remaining.insert(partition);
            ends.insert(partition, high);
        }
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + within;
    let mut printed = 0;
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            return Err(DumpError::TimedOut(within));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message?;
        if message.offset() + 1 >= ends[&message.partition()] {
            remaining.remove(&message.partition());
        }
        let Some(payload) = message.payload() else { continue };
        if let Some(only) = only {
            match serde_json::from_slice::<OrderEvent>(payload) {
                Ok(event) if only.contains(&event.order_id) => {}
                _ => continue,
            }
        }
        out.write_all(payload)?;
        out.write_all(b"\n")?;
        printed += 1;
    }
    out.flush()?;
    Ok(printed)
}

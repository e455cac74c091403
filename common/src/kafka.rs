//! librdkafka configuration shared by the producer, the consumer, the dev broker and tests.

use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka::ClientConfig;

use crate::config::KafkaSettings;

/// A client config with the brokers set and the user's extra properties applied last.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    config
}

/// Applies `KAFKA_CONFIG` overrides; call after the component's own defaults.
pub fn apply_overrides(config: &mut ClientConfig, settings: &KafkaSettings) {
    for (key, value) in &settings.extra.0 {
        config.set(key, value);
    }
}

/// Asks the cluster for the topic's metadata and returns its partition count: the Kafka half
/// of both services' readiness checks. It blocks, so async callers use `spawn_blocking`.
pub fn topic_partitions<C: ClientContext>(client: &Client<C>, topic: &str, timeout: Duration) -> Result<usize, String> {
    let metadata = client.fetch_metadata(Some(topic), timeout).map_err(|e| e.to_string())?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(format!("topic {topic} is not in the metadata"));
    };
    if let Some(err) = found.error() {
        return Err(format!("topic {topic}: {:?}", rdkafka::error::RDKafkaErrorCode::from(err)));
    }
    if found.partitions().is_empty() {
        return Err(format!("topic {topic} has no partitions"));
    }
    Ok(found.partitions().len())
}

//! librdkafka configuration shared by the producer, the consumer, the dev broker and tests.

use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

use crate::config::KafkaSettings;
use crate::log_limit::{self, LogLimiter};

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

/// librdkafka's own log lines and error callbacks, one per facility (or error) per 10 s:
/// rust-rdkafka's defaults log every one, and with the broker down that was dozens a second
/// per client. Used by every client context of the services.
static LIBRDKAFKA_LOGS: LogLimiter = LogLimiter::new(log_limit::EVERY);

pub fn log_librdkafka(level: RDKafkaLogLevel, facility: &str, text: &str) {
    let Some(suppressed) = LIBRDKAFKA_LOGS.allow(facility) else {
        return;
    };
    // The target keeps `RUST_LOG=librdkafka=...` working as it did with the default callback.
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, suppressed, "{text}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, suppressed, "{text}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", facility, suppressed, "{text}"),
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, suppressed, "{text}"),
    }
}

pub fn log_librdkafka_error(error: &KafkaError, reason: &str) {
    let kind = error.rdkafka_error_code().map_or_else(|| "other".to_owned(), |code| format!("{code:?}"));
    if let Some(suppressed) = LIBRDKAFKA_LOGS.allow(&format!("error:{kind}")) {
        tracing::error!(target: "librdkafka", %error, reason, suppressed, "librdkafka error");
    }
}

/// A client context that only rate-limits librdkafka's logging, for clients that need
/// nothing else (the consumer's dead-letter producer).
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, text: &str) {
        log_librdkafka(level, facility, text);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_librdkafka_error(&error, reason);
    }
}

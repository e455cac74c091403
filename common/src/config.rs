//! Settings shared by the producer and the consumer. Every field is also an environment
//! variable, so the same binaries run against the embedded dev broker or real Kafka.

use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSettings {
    /// Bootstrap servers of the Kafka cluster (comma-separated host:port).
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic the orders are published to and consumed from.
    #[arg(long = "kafka-topic", env = "KAFKA_TOPIC", default_value = "orders-placed")]
    pub topic: String,
    /// Extra librdkafka properties, `key=value` separated by commas, applied last
    /// (for example `security.protocol=ssl,ssl.ca.location=/etc/ca.pem`).
    #[arg(long = "kafka-config", env = "KAFKA_CONFIG", default_value = "", value_parser = parse_properties)]
    pub extra: Properties,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, String)>);

pub fn parse_properties(raw: &str) -> Result<Properties, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.trim().to_owned())),
            _ => Err(format!("expected key=value, got {pair:?}")),
        })
        .collect::<Result<_, _>>()
        .map(Properties)
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self { brokers: brokers.into(), topic: "orders-placed".into(), extra: Properties::default() }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseSettings {
    /// PostgreSQL connection URL.
    #[arg(long = "database-url", env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/orderflow")]
    pub url: String,
    /// Maximum connections in the pool.
    #[arg(long = "database-pool-size", env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
    /// How long to wait for a pooled connection or a new connection, in milliseconds.
    #[arg(id = "database_timeout_ms", long = "database-timeout-ms", env = "DATABASE_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
}

impl DatabaseSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), pool_size: 16, timeout_ms: 5000 }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogSettings {
    /// Log output format; filter with RUST_LOG (default `info`).
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse() {
        assert_eq!(parse_properties("").unwrap(), Properties::default());
        let props = parse_properties(" a=1 , b.c = x=y ").unwrap();
        assert_eq!(props.0, vec![("a".into(), "1".into()), ("b.c".into(), "x=y".into())]);
        assert!(parse_properties("novalue").is_err());
        assert!(parse_properties("=1").is_err());
    }
}

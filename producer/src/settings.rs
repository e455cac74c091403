//! Producer settings: command-line flags, each also an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use orderflow_common::config::{DatabaseSettings, KafkaSettings, LogSettings};

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "producer", about = "orderflow REST API: validates orders and publishes them to Kafka")]
pub struct Settings {
    /// Address the HTTP API listens on.
    #[arg(long, env = "PRODUCER_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub kafka: KafkaSettings,
    #[command(flatten)]
    pub publish: PublishSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub limits: LimitSettings,
    #[command(flatten)]
    pub log: LogSettings,
    /// How long an Idempotency-Key is remembered.
    #[arg(long = "idempotency-ttl-hours", env = "IDEMPOTENCY_TTL_HOURS", default_value_t = 24)]
    pub idempotency_ttl_hours: u64,
    /// Bearer token for the /admin routes; unset disables them.
    #[arg(long = "admin-token", env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[command(flatten)]
    pub dashboard: DashboardSettings,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DashboardSettings {
    /// Where the dashboard's chart library (uplot's dist directory) is installed; `npm ci`
    /// in producer/dashboard puts it at the default, relative to the repository root.
    #[arg(long = "dashboard-assets-dir", env = "DASHBOARD_ASSETS_DIR", default_value = DEFAULT_ASSETS_DIR)]
    pub assets_dir: std::path::PathBuf,
    /// How often the dashboard's snapshot is computed and pushed to viewers.
    #[arg(long = "dashboard-refresh-ms", env = "DASHBOARD_REFRESH_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=10_000))]
    pub refresh_ms: u64,
}

pub const DEFAULT_ASSETS_DIR: &str = "producer/dashboard/node_modules/uplot/dist";

impl Default for DashboardSettings {
    fn default() -> Self {
        Self { assets_dir: DEFAULT_ASSETS_DIR.into(), refresh_ms: 1000 }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct PublishSettings {
    /// How long the broker has to acknowledge an order before the API answers 503.
    #[arg(id = "publish_timeout_ms", long = "publish-timeout-ms", env = "PUBLISH_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub timeout_ms: u64,
    /// librdkafka linger.ms: how long to wait to fill a produce batch. Small, because
    /// every HTTP response waits for its acknowledgement.
    #[arg(long, env = "KAFKA_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// librdkafka batch.size in bytes (per partition).
    #[arg(long, env = "KAFKA_BATCH_BYTES", default_value_t = 1_000_000)]
    pub batch_bytes: u64,
    /// librdkafka compression.type (none, gzip, snappy, lz4, zstd).
    #[arg(long, env = "KAFKA_COMPRESSION", default_value = "lz4")]
    pub compression: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LimitSettings {
    /// Requests per second allowed per client IP (0 disables the limit).
    #[arg(long, env = "RATE_LIMIT_PER_IP", default_value_t = 2_000)]
    pub per_ip_per_second: u32,
    /// Requests per second allowed across all clients (0 disables the limit).
    #[arg(long, env = "RATE_LIMIT_GLOBAL", default_value_t = 20_000)]
    pub global_per_second: u32,
    /// Time a client gets to send its request headers before the connection is closed
    /// (408): slow or half-open clients cannot hold connections forever.
    #[arg(long, env = "CLIENT_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub client_header_timeout_ms: u64,
    /// Largest accepted body of POST /order, in bytes.
    #[arg(long, env = "MAX_ORDER_BYTES", default_value_t = 16 * 1024)]
    pub max_order_bytes: usize,
    /// Largest accepted body of POST /orders/batch, in bytes.
    #[arg(long, env = "MAX_BATCH_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_batch_bytes: usize,
}

impl PublishSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for PublishSettings {
    fn default() -> Self {
        Self { timeout_ms: 10_000, linger_ms: 5, batch_bytes: 1_000_000, compression: "lz4".into() }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            per_ip_per_second: 2_000,
            global_per_second: 20_000,
            client_header_timeout_ms: 10_000,
            max_order_bytes: 16 * 1024,
            max_batch_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Settings {
    /// Settings for tests and embedding: given brokers and database, everything else default,
    /// listening on an ephemeral loopback port.
    pub fn new(kafka: KafkaSettings, database: DatabaseSettings) -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            kafka,
            publish: PublishSettings::default(),
            database,
            limits: LimitSettings::default(),
            log: LogSettings { format: orderflow_common::config::LogFormat::Text },
            idempotency_ttl_hours: 24,
            admin_token: None,
            dashboard: DashboardSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Settings::command().debug_assert();
    }
}

//! Consumer settings: command-line flags, each also an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use orderflow_common::config::{DatabaseSettings, KafkaSettings, LogFormat, LogSettings};

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "consumer", about = "orderflow consumer: reserves stock in PostgreSQL for orders read from Kafka")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Apply database migrations (schema and seed data) and exit.
    Migrate,
    /// Re-emit dead letters from the dead-letter topic to the orders topic, then exit.
    /// Fix the cause first: a letter that is still invalid comes straight back.
    DlqReplay {
        /// Replay at most this many.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Print the events of the events topic (one JSON object a line) up to its current end,
    /// then exit.
    EventsDump {
        /// Only the events of the order ids in this file (one a line).
        #[arg(long = "order-ids")]
        order_ids: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Address of the admin HTTP server (/health, /ready, /status).
    #[arg(long, env = "CONSUMER_ADMIN_ADDR", default_value = "0.0.0.0:8081")]
    pub admin_listen: SocketAddr,
    #[command(flatten)]
    pub kafka: KafkaSettings,
    #[command(flatten)]
    pub group: GroupSettings,
    #[command(flatten)]
    pub batch: BatchSettings,
    #[command(flatten)]
    pub holds: HoldSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub log: LogSettings,
    /// Topic for messages that cannot become orders.
    #[arg(long = "dead-letter-topic", env = "DEAD_LETTER_TOPIC", default_value = orderflow_common::DEAD_LETTER_TOPIC)]
    pub dead_letter_topic: String,
    /// Bearer token for POST /pause, /resume and /gaps/{partition}/acknowledge; unset disables them.
    #[arg(long = "admin-token", env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// How often this consumer writes its status row for the producer's dashboard
    /// (table consumer_status); the dashboard shows a member as gone after 10 s without one.
    #[arg(long = "status-report-ms", env = "STATUS_REPORT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=5000))]
    pub status_report_ms: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GroupSettings {
    /// Consumer group; all consumer replicas share it and split the partitions.
    #[arg(long = "group-id", env = "KAFKA_GROUP_ID", default_value = "orderflow-consumer")]
    pub group_id: String,
    /// Group protocol: `classic` (any Kafka) or `consumer` (KIP-848, Kafka 4+: faster rebalances).
    #[arg(long = "group-protocol", env = "KAFKA_GROUP_PROTOCOL", default_value = "classic")]
    pub protocol: String,
    /// Classic protocol only: how long a silent member keeps its partitions. Short, because a
    /// crashed consumer's partitions wait this long before another member takes them.
    #[arg(long = "session-timeout-ms", env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// librdkafka max.poll.interval.ms: a member that does not poll for this long leaves the
    /// group. A batch write slower than a tenth of it pauses fetching and polls on while it
    /// waits, so a stuck batch keeps its partitions.
    #[arg(long = "max-poll-interval-ms", env = "KAFKA_MAX_POLL_INTERVAL_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1000..))]
    pub max_poll_interval_ms: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BatchSettings {
    /// Most messages handled in one batch (one database transaction per worker). Reached
    /// only with a backlog: then larger transactions spread their fixed cost (round trips,
    /// commit flush) over more orders. Light traffic closes batches by time instead.
    #[arg(long = "batch-size", env = "BATCH_SIZE", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_messages: u64,
    /// Longest wait, after a batch's first message, for the batch to fill.
    #[arg(long = "batch-max-wait-ms", env = "BATCH_MAX_WAIT_MS", default_value_t = 20)]
    pub max_wait_ms: u64,
    /// librdkafka fetch.wait.max.ms: longest time the broker may hold a fetch.
    #[arg(long = "fetch-wait-max-ms", env = "KAFKA_FETCH_WAIT_MAX_MS", default_value_t = 10)]
    pub fetch_wait_max_ms: u64,
    /// Workers that write a batch in parallel; a batch is split among them by product, so
    /// they never contend for the same row lock.
    #[arg(long, env = "WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub workers: u64,
    /// Adapt the parts per batch (1..=WORKERS) to the lock conflicts met: halve after a
    /// conflicted batch, one more after a clean one (concurrency.rs). false: always WORKERS.
    #[arg(long = "adaptive-workers", env = "ADAPTIVE_WORKERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub adaptive_workers: bool,
    /// While this consumer meets lock conflicts, place products in fixed lanes (a hash of the
    /// product id, the same in every consumer, split.rs) and have each part wait for an
    /// advisory lock per lane before its NOWAIT row locks (reservation.rs): parts of
    /// different consumers on one lane queue instead of conflicting. false: balanced split,
    /// NOWAIT and backoff only.
    #[arg(long = "lanes", env = "LANES", default_value_t = true, action = clap::ArgAction::Set)]
    pub lanes: bool,
    /// On shutdown, how long the batch in hand may take before it is abandoned (its offsets
    /// stay uncommitted, so it is redelivered).
    #[arg(long = "drain-timeout-ms", env = "DRAIN_TIMEOUT_MS", default_value_t = 20_000)]
    pub drain_timeout_ms: u64,
    /// How often a batch stuck on a permanent database error (a CHECK violation, a missing
    /// column) is retried. It is never dropped: it goes through once the cause is fixed.
    #[arg(long = "permanent-error-retry-ms", env = "PERMANENT_ERROR_RETRY_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub permanent_retry_ms: u64,
    /// Longest pause before retrying a part after a lock conflict (exponential from 2 ms,
    /// full jitter). Another consumer's transaction on a hot row lasts about one batch.
    #[arg(long = "conflict-backoff-max-ms", env = "CONFLICT_BACKOFF_MAX_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(2..=10_000))]
    pub conflict_backoff_max_ms: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct HoldSettings {
    /// How long a reservation holds when its order does not say (`hold_seconds`). The
    /// deadline is the reservation's transaction time plus this, so broker lag never eats it.
    #[arg(long = "reservation-ttl-seconds", env = "RESERVATION_TTL_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub reservation_ttl_seconds: u32,
    /// Publish every change of an order to the events topic (`false` turns events off:
    /// nothing is published and nothing is written to the outbox).
    #[arg(long = "order-events", env = "ORDER_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub events: bool,
    /// The events topic.
    #[arg(long = "order-events-topic", env = "ORDER_EVENTS_TOPIC", default_value = orderflow_common::events::EVENTS_TOPIC)]
    pub events_topic: String,
    /// How often the expiry sweeper looks for holds past their deadline.
    #[arg(long = "sweep-interval-ms", env = "SWEEP_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub sweep_interval_ms: u64,
    /// Most holds one expiry transaction releases.
    #[arg(long = "sweep-max-rows", env = "SWEEP_MAX_ROWS", default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub sweep_max_rows: i64,
    /// How long a command whose order is unknown waits for it before it is refused
    /// `unknown_order`.
    #[arg(long = "parked-command-ttl-seconds", env = "PARKED_COMMAND_TTL_SECONDS", default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(1..))]
    pub parked_command_ttl_seconds: u64,
    /// How often the outbox relay looks for events whose writer did not publish them.
    #[arg(long = "outbox-relay-interval-ms", env = "OUTBOX_RELAY_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub outbox_relay_interval_ms: u64,
}

impl Default for HoldSettings {
    fn default() -> Self {
        Self {
            reservation_ttl_seconds: 900,
            events: true,
            events_topic: orderflow_common::events::EVENTS_TOPIC.into(),
            sweep_interval_ms: 1_000,
            sweep_max_rows: 100_000,
            parked_command_ttl_seconds: 3_600,
            outbox_relay_interval_ms: 1_000,
        }
    }
}

impl HoldSettings {
    pub fn lifecycle(&self) -> crate::reservation::LifecycleSettings {
        crate::reservation::LifecycleSettings { default_hold_seconds: self.reservation_ttl_seconds, events: self.events }
    }

    pub fn sweep(&self) -> crate::expiry::SweepSettings {
        crate::expiry::SweepSettings {
            interval: Duration::from_millis(self.sweep_interval_ms),
            max_rows: self.sweep_max_rows,
            parked_ttl: Duration::from_secs(self.parked_command_ttl_seconds),
        }
    }
}

impl BatchSettings {
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    pub fn permanent_retry(&self) -> Duration {
        Duration::from_millis(self.permanent_retry_ms)
    }
}

impl GroupSettings {
    /// See `Pipeline::wait_for_write`: well inside max.poll.interval.ms.
    pub fn hold_after(&self) -> Duration {
        Duration::from_millis(self.max_poll_interval_ms / 10)
    }
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            group_id: "orderflow-consumer".into(),
            protocol: "classic".into(),
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
        }
    }
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_messages: 10_000,
            max_wait_ms: 20,
            fetch_wait_max_ms: 10,
            workers: 4,
            adaptive_workers: true,
            lanes: true,
            drain_timeout_ms: 20_000,
            permanent_retry_ms: 10_000,
            conflict_backoff_max_ms: 250,
        }
    }
}

impl Settings {
    /// Settings for tests and embedding: given brokers and database, everything else default,
    /// admin server on an ephemeral loopback port.
    pub fn new(kafka: KafkaSettings, database: DatabaseSettings) -> Self {
        Self {
            admin_listen: "127.0.0.1:0".parse().expect("valid address"),
            kafka,
            group: GroupSettings::default(),
            batch: BatchSettings::default(),
            holds: HoldSettings::default(),
            database,
            log: LogSettings { format: LogFormat::Text },
            dead_letter_topic: orderflow_common::DEAD_LETTER_TOPIC.into(),
            admin_token: None,
            status_report_ms: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

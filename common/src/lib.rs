//! Shared pieces of orderflow: the order and its validation, settings, PostgreSQL and
//! Kafka helpers, logging, the embedded dev broker and test support.

pub mod acked;
pub mod admin_auth;
pub mod command;
pub mod config;
pub mod db;
pub mod dev_broker;
pub mod errors;
pub mod events;
pub mod kafka;
pub mod lines;
pub mod log_limit;
pub mod member_report;
pub mod metrics;
pub mod order;
pub mod polled;
pub mod protocol_trace;
pub mod shutdown;
pub mod telemetry;
pub mod testing;

/// Topic for messages the consumer cannot process (see ARCHITECTURE.md).
pub const DEAD_LETTER_TOPIC: &str = "orders-dlq";

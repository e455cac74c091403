//! orderflow producer: the REST API that validates orders and publishes them to Kafka.

pub mod dashboard;
pub mod error;
pub mod http_metrics;
pub mod idempotency;
pub mod openapi;
pub mod publisher;
pub mod rate_limit;
pub mod routes;
pub mod settings;
pub mod startup;

pub use settings::Settings;
pub use startup::Application;

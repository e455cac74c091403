//! orderflow consumer: reads placed orders from Kafka in batches and reserves stock in
//! PostgreSQL, idempotently by order_id, committing offsets only after the database.

pub mod async_commit;
pub mod activity;
pub mod admin;
pub mod allocation;
pub mod concurrency;
pub mod context;
pub mod dead_letters;
pub mod events;
pub mod events_dump;
pub mod expiry;
pub mod fault;
pub mod control;
pub mod gaps;
pub mod leave;
pub mod lifecycle;
pub mod offsets;
pub mod outbox;
pub mod pipeline;
pub mod protocol_trace;
pub mod replay;
pub mod reservation;
pub mod settings;
pub mod split;
pub mod startup;
pub mod stats;
pub mod status_report;
pub mod stuck;
pub mod supervision;
pub mod worker_pool;

pub use settings::Settings;
pub use startup::Application;

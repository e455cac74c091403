//! API tests: the real producer on an ephemeral port, a fresh database and a dev broker per
//! test (or its own topic on the broker named by ORDERFLOW_TEST_KAFKA_BROKERS).

mod helpers;
mod admin;
mod carts;
mod commands;
mod dashboard;
mod health;
mod idempotency;
mod openapi;
mod place_batch;
mod place_order;
mod queries;

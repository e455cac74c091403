//! API tests: the real producer on an ephemeral port, a fresh database and a dev broker per test.

mod helpers;
mod admin;
mod health;
mod idempotency;
mod openapi;
mod place_batch;
mod place_order;
mod queries;
